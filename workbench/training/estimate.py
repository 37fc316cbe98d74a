"""Rough resource estimates shown before a run starts: GPU memory, or time on a CPU."""
from __future__ import annotations

import functools

from workbench.config import EMBEDDED_MODEL, RunConfig

VOCAB_GUESS = 32768  # Mistral's 32,000 rounded up; SmolLM2 has 49,152, Llama 3 128,256 (a guess either way)
# (parameters in billions, hidden size, layers) of models people pick most; others fall back to a guess.
KNOWN = {
    EMBEDDED_MODEL: (0.135, 576, 30),
    "mistralai/Mistral-7B-Instruct-v0.2": (7.24, 4096, 32),
    "mistralai/Mistral-7B-v0.1": (7.24, 4096, 32),
    "meta-llama/Llama-3.1-8B-Instruct": (8.03, 4096, 32),
}


def model_shape(name: str) -> tuple[float, int, int]:
    if name in KNOWN:
        return KNOWN[name]
    lowered = name.lower()
    for size in ("70b", "13b", "8b", "7b", "3b", "1b", "0.5b", "360m", "135m"):
        if size in lowered:
            billions = float(size[:-1]) / (1000 if size.endswith("m") else 1)
            hidden = 8192 if billions > 30 else 5120 if billions > 10 else 4096 if billions > 5 else 2048
            return billions, hidden, 80 if billions > 30 else 40 if billions > 10 else 32
    return 7.0, 4096, 32


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
    logits = tokens * VOCAB_GUESS * 10
    return round(weights + (lora_params * 16 + activations + logits) / 1e9 + 1.0, 1)


def cpu_seconds_per_step(cfg: RunConfig) -> float:
    """Measured on a 2-core machine: embedded model, batch 4 x 256 tokens ≈ 2.3 s/step; scale linearly."""
    billions, _, _ = model_shape(cfg.model.name_or_path)
    tokens = cfg.training.batch_size * cfg.training.grad_accum * min(cfg.model.max_seq_length, 256)
    return 2.3 * (tokens / 1024) * (billions / 0.135)


def describe(cfg: RunConfig, gpu_name: str | None, gpu_total_gb: float | None, steps: int | None) -> str:
    """One or two sentences for the Train tab."""
    if gpu_name:
        need = estimate_vram_gb(cfg)
        verdict = "fits" if need <= (gpu_total_gb or 0) * 0.9 else "probably does NOT fit — lower batch size or " \
                                                                      "sequence length"
        return f"Estimated GPU memory: ~{need:.1f} GB of {gpu_total_gb:.0f} GB on {gpu_name}: {verdict}."
    per_step = cpu_seconds_per_step(cfg)
    total = f", about {per_step * steps / 60:.0f} min for {steps} steps" if steps else ""
    warn = " A 7B model on a CPU is impractically slow; use a GPU." if model_shape(cfg.model.name_or_path)[0] > 2 \
        else ""
    return f"No GPU found: training runs on the CPU at roughly {per_step:.1f} s per step{total}.{warn}"


@functools.lru_cache(maxsize=1)
def detected_gpu() -> tuple[str | None, float | None]:
    """(name, GB) of the first GPU, or (None, None); looked up once per process (the form asks on every change)."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / 2**30
