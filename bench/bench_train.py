"""Benchmark (not a test): the quick-demo-cpu preset on the embedded model, end to end through the CLI.

    python bench/bench_train.py               # the preset as shipped (target: <= 3 min, loss clearly falls)
    python bench/bench_train.py --baseline    # also the same run with gradient checkpointing on

Prints wall time (process start to exit, model load included), first vs last logged loss and tokens/s
as JSON lines (evaluation after training is off: scoring is benchmarked separately). The baseline
(the 7B preset's memory-saving setting) shows why the CPU preset turns gradient checkpointing off.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _children_cpu() -> float:
    """CPU seconds used by finished child processes: with a busy machine, wall time alone misleads."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(extra: list[str]) -> dict:
    home = tempfile.mkdtemp(prefix="wb-bench-")
    env = dict(os.environ, WORKBENCH_HOME=home)
    t0, cpu0 = time.time(), _children_cpu()
    out = subprocess.run([sys.executable, "-m", "workbench", "train", "--preset", "quick-demo-cpu",
                          "--set", "eval.run_after_training=false", *extra], cwd=REPO, env=env,
                         capture_output=True, text=True)
    wall, cpu = time.time() - t0, _children_cpu() - cpu0
    run = next(p for p in (Path(home) / "runs").iterdir() if p.is_dir())
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    losses = [e["loss"] for e in events if "loss" in e]
    return {"extra": " ".join(extra) or "(preset as is)", "rc": out.returncode, "wall_s": round(wall, 1),
            "cpu_s": round(cpu, 1), "load_avg_1min": os.getloadavg()[0],
            "steps": events[-1]["step"] if events else 0, "first_loss": round(losses[0], 3),
            "last_loss": round(losses[-1], 3),
            "eval_losses": [round(e["eval_loss"], 3) for e in events if "eval_loss" in e],
            "median_tokens_per_s": sorted(e["tokens_per_s"] for e in events if "tokens_per_s" in e)[len(losses) // 2]}


def main() -> None:
    ours = one_run([])
    print(json.dumps(ours), flush=True)
    print(json.dumps({"loss_drop": round(1 - ours["last_loss"] / ours["first_loss"], 3),
                      "within_3_min": ours["wall_s"] <= 180}), flush=True)
    if "--baseline" in sys.argv[1:]:
        baseline = one_run(["--set", "training.gradient_checkpointing=true"])
        print(json.dumps(baseline), flush=True)
        print(json.dumps({"speedup_vs_gradient_checkpointing": round(baseline["wall_s"] / ours["wall_s"], 2)}))


if __name__ == "__main__":
    main()
