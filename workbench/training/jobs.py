"""Background training jobs: create, start, stop, resume; one training job at a time.

A run is trained by `python -m workbench train --run-dir <dir>` in its own process session, so it
outlives the browser tab and the app. The slot file (runs.slot_file()) names the run that holds the one
training slot and its process; every claim happens under runs.slot_lock(), so two clicks on Start (or two app
workers) can never start two runs, and the training process holds the training lock for its whole life.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

from workbench import paths, runs
from workbench.config import ConfigError, RunConfig
from workbench.training import checkpoints


class JobError(RuntimeError):
    """A job action was refused; the message says why and what to do."""


def create_run(cfg: RunConfig) -> str:
    """Validate the config, prepare the data and write a new run folder in state 'queued'."""
    from workbench.data.dataset import prepare_dataset, write_jsonl

    problems = cfg.validate()
    if problems:
        raise runs.RunError("The configuration has problems: " + " ".join(problems))
    pairs = None
    if cfg.kind == "preference":  # the pairs, the parent's settings and Q&A split (workbench.training.preference)
        from workbench.training import preference

        prepared, *pairs = preference.prepare(cfg)
    else:
        prepared = prepare_dataset(cfg.data)  # fails early (DataError) before a process is started
    run = runs.folder(runs.new_run_id(cfg.name or cfg.preset), must_exist=False)
    run.path.mkdir(parents=True)
    write_jsonl(prepared.train, run.train_data)
    write_jsonl(prepared.eval, run.eval_data)
    if pairs:
        write_jsonl(pairs[0], run.pairs_train)
        write_jsonl(pairs[1], run.pairs_eval)
    run.data_report.write_text(json.dumps(prepared.report, indent=1, default=str))
    run.write_status(state="queued", created_at=runs.now_iso(), name=cfg.name, model=cfg.model.name_or_path,
                     kind=cfg.kind, **({"parent_run": cfg.preference.parent_run} if pairs else {}))
    cfg.save(run.config)  # last: a folder with config.yaml is a run (list_runs), so it appears complete
    return run.id


def active_run() -> str | None:
    """The run id holding the training slot, or None when the slot is free (or its process is gone)."""
    return runs.training_run()


def _claim(run_id: str, pid: int) -> None:
    paths.atomic_write(runs.slot_file(), json.dumps({"run_id": run_id, **runs.process_record(pid)}))


_held = {}  # run_id -> the open lock file a training process holds for its whole life


def claim_slot_for_current_process(run_id: str) -> None:
    """Called by the training process itself: take the slot or refuse.

    Besides the slot file, the process keeps an exclusive lock on runs.training_lock_path() while it lives; the
    kernel drops that lock when the process dies (even on kill -9), so two trainers can never overlap, and
    runs.run_alive() reads liveness from it.
    """
    with runs.slot_lock():
        busy = active_run()
        if busy and busy != run_id:
            raise JobError(busy_message(busy))
        try:  # a liveness probe holds the lock for microseconds: wait a little rather than fail on one
            fh = paths.acquire_lock(runs.training_lock_path(), wait_s=5)
        except BlockingIOError:
            raise JobError(busy_message(busy) if busy else "Another training process is still running in "
                           f"{paths.runs_dir()} (it holds {runs.training_lock_path().name}); wait for it or stop "
                           f"it first.") from None
        _held[run_id] = fh
        _claim(run_id, os.getpid())


def release_slot(run_id: str) -> None:
    fh = _held.pop(run_id, None)
    if fh is not None:
        fh.close()  # closing the file releases the lifetime lock
    with runs.slot_lock():
        try:
            if json.loads(runs.slot_file().read_text()).get("run_id") == run_id:
                runs.slot_file().unlink()
        except (FileNotFoundError, ValueError, AttributeError):
            return  # the slot already names no run, or another one


def busy_message(run_id: str) -> str:
    return (f"Run '{run_id}' is training now and only one training job runs at a time (a run takes the whole GPU, "
            f"or every CPU core on a machine without one). Wait for it to finish, or stop it first.")


def train_command(run_id: str, resume: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "workbench", "train", "--run-dir", str(runs.folder(run_id).path)]
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
    skip = {"preset"}
    if cfg.kind == "preference":  # the parent and the pairs have their own options
        cmd += ["--parent", cfg.preference.parent_run or "PARENT_RUN_ID"]
        if cfg.preference.pairs and cfg.preference.pairs != "votes":
            cmd += ["--pairs", cfg.preference.pairs]
        skip |= {"kind", "preference.parent_run", "preference.pairs"}
    for name, _, value in iter_fields(cfg):
        if name not in skip and value != base.get(name):
            text = ", ".join(map(str, value)) if isinstance(value, list) else \
                json.dumps(value) if isinstance(value, dict) else str(value).lower() if isinstance(value, bool) \
                else str(value)
            cmd += ["--set", f"{name}={text}"]
    return prefix + shlex.join(cmd)


def _spawn(run_id: str, resume: bool) -> int:
    log = open(runs.folder(run_id).log, "a")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(train_command(run_id, resume), cwd=paths.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    log.close()
    return proc.pid


def _busy_run(grace_s: float = 20.0) -> str | None:
    """The run holding the slot. A run that has already recorded its end (stopped, completed, failed) but whose
    process is still exiting (saving, joining its worker processes) gets a few seconds to let go. Call it
    outside runs.slot_lock(): the exiting process takes that lock to release the slot."""
    deadline = time.time() + grace_s
    busy = active_run()
    while busy and runs.read_status(busy).get("state") not in runs.ACTIVE_STATES and time.time() < deadline:
        time.sleep(0.25)
        busy = active_run()
    return busy


def start_run(cfg: RunConfig) -> str:
    """Create a run folder and start its training process; refuse while another run trains."""
    _busy_run()
    with runs.slot_lock():
        busy = active_run()
        if busy:
            raise JobError(busy_message(busy))
        run_id = create_run(cfg)
        pid = _spawn(run_id, resume=False)
        _claim(run_id, pid)
        runs.write_status(run_id, **runs.process_record(pid))
    return run_id


def resume_run(run_id: str) -> str:
    """Continue a stopped, interrupted or failed run from its newest intact checkpoint."""
    run = runs.folder(run_id)
    runs.reconcile()
    _busy_run()
    with runs.slot_lock():
        busy = active_run()
        if busy:
            raise JobError(busy_message(busy))
        status = run.read_status()
        state = status.get("state")
        if state in runs.ACTIVE_STATES and runs.run_alive(status):  # e.g. a foreground `train` of another runs dir
            raise JobError(f"Run '{run_id}' is still training (process {status.get('pid')}); stop it first.")
        if state == "completed":
            raise JobError(f"Run '{run_id}' already completed; start a new run to train further.")
        try:
            runs.load_run_config(run_id)
        except ConfigError as e:  # the training process would die on it; say so where the run shows its state
            reason = f"The run's configuration cannot be read, so it cannot resume: {e}"
            run.write_status(state="failed", ended_at=runs.now_iso(), reason=reason)
            raise JobError(reason) from None
        at = {}
        if state != "queued":
            checkpoint, notes = checkpoints.pick_for_resume(run)
            if checkpoint is None:
                found = "; ".join(notes) if notes else "no checkpoint was saved yet"
                raise JobError(f"Run '{run_id}' has no intact checkpoint to resume from ({found}); start it again "
                               f"as a new run.")
            at = {"step": runs.checkpoint_step(checkpoint)}  # the progress line counts from where training resumes
        run.stop_file.unlink(missing_ok=True)
        run.write_status(state="queued", reason="", pid=None, pid_started=None, start_step=None, **at)
        pid = _spawn(run_id, resume=True)
        _claim(run_id, pid)
        run.write_status(**runs.process_record(pid))
    return run_id


def stop_run(run_id: str) -> str:
    """Ask the run to stop gracefully: it saves a checkpoint and ends as 'stopped'."""
    run = runs.folder(run_id)
    state = run.read_status().get("state")
    if state not in runs.ACTIVE_STATES:
        raise JobError(f"Run '{run_id}' is not running (state: {state}); nothing to stop.")
    run.stop_file.write_text(runs.now_iso())
    run.write_status(state="stopping")
    return run_id
