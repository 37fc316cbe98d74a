"""The run folder: the contract between the UI, the CLI and the training process, and its one owner.

`RunFolder` is the only place that knows the layout of <runs_dir>/<run_id>/; every other module asks it for a
path instead of typing a file name. The functions below take a run id; everything shown about a run is read here.
A run folder is read defensively: one damaged file makes that run "unreadable" (with the reason), never the app.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from workbench import paths, safety
from workbench.config import ConfigError, RunConfig

ACTIVE_STATES = ("queued", "running", "stopping")
UNREADABLE = "unreadable"
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


class RunError(ValueError):
    """A run cannot be found or used as asked; the message says what to do."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _writes_run_folder() -> bool:
    """Only one process writes a run folder. Several training processes of one run (accelerate ranks) share it,
    and only rank 0 writes; torchrun/accelerate set RANK in each rank. Read here directly so the run folder needs
    nothing from workbench.training."""
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class RunFolder:
    """One run's folder: the path of every file in it, and typed reads/writes of its status and events."""

    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    # -- the layout ---------------------------------------------------------------------------
    config = property(lambda self: self.path / "config.yaml")          # the full RunConfig
    status_file = property(lambda self: self.path / "status.json")     # state, pid, reason, timestamps
    events = property(lambda self: self.path / "events.jsonl")         # one JSON object per logged step
    log = property(lambda self: self.path / "train.log")               # the training process's output
    train_data = property(lambda self: self.path / "data" / "train.jsonl")  # the exact records trained on
    eval_data = property(lambda self: self.path / "data" / "eval.jsonl")    # ... and held out
    data_report = property(lambda self: self.path / "data" / "report.json")  # what cleaning and the split did
    pairs_train = property(lambda self: self.path / "data" / "pairs_train.jsonl")  # preference runs: pairs trained on
    pairs_eval = property(lambda self: self.path / "data" / "pairs_eval.jsonl")    # ... and held out
    checkpoints = property(lambda self: self.path / "checkpoints")     # Trainer checkpoints, checkpoint-<step>/
    adapter = property(lambda self: self.path / "adapter")             # the final LoRA adapter
    adapter_run_config = property(lambda self: self.path / "adapter" / "run_config.yaml")
    replicas = property(lambda self: self.path / "replicas")           # rank-<n>.json: LoRA digest per process
    stop_file = property(lambda self: self.path / "STOP")              # a stop request, read by the callback
    metrics = property(lambda self: self.path / "metrics.json")        # after evaluation
    preference_metrics = property(lambda self: self.path / "preference_metrics.json")  # held-out preference accuracy
    predictions = property(lambda self: self.path / "predictions.jsonl")
    eval_progress = property(lambda self: self.path / "eval_progress.json")
    eval_log = property(lambda self: self.path / "eval.log")
    eval_lock = property(lambda self: self.path / ".eval.lock")

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"checkpoint-{int(step)}"

    def checkpoint_dirs(self) -> list[Path]:
        """The Trainer's checkpoint-<step> folders, newest (highest step) first."""
        found = [p for p in self.checkpoints.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()]
        return sorted(found, key=checkpoint_step, reverse=True)

    def has_adapter(self) -> bool:
        return (self.adapter / "adapter_config.json").is_file()

    def adapter_damage(self) -> str:
        """Why the saved adapter cannot be loaded ('' when its config and its weights file read back), checked before
        a model is touched: a half-loaded adapter would leave LoRA layers in the shared base model."""
        config, weights = self.adapter / "adapter_config.json", self.adapter / "adapter_model.safetensors"
        try:
            if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
                raise ValueError("not a JSON object")
            from safetensors import safe_open

            with safe_open(str(weights), framework="pt") as f:  # checks the header against the file's length
                if not list(f.keys()):
                    raise ValueError("it holds no weights")
        except Exception as e:  # noqa: BLE001 - any failure to read the files is the damage to report
            return (f"The adapter of run '{self.id}' is damaged ({type(e).__name__}: {str(e)[:160]}); train the run "
                    f"again (or resume it from a checkpoint), or pick another run.")
        return ""

    # -- status -------------------------------------------------------------------------------
    def read_status(self) -> dict:
        """status.json as a dict. A missing file reads as state 'unknown'; a damaged one (not JSON, not an object,
        wrong types) as state 'unreadable' with the reason, so one bad file never breaks a listing."""
        try:
            raw = self.status_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {"state": "unknown"}
        except (OSError, UnicodeDecodeError) as e:
            return _unreadable(self, f"it cannot be read as text ({type(e).__name__})")
        try:
            status = json.loads(raw)
        except ValueError as e:
            return _unreadable(self, f"it is not valid JSON ({e})")
        if not isinstance(status, dict):
            return _unreadable(self, f"it holds a JSON {type(status).__name__}, not an object")
        bad = [k for k, kinds in _STATUS_TYPES.items() if k in status and status[k] is not None
               and (not isinstance(status[k], kinds) or isinstance(status[k], bool))]
        if bad:
            return _unreadable(self, "wrong types for " + ", ".join(f"{k}={status[k]!r}" for k in bad), status)
        return status

    def write_status(self, **updates) -> dict:
        """Merge `updates` into status.json atomically (tmp file + rename). In a multi-process run only rank 0
        writes; the other ranks' writes are dropped here, in one place."""
        if not _writes_run_folder():
            return self.read_status()
        status = self.read_status()
        if status.get("state") == UNREADABLE:  # start over from what could be read, keeping only well-typed fields
            status = {k: v for k, v in status["readable"].items() if k not in _STATUS_TYPES
                      or (isinstance(v, _STATUS_TYPES[k]) and not isinstance(v, bool))}
        status.update(updates)
        status["updated_at"] = now_iso()
        paths.atomic_write(self.status_file, json.dumps(status, indent=1))
        return status

    # -- events -------------------------------------------------------------------------------
    def read_event_log(self) -> tuple[list[dict], int]:
        """(events, bad lines skipped). An event is a JSON object whose step, when present, is a whole number
        >= 0; anything else (not JSON, a list, a step written as text) is skipped and counted. A last line still
        being written (no newline yet) is skipped without counting."""
        try:
            text = self.events.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return [], 0
        lines = text.split("\n")
        partial = lines.pop()  # "" when the file ends with a newline
        events, bad = [], 0
        for line in lines:
            if not line.strip():
                continue
            event = _event(line)
            if event is None:
                bad += 1
            else:
                events.append(event)
        if partial.strip() and _event(partial) is not None:
            events.append(_event(partial))
        return events, bad

    def append_event(self, event: dict) -> None:
        if not _writes_run_folder():  # one curve per run, written by rank 0
            return
        with self.events.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event, allow_nan=True) + "\n")

    def truncate_events(self, last_step: int) -> int:
        """Keep the events up to `last_step` (the checkpoint resumed from) and drop the rest, bad lines included;
        returns how many lines were dropped."""
        if not self.events.is_file() or not _writes_run_folder():
            return 0
        lines = [line for line in self.events.read_text(encoding="utf-8", errors="replace").split("\n") if line.strip()]
        keep = [line for line in lines if (e := _event(line)) is not None and e.get("step", 0) <= last_step]
        paths.atomic_write(self.events, "".join(line + "\n" for line in keep))
        return len(lines) - len(keep)


