"""Real training runs: the embedded model in real 4-bit on CPU, through the real subprocess."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli
from workbench import runs
from workbench.training import jobs
from workbench.config import preset

pytestmark = pytest.mark.integration


def tiny_config(steps=8, **overrides):
    cfg = preset("quick-demo-cpu")
    cfg.name = "tiny"
    cfg.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]  # the checks below count these adapters
    cfg.model.max_seq_length = 128
    cfg.data.max_train_examples = 24
    cfg.data.max_eval_examples = 4
    cfg.training.max_steps = steps
    cfg.training.batch_size = 2
    cfg.training.logging_steps = 1
    cfg.training.eval_steps = 4
    cfg.training.save_steps = 2
    cfg.eval.run_after_training = False
    for key, value in overrides.items():
        cfg.set(key, value)
    return cfg


def wait_for(predicate, timeout=240, interval=0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def wait_state(run_id, states, timeout=240):
    return wait_for(lambda: runs.read_status(run_id).get("state") in states and runs.read_status(run_id), timeout)


def steps_of(run_id):
    return [e["step"] for e in runs.read_events(run_id) if "loss" in e]


def test_double_start_starts_one_run_that_completes_with_trained_lora_only():
    import torch
    from safetensors.torch import load_file

    from workbench.models import resolve

    results, errors = [], []

    def click():  # three concurrent clicks on Start
        try:
            results.append(jobs.start_run(tiny_config(steps=6)))
        except jobs.JobError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=click) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1 and len(errors) == 2, (results, errors)
    run_id = results[0]
    assert "only one training job" in errors[0] and run_id in errors[0]
    assert [r["id"] for r in runs.list_runs()] == results
    status = wait_state(run_id, {"completed", "failed"})
    log = (runs.run_path(run_id) / "train.log").read_text()
    assert status["state"] == "completed", status.get("reason", "") + log[-3000:]
    folder = runs.run_path(run_id)
    for name in ("config.yaml", "status.json", "events.jsonl", "train.log", "data/train.jsonl", "data/eval.jsonl",
                 "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/run_config.yaml"):
        assert (folder / name).is_file(), name
    assert steps_of(run_id) == [1, 2, 3, 4, 5, 6]
    assert any("eval_loss" in e for e in runs.read_events(run_id))
    assert runs.load_run_config(run_id).lora.r == 16
    adapter = load_file(folder / "adapter" / "adapter_model.safetensors")
    lora_b = [t for k, t in adapter.items() if "lora_B" in k]
    assert lora_b and all(torch.count_nonzero(t) > 0 for t in lora_b)  # B starts at zero: it was trained
    assert not any("base_layer" in k for k in adapter)  # only the adapter is saved
    # Base weights did not train: the optimizer held state for exactly the LoRA tensors, nothing else.
    optimizer = torch.load(runs.last_checkpoint(run_id) / "optimizer.pt", weights_only=True)
    assert len(optimizer["state"]) == len(adapter) == 2 * 4 * 30  # A and B, q/k/v/o, 30 layers
    assert_only_lora_changed(runs.load_run_config(run_id), folder / "adapter")
    assert jobs.active_run() is None


def assert_only_lora_changed(cfg, adapter_dir):
    """Reload base + trained adapter and compare tensor by tensor with a fresh base and a fresh LoRA:
    every base parameter is identical, every LoRA B matrix moved away from its zero start."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    from workbench.models import load_model

    trained = PeftModel.from_pretrained(load_model(cfg.model, "cpu")[0], str(adapter_dir))
    fresh = get_peft_model(load_model(cfg.model, "cpu")[0], LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, target_modules=list(cfg.lora.target_modules), task_type="CAUSAL_LM"))
    fresh_params = dict(fresh.named_parameters())
    base_names, lora_names = [], []
    for name, tensor in trained.named_parameters():
        key = name  # both models name their adapter 'default'
        assert key in fresh_params, name
        if "lora_" in name:
            lora_names.append(name)
            if "lora_B" in name:
                assert not torch.equal(tensor, fresh_params[key]), f"{name} did not train"
        else:
            base_names.append(name)
            assert torch.equal(tensor, fresh_params[key]), f"base parameter {name} changed"
    assert len(lora_names) == 2 * 4 * 30 and len(base_names) > 100


