"""The fast CUDA training path: padding-free packed rows, per-example attention and answer-only loss.

What changes against the plain path (padded batches of `batch_size`, `grad_accum` of them per optimizer step):

- **One optimizer step = the same examples, in the same order** (`batch_size x grad_accum` of them, as the
  config says), but laid end to end in one row with no padding, position ids restarting at 0 for every
  example, and `cu_seq_lens` telling the attention where each example starts (`workbench.training.attention`:
  PyTorch's variable-length Flash-Attention kernel). One forward/backward instead of `grad_accum`, with larger
  matrix products and no padding tokens: the per-launch overhead that bounds a 4-bit LoRA step is paid once.
- **Micro-batch from free VRAM**: when a step's examples hold more tokens than fit the GPU's free memory
  (`token_budget`), the row is cut at example boundaries into several chunks, each a forward/backward, with
  the loss of each divided by the whole step's answer-token count, so the gradient is the same.
- **Answer-only loss, per example**: the loss is the mean over the step's answer tokens, exactly as the padded
  path computes it (each example's next-token targets stay inside the example); logits are computed only at
  the positions that carry loss (`logits_to_keep`), never for prompt tokens, and a chunk of positions at a time
  (`chunked_cross_entropy`), so a packed step needs no more memory than the padded micro-batches did.

`enabled(cfg, device)` decides: training.packing 'auto' (the default) packs on CUDA when the kernel is there
and keeps the CPU path exactly as it was; 'on' packs anywhere (on a CPU with the slower per-example reference
attention, used by the tests); 'off' never packs.
"""
from __future__ import annotations

import os

from transformers import Trainer

from workbench.formatting import IGNORE_INDEX
from workbench.training import attention

MODEL_KEYS = ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def mode(cfg) -> str:
    return getattr(cfg.training, "packing", "auto") or "auto"


AUTO_MODEL_TYPES = ("llama", "mistral")  # checked end to end (tests and the H200 benchmark); 'on' forces others


def resolve(cfg, device: str, model) -> bool:
    """Settle 'auto' once the model is loaded: packed on CUDA, with the kernel, for a checked architecture.
    The decision is kept on this process's config object (not a field: the saved config keeps 'auto'), so every
    later `enabled` agrees."""
    if mode(cfg) == "auto":
        kind = getattr(model.config, "model_type", "")
        ok = device == "cuda" and attention.kernel_available("cuda") and kind in AUTO_MODEL_TYPES
        cfg.training._packing_decided = ok
    return enabled(cfg, device)


def enabled(cfg, device: str) -> bool:
    wanted = mode(cfg)
    decided = getattr(cfg.training, "_packing_decided", None)
    if wanted == "auto" and decided is not None:
        return decided
    if wanted == "off":
        return False
    if wanted == "on":
        return True
    return device == "cuda" and attention.kernel_available("cuda")


# -- memory ------------------------------------------------------------------------------------------

def bytes_per_token(model_config, gradient_checkpointing: bool) -> int:
    """A deliberately generous estimate of training memory per token of a packed row (bf16 activations).

    With checkpointing: each layer keeps its input (2H bytes), plus one layer's full activations while it is
    recomputed. Without: every layer's activations (q/k/v/o, MLP inputs and products, norms, LoRA dropout
    copies ~ 14 H + 6 I values). Plus the answer positions' logits (bf16, their fp32 copy and its gradient)."""
    cfg = getattr(model_config, "text_config", None) or model_config
    hidden, inter = cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)
    layers, vocab = cfg.num_hidden_layers, cfg.vocab_size
    layer = 2 * (14 * hidden + 6 * inter)
    acts = 2 * hidden * layers + 2 * layer if gradient_checkpointing else layer * layers
    return acts + 10 * vocab


def token_budget(model, cfg, device: str, fraction: float = 0.5) -> int:
    """Most tokens one forward/backward may hold: `fraction` of the GPU's free memory over `bytes_per_token`;
    never below one longest example. On a CPU (or when WORKBENCH_PACK_TOKENS is set) a fixed number."""
    forced = os.environ.get("WORKBENCH_PACK_TOKENS")
    if forced:
        return max(1, int(forced))
    longest = cfg.model.max_seq_length
    if device != "cuda":
        return max(longest, 16 * longest)
    import torch

    free, _ = torch.cuda.mem_get_info()
    per_token = bytes_per_token(model.config, cfg.training.gradient_checkpointing)
    return max(longest, min(int(free * fraction / per_token), 1 << 17))


