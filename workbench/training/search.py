"""Recipe search: try several LoRA recipes on the user's data, each one a normal run, and keep the recipe with the
lowest held-out eval loss.

Optuna picks the recipes (TPE; or every combination, in random order, when the budget covers them all) from a small
space (which layers get adapters, rank with alpha scaled alongside, learning rate, epochs), and prunes a trial whose eval
loss falls behind the median of the earlier trials at the same step. The first trial is always the starting recipe
itself, so a search can only report something at least as good as what the user had; the next ones (half of a trial
budget) are its nearest neighbours, one setting moved one choice up or down, before the sampler takes over.

A search lives in <runs>/.searches/<search-id>/: search.json (what it searches, its budget, its state and the table
of trials; written only by the search process once it runs), study.db (Optuna's SQLite storage), search.log and
STOP (a stop request). The search process (`python -m workbench search --search-dir DIR`) trains each trial as
`python -m workbench train --run-dir` in the trial's own run folder (live curve, stop, failure reasons as any run),
claiming the one training slot for it the way jobs.start_run does; between trials the search process keeps the slot
under its last trial's name, so no other run starts in the gap. One search at a time: the search process holds
<runs>/.search.lock for its whole life.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

from workbench import paths, runs
from workbench.config import RunConfig
from workbench.training import jobs
from workbench.training.search_space import (  # noqa: F401 (the search's public names)
    ALL_LINEAR, ATTENTION, COLUMNS, DEFAULT_SPACE, KINDS, NEIGHBOUR_ORDER, TARGETS, SearchError, apply, epochs_note,
    neighbours, neighbours_tried, normalize_space, recipe_params, short_trial, size, target_name, trained_count,
    trial_rows)

ACTIVE = ("queued", "running", "stopping")
FINISHED_TRIALS = ("completed", "pruned", "failed", "stopped", "repeat")
REPEATS_BEFORE_STOP = 5  # proposals in a row that repeat earlier settings: the search has converged and ends


# -- where searches live ---------------------------------------------------------------------------

def searches_dir() -> Path:
    path = paths.runs_dir() / ".searches"  # hidden: run listings skip names that start with '.'
    path.mkdir(parents=True, exist_ok=True)
    return path


def search_lock_path() -> Path:
    return paths.runs_dir() / ".search.lock"


def folder(search_id: str, must_exist: bool = True) -> Path:
    try:
        search_id = runs.validate_run_id(search_id)
    except runs.RunError:
        raise SearchError(f"'{search_id}' is not a valid search id; see `python -m workbench search --list`.") from None
    path = searches_dir() / search_id
    if must_exist and not (path / "search.json").is_file():
        raise SearchError(f"No search '{search_id}' in {searches_dir()}; list them with "
                          f"`python -m workbench search --list`.")
    return path


def read_search(search_id: str) -> dict:
    """search.json; a damaged one reads as state 'unreadable' with the reason, never an exception."""
    path = folder(search_id) / "search.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("trials", []), list):
            raise ValueError("not a JSON object with a list of trials")
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return {"id": search_id, "state": "unreadable", "trials": [],
                "reason": f"{path} is damaged ({e}); delete the folder {path.parent} to remove the search."}
    if (path.parent / "STOP").exists() and data.get("state") in ("queued", "running"):
        data["state"] = "stopping"
    return data


def _write(path: Path, data: dict) -> None:
    data["updated_at"] = runs.now_iso()
    paths.atomic_write(path / "search.json", json.dumps(data, indent=1, default=str))


def change_marker(search_id: str | None) -> str:
    """Cheap 'did anything change?' key for the views: stat calls only."""
    files = [searches_dir()] + ([folder(search_id, False) / n for n in ("search.json", "STOP")] if search_id else [])
    return paths.change_marker(str(search_id), files)


def _alive(data: dict) -> bool:
    if data.get("state") == "queued" and not data.get("pid"):  # spawned, not started yet: a minute's grace
        try:
            return time.time() - datetime.fromisoformat(data["created_at"]).timestamp() < 60
        except (KeyError, TypeError, ValueError):
            return False
    return runs.process_alive(data.get("pid"), data.get("pid_started")) and paths.lock_held(search_lock_path())


def list_searches() -> list[dict]:
    """Every search, newest first; one whose process is gone is marked 'interrupted' (its finished trials stay)."""
    out = []
    for path in sorted(searches_dir().iterdir(), reverse=True):
        if not (path / "search.json").is_file():
            continue
        data = read_search(path.name)
        if data.get("state") in ACTIVE and not _alive(data):
            data.update(state="interrupted", ended_at=runs.now_iso(),
                        reason="The search process ended unexpectedly (restart, kill or crash). Its finished trials "
                               "are kept: use the best one, or start a new search.")
            _write(path, data)
        out.append(data)
    return out


def active_search() -> str | None:
    return next((s["id"] for s in list_searches() if s.get("state") in ACTIVE), None)


# -- start, stop, use ------------------------------------------------------------------------------

def create_search(base: RunConfig, space: dict | None = None, trials: int = 6, minutes: float = 0,
                  trial_steps: int = 0) -> str:
    """A queued search. `trial_steps` > 0 makes every trial a short run of that many optimizer steps (evaluated four
    times, so bad recipes are pruned early); the full run of the chosen recipe ('use') trains the whole schedule."""
    if getattr(base, "kind", "sft") == "preference":
        raise SearchError("The recipe search tunes a fine-tuning recipe (LoRA layers, rank, learning rate) scored by "
                          "held-out loss; it does not search preference runs. Pick a fine-tuning preset first.")
    problems = base.validate()
    if problems:
        raise SearchError("The starting configuration has problems: " + " ".join(problems))
    if trials < 0 or minutes < 0 or (trials == 0 and minutes == 0):
        raise SearchError("Give the search a budget: a number of trials (e.g. --trials 6), minutes (--minutes 60), "
                          "or both.")
    if trial_steps < 0:
        raise SearchError(f"Steps per trial must be 0 (each trial trains the whole recipe) or more; got {trial_steps}.")
    t = base.training
    if not trial_steps and t.max_steps and t.eval_steps and t.max_steps % t.eval_steps:
        raise SearchError(f"A trial is scored by its last eval loss, so the last evaluation must come at the end: set "
                          f"training.max_steps ({t.max_steps}) to a multiple of training.eval_steps ({t.eval_steps}).")
    space = normalize_space(base, space, short_trials=trial_steps > 0)
    search_id = f"search-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    n = 1
    while folder(f"{search_id}-{n}" if n > 1 else search_id, must_exist=False).exists():
        n += 1
    search_id = f"{search_id}-{n}" if n > 1 else search_id
    path = folder(search_id, must_exist=False)
    path.mkdir(parents=True)
    _write(path, {"id": search_id, "state": "queued", "created_at": runs.now_iso(), "reason": "",
                  "budget": {"trials": int(trials), "minutes": float(minutes), "trial_steps": int(trial_steps)},
                  "space": space,
                  "sampler": "every combination" if trials and size(space) <= trials else "TPE",
                  "base": base.to_dict(), "trials": [], "best": None})
    return search_id


def _refuse_if_busy() -> None:
    busy, searching = jobs.active_run(), active_search()
    if searching:
        raise SearchError(f"Search '{searching}' is running and only one search runs at a time; wait for it or stop "
                          f"it (`python -m workbench search --stop {searching}`).")
    if busy:
        raise SearchError(jobs.busy_message(busy))


def search_command(search_id: str) -> list[str]:
    return [sys.executable, "-m", "workbench", "search", "--search-dir", str(folder(search_id))]


def start_search(base: RunConfig, space: dict | None = None, trials: int = 6, minutes: float = 0,
                 trial_steps: int = 0) -> str:
    """Create a search and start its process in the background; refused while a run trains or a search runs."""
    with runs.slot_lock():
        _refuse_if_busy()
        search_id = create_search(base, space, trials, minutes, trial_steps)
        path = folder(search_id)
        with open(path / "search.log", "a") as log:
            subprocess.Popen(search_command(search_id), cwd=paths.REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return search_id


def stop_search(search_id: str) -> str:
    data = read_search(search_id)
    if data.get("state") not in ACTIVE:
        raise SearchError(f"Search '{search_id}' is not running (state: {data.get('state')}); nothing to stop.")
    (folder(search_id) / "STOP").write_text(runs.now_iso())
    return search_id


def best_trial(data: dict) -> dict | None:
    done = [t for t in data.get("trials", []) if t.get("state") == "completed" and t.get("eval_loss") is not None]
    return min(done, key=lambda t: t["eval_loss"], default=None)


def trial_config(search_id: str, number: int | None = None) -> RunConfig:
    """The full run's config for a finished trial (default: the best): the search's base with the trial's settings,
    scored after training as the base config says."""
    data = read_search(search_id)
    trial = best_trial(data) if number is None else next(
        (t for t in data.get("trials", []) if t.get("number") == number), None)
    if trial is None or trial.get("state") != "completed":
        which = "has no completed trial yet" if number is None else f"has no completed trial {number}"
        raise SearchError(f"Search '{search_id}' {which}; see its trials with `python -m workbench search --show "
                          f"{search_id}`.")
    cfg = apply(RunConfig.from_dict(data["base"]), trial["params"])
    cfg.name = f"{search_id}-trial-{trial['number']}-full"
    return cfg


def use_recipe(search_id: str, number: int | None = None) -> str:
    """Start the full run (scored when it ends) with a trial's settings; the usual single-slot rule applies."""
    if read_search(search_id).get("state") in ACTIVE:
        raise SearchError(f"Search '{search_id}' is still running; wait for it to finish or stop it, then use its "
                          f"best recipe.")
    return jobs.start_run(trial_config(search_id, number))


