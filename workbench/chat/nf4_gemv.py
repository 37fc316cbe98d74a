"""Decode-step matmuls straight from the 4-bit weights: a Triton NF4 GEMV for a few rows (issue 15).

The idea (measured below: it did not pay): a decode step with the two chat columns multiplies 2 rows by every weight
matrix, and from the dense bf16 copy that reads 2 bytes per weight (14 GB a step for a 7B model). The 4-bit weights
are 0.5 byte per weight plus one float32 scale per 64: a kernel that reads them, decodes each weight in registers and
multiplies the few rows would read ~3.5x less.

Same numbers as the dense path, by construction: each weight is decoded exactly as bitsandbytes' own dequantize
does (code[nibble] * absmax in float32, rounded to the compute dtype: the high nibble of a byte is the earlier
weight, one absmax per `blocksize` consecutive weights of the row-major matrix, the nested absmax dequantized once
by bitsandbytes itself); each product of a decoded weight and an input in bf16 is exact in float32, and the sums
are float32 as in cuBLAS. Only the order of the additions differs (split-K partial sums are added in a fixed order,
so a run is deterministic).

`linear(x, packed, absmax, code, blocksize)` is a torch custom op (so torch.compile and CUDA graphs take it as
one opaque call): Triton on CUDA, the reference (dequantize, then F.linear) elsewhere, which the CPU tests use.

**Off by default: measured, it did not pay** (bench/nf4_sweep.py on an H200, BENCHMARKS.md). At 2 rows cuBLAS
already streams the dense bf16 copy at 3.5-4.1 TB/s (113 us per Mistral-7B layer); this kernel's best tile shape
reads the 4-bit bytes at only ~0.3 TB/s (371 us per layer): decoding each weight exactly (nibble, table, scale,
bf16 rounding) costs more instructions per byte than the SMs can issue at that bandwidth. `WORKBENCH_FAST_NF4=1`
turns it on for CUDA (experiments), `=all` also on a CPU (the reference op; tests).
"""
from __future__ import annotations

import os

MAX_ROWS = 8  # rows up to which the engine's decode step uses this kernel when on (chat's 2 columns; eval: dense)
_OP = None