# -- the collator ------------------------------------------------------------------------------------

def _chunk(examples: list[dict], fixed_max_length: int = 0) -> dict:
    import torch

    ids, pos, loss_positions, loss_targets, cu = [], [], [], [], [0]
    for ex in examples:
        offset, labels = len(ids), ex["labels"]
        ids += ex["input_ids"]
        pos += range(len(ex["input_ids"]))
        for i in range(len(labels) - 1):  # position i predicts token i+1 of the same example
            if labels[i + 1] != IGNORE_INDEX:
                loss_positions.append(offset + i)
                loss_targets.append(labels[i + 1])
        cu.append(len(ids))
    # A compiled model is given one constant upper bound (the kernel only sizes its grid with it), so the
    # compiled layer never specialises on, or recompiles for, each row's longest example.
    longest = max(fixed_max_length, *(b - a for a, b in zip(cu[:-1], cu[1:])))
    cu_t = torch.tensor(cu, dtype=torch.int32)
    return {"input_ids": torch.tensor([ids]), "position_ids": torch.tensor([pos]), "cu_seq_lens_q": cu_t,
            "cu_seq_lens_k": cu_t.clone(), "max_length_q": longest, "max_length_k": longest,
            "loss_positions": torch.tensor(loss_positions, dtype=torch.long),
            "loss_targets": torch.tensor(loss_targets, dtype=torch.long)}


def split_by_budget(lengths: list[int], max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) runs of examples, each holding at most max_tokens tokens (an example longer
    than that gets a run of its own). Order is kept."""
    runs, start, used = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and used + n > max_tokens:
            runs.append((start, i))
            start, used = i, 0
        used += n
    if lengths:
        runs.append((start, len(lengths)))
    return runs


class PackedCollator:
    """A list of tokenized examples -> one packed batch: the whole step as one row (`input_ids`,
    `attention_mask` of ones and `labels` with the first label of every example ignored, as the Trainer counts
    tokens and answer tokens from them) plus `chunks`, the row cut to the token budget, each chunk what the
    model is called with."""

    def __init__(self, max_tokens: int, fixed_max_length: int = 0):
        self.max_tokens = max_tokens
        self.fixed_max_length = fixed_max_length

    def __call__(self, batch: list[dict]) -> dict:
        import torch

        lengths = [len(b["input_ids"]) for b in batch]
        chunks = [_chunk(batch[a:b], self.fixed_max_length) for a, b in split_by_budget(lengths, self.max_tokens)]
        ids = torch.cat([c["input_ids"] for c in chunks], dim=1)
        labels = [lab for b in batch for lab in [IGNORE_INDEX] + list(b["labels"][1:])]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([labels]),
                "chunks": chunks}


# -- the trainer -------------------------------------------------------------------------------------

class HiddenStatesHead:
    """Marker base; see `hidden_states_head`."""


def hidden_states_head(head):
    """An LM head that hands back its input (the final hidden states at the answer positions): the loss then
    applies the real head chunk by chunk (`chunked_cross_entropy`), so the answer tokens' logits over the whole
    vocabulary (K x V in bf16, fp32 and their gradient: about 2 GB for a 7B step of 16 dbdemos examples) never
    exist at once."""
    import torch

    class _Head(torch.nn.Module, HiddenStatesHead):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        @property
        def weight(self):
            return self.inner.weight

        def forward(self, hidden):
            return hidden

    return _Head(head)


def use_chunked_loss(model) -> bool:
    """Swap a Llama/Mistral-type model's LM head for `hidden_states_head` (after LoRA is attached; the head is
    frozen and carries no adapter). Returns whether it was swapped."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "lm_head", None)
    if getattr(base.config, "model_type", "") not in ("llama", "mistral") or head is None \
            or getattr(head, "bias", None) is not None or getattr(head.weight, "requires_grad", True):
        return False
    base.lm_head = hidden_states_head(head)
    return True


def _ce_chunk(hidden, weight, targets):
    import torch.nn.functional as F

    # hidden may arrive in fp32 (accelerate converts a mixed-precision model's outputs to fp32)
    return F.cross_entropy(F.linear(hidden.to(weight.dtype), weight).float(), targets, reduction="sum")


