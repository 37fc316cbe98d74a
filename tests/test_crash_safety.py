"""Crash safety of training runs: checkpoints verified before a resume (falling back to the newest intact one),
a foreground `train --preset` seen as alive from what its process holds, stop and resume on it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, run_cli
from test_train_runs import steps_of, tiny_config, wait_for, wait_state
from workbench import runs
from workbench.training import checkpoints, jobs


def real_checkpoint(run: runs.RunFolder, step: int, marked: bool = True):
    """A checkpoint folder written with the libraries the Trainer uses (safetensors, torch.save, JSON)."""
    import torch
    from safetensors.torch import save_file

    ckpt = run.checkpoint(step)
    ckpt.mkdir(parents=True)
    save_file({"base_model.model.layers.0.q_proj.lora_A.weight": torch.randn(4, 8)}, ckpt / "adapter_model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.randn(4, 8)}}, "param_groups": []}, ckpt / "optimizer.pt")
    torch.save({"last_epoch": step}, ckpt / "scheduler.pt")
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    if marked:
        checkpoints.mark_complete(ckpt)
    return ckpt


def new_run(run_id="r") -> runs.RunFolder:
    run = runs.folder(run_id, must_exist=False)
    run.path.mkdir(parents=True)
    tiny_config().save(run.config)
    return run


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("damage,expected", [
    (lambda c: truncate(c / "optimizer.pt"), "optimizer.pt is"),
    (lambda c: (c / "adapter_model.safetensors").write_bytes(os.urandom(4096)), "adapter_model.safetensors"),
    (lambda c: truncate(c / "trainer_state.json"), "trainer_state.json"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda c: (c / "trainer_state.json").write_text('{"global_step": 99}'), "trainer_state.json"),
])
def test_a_damaged_checkpoint_is_found_and_resume_falls_back_to_the_newest_intact_one(damage, expected):
    run = new_run()
    real_checkpoint(run, 2)
    newest = real_checkpoint(run, 4)
    assert checkpoints.problem(newest) is None
    damage(newest)
    assert expected in (checkpoints.problem(newest) or ""), checkpoints.problem(newest)
    picked, notes = checkpoints.pick_for_resume(run)
    assert picked == run.checkpoint(2) and len(notes) == 1 and "checkpoint-4 is damaged" in notes[0]


def test_without_the_marker_the_content_decides_and_an_unfinished_save_is_refused():
    run = new_run()
    old = real_checkpoint(run, 2, marked=False)  # from before markers, or killed after the Trainer's last write
    assert checkpoints.problem(old) is None
    cut = real_checkpoint(run, 4, marked=False)
    (cut / "trainer_state.json").unlink()  # the Trainer writes it last: killed before it
    assert "trainer_state.json is missing" in checkpoints.problem(cut)
    assert checkpoints.pick_for_resume(run)[0] == old


def test_resume_refuses_when_no_checkpoint_is_intact():
    run = new_run()
    run.write_status(state="stopped")
    truncate(real_checkpoint(run, 2) / "optimizer.pt")
    with pytest.raises(jobs.JobError, match="no intact checkpoint.*checkpoint-2 is damaged"):
        jobs.resume_run(run.id)
    assert run.read_status()["state"] == "stopped"


# -- the real training process ---------------------------------------------------------------------

@pytest.mark.integration
def test_resume_skips_a_truncated_checkpoint_says_so_and_loses_no_step():
    run_id = jobs.start_run(tiny_config(steps=8))
    run = runs.folder(run_id)
    # A shared CPU can take a minute a step: generous guards, no timing asserted.
    wait_for(lambda: len([c for c in run.checkpoint_dirs() if (c / checkpoints.MARKER).is_file()]) >= 2, timeout=1200)
    jobs.stop_run(run_id)
    status = wait_state(run_id, {"stopped", "failed", "completed"}, timeout=600)
    assert status["state"] == "stopped", status
    newest, older = run.checkpoint_dirs()[:2]
    assert all((c / checkpoints.MARKER).is_file() and checkpoints.problem(c) is None for c in (newest, older))
    truncate(newest / "optimizer.pt")  # as a kill or a full disk leaves it
    assert run_cli("resume", run_id).returncode == 0
    status = wait_state(run_id, {"completed", "failed"}, timeout=1200)
    assert status["state"] == "completed", status | {"log": runs.log_tail(run_id, 3000)}
    assert f"{newest.name} is damaged (optimizer.pt" in status["resume_note"]
    assert f"resuming from {older.name}" in status["resume_note"]
    assert f"resuming from {older.name}" in run.log.read_text()
    assert (run.checkpoints / f"{checkpoints.SET_ASIDE_PREFIX}{newest.name}").is_dir()
    assert steps_of(run_id) == list(range(1, 9))  # steps after the older checkpoint were trained again, once


@pytest.mark.integration
def test_a_foreground_train_preset_is_alive_stoppable_and_not_resumable_while_it_lives():
    args = ["--set", "model.max_seq_length=128", "--set", "data.max_train_examples=24", "--set",
            "data.max_eval_examples=4", "--set", "training.max_steps=40", "--set", "training.batch_size=2",
            "--set", "training.logging_steps=1", "--set", "training.eval_steps=100", "--set",
            "training.save_steps=2", "--set", "eval.run_after_training=false"]
    proc = subprocess.Popen([sys.executable, "-m", "workbench", "train", "--preset", "quick-demo-cpu", *args],
                            cwd=REPO, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        run_id = wait_for(lambda: next((r["id"] for r in runs.list_runs()), None), timeout=120)
        wait_for(lambda: len(steps_of(run_id)) >= 2 or proc.poll() is not None, timeout=1200)
        listing = {r["id"]: r for r in json.loads(run_cli("runs", "--json").stdout)}
        assert listing[run_id]["state"] == "running", listing  # was marked 'interrupted' from the command line
        resumed = run_cli("resume", run_id)
        assert resumed.returncode == 1 and "training now" in resumed.stderr, resumed.stderr
        stopped = run_cli("stop", run_id)
        assert stopped.returncode == 0, stopped.stderr
        out, _ = proc.communicate(timeout=1200)
    finally:
        if proc.poll() is None:
            proc.kill()
    status = runs.read_status(run_id)
    assert status["state"] == "stopped", status | {"out": out[-3000:]}
    assert proc.returncode == 0 and status["step"] < 40
    assert jobs.active_run() is None
