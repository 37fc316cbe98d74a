"""Background training jobs: start, stop, resume; one training job at a time.

A run is trained by `python -m workbench train --run-dir <dir>` in its own process session, so it
outlives the browser tab and the app. The slot file `.active.json` in the runs folder names the run
that holds the one training slot; every claim happens under an exclusive file lock, so two clicks
on Start (or two app workers) can never start two runs, and the training process holds a second lock
for its whole life.
"""
from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from workbench import paths, runs
from workbench.config import RunConfig


class JobError(RuntimeError):
    """A job action was refused; the message says why and what to do."""


def _slot_lock():
    return paths.file_lock(paths.runs_dir() / ".slot.lock")


def _slot_file() -> Path:
    return paths.runs_dir() / ".active.json"


def active_run() -> str | None:
    """The run id holding the training slot, or None when the slot is free."""
    try:
        slot = json.loads(_slot_file().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    run_dir = paths.runs_dir() / slot.get("run_id", "")
    return slot["run_id"] if runs.process_alive(slot.get("pid"), run_dir) else None


def _claim(run_id: str, pid: int) -> None:
    _slot_file().write_text(json.dumps({"run_id": run_id, "pid": pid}))


_held = {}  # run_id -> the open lock file a training process holds for its whole life


def claim_slot_for_current_process(run_id: str) -> None:
    """Called by the training process itself: take the slot or refuse.

    Besides the slot file, the process keeps an exclusive lock on `.training.lock` while it lives; the
    kernel drops that lock when the process dies (even on kill -9), so two trainers can never overlap.
    """
    with _slot_lock():
        busy = active_run()
        if busy and busy != run_id:
            raise JobError(busy_message(busy))
        fh = open(paths.runs_dir() / ".training.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise JobError(busy_message(busy) if busy else "Another training process is still running in "
                           f"{paths.runs_dir()} (it holds .training.lock); wait for it or stop it first.") from None
        _held[run_id] = fh
        _claim(run_id, os.getpid())


def release_slot(run_id: str) -> None:
    fh = _held.pop(run_id, None)
    if fh is not None:
        fh.close()  # closing the file releases the lifetime lock
    with _slot_lock():
        try:
            if json.loads(_slot_file().read_text()).get("run_id") == run_id:
                _slot_file().unlink()
        except (FileNotFoundError, json.JSONDecodeError):
            pass


def busy_message(run_id: str) -> str:
    return (f"Run '{run_id}' is training now and only one training job runs at a time (it needs the whole "
            f"GPU). Wait for it to finish, or stop it first.")


def train_command(run_id: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "workbench", "train", "--run-dir", str(runs.run_path(run_id))]
    return cmd + (["--resume"] if resume else [])


def cli_equivalent(run_id: str, resume: bool = False) -> str:
    """The command the background job runs, as a person would type it."""
    return shlex.join(["python", *train_command(run_id, resume)[1:]])


def cli_for_config(cfg: RunConfig) -> str:
    """The command that starts a new run with exactly these settings: the preset plus --set overrides."""
    from workbench.config import PRESETS, iter_fields, preset

    base = preset(cfg.preset) if cfg.preset in PRESETS else RunConfig()
    prefix = "" if cfg.preset in PRESETS else "python -m workbench config > config.yaml && "
    cmd = ["python", "-m", "workbench", "train"] + (["--preset", cfg.preset] if not prefix else
                                                     ["--config", "config.yaml"])
    for name, _, value in iter_fields(cfg):
        if name != "preset" and value != base.get(name):
            text = ", ".join(map(str, value)) if isinstance(value, list) else \
                json.dumps(value) if isinstance(value, dict) else str(value).lower() if isinstance(value, bool) \
                else str(value)
            cmd += ["--set", f"{name}={text}"]
    return prefix + shlex.join(cmd)


def _spawn(run_id: str, resume: bool) -> int:
    run_dir = runs.run_path(run_id)
    log = open(run_dir / "train.log", "a")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(train_command(run_id, resume), cwd=paths.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    log.close()
    return proc.pid


def _busy_run(grace_s: float = 20.0) -> str | None:
    """The run holding the slot. A run that has already recorded its end (stopped, completed, failed) but whose
    process is still exiting (saving, joining its worker processes) gets a few seconds to let go. Call it
    outside _slot_lock(): the exiting process takes that lock to release the slot."""
    deadline = time.time() + grace_s
    busy = active_run()
    while busy and runs.read_status(busy).get("state") not in runs.ACTIVE_STATES and time.time() < deadline:
        time.sleep(0.25)
        busy = active_run()
    return busy


def start_run(cfg: RunConfig) -> str:
    """Create a run folder and start its training process; refuse while another run trains."""
    _busy_run()
    with _slot_lock():
        busy = active_run()
        if busy:
            raise JobError(busy_message(busy))
        run_id = runs.create_run(cfg)
        pid = _spawn(run_id, resume=False)
        _claim(run_id, pid)
        runs.write_status(run_id, pid=pid)
    return run_id


def resume_run(run_id: str) -> str:
    """Continue a stopped, interrupted or failed run from its last checkpoint."""
    runs.reconcile()
    _busy_run()
    with _slot_lock():
        busy = active_run()
        if busy:
            raise JobError(busy_message(busy))
        state = runs.read_status(run_id).get("state")
        if state in ("completed",):
            raise JobError(f"Run '{run_id}' already completed; start a new run to train further.")
        if runs.last_checkpoint(runs.run_path(run_id)) is None and state != "queued":
            raise JobError(f"Run '{run_id}' has no checkpoint to resume from yet; start it again as a new run.")
        (runs.run_path(run_id) / "STOP").unlink(missing_ok=True)
        runs.write_status(run_id, state="queued", reason="")
        pid = _spawn(run_id, resume=True)
        _claim(run_id, pid)
        runs.write_status(run_id, pid=pid)
    return run_id


def stop_run(run_id: str) -> str:
    """Ask the run to stop gracefully: it saves a checkpoint and ends as 'stopped'."""
    run_dir = runs.run_path(run_id)
    state = runs.read_status(run_id).get("state")
    if state not in runs.ACTIVE_STATES:
        raise JobError(f"Run '{run_id}' is not running (state: {state}); nothing to stop.")
    (run_dir / "STOP").write_text(runs.now_iso())
    runs.write_status(run_id, state="stopping")
    return run_id