_STATUS_TYPES = {"state": str, "reason": str, "step": int, "total_steps": int, "pid": int,
                 "pid_started": (int, float), "name": str, "model": str, "created_at": str, "updated_at": str}


def _unreadable(run: RunFolder, why: str, readable: dict | None = None) -> dict:
    return {"state": UNREADABLE, "readable": readable or {},
            "reason": f"{run.status_file.name} is damaged: {why}. The run's other files are untouched; delete the "
                      f"run with `python -m workbench delete {run.id}`, or fix or remove {run.status_file}."}


def _event(line: str) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict):
        return None
    step = event.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return None
    return event


def checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[-1])


# -- finding runs -----------------------------------------------------------------------------

def validate_run_id(run_id: str) -> str:
    run_id = str(run_id or "").strip()
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise RunError(f"'{run_id}' is not a valid run id (letters, digits, '.', '_' and '-' only; "
                       f"see `python -m workbench runs`).")
    return run_id


def folder(run_id: str, must_exist: bool = True) -> RunFolder:
    """The run's folder, refusing ids that are not plain names or lead outside the runs folder."""
    base = paths.runs_dir().resolve()
    path = (base / validate_run_id(run_id)).resolve()
    if path.parent != base:  # symlink escape
        raise RunError(f"Run '{run_id}' points outside the runs folder; refusing to use it.")
    run = RunFolder(path)
    if must_exist and not run.config.is_file():
        raise RunError(f"No run '{run_id}' in {base}; list runs with `python -m workbench runs`.")
    return run


