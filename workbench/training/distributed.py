"""Training on several processes (one per GPU) through `accelerate launch` — never a home-made launcher.

`python -m workbench train --run-dir RUN` stays the one command. When the run's config asks for more than
one process, that command becomes the *supervisor*: it holds the training slot, starts
`accelerate launch --num_processes N -m workbench train --run-dir RUN` and waits. Each launched process
is a *rank*: the Trainer wraps the model in DDP (NCCL on GPUs, gloo on CPU), every rank trains on its
share of the batches and gradients are averaged, so the adapters stay identical. Only rank 0 writes the
run folder (status, events, checkpoints, the adapter); every rank records a digest of its LoRA weights
in `replicas/` so the supervisor can confirm the replicas agree. Stop requests and timed saves are
decided together (an all-reduce), so no rank waits forever for another.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from workbench.config import RunConfig
from workbench.paths import atomic_write
from workbench.runs import RunFolder


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def inside_launch() -> bool:
    """True in a process started by `accelerate launch` (torchrun sets LOCAL_RANK)."""
    return "LOCAL_RANK" in os.environ


def is_main() -> bool:
    """The process that writes the run folder: rank 0, or the only process."""
    return rank() == 0


def local_device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def processes_for(cfg: RunConfig) -> int:
    """How many processes the run trains with: the config's number, 0 meaning one per visible GPU."""
    wanted = cfg.training.num_processes
    if wanted == 0:
        return max(1, visible_gpus()) if cfg.training.device != "cpu" else 1
    return max(1, wanted)


def launch_command(run_dir: Path, resume: bool, processes: int, on_cpu: bool) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes),
           "--num_machines", "1", "--main_process_port", str(_free_port()), "--mixed_precision", "no",
           "--dynamo_backend", "no", "--multi_gpu",  # torchrun-style ranks; on a CPU the Trainer then uses gloo
           "-m", "workbench", "train", "--run-dir", str(run_dir)]
    return cmd + (["--resume"] if resume else [])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def supervise(run_dir: Path, resume: bool, processes: int, on_cpu: bool) -> int:
    """Run the ranks and wait for them; returns the launcher's exit code."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    folder = RunFolder(run_dir).replicas
    folder.mkdir(exist_ok=True)
    for old in folder.glob("rank-*.json"):
        old.unlink()
    proc = subprocess.Popen(launch_command(run_dir, resume, processes, on_cpu), env=env, preexec_fn=_die_with_parent)
    return proc.wait()  # a SIGTERM meanwhile only writes STOP (train._stop_on_sigterm); the wait goes on


def _die_with_parent() -> None:
    """Linux: the launcher gets SIGTERM if the supervisor is killed (kill -9), and passes it to the ranks,
    so no orphaned rank keeps training a run the app already shows as 'interrupted'."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def parse_cpulist(text: str) -> list[int]:
    """Linux's CPU list format ("0-3,8,10-11") as a sorted list of CPU numbers."""
    cpus = set()
    for part in text.strip().split(","):
        if part.strip():
            lo, _, hi = part.strip().partition("-")
            cpus.update(range(int(lo), int(hi or lo) + 1))
    return sorted(cpus)


def share_of_cpus(local_rank: int, cpus_per_gpu: list[list[int]], allowed: list[int]) -> list[int]:
    """The CPUs one rank gets: those near its GPU (and allowed to this process), shared out in equal consecutive
    parts among the ranks whose GPUs are near the same CPUs, so no two ranks run on the same core."""
    mine = [c for c in cpus_per_gpu[local_rank] if c in allowed] or list(allowed)
    peers = [r for r, cpus in enumerate(cpus_per_gpu) if cpus == cpus_per_gpu[local_rank]]
    part = len(mine) // len(peers)
    if part == 0:
        return mine
    i = peers.index(local_rank)
    return mine[i * part:(i + 1) * part]


