"""The run folder: the contract between the UI, the CLI and the training process.

<runs_dir>/<run_id>/ holds config.yaml, status.json, events.jsonl, train.log, data/{train,eval}.jsonl,
checkpoints/, adapter/, metrics.json, predictions.jsonl. Everything shown about a run is read here.
"""
from __future__ import annotations

import json
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from workbench import paths, safety
from workbench.training import distributed
from workbench.config import RunConfig

ACTIVE_STATES = ("queued", "running", "stopping")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


class RunError(ValueError):
    """A run cannot be found or used as asked; the message says what to do."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def validate_run_id(run_id: str) -> str:
    run_id = str(run_id or "").strip()
    if not _RUN_ID.match(run_id) or ".." in run_id:
        raise RunError(f"'{run_id}' is not a valid run id (letters, digits, '.', '_' and '-' only; "
                       f"see `python -m workbench runs`).")
    return run_id


def run_path(run_id: str, must_exist: bool = True) -> Path:
    base = paths.runs_dir().resolve()
    path = (base / validate_run_id(run_id)).resolve()
    if path.parent != base:  # symlink escape
        raise RunError(f"Run '{run_id}' points outside the runs folder; refusing to use it.")
    if must_exist and not (path / "config.yaml").is_file():
        raise RunError(f"No run '{run_id}' in {base}; list runs with `python -m workbench runs`.")
    return path


def new_run_id(name: str = "") -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "run"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id, n = f"{stamp}-{slug}", 1
    while (paths.runs_dir() / run_id).exists():
        n += 1
        run_id = f"{stamp}-{slug}-{n}"
    return run_id


def create_run(cfg: RunConfig) -> str:
    """Validate the config, prepare the data and write a new run folder in state 'queued'."""
    from workbench.data.dataset import prepare_dataset, write_jsonl

    problems = cfg.validate()
    if problems:
        raise RunError("The configuration has problems: " + " ".join(problems))
    prepared = prepare_dataset(cfg.data)  # fails early (DataError) before a process is started
    run_id = new_run_id(cfg.name or cfg.preset)
    path = paths.runs_dir() / run_id
    path.mkdir(parents=True)
    cfg.save(path / "config.yaml")
    write_jsonl(prepared.train, path / "data" / "train.jsonl")
    write_jsonl(prepared.eval, path / "data" / "eval.jsonl")
    (path / "data" / "report.json").write_text(json.dumps(prepared.report, indent=1, default=str))
    write_status(run_id, state="queued", created_at=now_iso(), name=cfg.name, model=cfg.model.name_or_path)
    return run_id


# -- status and events ------------------------------------------------------------------------

def read_status(run_id: str) -> dict:
    try:
        return json.loads((run_path(run_id) / "status.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": "unknown"}


def write_status(run_id: str, **updates) -> dict:
    """Merge `updates` into status.json atomically (tmp file + rename). Only the main process of a
    multi-process run writes (the other ranks' writes are dropped here, in one place)."""
    path = run_path(run_id, must_exist=False) / "status.json"
    if not distributed.is_main():
        return read_status(run_id)
    status = {}
    if path.is_file():
        try:
            status = json.loads(path.read_text())
        except json.JSONDecodeError:
            status = {}
    status.update(updates)
    status["updated_at"] = now_iso()
    paths.atomic_write(path, json.dumps(status, indent=1))
    return status


def read_events(run_id: str) -> list[dict]:
    path = run_path(run_id) / "events.jsonl"
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written right now
    return events


def change_marker(run_id: str) -> str:
    """Cheap 'did anything change?' key: sizes/mtimes of events.jsonl and status.json (no file read)."""
    path = run_path(run_id)
    parts = [run_id]
    for name in ("events.jsonl", "status.json"):
        try:
            st = (path / name).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append("-")
    return ":".join(parts)


def log_tail(run_id: str, chars: int = 4000) -> str:
    """The end of train.log without reading the whole file (tqdm makes it long), secrets hidden."""
    path = run_path(run_id) / "train.log"
    if not path.is_file():
        return ""
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - chars * 2))
        text = fh.read().decode("utf-8", errors="replace")
    return safety.redact(text[-chars:])


def append_event(run_dir: Path, event: dict) -> None:
    if not distributed.is_main():  # one curve per run, written by rank 0
        return
    with (run_dir / "events.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(event, allow_nan=True) + "\n")


def truncate_events(run_dir: Path, last_step: int) -> int:
    """Drop events after `last_step` (the checkpoint resumed from); return how many were dropped."""
    path = run_dir / "events.jsonl"
    if not path.is_file() or not distributed.is_main():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if step <= last_step:
            keep.append(line)
        else:
            dropped += 1
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    return dropped


def load_run_config(run_id: str) -> RunConfig:
    return RunConfig.load(run_path(run_id) / "config.yaml")


def adapter_path(run_id: str) -> Path | None:
    p = run_path(run_id) / "adapter"
    return p if (p / "adapter_config.json").is_file() else None


def last_checkpoint(run_dir: Path) -> Path | None:
    ckpts = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1]), default=None)


def list_runs() -> list[dict]:
    out = []
    for path in paths.runs_dir().iterdir():
        if not (path / "config.yaml").is_file():
            continue
        status = read_status(path.name)
        out.append({"id": path.name, "name": status.get("name", ""), "state": status.get("state", "unknown"),
                    "model": status.get("model", ""), "created": status.get("created_at", ""),
                    "step": status.get("step", 0), "total_steps": status.get("total_steps", 0),
                    "reason": status.get("reason", "")})
    return sorted(out, key=lambda r: r["id"], reverse=True)


# -- processes --------------------------------------------------------------------------------

def process_alive(pid: int | None, run_dir: Path | None = None) -> bool:
    """True when pid runs and (if run_dir given) its command line names that run (beats pid reuse)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie has finished
            return False
        if run_dir is not None:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\x00", b" ").decode(errors="replace")
            return run_dir.name in cmdline
    except OSError:
        return run_dir is None
    return True


def reconcile() -> list[str]:
    """Mark runs whose training process is gone as 'interrupted' (resumable). Returns their ids."""
    changed = []
    for run in list_runs():
        if run["state"] not in ACTIVE_STATES:
            continue
        status = read_status(run["id"])
        if run["state"] == "queued" and time.time() - _age_ref(status) < 60:
            continue  # just created; its process may still be starting
        if not process_alive(status.get("pid"), run_path(run["id"])):
            write_status(run["id"], state="interrupted", ended_at=now_iso(),
                         reason="The training process ended unexpectedly (machine restart, kill, or crash). "
                                "Resume continues from the last checkpoint.")
            changed.append(run["id"])
    return changed


def _age_ref(status: dict) -> float:
    try:
        return datetime.fromisoformat(status.get("updated_at") or status.get("created_at")).timestamp()
    except (TypeError, ValueError):
        return 0.0
