"""Per-example attention over packed rows: several examples laid end to end in one row, each attending only
to itself.

The packed collator (`workbench.training.packing`) hands the model `cu_seq_lens_q/_k` (where each example starts
and ends in the row) and `max_length_q/_k`; transformers passes them through to the attention function, which
this module registers with transformers' `AttentionInterface` under the name `workbench_varlen`:

- on CUDA it calls PyTorch's own variable-length Flash-Attention kernel, `torch.nn.attention.varlen.varlen_attn`
  (PyTorch >= 2.10; no flash-attn package): work is proportional to the sum of the examples' squared lengths,
  never to the row's, and no T x T mask is ever built;
- elsewhere (CPU tests, or a CUDA build without the kernel) it runs `scaled_dot_product_attention` once per
  example (`reference_attention`): the same function, slower, used to check the kernel.

No attention mask is built for this implementation (transformers skips mask creation for a name it does not
know), so a batch without `cu_seq_lens_q` is an error, not a silent full-row attention.
"""
from __future__ import annotations

import inspect

NAME = "workbench_varlen"


class PackedAttentionError(RuntimeError):
    """The packed attention was called without the example boundaries it needs."""


def _varlen_kernel():
    """torch's varlen_attn, or None when this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def kernel_available(device_type: str = "cuda") -> bool:
    import torch

    return device_type == "cuda" and torch.cuda.is_available() and _varlen_kernel() is not None


def reference_attention(q, k, v, cu_seqlens, scale: float, window: int | None = None):
    """Causal attention inside each example: q (T, Hq, D), k/v (T, Hkv, D), cu_seqlens (N+1,) -> (T, Hq, D).

    One `scaled_dot_product_attention` per example; with a sliding window, an explicit banded mask."""
    import torch
    import torch.nn.functional as F

    groups = q.shape[1] // k.shape[1]
    outs = []
    bounds = [int(b) for b in cu_seqlens.tolist()]
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        qs, ks, vs = (t[start:end].transpose(0, 1) for t in (q, k, v))  # (H, L, D)
        if groups > 1:
            ks, vs = ks.repeat_interleave(groups, dim=0), vs.repeat_interleave(groups, dim=0)
        length = end - start
        if window is not None and window < length:
            i = torch.arange(length, device=q.device)
            mask = (i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < window)
            out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale)
        else:
            out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale)
        outs.append(out.transpose(0, 1))
    return torch.cat(outs, dim=0)


_PARAMS: dict = {}


def _kernel_params(fn) -> set:
    """The kernel's keyword names; read once (also by `use_packed_attention`, before any compiled code runs, so
    a compiled layer only reads the cached set)."""
    if fn not in _PARAMS:
        _PARAMS[fn] = frozenset(inspect.signature(fn).parameters)
    return _PARAMS[fn]


def varlen_attention(q, k, v, cu_seqlens, max_len: int, scale: float, window: int | None = None):
    """The CUDA kernel, adapted to what this torch's varlen_attn accepts (its keyword names moved between
    releases: `is_causal` in 2.10, `window_size` later; GQA natively only where `enable_gqa` exists)."""
    fn = _varlen_kernel()
    params = _kernel_params(fn)
    kw = {"scale": scale}
    if "window_size" in params:
        kw["window_size"] = (window - 1 if window is not None and window < max_len else -1, 0)
    else:
        if window is not None and window < max_len:
            return reference_attention(q, k, v, cu_seqlens, scale, window)
        kw["is_causal"] = True
    if k.shape[1] != q.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    return fn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, **kw)


def packed_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
                             sliding_window=None, **kwargs):
    """transformers' attention-function signature: query (1, Hq, T, D), key/value (1, Hkv, T, D);
    returns ((1, T, Hq, D), None)."""
    import torch

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        raise PackedAttentionError(
            f"The '{NAME}' attention needs packed batches (cu_seq_lens_q from the packed collator); this batch has "
            f"none. Train with training.packing 'off' to use padded batches.")
    if query.shape[0] != 1:
        raise PackedAttentionError(f"A packed batch is one row; got {query.shape[0]} rows.")
    if dropout or kwargs.get("softcap") or kwargs.get("s_aux") is not None:
        raise PackedAttentionError("Attention dropout, soft-capping and attention sinks are not supported by the "
                                   "packed attention; set training.packing to 'off' for this model.")
    max_len = int(kwargs.get("max_length_q") or int((cu[1:] - cu[:-1]).max()))
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))  # (T, H, D)
    if q.is_cuda and _varlen_kernel() is not None:
        out = varlen_attention(q, k, v, cu.to(device=q.device, dtype=torch.int32), max_len, scale,
                               sliding_window)
    else:
        out = reference_attention(q, k, v, cu, scale, sliding_window)
    return out.unsqueeze(0), None


def register() -> str:
    """Make `workbench_varlen` a name transformers accepts as an attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, packed_attention_forward)
    return NAME


def use_packed_attention(model) -> None:
    """Switch a loaded model to the per-example attention (before LoRA is attached)."""
    register()
    if _varlen_kernel() is not None:
        _kernel_params(_varlen_kernel())
    try:
        model.set_attn_implementation(NAME)
    except (AttributeError, ValueError):  # older transformers: set the config field directly
        model.config._attn_implementation = NAME
    if getattr(model.config, "_attn_implementation", NAME) != NAME:
        raise PackedAttentionError(f"transformers did not accept the '{NAME}' attention for this model.")