def _gpu_cpus(index: int) -> list[int] | None:
    """The CPUs sysfs names as local to a GPU (its NUMA node), or None when they cannot be read."""
    import torch

    props = torch.cuda.get_device_properties(index)
    ids = [getattr(props, k, None) for k in ("pci_domain_id", "pci_bus_id", "pci_device_id")]
    if None in ids:
        return None
    try:
        return parse_cpulist(Path(f"/sys/bus/pci/devices/{ids[0]:04x}:{ids[1]:02x}:{ids[2]:02x}.0/local_cpulist")
                             .read_text())
    except (OSError, ValueError):
        return None


def bind_to_gpu_cpus() -> str:
    """Lever for several GPU ranks on one host (WORKBENCH_BIND_CPUS=1; off by default: on two H200s it measured 1.68×
    one GPU against 1.83× without it, BENCHMARKS.md): pin this rank to its share of the CPUs near its GPU, so two
    ranks' launch threads neither share cores nor cross NUMA nodes.
    Returns a line for the run's log."""
    if os.environ.get("WORKBENCH_BIND_CPUS", "0") != "1" or not inside_launch():
        return ""
    import torch

    if not torch.cuda.is_available():
        return "CPU binding: skipped (no GPU)"
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))
    allowed = sorted(os.sched_getaffinity(0))
    known = [_gpu_cpus(i) for i in range(min(local_world, torch.cuda.device_count()))]
    cpus_per_gpu = [c if c else allowed for c in known]
    cpus = share_of_cpus(local_device_index(), cpus_per_gpu, allowed)
    os.sched_setaffinity(0, cpus)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), len(cpus))))
    where = "near its GPU" if known[local_device_index()] else "of all (the GPU's NUMA node is unknown)"
    return f"CPU binding: rank {rank()} on CPUs {cpus[0]}-{cpus[-1]} ({len(cpus)} {where})"


def on_gpus() -> bool:
    """Whether the ranks talk over NCCL (one GPU each), where every collective makes the host wait for its GPU."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"


def agree(*flags: bool) -> list[bool]:
    """The same decisions on every rank: each flag is true everywhere if it is true on any rank."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(flags)
    device = torch.device("cuda", local_device_index()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def gather_numbers(values: list[float]) -> list[list[float]]:
    """Every rank's `values`, in rank order (one collective); [values] in a single process."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [list(values)]
    device = torch.device("cuda", local_device_index()) if dist.get_backend() == "nccl" else torch.device("cpu")
    mine = torch.tensor(values, dtype=torch.float64, device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    return [t.tolist() for t in every]


def lora_digest(model) -> str:
    """sha256 over the LoRA weights, in name order: equal on every rank when gradients are synchronized."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "lora_" in name:
            h.update(name.encode())
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def record_replica(run_dir: Path, model, step: int) -> None:
    if world_size() < 2:
        return
    folder = RunFolder(run_dir).replicas
    folder.mkdir(exist_ok=True)
    atomic_write(folder / f"rank-{rank()}.json", json.dumps({"rank": rank(), "world_size": world_size(),
                                                             "step": step, "lora_sha256": lora_digest(model)}))


def replicas(run_dir: Path) -> list[dict]:
    """Each rank's record; a damaged one reads as a record without a digest (so the replicas do not agree)."""
    out = []
    for p in sorted(RunFolder(run_dir).replicas.glob("rank-*.json")):
        try:
            record = json.loads(p.read_text(encoding="utf-8"))
            out.append(record if isinstance(record, dict) else {"damaged": p.name})
        except (OSError, UnicodeDecodeError, ValueError):
            out.append({"damaged": p.name})
    return out


def replicas_agree(run_dir: Path, processes: int) -> bool:
    """Every rank recorded its adapter, and all the digests are the same."""
    recorded = replicas(run_dir)
    digests = {r.get("lora_sha256") for r in recorded}
    return len(recorded) == processes and len(digests) == 1 and None not in digests
