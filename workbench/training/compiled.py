"""Regional compilation of the training step: every transformer layer of the 4-bit + LoRA model goes through
`torch.compile`, once for all layers (they share one code object), with dynamic shapes so packed rows of any
length reuse the same compiled code.

Why: a packed 4-bit LoRA step was launch-bound, not math-bound. Each layer's forward is ~90 small kernels (NF4
dequantize, the LoRA A/B products, dropout, scaling, RMSNorm, RoPE, SwiGLU, residual adds), each with Python
dispatch on the host; the profile in BENCHMARKS.md counts ~8,600 kernels a step with the GPU idle between them.
Inductor fuses the element-wise work around the matrix products and replaces per-op Python with one call a layer.
The NF4 matmul (`bitsandbytes`' own custom ops, compile-aware since 0.46), the varlen attention kernel and
gradient checkpointing's recomputation run inside the compiled layer unchanged.

What it measured (H200, Mistral-7B shape, BENCHMARKS.md): +18% over the plain eager layers (7,253 instead of
~8,600 kernels a step), but no gain over liger-kernel's fused RMSNorm/RoPE/SwiGLU, which fuse the same work without
a compile — so 'auto' compiles only where liger-kernel is not installed (`wanted`).

The first step pays the compile (about a minute for a 7B model on the GPU machine; it shows as a slow first step in
the log and the tokens/s curve); a layer that fails to compile runs eagerly with a warning, never a failed run. CPU runs
do not compile by default: there the per-example reference attention breaks the graph and eager is faster.
"""
from __future__ import annotations


def wanted(cfg, device: str, packed: bool) -> bool:
    """Whether this run compiles its layers: 'on' wherever it packs, 'off' never, 'auto' on CUDA with packing when
    liger-kernel is not installed. Measured on an H200 (BENCHMARKS.md, Mistral-7B shape, same run): compiled
    11,707 tokens/s, liger's kernels without compiling 11,930, neither 9,945 — the compile pays only where the
    fused kernels are missing, and costs about a minute at the first step."""
    mode = getattr(cfg.training, "compile", "auto") or "auto"
    if mode == "off" or not packed:
        return False
    if mode == "on":
        return True
    from workbench.training import packing

    return device == "cuda" and not packing.kernels_installed()


def decoder_layers(model) -> list:
    """The repeated transformer blocks of a (PEFT-wrapped) causal LM, or [] when the layout is not known."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(base, "model", None)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def compile_layers(model) -> int:
    """Compile every decoder layer in place (lazily: the work happens at the first forward). Returns how many."""
    import torch

    layers = decoder_layers(model)
    # One compiled graph serves all layers; each layer is a separate module instance, so allow a guard entry each
    # (plus the training and no-grad variants) before dynamo gives up and runs eagerly.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * len(layers) + 8)
    torch._dynamo.config.accumulated_cache_size_limit = max(
        getattr(torch._dynamo.config, "accumulated_cache_size_limit", 256), 8 * len(layers) + 64)
    torch._dynamo.config.suppress_errors = True  # a layer that cannot compile runs eagerly, with a warning
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
