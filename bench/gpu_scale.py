"""`python bench/gpu_suite.py scale` (issue 16): one process vs one per GPU on the same recipe and data, the
independent-runs diagnosis and the host-side levers. Meant for nvidia-h200-x2; the runs themselves are
gpu_suite's fresh `python -m workbench train` processes."""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from gpu_suite import GpuMemoryWatch, env_set, fresh_config, fresh_result, other_home, train_fresh_process


def independent_runs(steps: int, packing: str, gpus: int) -> list[dict]:
    """One single-process run per GPU, all at the same time and unaware of each other (no DDP, no collectives),
    each pinned to its GPU and in its own WORKBENCH_HOME (the training slot is per home). If each keeps its solo
    tokens/s, what two-process training loses is communication and waiting; if each slows as much as the ranks of
    a two-process run do, it is the host (CPU, driver, launch path) the processes share."""
    import subprocess
    import tempfile

    from workbench.training import jobs

    procs = []
    for gpu in range(gpus):
        home = tempfile.mkdtemp(prefix=f"wb-independent-{gpu}-")
        with other_home(home):
            cfg = fresh_config(steps, 1, packing)
            run_id = jobs.create_run(cfg)
            procs.append((home, run_id, cfg, subprocess.Popen(
                jobs.train_command(run_id), env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    t0, out = time.time(), []
    for home, run_id, cfg, proc in procs:
        proc.wait()
        with other_home(home):
            out.append(fresh_result(run_id, cfg, proc.returncode, t0))
    return out


# Host-side levers for several ranks (predicted before measuring: they matter only if the independent runs above
# slow each other down, i.e. if the ranks compete for the host rather than wait on each other).
RANK_LEVERS = {"CPUs bound per GPU (WORKBENCH_BIND_CPUS=1)": {"WORKBENCH_BIND_CPUS": "1"},
               "8 CPU threads per rank (OMP_NUM_THREADS=8; the supervisor's default is 1)": {"OMP_NUM_THREADS": "8"}}


def rank_levers(steps: int, gpus: int, one: dict, done: dict | None = None, save=lambda out: None) -> dict:
    """The multi-process packed run again under each host-side lever, each a fresh process (levers in `done`, from an
    earlier call, are kept; `save` is called after each)."""
    out = dict(done or {})
    for name, values in RANK_LEVERS.items():
        if name in out:
            continue
        with env_set(**values):
            r = train_fresh_process(steps, gpus, "auto")
        out[name] = {k: r.get(k) for k in ("tokens_per_s", "state", "replicas_agree", "wall_s")}
        if r.get("tokens_per_s") and one.get("tokens_per_s"):
            out[name]["speedup"] = round(r["tokens_per_s"] / one["tokens_per_s"], 2)
        print(json.dumps({"bench": "scale lever", "lever": name, **out[name]}), flush=True)
        save(out)
    return out


def scale_bench(steps: int) -> None:
    """1 process vs one per GPU, each a fresh `python -m workbench train` process (the supervisor starts
    `accelerate launch` when training.num_processes > 1), on the default packed path and on the plain padded one
    (BENCH_PATHS=auto measures the packed one only). Batch size is per process, so N processes train N times the
    examples per optimizer step; tokens/s counts the real tokens of all ranks (the Trainer gathers them). On the
    packed path also one independent single-process run per GPU at the same time (`independent_runs`;
    BENCH_INDEPENDENT=0 skips it): do the processes slow each other down without any communication? Then the
    host-side levers (`RANK_LEVERS`; BENCH_LEVERS=0 skips them).

    Resumable: every finished part is saved at once to BENCH_PROGRESS (default /tmp/scale_progress.json, which
    survives between calls on a warm device machine), and a second call of the same command skips what is there, so
    the whole measurement can span two calls of the device's 10-minute limit. Writes bench/results/scale_2gpu.json."""
    import torch

    gpus = torch.cuda.device_count()
    progress = Path(os.environ.get("BENCH_PROGRESS", "/tmp/scale_progress.json"))
    result = {"gpu": torch.cuda.get_device_name(0), "gpus": gpus, "torch": torch.__version__,
              "command": "python bench/gpu_suite.py scale", "steps": steps, "paths": {}}
    if progress.is_file():
        result = json.loads(progress.read_text())
        print(json.dumps({"bench": "scale", "resumed": sorted(result["paths"])}), flush=True)

    def save() -> None:
        progress.write_text(json.dumps(result, indent=1) + "\n")

    wanted_paths = os.environ.get("BENCH_PATHS", "auto,off").split(",")
    for packing in ("auto", "off"):
        if packing not in wanted_paths:
            continue
        n_steps = steps if packing == "auto" else max(8, steps // 2)
        name = "packed (default)" if packing == "auto" else "plain padded"
        entry = result["paths"].setdefault(name, {})
        # BENCH_REPEATS rounds of (1 process, N processes), alternated: a lone run's tokens/s moved by ±10% between
        # runs of the same command in one lease, so the speedup is the ratio of the rounds' medians.
        for round_ in range(int(os.environ.get("BENCH_REPEATS", "1"))):
            for processes, key in ((1, "one_process"), (gpus, "processes")):
                key = key if round_ == 0 else f"{key}_{round_ + 1}"
                if key in entry:
                    continue
                with GpuMemoryWatch() as watch:
                    r = train_fresh_process(n_steps, processes, packing)
                r["gpu_peak_used_gb"] = watch.peak_gb  # nvidia-smi's memory.used per GPU (allocator cache included)
                entry[key] = r
                save()
        ones = [v["tokens_per_s"] for k, v in entry.items() if k.startswith("one_process") and v["tokens_per_s"]]
        manys = [v["tokens_per_s"] for k, v in entry.items() if k.startswith("processes") and v["tokens_per_s"]]
        one = {"tokens_per_s": statistics.median(ones) if ones else None}
        if ones and manys:
            entry["one_process_tokens_per_s"], entry["processes_tokens_per_s"] = ones, manys
            entry["speedup"] = round(statistics.median(manys) / statistics.median(ones), 2)
            entry["efficiency"] = round(entry["speedup"] / gpus, 2)
        if packing == "auto" and os.environ.get("BENCH_INDEPENDENT", "1") != "0" and "independent_runs" not in entry:
            alone = independent_runs(n_steps, packing, gpus)
            entry["independent_runs"] = alone
            if one["tokens_per_s"] and all(r["tokens_per_s"] for r in alone):
                # each independent run's speed as a share of the solo run: < 1 means the processes slow each other
                # down without talking to each other
                entry["independent_share_of_solo"] = [round(r["tokens_per_s"] / one["tokens_per_s"], 2) for r in alone]
            save()
        if packing == "auto" and gpus > 1 and os.environ.get("BENCH_LEVERS", "1") != "0":
            def save_levers(levers: dict) -> None:
                entry["levers"] = levers
                save()

            entry["levers"] = rank_levers(n_steps, gpus, one, entry.get("levers"), save_levers)
        save()
        print(json.dumps({"bench": "scale", "packing": packing, **{k: v for k, v in entry.items()
                                                                   if k in ("speedup", "efficiency",
                                                                            "independent_share_of_solo")}}), flush=True)
    out = Path(__file__).resolve().parent / "results" / "scale_2gpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / out.name).write_text(out.read_text())
    print(json.dumps(result), flush=True)