def chunked_cross_entropy(hidden, weight, targets, chunk: int = 1024):
    """Summed cross-entropy of `hidden @ weight.T` against `targets`, `chunk` rows at a time; each chunk's logits
    are recomputed in the backward pass instead of kept (one extra head matmul, ~1% of a 7B step's FLOPs)."""
    import torch
    from torch.utils.checkpoint import checkpoint

    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk):
        part = slice(start, start + chunk)
        total = total + checkpoint(_ce_chunk, hidden[part], weight, targets[part], use_reentrant=False)
    return total


def loss_head(model):
    """The swapped head inside `model` (a DDP or PEFT wrapper is searched too), or None."""
    return next((m for m in model.modules() if isinstance(m, HiddenStatesHead)), None)


def loss_sum(model, chunk: dict, head=None):
    """Summed next-token cross-entropy over one chunk's answer tokens; the head is applied only where the loss
    is (`logits_to_keep`), and in chunks when `head` (the swapped LM head) is given."""
    import torch.nn.functional as F

    out = model(**{k: chunk[k] for k in MODEL_KEYS}, logits_to_keep=chunk["loss_positions"], use_cache=False)
    rows = out.logits.reshape(-1, out.logits.shape[-1])
    if head is not None:
        return chunked_cross_entropy(rows, head.weight, chunk["loss_targets"])
    return F.cross_entropy(rows.float(), chunk["loss_targets"], reduction="sum")


class PackedTrainer(Trainer):
    """The Hugging Face Trainer, fed packed batches: one call per chunk of the step, the loss of each divided by
    the step's answer-token count (summed over processes when the Trainer averages tokens across devices)."""

    _norm: tuple | None = None
    _unsynced_tokens = 0  # this rank's tokens since the last log (several processes): summed over ranks at log time

    def _track_num_input_tokens(self, inputs):
        """Tokens seen, counted from the row's shape (a packed row has no padding): no GPU sum, no per-step
        gather and `.item()` (the Trainer's own count waits for the GPU every step). With several processes the
        ranks' counts are summed once per log instead."""
        if self.args.include_num_input_tokens_seen == "no" or "input_ids" not in inputs:
            return
        tokens = int(inputs["input_ids"].numel())
        if self.args.world_size > 1:
            self._unsynced_tokens += tokens
        else:
            self.state.num_input_tokens_seen += tokens

    def log(self, logs, *args, **kwargs):
        if self.args.world_size > 1 and self.args.include_num_input_tokens_seen != "no":
            import torch

            count = torch.tensor([self._unsynced_tokens], device=self.args.device, dtype=torch.int64)
            self.state.num_input_tokens_seen += int(self.accelerator.reduce(count, reduction="sum").item())
            self._unsynced_tokens = 0
        return super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        chunks = inputs["chunks"]
        self._norm = self._normaliser(chunks, num_items_in_batch)
        try:
            total = None
            for chunk in chunks:
                loss = super().training_step(model, chunk, num_items_in_batch)
                total = loss if total is None else total + loss
            return total
        finally:
            self._norm = None

    def _normaliser(self, chunks, num_items_in_batch) -> tuple:
        if num_items_in_batch is None:  # this process's own count
            return max(1, sum(int(c["loss_targets"].numel()) for c in chunks)), 1
        world = self.args.world_size if self.args.average_tokens_across_devices else 1
        return num_items_in_batch, world  # the Trainer's count, gathered over `world` processes

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chunks = inputs["chunks"] if "chunks" in inputs else [inputs]
        denominator, scale = self._norm or self._normaliser(chunks, num_items_in_batch)
        if not hasattr(self, "_head"):
            self._head = loss_head(model)
        total = None
        for chunk in chunks:
            part = loss_sum(model, chunk, self._head)
            total = part if total is None else total + part
        loss = total / denominator * scale
        return (loss, {"loss": loss}) if return_outputs else loss


def kernels_installed() -> bool:
    """Whether liger-kernel's Llama/Mistral patches import here (without applying them)."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or it does not import with this transformers
        return False
    return True


def apply_kernels(model) -> list[str]:
    """Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) for Llama/Mistral-type models, when the package is
    installed; returns what was applied (nothing when it is not there or the architecture is not covered)."""
    kind = getattr(model.config, "model_type", "")
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_llama, apply_liger_kernel_to_mistral
    except Exception:  # noqa: BLE001 - not installed, or it does not import with this transformers
        return []
    patch = {"llama": apply_liger_kernel_to_llama, "mistral": apply_liger_kernel_to_mistral}.get(kind)
    if patch is None:
        return []
    patch(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)
    return ["liger:rope", "liger:rms_norm", "liger:swiglu"]
