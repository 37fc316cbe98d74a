"""The decode step's attention as one Triton kernel (issue 15).

A decode step attends one new query per head to a window of the KV cache. With grouped-query attention the G query
heads that share a KV head act as G query rows against that head's keys, so each (row, KV head) is one small
problem: a [G, D] query against [W, D] keys and values, with the additive mask (0 or -inf per cached position: left
padding and positions not written yet). PyTorch's SDPA runs it through cuDNN's flash kernel, built for long query
tiles: ~9 us a layer on an H200 for 4 query rows, against ~2 MB of keys and values. This kernel runs one program per
(row, KV head) over the window in blocks of 64 positions with the online softmax (running max and sum, float32;
probabilities rounded to bf16 for the value product, as flash kernels do), so the same function in another order of
additions.

Used for decode steps on CUDA when Triton is importable, the head size is a power of two and the window at most
MAX_WINDOW (longer windows keep SDPA, whose kernel spreads over more of the GPU); WORKBENCH_FAST_ATTN=0 turns it off.
"""
from __future__ import annotations

import os

BLOCK = 64  # cached positions per iteration (windows are multiples of 256)
MAX_WINDOW = 1024  # longer windows: one program per (row, KV head) would loop too long; SDPA spreads wider
_KERNEL = None


def enabled(device) -> bool:
    if os.environ.get("WORKBENCH_FAST_ATTN", "1") == "0" or getattr(device, "type", device) != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def supports(group: int, head_dim: int, window: int) -> bool:
    return (head_dim & (head_dim - 1)) == 0 and 16 <= head_dim <= 256 and group <= 64 and window % BLOCK == 0 \
        and window <= MAX_WINDOW


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def decode_attention(q_ptr, k_ptr, v_ptr, m_ptr, o_ptr, scale, window,
                         sq_b, sq_h, sq_g, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sm_b, so_b, so_h, so_g,
                         G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BN: tl.constexpr):
        b = tl.program_id(0)
        h = tl.program_id(1)
        g = tl.arange(0, GP)
        d = tl.arange(0, D)
        g_ok = g < G
        q = tl.load(q_ptr + b * sq_b + h * sq_h + g[:, None] * sq_g + d[None, :], mask=g_ok[:, None], other=0.0)
        m_i = tl.full((GP,), float("-inf"), tl.float32)
        l_i = tl.zeros((GP,), tl.float32)
        acc = tl.zeros((GP, D), tl.float32)
        for start in range(0, window, BN):
            n = start + tl.arange(0, BN)
            k = tl.load(k_ptr + b * sk_b + h * sk_h + n[:, None] * sk_n + d[None, :])
            s = tl.dot(q, tl.trans(k)) * scale + tl.load(m_ptr + b * sm_b + n).to(tl.float32)[None, :]
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block of padding only: nothing to add yet
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + n[:, None] * sv_n + d[None, :])
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(o_ptr + b * so_b + h * so_h + g[:, None] * so_g + d[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=g_ok[:, None])

    return decode_attention


def attention(q, k, v, mask, scale: float):
    """q [B, KV, G, D]; k, v [B, KV, W, D] (a window of the cache; the last dim contiguous); mask [B, 1, 1, W] additive
    (0 / -inf) in q's dtype -> [B, KV, G, D], what F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
    scale=scale) computes."""
    import torch

    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    rows, kv, group, dim = q.shape
    window = k.shape[2]
    if q.stride(-1) != 1:
        q = q.contiguous()
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    mask2 = mask.reshape(rows, window)
    _KERNEL[(rows, kv)](q, k, v, mask2, out, scale, window, q.stride(0), q.stride(1), q.stride(2),
                        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2), mask2.stride(0),
                        out.stride(0), out.stride(1), out.stride(2), G=group, GP=max(16, 1 << (group - 1).bit_length()),
                        D=dim, BN=BLOCK, num_warps=4)
    return out