def test_stop_then_resume_continues_at_the_right_step():
    run_id = jobs.start_run(tiny_config(steps=8))
    wait_for(lambda: len(steps_of(run_id)) >= 3)
    jobs.stop_run(run_id)
    status = wait_state(run_id, {"stopped", "failed", "completed"})
    assert status["state"] == "stopped", status
    ckpt = runs.last_checkpoint(run_id)
    assert ckpt is not None
    stopped_at = int(ckpt.name.split("-")[1])
    jobs.resume_run(run_id)
    queued = runs.read_status(run_id)  # what the progress line reads while the new process loads
    assert queued["step"] == stopped_at and queued["start_step"] is None, queued
    status = wait_state(run_id, {"completed", "failed"})
    assert status["state"] == "completed", status
    assert status["start_step"] == stopped_at, status  # training began again at the checkpoint
    steps = steps_of(run_id)
    assert steps == list(range(1, 9)), steps  # no gap, no duplicate
    assert stopped_at >= 3
    elapsed = [e["elapsed"] for e in runs.read_events(run_id)]
    assert elapsed == sorted(elapsed)  # the resumed run's clock continues (the ETA stays meaningful)
    assert not (runs.run_path(run_id) / "STOP").exists()


def test_sigterm_stops_gracefully_with_a_checkpoint():
    run_id = jobs.start_run(tiny_config(steps=8))
    wait_for(lambda: len(steps_of(run_id)) >= 2)
    os.kill(runs.read_status(run_id)["pid"], signal.SIGTERM)
    status = wait_state(run_id, {"stopped", "failed", "completed"})
    assert status["state"] == "stopped", status
    assert runs.last_checkpoint(run_id) is not None
    wait_for(lambda: jobs.active_run() is None, timeout=60)  # 'stopped' is written just before the process exits
    with pytest.raises(jobs.JobError, match="not running"):
        jobs.stop_run(run_id)


def test_kill_9_becomes_interrupted_and_resume_loses_no_step():
    run_id = jobs.start_run(tiny_config(steps=10))
    wait_for(lambda: runs.last_checkpoint(run_id) is not None and len(steps_of(run_id)) >= 5)
    pid = runs.read_status(run_id)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not runs.process_alive(pid), timeout=30)
    assert run_id in runs.reconcile()
    assert runs.read_status(run_id)["state"] == "interrupted"
    assert "Resume" in runs.read_status(run_id)["reason"]
    assert jobs.active_run() is None
    out = run_cli("resume", run_id)
    assert out.returncode == 0, out.stderr
    status = wait_state(run_id, {"completed", "failed"})
    assert status["state"] == "completed", status
    assert steps_of(run_id) == list(range(1, 11))


@pytest.mark.parametrize("fault,expected", [("nan_at_step:3", "diverged"), ("oom_at_step:2", "ran out of memory")])
def test_nan_loss_and_oom_fail_with_a_reason(monkeypatch, fault, expected):
    # The OOM is simulated (no GPU here): the callback raises torch.OutOfMemoryError, the real exception type.
    # The NaN is real: one LoRA weight is set to NaN, so the forward pass yields a NaN loss.
    monkeypatch.setenv("WORKBENCH_FAULT", fault)
    run_id = jobs.start_run(tiny_config(steps=6))
    status = wait_state(run_id, {"completed", "failed"})
    assert status["state"] == "failed"
    assert expected in status["reason"], status["reason"]
    assert "Traceback" in (runs.run_path(run_id) / "train.log").read_text()
    if expected == "ran out of memory":
        assert "batch size" in status["reason"] and "GB" in status["reason"]


def test_cli_train_and_runs_as_a_user_types_them(tmp_path):
    cfg_path = tmp_path / "config.yaml"
    tiny_config(steps=2).save(cfg_path)
    out = run_cli("train", "--config", cfg_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    listing = run_cli("runs", "--json")
    rows = json.loads(listing.stdout)
    assert rows[0]["state"] == "completed"
    # A run trained in the terminal keeps its log in its folder too (the Train tab's log view read nothing).
    log = runs.folder(rows[0]["id"]).log.read_text(encoding="utf-8")
    assert f"run {rows[0]['id']} in" in log and "loss" in log
    bad = run_cli("train", "--preset", "quick-demo-cpu", "--set", "lora.r=-1")
    assert bad.returncode == 1 and "lora.r" in bad.stderr
    assert run_cli("stop", "../etc").returncode == 1
