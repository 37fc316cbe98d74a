"""A bf16 GEMV in Triton for the o projection of decode steps of a few rows (issue 15; bench/gemv_sweep.py).

At 2 rows every product of a decode step is a matrix-vector product that must read the whole weight matrix; cuBLAS
picks GEMM tiles for it. For the Mistral-7B o projection (4096 x 4096, plus the folded LoRA A rows) it picks 64-output
tiles split over K in two, then a reduce kernel: ~12.7 us in the step. This kernel runs one program per 8 output rows
over the whole input length (514 programs: every SM busy without split-K), keeps float32 partial products per (row,
output, lane) and sums them once at the end: 9.0 us alone on an H200. For the other shapes cuBLAS was faster
(BENCHMARKS.md), so the engine uses this for o only. The same products, summed in another order.

`linear(x, w)` is a torch custom op, so torch.compile keeps it as one opaque call inside the compiled layer: Triton on
CUDA, F.linear elsewhere.
"""
from __future__ import annotations

import os

MAX_ROWS = 2  # decode steps of up to this many rows (chat's two columns) use it: float32 partials in registers
_OP = None


def enabled(device) -> bool:
    if os.environ.get("WORKBENCH_FAST_GEMV", "1") == "0" or getattr(device, "type", device) != "cuda":
        return False
    try:
        import triton  # noqa: F401 - the kernel needs it
    except ImportError:
        return False
    return True


def config(rows: int, n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, warps, stages): the best tile of bench/gemv_sweep.py for the o shape on an H200."""
    return 8, 512, 4, 3


_KERNEL = None


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def dense_gemv(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                   M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        rm = tl.arange(0, M_PAD)
        n_ok = rn < N
        m_ok = rm < M
        acc = tl.zeros((M_PAD, BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < K
            w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            acc += w.to(tl.float32)[None, :, :] * x.to(tl.float32)[:, None, :]
        y = tl.sum(acc, axis=2)
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])

    return dense_gemv


def linear_cuda(x, w, cfg: tuple | None = None):
    """x [..., K] @ w[N, K]^T -> [..., N] in x's dtype (no bias)."""
    import torch

    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows, k = x2.shape
    n = w.shape[0]
    bn, bk, warps, stages = cfg or config(rows, n, k)
    y = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    _KERNEL[(-(-n // bn),)](x2, w, y, rows, n, k, x2.stride(0), w.stride(0), y.stride(0),
                            M_PAD=max(2, 1 << (rows - 1).bit_length()), BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                            num_stages=stages)
    return y.reshape(*shape[:-1], n)


def _op():
    global _OP
    if _OP is not None:
        return _OP
    import torch
    import torch.nn.functional as F

    @torch.library.custom_op("workbench::dense_gemv", mutates_args=(), schema="(Tensor x, Tensor w) -> Tensor")
    def dense_gemv(x, w):
        return linear_cuda(x, w) if x.device.type == "cuda" else F.linear(x, w)

    @dense_gemv.register_fake
    def _(x, w):
        return x.new_empty((*x.shape[:-1], w.shape[0]))

    _OP = dense_gemv
    return _OP


def register() -> None:
    """Register the op (idempotent); the engine calls this before it compiles anything that uses `linear`."""
    _op()


def linear(x, w):
    """x [..., K] @ w [N, K]^T -> [..., N] in x's dtype (after `register()`)."""
    import torch

    return torch.ops.workbench.dense_gemv(x, w)
