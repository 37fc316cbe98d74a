"""Decode-step products at 2 rows: cuBLAS (what the engine calls) against a Triton bf16 GEMV, per Mistral-7B layer shape
(issue 15).

  python bench/gemv_sweep.py

At 2 rows a decode step's products are bandwidth-bound: the profile (bench/profile_decode.py) shows cuBLAS reading
the larger fused gate/up matrix at ~4.2 TB/s but q/k/v (with the folded LoRA A rows) and o at ~3.1 TB/s and down
with a split-K reduce kernel after it. This sweeps a plain Triton GEMV (one program per BLOCK_N outputs, the whole
K loop pipelined, float32 sums, no split-K) over tile shapes and reports each shape's best against cuBLAS in the
same run, inside CUDA graphs (50 calls a replay). Prints one JSON object per shape; with $OUT set, writes
$OUT/gemv_sweep.json. Measured on an H200: 0.85x cuBLAS for a layer (faster only for o), so the engine keeps cuBLAS
and the kernel lives here, with its measurement (BENCHMARKS.md).
"""
from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {"qkv + folded A (r16)": (6192, 4096), "o + folded A (r16)": (4112, 4096), "gate/up": (28672, 4096),
          "down": (4096, 14336)}
ROWS = 2


# -- the kernel: one program per BLOCK_N output rows over the whole input length, float32 partial products per
# (row, output, lane) summed once at the end; no split-K, so no reduce kernel after it. The same products as cuBLAS,
# summed in another order.

_KERNEL = None


def config(rows: int, n: int, k: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_K, warps, stages) for a shape."""
    return 8, 512, 4, 3


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


def graph_time(fn, calls: int = 50) -> float:
    """Microseconds per call, replaying `calls` calls captured in one CUDA graph."""
    import torch

    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / (10 * calls)


def main() -> None:
    import torch
    import torch.nn.functional as F

    result = {"gpu": torch.cuda.get_device_name(0), "rows": ROWS, "command": "python bench/gemv_sweep.py", "shapes": {}}
    configs = [c for c in itertools.product((4, 8, 16), (256, 512, 1024), (4, 8), (2, 3, 4))
               if c[0] * c[1] * ROWS <= 64 * 32 * c[2]]  # float32 partial products: <= 64 registers a thread
    totals = {"cublas": 0.0, "best": 0.0, "default": 0.0}
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
        x = torch.randn(ROWS, k, dtype=torch.bfloat16, device="cuda")
        ref = F.linear(x.float(), w.float())
        entry = {"n": n, "k": k, "mb": round(n * k * 2 / 1e6, 1)}
        entry["cublas_us"] = graph_time(lambda: F.linear(x, w))
        sweep = []
        for cfg in configs:
            try:
                out = linear_cuda(x, w, cfg=cfg)
                err = float((out.float() - ref).abs().max() / ref.abs().max())
                sweep.append({"cfg": cfg, "us": round(graph_time(lambda: linear_cuda(x, w, cfg=cfg)), 2),
                              "rel_err": round(err, 5)})
            except Exception as e:  # noqa: BLE001 - a tile shape that does not compile is reported
                sweep.append({"cfg": cfg, "error": f"{type(e).__name__}: {str(e)[:120]}"})
        ok = sorted((s for s in sweep if "us" in s), key=lambda s: s["us"])
        entry["best"] = ok[:4]
        entry["default_cfg"] = config(ROWS, n, k)
        entry["default_us"] = round(graph_time(lambda: linear_cuda(x, w)), 2)
        for key, us in (("cublas", entry["cublas_us"]), ("best", ok[0]["us"] if ok else 0.0),
                        ("default", entry["default_us"])):
            totals[key] += us
        for key in ("cublas", "best"):
            us = entry["cublas_us"] if key == "cublas" else (ok[0]["us"] if ok else None)
            if us:
                entry[f"{key}_tb_s"] = round(n * k * 2 / (us * 1e-6) / 1e12, 2)
        entry["cublas_us"] = round(entry["cublas_us"], 2)
        print(json.dumps({"shape": name, **entry}), flush=True)
        result["shapes"][name] = entry
    result["layer_us"] = {key: round(v, 1) for key, v in totals.items()}
    result["best_vs_cublas"] = round(totals["cublas"] / totals["best"], 2) if totals["best"] else None
    print(json.dumps({"layer_us": result["layer_us"], "best_vs_cublas": result["best_vs_cublas"]}), flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gemv_sweep.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
