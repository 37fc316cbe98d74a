"""`python -m workbench reviews [--run RUN] [--export votes.csv]`: blind-review win rates and the votes as CSV."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("reviews", help="Print the blind A/B review win rate of a run (or of every reviewed run); "
                                       "export the votes as CSV.",
                       description="Win rate of the fine-tuned run over the base model from blind votes in the "
                                   "Chat tab: ties count as half a win, 'both bad' votes are left out of the rate; "
                                   "with a Wilson 95%% interval.")
    p.add_argument("--run", metavar="RUN_ID", help="One run (default: every run that has votes).")
    p.add_argument("--export", metavar="FILE.csv", help="Write the votes (of --run, or all) to this CSV file.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of sentences.")
    p.set_defaults(func=run_reviews)


def run_reviews(args) -> int:
    import sqlite3

    from workbench import runs
    from workbench.evaluation import reviews

    try:
        run_ids = [runs.validate_run_id(args.run)] if args.run else reviews.reviewed_runs()
        results = [reviews.win_rate(run_id) for run_id in run_ids]
        exported = reviews.export_csv(args.export, args.run) if args.export else None
    except (runs.RunError, reviews.ReviewError, OSError, sqlite3.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(results if not args.run else results[0], indent=1))
    elif not results:
        print("No votes yet. Turn on 'Blind A/B review' in the Chat tab to collect some.")
    else:
        for result in results:
            print(reviews.describe(result))
    if exported is not None:
        print(f"wrote {exported} vote{'s' if exported != 1 else ''} to {args.export}", file=sys.stderr)
    return 0
