"""Benchmark (not a test): the quick-demo-cpu preset exactly as a newcomer starts it, scored as it scores itself.

    python bench/quick_demo_cpu.py            # writes bench/results/quick_demo_cpu.json

Runs `python -m workbench train --preset quick-demo-cpu` as a real subprocess in a fresh WORKBENCH_HOME (no
cached base-model results: the first run a user makes), timing the whole command - model load, training, the
automatic base-vs-tuned scoring - from start to exit. Then reads the run folder the command left: ROUGE-L of the
base and fine-tuned answers (metrics.json) and the share of answers that loop (scoring.is_looping over
predictions.jsonl). The embedded model's one-time GGUF conversion (~20 s, first use on a machine) is done
beforehand and not timed.

Wall time on a shared machine depends on what else runs: the JSON records this process's CPU seconds and the
load average sampled during the run, so a slow run can be told apart from a busy machine.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
RESULT = REPO / "bench" / "results" / "quick_demo_cpu.json"
COMMAND = [sys.executable, "-m", "workbench", "train", "--preset", "quick-demo-cpu"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float:
    try:
        kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
        return round(kb / 2**20, 1)
    except (OSError, StopIteration):
        return 0.0


def machine(load_samples: list[float]) -> str:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = "no GPU" if not torch.cuda.is_available() else "a GPU present (the preset trains on the CPU)"
    load = (f"; 1-min load average during the run {min(load_samples):.1f}-{max(load_samples):.1f} "
            f"(mean {sum(load_samples) / len(load_samples):.1f}) on {cores} cores") if load_samples else ""
    return (f"{cores} CPU cores ({_cpu_name()}), {_memory_gib()} GiB, {gpu}; torch {torch.__version__}, "
            f"python {platform.python_version()}{load}")


def warm_model_cache() -> None:
    """Convert the embedded model's GGUF once (a one-time step per machine), so it is not in the timing."""
    from workbench.models import embedded_model_dir

    embedded_model_dir()


def run_preset(home: Path) -> dict:
    env = dict(os.environ, WORKBENCH_HOME=str(home), PYTHONUNBUFFERED="1")
    env.pop("WORKBENCH_RUNS_DIR", None)
    env.pop("WORKBENCH_CACHE_DIR", None)
    log = home / "command.log"
    loads: list[float] = []
    t0, cpu0 = time.time(), _children_cpu()
    with log.open("w") as out:
        proc = subprocess.Popen(COMMAND, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            loads.append(os.getloadavg()[0])
            time.sleep(2.0)
    wall, cpu = time.time() - t0, _children_cpu() - cpu0
    return {"rc": proc.returncode, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "loads": loads, "log": log}


def read_run(home: Path) -> dict:
    from workbench.evaluation import scoring

    run = next(p for p in sorted((home / "runs").iterdir()) if p.is_dir() and (p / "config.yaml").is_file())
    status = json.loads((run / "status.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines() if line.strip()]
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    losses = [e["loss"] for e in events if "loss" in e]
    started = time.mktime(time.strptime(status["started_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    ended = time.mktime(time.strptime(status["ended_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    return {
        "run_id": run.name, "state": status.get("state"), "steps": status.get("step"),
        "train_s": round(ended - started, 1), "score_s": metrics.get("seconds"),
        "eval_examples": metrics["eval_examples"], "base_cached": metrics.get("base_cached"),
        "first_loss": round(losses[0], 3) if losses else None, "last_loss": round(losses[-1], 3) if losses else None,
        "eval_losses": [round(e["eval_loss"], 3) for e in events if "eval_loss" in e],
        "base": {k: round(v, 4) for k, v in metrics["base"].items()},
        "tuned": {k: round(v, 4) for k, v in metrics["tuned"].items()},
        "base_loop_share": round(scoring.loop_share([p["base_answer"] for p in preds]), 4),
        "tuned_loop_share": round(scoring.loop_share([p["tuned_answer"] for p in preds]), 4),
        "examples": [{"question": p["question"], "reference": p["reference"], "base_answer": p["base_answer"],
                      "tuned_answer": p["tuned_answer"], "rougeL_base": round(p["rougeL_base"], 4),
                      "rougeL_tuned": round(p["rougeL_tuned"], 4), "tuned_looping": p.get("tuned_looping")}
                     for p in preds],
    }


def main() -> int:
    warm_model_cache()
    home = Path(tempfile.mkdtemp(prefix="wb-quick-demo-"))
    try:
        run = run_preset(home)
        if run["rc"] != 0:
            print(run["log"].read_text()[-4000:], file=sys.stderr)
            print(f"error: the preset run exited with {run['rc']}", file=sys.stderr)
            return 1
        found = read_run(home)
    finally:
        if "--keep" not in sys.argv[1:]:
            shutil.rmtree(home, ignore_errors=True)
    from workbench.config import preset

    cfg = preset("quick-demo-cpu")
    result = {
        "wall_s": run["wall_s"],
        "base_rougeL": found["base"]["rougeL"],
        "tuned_rougeL": found["tuned"]["rougeL"],
        "tuned_loop_share": found["tuned_loop_share"],
        "base_loop_share": found["base_loop_share"],
        "command": " ".join(["python", *COMMAND[1:]]),
        "machine": machine(run["loads"]),
        "within_3_min": run["wall_s"] <= 180,
        "cpu_s": run["cpu_s"],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "recipe": {k: cfg.get(k) for k in (
            "model.max_seq_length", "data.source", "data.max_train_examples", "data.max_eval_examples",
            "lora.r", "lora.alpha", "lora.dropout", "lora.target_modules", "training.max_steps", "training.epochs",
            "training.batch_size", "training.grad_accum", "training.learning_rate", "training.lr_scheduler",
            "training.warmup_ratio", "eval.max_examples", "eval.max_new_tokens", "eval.batch_size", "eval.no_repeat_ngram_size")},
        **{k: v for k, v in found.items() if k not in ("base_loop_share", "tuned_loop_share")},
    }
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    summary = {k: result[k] for k in ("wall_s", "cpu_s", "base_rougeL", "tuned_rougeL", "base_loop_share",
                                      "tuned_loop_share", "train_s", "score_s", "within_3_min")}
    print(json.dumps(summary))
    print(f"wrote {RESULT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
