"""Why a run failed, in words a non-coder can act on."""
from __future__ import annotations

from workbench.config import RunConfig


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite."""


def explain(exc: BaseException, cfg: RunConfig) -> str:
    from workbench.data.dataset import DataError
    from workbench.models import ModelNotAvailable, is_out_of_memory

    name = type(exc).__name__
    text = str(exc)
    if is_out_of_memory(exc):
        from workbench.training.estimate import estimate_vram_gb

        need = estimate_vram_gb(cfg)
        return (f"The GPU ran out of memory (the estimate for this setup was about {need:.1f} GB). Try: a smaller "
                f"batch size (now {cfg.training.batch_size}; raise gradient accumulation to keep the effective "
                f"batch), a shorter max sequence length (now {cfg.model.max_seq_length}), turn on gradient "
                f"checkpointing, or stop other GPU work (the Chat tab) while training.")
    if isinstance(exc, NonFiniteLoss):
        return (f"Training diverged: {text}. Try a lower learning rate (now {cfg.training.learning_rate:g}, e.g. "
                f"half of it), keep max grad norm at 1.0, or use float32 compute if this GPU lacks bfloat16.")
    if isinstance(exc, ModelNotAvailable):
        return f"The base model could not be loaded: {text}"
    if isinstance(exc, DataError):
        return f"The training data has a problem: {text}"
    if isinstance(exc, KeyboardInterrupt):
        return "The training process was interrupted (Ctrl+C or a termination signal). Resume to continue."
    if isinstance(exc, FileNotFoundError):
        return f"A file the run needs is missing ({text}); the run folder may have been changed. Start a new run."
    return (f"Training crashed with {name}: {text[:300]}. The full error is at the end of train.log; resume "
            f"(it continues from the newest intact checkpoint), or start a new run with a smaller setup.")
