"""The fast engine's building blocks: dense bf16 copies of the decoder's (4-bit) weights, their memory, and the
per-layer math with the LoRA slots (the part torch.compile compiles). workbench.chat.fast_generate runs them."""
from __future__ import annotations

import copy

GROUPS = {"qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o": ("self_attn", ("o_proj",)),
          "gu": ("mlp", ("gate_proj", "up_proj")), "d": ("mlp", ("down_proj",))}


class Unsupported(Exception):
    """This model (or adapter) cannot run on the engine; the caller uses plain generate."""


def _core(model):
    """The transformers CausalLM inside a PeftModel (or the model itself)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _base_linear(module):
    return getattr(module, "base_layer", module)


def _dense(linear, dtype):
    """A linear layer's weight as a dense matrix: NF4/FP4 weights dequantized, others as they are."""
    import torch

    w = linear.weight
    state = getattr(w, "quant_state", None)
    if state is not None:
        import bitsandbytes.functional as bnbf

        data = w.data
        if getattr(state, "packing_format_for_cpu", False):
            # bitsandbytes repacks CPU weights for its AVX512 kernel at the first forward (absmax in bf16,
            # transposed). Unpack the codes on a COPY of the state (the inverse edits the state it is given)
            # and keep that bf16 absmax, which is what the plain path now computes with.
            packed = copy.copy(state)
            packed.original_nested = False  # no re-quantizing of absmax
            data, unpacked = bnbf._convert_weight_packed_for_cpu_inverse(data, packed)
            unpacked.absmax = state.absmax.T.reshape(-1).float().contiguous()
            unpacked.nested = False
            state = unpacked
        return bnbf.dequantize_4bit(data, state).to(dtype)
    if w.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise Unsupported(f"weights of type {w.dtype}")
    return w.data.to(dtype)


def dense_bytes(model) -> int:
    """Bytes the engine's dense copy of the decoder layers takes (2 per parameter)."""
    core = _core(model)
    total = 0
    for layer in core.model.layers:
        for parent, names in GROUPS.values():
            for name in names:
                lin = _base_linear(getattr(getattr(layer, parent), name))
                total += lin.in_features * lin.out_features * 2
    return total


def kv_bytes(model, rows: int, tokens: int) -> int:
    cfg = _core(model).config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * tokens * rows * 2


def allow_recompiles(limit: int = 64) -> None:
    """The layer math compiles once per batch shape (rows; adapter ranks in the slots). A long-lived app meets more
    than dynamo's default 8 (chat with 1 or 2 rows, evaluation batches of every size, adapters of several ranks):
    past that limit a compile fails and the engine fell back to the uncompiled layers (~0.8x) for good."""
    import torch._dynamo

    cfg = torch._dynamo.config
    for name, floor in (("recompile_limit", limit), ("cache_size_limit", limit),
                        ("accumulated_recompile_limit", 8 * limit), ("accumulated_cache_size_limit", 8 * limit)):
        if isinstance(getattr(cfg, name, None), int) and getattr(cfg, name) < floor:
            setattr(cfg, name, floor)


def _rms(x, weight, eps):
    """transformers' LlamaRMSNorm, exactly (float32 statistics, cast back, then the weight)."""
    import torch

    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _proj(x, lin, reduce: str = ""):
    """A linear layer with optional per-row LoRA: y = xW^T + b + (((x @ A) * gate) @ B).to(y.dtype), B given as B^T.

    `lin` is (w, b, a, bm, gate, split). `w` is a dense matrix, or the 4-bit weights as (packed, absmax, code, blocksize)
    for the NF4 kernel (workbench.chat.nf4_gemv). `split` > 0: the LoRA A is folded into the base product (the engine
    keeps A^T under the weight's `split` rows, and a zero-padded bias), so one GEMM gives y and x @ A; `a` is then None.

    `reduce` (the compiled decode step's default, "lora"): the small B product (and an unfolded A product) is written as
    multiply-and-sum, so torch.compile makes it one reduction with the casts, the row gate and the add folded in. The
    same products, summed in another order. Decode steps only: eagerly, or with many rows, it would materialize x
    times the weights."""
    import torch.nn.functional as F

    w, b, a, bm, gate, split = lin
    if isinstance(w, tuple):
        from workbench.chat import nf4_gemv

        y = nf4_gemv.linear(x, *w, b)
    else:
        y = F.linear(x, w, b)
    if split:
        y, t = y[..., :split], y[..., split:].to(bm.dtype) * gate.unsqueeze(1)
    elif a is not None and reduce:
        t = (x.to(a.dtype).unsqueeze(-1) * a).sum(-2) * gate.unsqueeze(1)
    elif a is not None:
        t = (x.to(a.dtype) @ a) * gate.unsqueeze(1)
    else:
        return y
    delta = (t.unsqueeze(-2) * bm).sum(-1) if reduce else t @ bm.t()  # bm holds B^T: [out, ranks]
    return y + delta.to(y.dtype)


def _layer_pre(x, ln_w, eps, qkv_lin, cos, sin, heads, kv_heads, head_dim, reduce="",
               k_cache=None, v_cache=None, cache_pos=None):
    """norm -> fused qkv (+LoRA) -> RoPE. Returns q [B,H,T,D], k and v [B,KV,T,D]. Given the layer's cache (a decode
    step), k and v are also written into it at `cache_pos` here, so the compiled step fuses the write with RoPE."""
    bsz, t, _ = x.shape
    h = _rms(x, ln_w, eps)
    qkv = _proj(h, qkv_lin, reduce)
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=-1)
    q = q.view(bsz, t, heads, head_dim).transpose(1, 2)
    k = k.view(bsz, t, kv_heads, head_dim).transpose(1, 2)
    v = v.view(bsz, t, kv_heads, head_dim).transpose(1, 2)
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    q = q * c + _rotate_half(q) * s
    k = k * c + _rotate_half(k) * s
    if k_cache is not None:
        k_cache.index_copy_(2, cache_pos, k)
        v_cache.index_copy_(2, cache_pos, v)
    return q, k, v


def _layer_post(x, attn, o_lin, ln_w, eps, gu_lin, d_lin, act, reduce=""):
    """o_proj (+LoRA) + residual -> norm -> SwiGLU MLP (+LoRA) + residual."""
    x = x + _proj(attn, o_lin, reduce)
    h = _rms(x, ln_w, eps)
    g, u = _proj(h, gu_lin, reduce).chunk(2, dim=-1)
    return x + _proj(act(g) * u, d_lin, reduce)
