"""`python -m workbench search`: find a LoRA recipe for your data (workbench.training.search), list searches, show
a search's trials, stop one, and start the full run with the best trial's settings."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("search", help="Find a recipe: try several LoRA settings as runs, keep the lowest eval loss.",
                       description="Each trial is a normal run (its own run folder, curve, stop and failure reason), "
                                   "scored by its held-out eval loss; Optuna picks the settings and prunes trials "
                                   "that fall behind. Trial 0 is the starting recipe itself.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--preset", help="Search starting from this preset (trial 0 is the preset as it is).")
    what.add_argument("--config", help="Search starting from this config YAML.")
    what.add_argument("--list", action="store_true", help="List searches with their state and best trial.")
    what.add_argument("--show", metavar="SEARCH_ID", help="Show a search's trials: settings and scores.")
    what.add_argument("--use", metavar="SEARCH_ID", help="Start the full run (scored when it ends) with the best "
                                                          "trial's settings, in the background.")
    what.add_argument("--stop", metavar="SEARCH_ID", help="Stop a running search (its current trial stops too).")
    what.add_argument("--search-dir", help=argparse.SUPPRESS)  # internal: the background search process
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="Override a setting of the starting recipe, e.g. --set training.max_steps=30 (repeatable).")
    p.add_argument("--space", action="append", default=[], metavar="KEY=V1,V2",
                   help="Choices to try for one setting instead of the default ones (the starting value is always "
                        "added): lora.target_modules=attention,all-linear · lora.r=16,64,256 (alpha keeps the starting recipe's alpha/r ratio) · "
                        "training.learning_rate=1e-4,2e-4,4e-4,8e-4 · training.epochs=1,2,3. Repeatable.")
    p.add_argument("--trials", type=int, default=6, help="Budget: at most this many trials (0 = no limit; then give "
                                                         "--minutes). Default 6.")
    p.add_argument("--minutes", type=float, default=0, help="Budget: stop after this many minutes (0 = no limit); a "
                                                            "trial still running then is stopped.")
    p.add_argument("--trial-steps", type=int, default=0,
                   help="Budget per trial: train each trial this many optimizer steps (evaluated 4 times, bad ones "
                        "pruned after the first), then `--use` trains the chosen recipe's whole schedule. 0 = every "
                        "trial trains the whole recipe.")
    p.add_argument("--trial", type=int, help="With --use: this trial instead of the best one.")
    p.add_argument("--background", action="store_true", help="Start the search in the background and return at once.")
    p.add_argument("--json", action="store_true", help="With --list or --show: print JSON.")
    p.set_defaults(func=run_search_command)


def _space(items: list[str]) -> dict | None:
    from workbench.training.search import DEFAULT_SPACE, SearchError

    if not items:
        return None
    space = dict(DEFAULT_SPACE)
    for item in items:
        key, eq, values = item.partition("=")
        if not eq or not values.strip():
            raise SearchError(f"--space {item!r}: write KEY=V1,V2, e.g. --space training.learning_rate=2e-4,4e-4.")
        space[key.strip()] = [v.strip() for v in values.split(",") if v.strip()]
    return space


def run_search_command(args) -> int:
    from workbench import runs
    from workbench.config import ConfigError
    from workbench.data.dataset import DataError
    from workbench.training import jobs
    from workbench.training import search

    if args.trial is not None and not args.use:
        print("error: --trial picks the trial that --use trains, e.g. `python -m workbench search --use SEARCH_ID "
              "--trial 2`; without --use it does nothing.", file=sys.stderr)
        return 1
    try:
        if args.search_dir:
            return 0 if search.run_search(Path(args.search_dir)) in ("completed", "stopped") else 1
        if args.list:
            return _list(search, args.json)
        if args.show:
            return _show(search, search.read_search(args.show), args.json)
        if args.stop:
            search.stop_search(args.stop)
            print(f"stop requested for search {args.stop}; its current trial saves a checkpoint and the search ends")
            return 0
        if args.use:
            run_id = search.use_recipe(args.use, args.trial)
            print(f"started run {run_id} with the recipe of search {args.use} in the background; it is scored when "
                  f"it ends. Follow it with `python -m workbench runs`.")
            return 0
        from workbench.commands.train import _config_from_args

        base = _config_from_args(args)
        space = _space(args.space)
        note = search.epochs_note(base, space, args.trial_steps > 0)
        if note and any(item.startswith("training.epochs") for item in args.space):  # asked for, cannot matter
            print(f"note: {note}", file=sys.stderr)
        if args.background:
            search_id = search.start_search(base, space, args.trials, args.minutes, args.trial_steps)
            print(f"started search {search_id} in the background; follow it with "
                  f"`python -m workbench search --show {search_id}`")
            return 0
        with runs.slot_lock():
            search._refuse_if_busy()
            search_id = search.create_search(base, space, args.trials, args.minutes, args.trial_steps)
        print(f"search {search_id} in {search.folder(search_id)}")
        state = search.run_search(search.folder(search_id))
        _show(search, search.read_search(search_id), False)
        return 0 if state in ("completed", "stopped") else 1
    except ConfigError as e:
        print("\n".join(f"error: {m}" for m in e.messages), file=sys.stderr)
    except (search.SearchError, DataError, runs.RunError, jobs.JobError) as e:
        print(f"error: {e}", file=sys.stderr)
    return 1


def _list(search, as_json: bool) -> int:
    rows = search.list_searches()
    if as_json:
        print(json.dumps([{k: s.get(k) for k in ("id", "state", "reason", "budget", "best", "created_at")}
                          | {"trials": search.trained_count(s)} for s in rows], indent=1))
        return 0
    if not rows:
        print("No searches yet. Start one with `python -m workbench search --preset quick-demo-cpu --trials 3`.")
        return 0
    print(f"{'SEARCH':28} {'STATE':12} {'TRIALS':>6}  BEST")
    for s in rows:
        best = s.get("best")
        text = f"trial {best['number']}: eval loss {best['eval_loss']:.4f}" if best else "—"
        print(f"{s['id']:28} {s.get('state', '?'):12} {search.trained_count(s):>6}  {text}")
        if s.get("reason"):
            print(f"{'':28} {s['reason'][:300]}")
    return 0


def _show(search, data: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    budget = data.get("budget", {})
    minutes = f", {budget['minutes']:g} min" if budget.get("minutes") else ""
    if budget.get("trial_steps"):
        minutes += f", {budget['trial_steps']} steps a trial"
    print(f"search {data.get('id')}: {data.get('state')} · budget {budget.get('trials') or 'any number of'} trials"
          f"{minutes} · settings picked by {data.get('sampler', '?')}")
    if data.get("reason"):
        print(f"  {data['reason']}")
    widths = [6, 10, 11, 10, 13, 7, 10, 8, 46]
    print("  ".join(c.ljust(w) for c, w in zip(search.COLUMNS, widths)))
    for row in search.trial_rows(data):
        cells = ["—" if v is None else (f"{v:.4f}" if isinstance(v, float) and v > 0.01 else str(v)) for v in row]
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + (f"  {cells[-1]}" if cells[-1] else ""))
    best = data.get("best")
    if best and data.get("state") not in search.ACTIVE:
        print(f"best: trial {best['number']} (eval loss {best['eval_loss']:.4f}); train it in full with "
              f"`python -m workbench search --use {data['id']}`")
    return 0