def run_path(run_id: str, must_exist: bool = True) -> Path:
    return folder(run_id, must_exist).path


def new_run_id(name: str = "") -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id, n = f"{stamp}-{slug}", 1
    while (paths.runs_dir() / run_id).exists():
        n += 1
        run_id = f"{stamp}-{slug}-{n}"
    return run_id


def read_status(run_id: str) -> dict:
    return folder(run_id).read_status()


def write_status(run_id: str, **updates) -> dict:
    return folder(run_id, must_exist=False).write_status(**updates)


def read_events(run_id: str) -> list[dict]:
    return folder(run_id).read_event_log()[0]


def append_event(run_id: str, event: dict) -> None:
    folder(run_id).append_event(event)


def last_checkpoint(run_id: str) -> Path | None:
    """The newest checkpoint folder, as written (whether it is intact: workbench.training.checkpoints)."""
    return next(iter(folder(run_id).checkpoint_dirs()), None)


def events_with_note(run_id: str) -> tuple[list[dict], str]:
    """The events and '' or a sentence for the views when events.jsonl had lines that were skipped (one read)."""
    events, bad = folder(run_id).read_event_log()
    return events, (f"{bad} bad line{'s' * (bad != 1)} in events.jsonl skipped (not a JSON object with a whole-number "
                    f"step)." if bad else "")


def events_note(run_id: str) -> str:
    return events_with_note(run_id)[1]


def change_marker(run_id: str) -> str:
    """Cheap 'did anything change?' key: sizes/mtimes of events.jsonl and status.json (no file read)."""
    run = folder(run_id)
    return paths.change_marker(run_id, (run.events, run.status_file))


def log_tail(run_id: str, chars: int = 4000) -> str:
    """The end of train.log without reading the whole file (tqdm makes it long), secrets hidden."""
    path = folder(run_id).log
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - chars * 2))
        text = fh.read().decode("utf-8", errors="replace")
    return safety.redact(text[-chars:])