# -- the search process ----------------------------------------------------------------------------

def _slot_pid() -> int | None:
    try:
        return json.loads(runs.slot_file().read_text()).get("pid")
    except (FileNotFoundError, ValueError, AttributeError):
        return None


class _Trials:
    """The objective Optuna calls once per trial: train the trial as a normal run, report its eval losses."""

    def __init__(self, path: Path, data: dict, poll_s: float):
        self.path, self.data, self.poll_s = path, data, poll_s
        self.base = RunConfig.from_dict(data["base"])
        minutes = data["budget"]["minutes"]
        self.deadline = time.time() + minutes * 60 if minutes else None
        self.halt = ""  # why the search ends early (stop, time, slot taken)

    def save(self) -> None:
        best = best_trial(self.data)
        self.data["best"] = {k: best[k] for k in ("number", "run_id", "params", "eval_loss")} if best else None
        _write(self.path, self.data)

    def __call__(self, trial):
        import optuna

        params = {name: trial.suggest_categorical(name, choices) for name, choices in self.data["space"].items()}
        record = {"number": trial.number, "params": params, "state": "starting", "run_id": "", "eval_loss": None,
                  "step": 0, "total_steps": 0, "reason": ""}
        self.data["trials"].append(record)
        earlier = next((t for t in self.data["trials"][:-1] if t.get("params") == params
                        and t.get("state") in ("completed", "pruned")), None)
        if earlier is not None:  # TPE may propose settings it has already scored: never train them twice
            return self._repeat(trial, record, earlier, optuna)
        self.save()
        cfg = short_trial(apply(self.base, params), self.data["budget"].get("trial_steps", 0))
        cfg.name, cfg.eval.run_after_training = f"{self.data['id']}-trial-{trial.number}", False  # scored by loss
        proc = self._start(cfg, trial.number, record)
        if proc is None:
            trial.study.stop()
            raise _TrialFailed(record["reason"])
        trial.set_user_attr("run_id", record["run_id"])
        run = runs.folder(record["run_id"])
        reported, asked, seen = set(), "", ""
        while True:
            done = proc.poll() is not None
            for event in run.read_event_log()[0]:
                loss, step = event.get("eval_loss"), event["step"]
                if isinstance(loss, (int, float)) and math.isfinite(loss) and step not in reported:
                    reported.add(step)
                    trial.report(float(loss), step)
                    record["eval_loss"] = round(float(loss), 5)
                    if not asked and trial.should_prune():
                        asked = (f"Pruned by recipe search {self.data['id']}: eval loss {loss:.4f} at step {step} was "
                                 f"worse than the median of earlier trials at that step.")
            status = run.read_status()
            record.update(state="running", step=status.get("step") or 0, total_steps=status.get("total_steps") or 0)
            if not asked and (self.path / "STOP").exists():
                asked = self.halt = "Stopped on request."
            if not asked and self.deadline and time.time() > self.deadline:
                asked = self.halt = f"The time budget ({self.data['budget']['minutes']:g} min) ran out."
            if asked and status.get("state") in ("queued", "running"):
                try:
                    jobs.stop_run(run.id)
                except jobs.JobError as e:  # it ended on its own in the meantime; its final state is read below
                    print(f"trial {trial.number}: {e}", flush=True)
            if json.dumps(record) != seen:
                seen = json.dumps(record)
                self.save()
            if done:
                break
            time.sleep(self.poll_s)
        self._hold_slot(run.id)
        return self._outcome(trial, run, record, asked, optuna)

    def _repeat(self, trial, record, earlier, optuna):
        """Settings an earlier trial already ran: its result again, nothing trained, no trial of the budget spent."""
        record.update(state="repeat", eval_loss=earlier["eval_loss"], run_id=earlier.get("run_id", ""),
                      step=earlier.get("step", 0), total_steps=earlier.get("total_steps", 0),
                      reason=f"The same settings as trial {earlier['number']}: its result counts again, nothing "
                             f"was trained.")
        self.save()
        if earlier["state"] == "pruned" or earlier["eval_loss"] is None:
            raise optuna.TrialPruned(record["reason"])
        return earlier["eval_loss"]

    def stop_if_requested(self, study, _finished) -> None:
        """After each trial: a stop asked for while the trial was ending ends the search here; so does a spent
        trial budget (repeats do not count) or a sampler that only repeats itself."""
        if (self.path / "STOP").exists():
            self.halt = self.halt or "Stopped on request."
            study.stop()
        budget = self.data["budget"]["trials"]
        if budget and trained_count(self.data) >= budget:
            study.stop()
        recent = self.data["trials"][-REPEATS_BEFORE_STOP:]
        if len(recent) == REPEATS_BEFORE_STOP and all(t.get("state") == "repeat" for t in recent):
            study.stop()  # the sampler has settled: more proposals would be the same settings again

    def _outcome(self, trial, run, record, asked, optuna):
        status = run.read_status()
        state, last = status.get("state"), record["eval_loss"]
        if state == "completed" and last is not None:
            record.update(state="completed", reason="")
            self.save()
            if self.halt:
                trial.study.stop()
            return last
        if state == "stopped" or (state == "completed" and asked):
            record.update(state="pruned" if asked and not self.halt else "stopped",
                          reason=asked or "The trial's run was stopped from outside the search; the search ends too.")
            if not asked:
                self.halt = record["reason"]
            run.write_status(reason=record["reason"])
            self.save()
            if self.halt:
                trial.study.stop()
            raise optuna.TrialPruned(record["reason"])
        reason = (status.get("reason") or f"The trial's training process ended in state '{state}'; see "
                  f"{run.log}.") if state != "completed" else (
            "The run recorded no eval loss, so it cannot be compared; set training.eval_steps, or keep an "
            "evaluation split (data.eval_fraction).")
        record.update(state="failed", reason=reason)
        self.save()
        raise _TrialFailed(reason)

    def _start(self, cfg: RunConfig, number: int, record: dict):
        with runs.slot_lock():
            busy = jobs.active_run()
            if busy and _slot_pid() != os.getpid():
                record.update(state="failed", reason=f"Run '{busy}' took the training slot between trials; the "
                                                     f"search ends here. Use its best trial, or search again later.")
                self.halt = record["reason"]
                self.save()
                return None
            run_id = jobs.create_run(cfg)
            run = runs.folder(run_id)
            run.write_status(search=self.data["id"], trial=number)
            with open(run.log, "a") as log:
                proc = subprocess.Popen(jobs.train_command(run_id), cwd=paths.REPO_ROOT, stdout=log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
            jobs._claim(run_id, proc.pid)  # as jobs.start_run does: the slot names the trial and its process
            run.write_status(**runs.process_record(proc.pid))
        record["run_id"] = run_id
        return proc

    def _hold_slot(self, run_id: str) -> None:
        """Between trials the search keeps the slot, under its last trial's name, so no run starts in the gap."""
        with runs.slot_lock():
            if jobs.active_run() is None:
                jobs._claim(run_id, os.getpid())


class _TrialFailed(RuntimeError):
    """A trial's run failed (its reason is in the table); the search goes on with the next trial."""


def _release_slot() -> None:
    with runs.slot_lock():
        if _slot_pid() == os.getpid():
            runs.slot_file().unlink(missing_ok=True)


def run_search(path: Path, poll_s: float = 1.0) -> str:
    """The search process: run the study to its budget in this process. Returns the final state."""
    import warnings

    import optuna

    path = Path(path)
    data = read_search(path.name)
    if data.get("state") == "stopping" and not data.get("pid"):  # stopped before it began
        data.update(state="stopped", reason="Stopped on request before the first trial.", ended_at=runs.now_iso())
        _write(path, data)
        return "stopped"
    if data.get("state") != "queued":
        print(f"error: search {path.name} is '{data.get('state')}', not queued; start a new search.", file=sys.stderr)
        return "failed"
    try:
        lock = paths.acquire_lock(search_lock_path(), wait_s=5)
    except BlockingIOError:
        data.update(state="failed", reason="Another search is running; only one runs at a time.")
        _write(path, data)
        return "failed"
    data.update(state="running", started_at=runs.now_iso(), **runs.process_record())
    trials = _Trials(path, data, poll_s)
    trials.save()
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    budget, space, seed = data["budget"], data["space"], trials.base.training.seed
    sampler = (optuna.samplers.BruteForceSampler(seed=seed) if data["sampler"] == "every combination" else
               optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, budget["trials"] // 2 or 5))))
    try:
        study = optuna.create_study(
            storage=f"sqlite:///{path / 'study.db'}", study_name=data["id"], direction="minimize", sampler=sampler,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0, n_min_trials=1))
        own = recipe_params(trials.base, space)
        study.enqueue_trial(own)  # trial 0: the starting recipe as it is
        for params in neighbours(space, own, neighbours_tried(budget["trials"])):
            study.enqueue_trial(params)  # then its nearest variants; the sampler (TPE) proposes the rest
        # repeats of scored settings are answered without training and do not spend the budget: the callback stops
        # the study when `trials` trained trials are done (n_trials only bounds the proposals)
        study.optimize(trials, n_trials=budget["trials"] * 3 or None, timeout=budget["minutes"] * 60 or None,
                       catch=(_TrialFailed,), callbacks=[trials.stop_if_requested])
        data.update(state="stopped" if trials.halt else "completed", reason=trials.halt)
    except BaseException as exc:  # noqa: BLE001 - every failure must end as a readable 'failed' state
        traceback.print_exc()
        data.update(state="failed", reason=f"The search failed: {type(exc).__name__}: {str(exc)[:300]}")
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        data["ended_at"] = runs.now_iso()
        trials.save()
        _release_slot()
        lock.close()
    print(f"search {data['id']}: {data['state']}" + (f" ({data['reason']})" if data["reason"] else ""))
    return data["state"]
