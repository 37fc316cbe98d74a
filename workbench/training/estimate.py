"""Rough resource estimates shown before a run starts: GPU memory, or time on a CPU."""
from __future__ import annotations

import math

from workbench.config import RunConfig
from workbench.models import detected_gpu, model_shape, vocab_size  # noqa: F401 (detected_gpu: the Train tab asks here)

def estimate_vram_gb(cfg: RunConfig) -> float:
    """GPU memory of one training step, in GB: a planning figure, not a promise.

    weights: 4-bit NF4 ≈ 0.55 byte/param with quantization constants and the bf16 norms/embeddings,
    else 2 (bf16). LoRA: weights + grads + two Adam states, fp32 (16 bytes/param). Activations per
    layer ≈ 34 bytes x tokens x hidden (SDPA: no attention matrix kept); gradient checkpointing keeps
    only each layer's 2-byte input plus one layer's full activations. Logits: bf16 + fp32 upcast +
    grad ≈ 10 bytes x tokens x vocab. Plus ~1 GB CUDA context and allocator slack.
    """
    billions, hidden, layers = model_shape(cfg.model.name_or_path)
    weights = billions * (0.55 if cfg.model.load_in_4bit else 2.0)
    lora_params = len(cfg.lora.target_modules) * layers * 2 * hidden * cfg.lora.r
    tokens = cfg.training.batch_size * cfg.model.max_seq_length
    full_layer = tokens * hidden * 34
    if cfg.training.gradient_checkpointing:
        activations = layers * tokens * hidden * 2 + full_layer
    else:
        activations = layers * full_layer
    logits = tokens * vocab_size(cfg.model.name_or_path) * 10
    return round(weights + (lora_params * 16 + activations + logits) / 1e9 + 1.0, 1)


# Seconds per optimizer step of the embedded model on a 2-core CPU, batch 4 x accumulation 1 x 256 tokens, as
# measured while a browser and the app share the machine: 4.5 s on a quiet step, up to 12 s when the cores are
# busy (issue 13). An estimate is a range; once a run has logged two points, its own pace replaces it.
CPU_BASELINE_RANGE = (4.5, 12.0)
_BASELINE_TOKENS = 4 * 256


def _work(cfg: RunConfig) -> float:
    """Work of one optimizer step relative to the baseline (tokens x model size)."""
    billions, _, _ = model_shape(cfg.model.name_or_path)
    tokens = cfg.training.batch_size * cfg.training.grad_accum * min(cfg.model.max_seq_length, 256)
    return (tokens / _BASELINE_TOKENS) * (billions / 0.135)


def cpu_seconds_per_step(cfg: RunConfig) -> tuple[float, float]:
    """(low, high) seconds per step on a CPU for this configuration, scaled from the measured baseline."""
    lo, hi = CPU_BASELINE_RANGE
    return lo * _work(cfg), hi * _work(cfg)


def measured_seconds_per_step(events: list[dict]) -> float | None:
    """A run's own pace: wall time between its first and last logged training steps, per step (model loading and
    data preparation before the first step are not counted). None until two points are logged."""
    points = [(e["step"], e["elapsed"]) for e in events
              if isinstance(e, dict) and "loss" in e and isinstance(e.get("step"), int)
              and isinstance(e.get("elapsed"), (int, float))]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    (s0, t0), (s1, t1) = points[0], points[-1]
    return max(t1 - t0, 0.0) / (s1 - s0)


def eta_seconds(events: list[dict], step: int, total_steps: int) -> float | None:
    """Time left from the run's measured pace, or None before it can be measured."""
    per_step = measured_seconds_per_step(events)
    if per_step is None or not total_steps or step >= total_steps:
        return None
    return per_step * (total_steps - step)


def planned_steps(cfg: RunConfig, rows: int | None) -> int | None:
    """Optimizer steps the run will take: max_steps, else epochs over the training rows (None when unknown)."""
    t = cfg.training
    if t.max_steps:
        return t.max_steps
    if not rows:
        return None
    train_rows = round(rows * (1 - cfg.data.eval_fraction))
    if cfg.data.max_train_examples:
        train_rows = min(train_rows, cfg.data.max_train_examples)
    per_epoch = max(1, math.ceil(train_rows / (t.batch_size * t.grad_accum)))
    return max(1, math.ceil(per_epoch * t.epochs))


def measured_on_this_machine(cfg: RunConfig) -> tuple[float, str] | None:
    """(seconds per step scaled to `cfg`, run id) from the newest earlier CPU run of the same model, or None. A run
    with the same adapter (rank and layers) is preferred: on a CPU the adapter's many small operations make an r64
    all-layer step about twice an r16 q/k/v/o one, which the tokens-and-model scaling does not see."""
    from workbench import runs

    measured = []
    for r in runs.list_runs()[:10]:
        try:
            other = runs.load_run_config(r["id"])
        except Exception:  # noqa: BLE001 - an unreadable old run is simply not a measurement
            continue
        if other.model.name_or_path != cfg.model.name_or_path or other.training.device == "cuda":
            continue
        per_step = measured_seconds_per_step(runs.read_events(r["id"]))
        if per_step:
            same_adapter = (other.lora.r, list(other.lora.target_modules)) == (cfg.lora.r, list(cfg.lora.target_modules))
            measured.append((not same_adapter, per_step * _work(cfg) / _work(other), r["id"]))
    if not measured:
        return None
    _, per_step, run_id = min(measured, key=lambda m: m[0])  # the newest with the same adapter, else the newest
    return per_step, run_id


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def describe(cfg: RunConfig, gpu_name: str | None, gpu_total_gb: float | None, steps: int | None,
             measured: tuple[float, str] | None = None) -> str:
    """One or two sentences for the Train tab. `measured`: (s/step, run id) from an earlier run on this machine."""
    if gpu_name:
        need = estimate_vram_gb(cfg)
        verdict = "fits" if need <= (gpu_total_gb or 0) * 0.9 else "probably does NOT fit — lower batch size or " \
                                                                      "sequence length"
        return f"Estimated GPU memory: ~{need:.1f} GB of {gpu_total_gb:.0f} GB on {gpu_name}: {verdict}."
    warn = " A 7B model on a CPU is impractically slow; use a GPU." if model_shape(cfg.model.name_or_path)[0] > 2 \
        else ""
    load = " Loading the model and data adds about half a minute before the first step."
    if measured:
        per_step, run_id = measured
        total = f", so about {_minutes(per_step * steps)} for {steps} steps" if steps else ""
        return (f"No GPU found: training runs on the CPU. Run {run_id} took {per_step:.1f} s per step on this "
                f"machine at this size{total}.{load}{warn}")
    lo, hi = cpu_seconds_per_step(cfg)
    total = f", so {_minutes(lo * steps)} to {_minutes(hi * steps)} for {steps} steps" if steps else ""
    return (f"No GPU found: training runs on the CPU at roughly {lo:.1f}-{hi:.1f} s per step (slower while other "
            f"programs use the cores){total}.{load} The ETA during the run comes from its measured pace.{warn}")
