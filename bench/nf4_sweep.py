"""The NF4 decode kernel alone, on the Mistral-7B layer shapes (issue 15): time per call inside a CUDA graph for the
dense bf16 product (what the engine did before), bitsandbytes' own 4-bit GEMV (one row at a time: its fast kernel
takes one row) and the workbench kernel over a sweep of tile shapes; effective GB/s of weight bytes read.

    python bench/nf4_sweep.py [rows]      # default 2 rows (the chat's two columns)

Writes bench/results/nf4_gemv_sweep.json. Random weights (speed does not depend on their values).
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
REPS = 50


def graph_time(fn) -> float:
    """Microseconds per call: REPS calls captured in one CUDA graph, replayed, median of 5 replays."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(REPS):
            fn()
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / REPS)
    return sorted(times)[2]


def main() -> None:
    import bitsandbytes as bnb
    import torch

    from workbench.chat import nf4_gemv
    from workbench.chat.fast_layers import _dense

    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    torch.manual_seed(0)
    result = {"gpu": torch.cuda.get_device_name(0), "rows": rows, "command": "python bench/nf4_sweep.py", "shapes": {}}
    configs = [(bn, bk, split, w) for bn, bk, split, w in itertools.product((4, 8, 16, 32), (128, 256, 512), (1, 2, 4),
                                                                             (4, 8))
               if bn * bk * max(rows, 2) <= 32768]
    total = {"dense": 0.0, "bnb_gemv": 0.0, "default": 0.0, "best": 0.0}
    for name, (n, k) in SHAPES.items():
        lin = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
        lin.weight = bnb.nn.Params4bit(torch.randn(n, k, dtype=torch.bfloat16) * 0.02, requires_grad=False,
                                       quant_type="nf4", compress_statistics=True)
        lin = lin.cuda()
        weights = nf4_gemv.pack([lin])
        dense = _dense(lin, torch.bfloat16)
        x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
        ref = x.float() @ dense.float().T
        entry = {"n": n, "k": k, "nf4_mb": round(nf4_gemv.nbytes(weights) / 1e6, 1),
                 "dense_mb": round(dense.numel() * 2 / 1e6, 1)}
        entry["dense_us"] = graph_time(lambda: torch.nn.functional.linear(x, dense))
        x1 = [x[i:i + 1] for i in range(rows)]
        try:
            entry["bnb_gemv_us"] = graph_time(lambda: [bnb.matmul_4bit(r, lin.weight.t(), lin.weight.quant_state)
                                                       for r in x1])
        except Exception as e:  # noqa: BLE001 - reported
            entry["bnb_gemv_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        default = nf4_gemv.config(rows, n, k)
        sweep = []
        t0 = time.time()
        for cfg in configs:
            try:
                out = nf4_gemv._cuda_linear(x, *weights, cfg=cfg)
                err = float((out.float() - ref).abs().max() / ref.abs().max())
                us = graph_time(lambda: nf4_gemv._cuda_linear(x, *weights, cfg=cfg))
                sweep.append({"cfg": cfg, "us": round(us, 2), "rel_err": round(err, 5)})
            except Exception as e:  # noqa: BLE001 - a tile shape that does not compile is skipped, reported
                sweep.append({"cfg": cfg, "error": f"{type(e).__name__}: {str(e)[:120]}"})
        ok = sorted((s for s in sweep if "us" in s), key=lambda s: s["us"])
        entry["default_cfg"] = default
        entry["default_us"] = next((s["us"] for s in sweep if tuple(s["cfg"]) == tuple(default)),
                                   graph_time(lambda: nf4_gemv._cuda_linear(x, *weights)))
        entry["best"] = ok[:5]
        entry["sweep_s"] = round(time.time() - t0, 1)
        entry["best_gb_s"] = round(nf4_gemv.nbytes(weights) / (ok[0]["us"] * 1e-6) / 1e9, 1) if ok else None
        entry["dense_gb_s"] = round(dense.numel() * 2 / (entry["dense_us"] * 1e-6) / 1e9, 1)
        entry["errors"] = [s for s in sweep if "error" in s][:3]
        result["shapes"][name] = entry
        total["dense"] += entry["dense_us"]
        total["bnb_gemv"] += entry.get("bnb_gemv_us", float("nan"))
        total["default"] += entry["default_us"]
        total["best"] += ok[0]["us"] if ok else float("nan")
        print(json.dumps({name: {k_: v for k_, v in entry.items() if k_ != "errors"}}), flush=True)
        del lin, dense, weights
        torch.cuda.empty_cache()
    result["per_layer_us"] = {k: round(v, 1) for k, v in total.items()}
    result["ratio_default_vs_dense"] = round(total["dense"] / total["default"], 2)
    print(json.dumps(result["per_layer_us"]), "ratio default vs dense:", result["ratio_default_vs_dense"])
    out = ROOT / "bench" / "results" / "nf4_gemv_sweep.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], out.name).write_text(out.read_text())


if __name__ == "__main__":
    main()