def enabled(device) -> bool:
    mode = os.environ.get("WORKBENCH_FAST_NF4", "0")
    if mode == "0":
        return False
    if getattr(device, "type", device) != "cuda":
        return mode == "all"  # CPU: the reference op (tests)
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def pack(linears) -> tuple | None:
    """The 4-bit weights of these bitsandbytes NF4 layers as one matrix of stacked outputs (q/k/v fused):
    (packed uint8 [N, K/2], absmax float32 [N, K/blocksize], code float32 [16], blocksize), or None when any layer
    is not a plain NF4 Linear4bit (other layouts keep the dense path)."""
    import torch

    parts, absmaxes, code, blocksize = [], [], None, None
    for lin in linears:
        w = lin.weight
        st = getattr(w, "quant_state", None)
        if st is None or getattr(st, "quant_type", "") != "nf4" or getattr(st, "packing_format_for_cpu", False):
            return None
        n, k = st.shape
        if k % st.blocksize or st.blocksize % 2 or (blocksize and st.blocksize != blocksize):
            return None
        blocksize = st.blocksize
        if st.nested:
            import bitsandbytes.functional as bnbf

            absmax = bnbf.dequantize_blockwise(st.absmax, st.state2) + st.offset  # as dequantize_4bit does
        else:
            absmax = st.absmax
        parts.append(w.data.reshape(n, k // 2))
        absmaxes.append(absmax.float().reshape(n, k // blocksize))
        code = st.code.float() if code is None else code
    packed = torch.cat(parts) if len(parts) > 1 else parts[0].contiguous()
    absmax = torch.cat(absmaxes) if len(absmaxes) > 1 else absmaxes[0].contiguous()
    return packed, absmax, code.contiguous(), blocksize


def pack_layers(modules, groups: dict, base_linear) -> list[dict] | None:
    """`pack` for every decoder layer and linear group ({group: (parent, member names)}), registering the op; None
    when any layer is not NF4 (the engine then keeps its dense copy for every step)."""
    packed = []
    for layer in modules:
        q = {}
        for group, (parent, names) in groups.items():
            q[group] = pack([base_linear(getattr(getattr(layer, parent), n)) for n in names])
            if q[group] is None:
                return None
        packed.append(q)
    register()
    return packed


def nbytes(weights: tuple) -> int:
    return weights[0].numel() + weights[1].numel() * 4


def dequantize(packed, absmax, code, blocksize: int, dtype):
    """The reference: the dense [N, K] matrix, exactly as bitsandbytes' dequantize_4bit computes it."""
    import torch

    n, half = packed.shape
    nib = torch.stack([packed >> 4, packed & 15], dim=-1).reshape(n, 2 * half).long()
    return (code[nib] * absmax.repeat_interleave(blocksize, dim=1)).to(dtype)


def config(rows: int, n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, SPLIT_K, warps) for a shape: the fastest tile shape of bench/nf4_sweep.py on the H200 for
    every Mistral-7B layer (4 outputs x 512 inputs a tile, no split-K, 4 warps; split-K 2 or 4 within 2%), with
    shorter tiles for short rows. Deterministic (no timing), so the sums' order is the same in every process."""
    bk = 512 if k >= 512 else 256 if k >= 256 else 64
    return 4, bk, 1, 4


def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def nf4_gemv(x_ptr, w_ptr, am_ptr, code_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, tiles_per_split,
                 BS: tl.constexpr, M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 HAS_BIAS: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        HALF: tl.constexpr = BLOCK_K // 2
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rj = tl.arange(0, HALF)
        rm = tl.arange(0, M_PAD)
        n_ok = rn < N
        m_ok = rm < M
        acc = tl.zeros((M_PAD, BLOCK_N), dtype=tl.float32)
        tiles = tl.cdiv(K, BLOCK_K)
        t0 = pid_k * tiles_per_split
        t1 = tl.minimum(t0 + tiles_per_split, tiles)
        for t in range(t0, t1):
            kk = t * BLOCK_K + 2 * rj  # the high nibble's input index
            k_ok = kk < K
            wmask = n_ok[:, None] & k_ok[None, :]
            b = tl.load(w_ptr + rn[:, None] * (K // 2) + (kk // 2)[None, :], mask=wmask, other=0)
            am = tl.load(am_ptr + rn[:, None] * (K // BS) + (kk // BS)[None, :], mask=wmask, other=0.0)
            hi = tl.load(code_ptr + (b >> 4).to(tl.int32))
            lo = tl.load(code_ptr + (b & 15).to(tl.int32))
            w_hi = (hi * am).to(x_ptr.dtype.element_ty).to(tl.float32)
            w_lo = (lo * am).to(x_ptr.dtype.element_ty).to(tl.float32)
            xmask = m_ok[:, None] & k_ok[None, :]
            x_hi = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=xmask, other=0.0).to(tl.float32)
            x_lo = tl.load(x_ptr + rm[:, None] * stride_xm + (kk + 1)[None, :], mask=xmask, other=0.0).to(tl.float32)
            acc += tl.sum(w_hi[None, :, :] * x_hi[:, None, :] + w_lo[None, :, :] * x_lo[:, None, :], axis=2)
        if HAS_BIAS:  # only without split-K: added in float32 before the one rounding, as cuBLAS' epilogue does
            acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + pid_k * M * N + rm[:, None] * N + rn[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])

    return nf4_gemv


_KERNEL = None


def _cuda_linear(x, packed, absmax, code, blocksize: int, bias=None, cfg: tuple | None = None):
    """One kernel writing the output dtype directly (split-K 1), or float32 partial sums over split-K slices added
    in a fixed order, then the bias and the one rounding."""
    import torch

    global _KERNEL
    if _KERNEL is None:
        _KERNEL = _kernel()
    shape = x.shape
    x2 = x.reshape(-1, shape[-1]).contiguous()
    rows, k = x2.shape
    n = packed.shape[0]
    bn, bk, split, warps = cfg or config(rows, n, k)
    tiles = -(-k // bk)
    per = -(-tiles // split)
    split = -(-tiles // per)
    m_pad = 1 << max(0, (rows - 1).bit_length())
    direct = split == 1
    out = torch.empty((rows, n) if direct else (split, rows, n), dtype=x.dtype if direct else torch.float32,
                      device=x.device)
    has_bias = direct and bias is not None
    _KERNEL[(-(-n // bn), split)](x2, packed, absmax, code, bias if has_bias else out, out, rows, n, k, x2.stride(0),
                                  per, BS=blocksize, M_PAD=m_pad, BLOCK_N=bn, BLOCK_K=bk, HAS_BIAS=has_bias,
                                  num_warps=warps)
    if not direct:
        y = out.sum(0)
        if bias is not None:
            y = y + bias.float()
        out = y.to(x.dtype)
    return out.reshape(*shape[:-1], n)


def _op():
    """The custom op (registered once): Triton on CUDA, the reference dequantize + F.linear elsewhere."""
    global _OP
    if _OP is not None:
        return _OP
    import torch
    import torch.nn.functional as F

    @torch.library.custom_op("workbench::nf4_linear", mutates_args=(), schema=(
        "(Tensor x, Tensor packed, Tensor absmax, Tensor code, int blocksize, Tensor? bias=None) -> Tensor"))
    def nf4_linear(x, packed, absmax, code, blocksize, bias=None):
        if x.device.type == "cuda":
            return _cuda_linear(x, packed, absmax, code, blocksize, bias)
        return F.linear(x, dequantize(packed, absmax, code, blocksize, x.dtype), bias)

    @nf4_linear.register_fake
    def _(x, packed, absmax, code, blocksize, bias=None):
        return x.new_empty((*x.shape[:-1], packed.shape[0]))

    _OP = nf4_linear
    return _OP


def register() -> None:
    """Register the op (idempotent); the engine calls this before it compiles anything that uses `linear`."""
    _op()


def linear(x, packed, absmax, code, blocksize: int, bias=None):
    """x [..., K] times the NF4 matrix [N, K] transposed (+ bias) -> [..., N] in x's dtype (after `register()`)."""
    import torch

    return torch.ops.workbench.nf4_linear(x, packed, absmax, code, blocksize, bias)
