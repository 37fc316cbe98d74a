"""Pinning GPU ranks to CPUs (WORKBENCH_BIND_CPUS=1, a lever for two-GPU scaling, off by default)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from workbench.training import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpulist_format_reads_ranges_and_single_cpus():
    assert distributed.parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert distributed.parse_cpulist("5") == [5]
    assert distributed.parse_cpulist("") == []


def test_ranks_near_the_same_cpus_get_disjoint_equal_parts():
    allowed = list(range(32))
    same = [allowed, allowed]  # one NUMA node (or unknown): the two ranks split it
    assert distributed.share_of_cpus(0, same, allowed) == list(range(16))
    assert distributed.share_of_cpus(1, same, allowed) == list(range(16, 32))
    split = [list(range(16)), list(range(16, 32))]  # a GPU per NUMA node: each rank keeps its own node
    assert distributed.share_of_cpus(0, split, allowed) == list(range(16))
    assert distributed.share_of_cpus(1, split, allowed) == list(range(16, 32))
    # only the CPUs this process may use count; with fewer CPUs than ranks each rank keeps them all
    assert distributed.share_of_cpus(1, same, [4, 5, 6, 7]) == [6, 7]
    assert distributed.share_of_cpus(1, same, [4]) == [4]


def _bind_in_a_rank(local_rank: int, world: int, extra: dict | None = None) -> dict:
    code = ("import json, os; from workbench.training import distributed as d; line = d.bind_to_gpu_cpus(); "
            "print(json.dumps({'line': line, 'cpus': sorted(os.sched_getaffinity(0))}))")
    env = dict(os.environ, LOCAL_RANK=str(local_rank), RANK=str(local_rank), WORLD_SIZE=str(world),
               LOCAL_WORLD_SIZE=str(world), **(extra or {}))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_binding_is_off_by_default_and_skipped_without_a_gpu():
    everything = sorted(os.sched_getaffinity(0))
    off = _bind_in_a_rank(1, 2)
    assert off == {"line": "", "cpus": everything}
    import torch

    if not torch.cuda.is_available():
        on = _bind_in_a_rank(1, 2, {"WORKBENCH_BIND_CPUS": "1"})
        assert on == {"line": "CPU binding: skipped (no GPU)", "cpus": everything}


@pytest.mark.gpu
def test_two_gpu_ranks_are_bound_to_disjoint_cpus():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs a machine with 2+ GPUs (nvidia-h200-x2)")
    ranks = [_bind_in_a_rank(r, 2, {"WORKBENCH_BIND_CPUS": "1"}) for r in (0, 1)]
    assert all(r["line"].startswith(f"CPU binding: rank {i} on CPUs") for i, r in enumerate(ranks))
    assert ranks[0]["cpus"] and ranks[1]["cpus"] and not set(ranks[0]["cpus"]) & set(ranks[1]["cpus"])


def test_a_damaged_replica_record_means_the_replicas_do_not_agree(tmp_path):
    """rank-*.json cut short or not UTF-8 (a rank killed while writing, before records were written atomically):
    the supervisor's check answers 'do not agree' instead of crashing after the training finished."""
    folder = tmp_path / "run" / "replicas"
    folder.mkdir(parents=True)
    good = json.dumps({"rank": 0, "world_size": 2, "step": 4, "lora_sha256": "abc"})
    (folder / "rank-0.json").write_text(good)
    (folder / "rank-1.json").write_text(good.replace('"rank": 0', '"rank": 1'))
    assert distributed.replicas_agree(tmp_path / "run", 2) is True
    for damage in (b'{"rank": 1, "lora_sha', b"\xff\xfe", b"[]"):
        (folder / "rank-1.json").write_bytes(damage)
        assert distributed.replicas_agree(tmp_path / "run", 2) is False
        assert distributed.replicas(tmp_path / "run")[1] == {"damaged": "rank-1.json"}
