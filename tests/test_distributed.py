"""The multi-process training path, proven on this CPU machine: 2 processes (gloo) launched by accelerate.

The same code starts one process per GPU on a multi-GPU machine (NCCL); here the two ranks share the two
cores. Real embedded model in real 4-bit, real `accelerate launch`, real DDP.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
from safetensors.torch import load_file

from test_train_runs import steps_of, tiny_config, wait_for, wait_state
from workbench import runs
from workbench.training import distributed
from workbench.training import jobs

pytestmark = pytest.mark.integration


def test_two_processes_train_one_run_with_synchronized_adapters_and_stop_resume():
    two_ranks_stop_resume_complete({})


@pytest.mark.gpu
def test_two_gpus_train_one_run_stop_resume_and_show_memory_per_gpu():
    """The same run on nvidia-h200-x2: one process per GPU through NCCL, the 4-bit model placed per rank, a stop and a
    resume, replicas agreeing, and the progress line showing each GPU's memory."""
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs a machine with 2+ GPUs (nvidia-h200-x2)")
    run_id = two_ranks_stop_resume_complete({"training.device": "cuda"})
    last = runs.read_events(run_id)[-1]
    assert len(last["gpu_mem_gb_ranks"]) == 2 and all(v > 0 for v in last["gpu_mem_gb_ranks"])
    from workbench.training import events as events_mod

    if importlib.util.find_spec("plotly") is None:  # the GPU machine has no UI packages; CI checks the text on CPU
        return
    from workbench.ui import run_view

    assert "(2 GPUs)" in run_view.memory_text(events_mod.fold(runs.read_events(run_id)))


def two_ranks_stop_resume_complete(overrides: dict) -> str:
    cfg = tiny_config(steps=6, **{"training.num_processes": 2, "training.batch_size": 2,
                                  "data.max_train_examples": 16, **overrides})
    cuda = cfg.training.device == "cuda"
    run_id = jobs.start_run(cfg)
    run_dir = runs.run_path(run_id)
    wait_for(lambda: len(steps_of(run_id)) >= 2, timeout=300)
    jobs.stop_run(run_id)
    status = wait_state(run_id, {"stopped", "failed", "completed"}, timeout=300)
    assert status["state"] == "stopped", status | {"log": runs.log_tail(run_id, 3000)}
    assert status["processes"] == 2
    stopped_at = int(runs.last_checkpoint(run_id).name.split("-")[1])

    jobs.resume_run(run_id)
    status = wait_state(run_id, {"completed", "failed"}, timeout=300)
    assert status["state"] == "completed", status | {"log": runs.log_tail(run_id, 3000)}
    wait_for(lambda: jobs.active_run() is None)  # the supervising process checks the replicas, then exits
    status = runs.read_status(run_id)

    # Both ranks trained, on different halves of each batch: 16 examples / (2 per process x 2 processes)
    # = 4 steps per epoch, so 6 steps end in epoch 1.5 (one process would be at 0.75).
    log = (run_dir / "train.log").read_text()
    assert "rank 0: completed" in log and "rank 1: completed" in log
    assert runs.read_events(run_id)[-1]["epoch"] == pytest.approx(1.5)
    # Each process's memory is in the events (rank order), and the Train tab's progress line shows both.
    last = runs.read_events(run_id)[-1]
    if not cuda:
        assert len(last["cpu_mem_gb_ranks"]) == 2 and last["cpu_mem_gb"] == max(last["cpu_mem_gb_ranks"])
        from workbench.training import events as events_mod
        from workbench.ui import run_view

        assert "(2 processes)" in run_view.memory_text(events_mod.fold(runs.read_events(run_id)))
    # Gradients were averaged: after the last step the two replicas' LoRA weights are bit-identical.
    replicas = distributed.replicas(run_dir)
    assert [r["rank"] for r in replicas] == [0, 1] and all(r["step"] == 6 for r in replicas)
    assert replicas[0]["lora_sha256"] == replicas[1]["lora_sha256"]
    assert status["replicas_agree"] is True
    # One run folder, one curve: every step once, no gap, across the stop and the resume.
    assert steps_of(run_id) == list(range(1, 7)) and stopped_at >= 2
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    assert len(lines) == len({json.dumps({k: v for k, v in json.loads(x).items() if k != "ts"}) for x in lines})
    # Rank 0 saved the final adapter, and it was trained (LoRA B starts at zero).
    weights = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert any(float(t.abs().sum()) > 0 for name, t in weights.items() if "lora_B" in name)
    return run_id