def load_run_config(run_id: str) -> RunConfig:
    """The run's config.yaml; a damaged one raises ConfigError naming the file and what is wrong with it."""
    run = folder(run_id)
    try:
        return RunConfig.load(run.config)
    except ConfigError as e:
        raise ConfigError([f"{run.config}: {m}" for m in e.messages]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{run.config} cannot be read ({e}); restore it or delete the run."]) from None


def adapter_path(run_id: str) -> Path | None:
    run = folder(run_id)
    return run.adapter if run.has_adapter() else None


def list_runs() -> list[dict]:
    """Every run folder, newest first. A run whose status.json is damaged is listed as 'unreadable' with the reason."""
    out = []
    for path in paths.runs_dir().iterdir():
        if path.name.startswith(".") or not (path / "config.yaml").is_file():
            continue
        status = RunFolder(path).read_status()
        state = status.get("state") or "unknown"
        known = status["readable"] if state == UNREADABLE else status

        def text(key):
            return known.get(key) if isinstance(known.get(key), str) else ""

        def number(key):
            value = known.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else 0

        out.append({"id": path.name, "name": text("name"), "state": state, "model": text("model"),
                    "created": text("created_at"), "step": number("step"), "total_steps": number("total_steps"),
                    "reason": status.get("reason") if isinstance(status.get("reason"), str) else ""})
    return sorted(out, key=lambda r: r["id"], reverse=True)


# -- is the training process alive? ---------------------------------------------------------------
# The training process records who it is (pid + the process's start time, which beats pid reuse) in status.json
# and the slot file, and holds the training lock below for its whole life; the kernel drops that lock when the
# process dies, even on kill -9. Liveness is read from these, never from a command line.

def slot_lock():
    """Serializes claims of the one training slot (start, resume, delete, the trainer's own claim)."""
    return paths.file_lock(paths.runs_dir() / ".slot.lock")


def training_lock_path() -> Path:
    """Held by the training process (or the supervisor of several) for its whole life."""
    return paths.runs_dir() / ".training.lock"


def slot_file() -> Path:
    """Names the run holding the training slot and its process: {run_id, pid, pid_started}."""
    return paths.runs_dir() / ".active.json"


def slot_holder() -> dict | None:
    """The training slot's record ({run_id, pid, pid_started}) while its process lives, else None. Chat and
    evaluation read it to keep off a training run's GPU; training.jobs is the one writer."""
    try:
        slot = json.loads(slot_file().read_text())
        run_id, pid, started = slot["run_id"], slot.get("pid"), slot.get("pid_started")
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    return slot if run_id and process_alive(pid, started) else None


def training_run() -> str | None:
    """The run id holding the training slot, or None when the slot is free (or its process is gone)."""
    slot = slot_holder()
    return slot["run_id"] if slot else None


def process_record(pid: int | None = None) -> dict:
    """{pid, pid_started} of a process (default: this one), as stored in status.json and the slot file."""
    import psutil

    proc = psutil.Process(pid or os.getpid())
    return {"pid": proc.pid, "pid_started": proc.create_time()}


def process_alive(pid, started=None) -> bool:
    """True when process `pid` runs (a zombie has finished) and, when `started` is given, it is the same process
    that was recorded then (not a later one that reuses the pid)."""
    import psutil

    if not pid or isinstance(pid, bool):
        return False
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - float(started)) < 0.5
    except psutil.AccessDenied:  # another user's process: it exists
        return True
    except (psutil.Error, TypeError, ValueError):
        return False


def run_alive(status: dict) -> bool:
    """The run's recorded process still runs it: its pid/start time match and, once past 'queued' (the
    process has claimed the slot), it holds the training lock."""
    if not process_alive(status.get("pid"), status.get("pid_started")):
        return False
    return status.get("state") == "queued" or paths.lock_held(training_lock_path())


def _starting(status: dict) -> bool:
    """Just created or resumed, its process not recorded yet (it may still be starting)."""
    if status.get("pid"):
        return False
    try:
        stamp = status.get("updated_at") or status.get("created_at")
        return time.time() - datetime.fromisoformat(stamp).timestamp() < 60
    except (TypeError, ValueError):
        return False


def reconcile() -> list[str]:
    """Mark runs whose training process is gone as 'interrupted' (resumable). Returns their ids."""
    changed = []
    for run in list_runs():
        if run["state"] not in ACTIVE_STATES:
            continue
        status = read_status(run["id"])
        if _starting(status) or run_alive(status):
            continue
        write_status(run["id"], state="interrupted", ended_at=now_iso(),
                     reason="The training process ended unexpectedly (machine restart, kill, or crash). "
                            "Resume continues from the last checkpoint.")
        changed.append(run["id"])
    return changed


def delete_run(run_id: str) -> str:
    """Delete a run folder for good (its review votes stay in the votes database). Refused while it trains.
    Who may do this is the caller's check: access action 'delete' (admins only)."""
    run = folder(run_id)
    with slot_lock():  # no start/resume can claim the run while it is being removed
        status = run.read_status()
        if status.get("state") in ACTIVE_STATES and (_starting(status) or run_alive(status)):
            raise RunError(f"Run '{run.id}' is training now; stop it first (`python -m workbench stop {run.id}`), "
                           f"wait until it shows 'stopped', then delete it.")
        trash = run.path.with_name(f".deleting-{run.id}-{os.getpid()}")
        os.replace(run.path, trash)  # gone from every listing at once; the removal below may take a while
    shutil.rmtree(trash)
    return run.id
