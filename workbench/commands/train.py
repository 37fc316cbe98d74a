"""`python -m workbench train|runs|stop|resume|delete`: run training and manage runs."""
from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train", help="Train a run in the foreground (the app starts this same command in the background).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--run-dir", help="An existing run folder (made by the app or an earlier command).")
    src.add_argument("--config", help="A config YAML: creates a new run folder from it, then trains.")
    src.add_argument("--preset", help="A preset name: creates a new run from it, then trains.")
    p.add_argument("--resume", action="store_true", help="Continue from the run's last checkpoint.")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a setting, e.g. --set training.max_steps=10 (repeatable).")
    p.add_argument("--background", action="store_true", help="Start in the background and return at once.")
    p.add_argument("--parent", metavar="RUN_ID",
                   help="Preference tuning (DPO): start from this finished run's adapter, which is also the frozen "
                        "reference (sets kind=preference and preference.parent_run; e.g. --preset preference-cpu).")
    p.add_argument("--pairs", metavar="votes|FILE",
                   help="With --parent: the preference pairs, 'votes' (the blind votes on the parent run; the "
                        "default) or a JSONL/CSV/JSON/Parquet file with prompt, chosen and rejected columns.")
    p.set_defaults(func=run_train)

    r = sub.add_parser("runs", help="List runs with their state (and mark dead ones 'interrupted').")
    r.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    r.set_defaults(func=run_list)
    s = sub.add_parser("stop", help="Ask a running run to stop gracefully (it saves a checkpoint).")
    s.add_argument("run_id")
    s.set_defaults(func=run_stop)
    u = sub.add_parser("resume", help="Resume a stopped/interrupted run in the background.")
    u.add_argument("run_id")
    u.set_defaults(func=run_resume)
    d = sub.add_parser("delete", help="Delete a run folder for good (refused while it trains).")
    d.add_argument("run_id")
    d.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")
    d.set_defaults(func=run_delete)


def _config_from_args(args):
    from workbench.config import ConfigError, RunConfig, preset
    from workbench.config_checks import apply_sets

    cfg = apply_sets(RunConfig.load(args.config) if args.config else preset(args.preset), args.set)
    if getattr(args, "pairs", None) and not getattr(args, "parent", None):
        raise ConfigError(["--pairs needs --parent RUN_ID: the finished run the preference run starts from."])
    if getattr(args, "parent", None):
        cfg.kind = "preference"
        cfg.preference.parent_run = args.parent
        if args.pairs:
            cfg.preference.pairs = args.pairs if args.pairs == "votes" else str(Path(args.pairs).expanduser().resolve())
    return cfg


class _Tee:
    """A text stream that writes to the terminal's stream and to the run's log."""

    def __init__(self, stream, log):
        self._stream, self._log = stream, log

    def write(self, text):
        self._stream.write(text)
        self._log.write(text)
        return len(text)

    def flush(self):
        self._stream.flush()
        self._log.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding...: the terminal's
        return getattr(self._stream, name)


@contextlib.contextmanager
def _tee_into(path: Path):
    """A run trained in the foreground writes its output to the terminal and to its train.log, so the Train tab's
    log view and a failure's traceback are in the run folder as for a run the app started (Python-level output:
    the ranks of a several-process run write to the terminal only)."""
    with open(path, "a", encoding="utf-8", buffering=1) as log:
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        try:
            yield
        finally:
            sys.stdout, sys.stderr = old


def _train_here(run_dir: Path, resume: bool) -> int:
    from workbench.training import preference

    if preference.is_preference_run(run_dir):  # run kind 'preference': TRL's DPOTrainer from a parent's adapter
        return preference.main(run_dir, resume)
    from workbench.training.recipe import main  # transformers and torch: only when this process trains

    return main(run_dir, resume)


def run_train(args) -> int:
    from workbench import runs
    from workbench.training import jobs
    from workbench.config import ConfigError
    from workbench.data.dataset import DataError

    try:
        if args.run_dir:
            run_dir = Path(args.run_dir).resolve()
            if not runs.RunFolder(run_dir).config.is_file():
                print(f"error: {run_dir} is not a run folder (no config.yaml).", file=sys.stderr)
                return 1
            if args.background:
                if not args.resume:
                    print("error: --background needs --resume with --run-dir", file=sys.stderr)
                    return 1
                jobs.resume_run(run_dir.name)
                return 0
            os.environ["WORKBENCH_RUNS_DIR"] = str(run_dir.parent)  # the run's own runs folder, wherever it is
            return _train_here(run_dir, args.resume)
        cfg = _config_from_args(args)
        if args.background:
            run_id = jobs.start_run(cfg)
            print(f"started run {run_id} in the background; follow it with `python -m workbench runs`")
            return 0
        busy = jobs.active_run()
        if busy:  # refuse before a run folder is made for nothing
            raise jobs.JobError(jobs.busy_message(busy))
        run_id = jobs.create_run(cfg)
        with _tee_into(runs.folder(run_id).log):  # the run folder keeps its log, as for runs the app starts
            print(f"run {run_id} in {runs.run_path(run_id)}")
            return _train_here(runs.run_path(run_id), False)
    except ConfigError as e:
        print("\n".join(f"error: {m}" for m in e.messages), file=sys.stderr)
    except (DataError, runs.RunError, jobs.JobError) as e:
        print(f"error: {e}", file=sys.stderr)
    return 1


def run_list(args) -> int:
    from workbench import runs

    runs.reconcile()
    rows = runs.list_runs()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print("No runs yet. Start one with `python -m workbench train --preset quick-demo-cpu`.")
        return 0
    print(f"{'RUN':40} {'STATE':12} {'STEP':>9}  MODEL")
    for r in rows:
        print(f"{r['id']:40} {r['state']:12} {r['step']:>4}/{r['total_steps']:<4}  {r['model']}")
        if r["state"] in ("failed", "interrupted", runs.UNREADABLE) and r["reason"]:
            print(f"{'':40} {r['reason'][:300]}")
        note = runs.events_note(r["id"])
        if note:
            print(f"{'':40} {note}")
    return 0


def _job_action(action, run_id: str, done: str) -> int:
    from workbench import runs
    from workbench.training import jobs

    try:
        action(run_id)
    except (runs.RunError, jobs.JobError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(done)
    return 0


def run_stop(args) -> int:
    from workbench.training import jobs

    return _job_action(jobs.stop_run, args.run_id,
                       f"stop requested for {args.run_id}; it saves a checkpoint and ends as 'stopped'")


def run_delete(args) -> int:
    from workbench import runs

    if not args.yes:
        if not sys.stdin.isatty():
            print(f"error: deleting {args.run_id} cannot be undone; add --yes to confirm.", file=sys.stderr)
            return 1
        if input(f"Delete run {args.run_id} and everything in its folder? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Not deleted.")
            return 1
    return _job_action(runs.delete_run, args.run_id, f"deleted run {args.run_id}")


def run_resume(args) -> int:
    from workbench.training import jobs

    return _job_action(jobs.resume_run, args.run_id, f"resumed {args.run_id} in the background")
