"""`python -m workbench reviews [--run RUN] [--against OTHER] [--export votes.csv] [--pairs pairs.jsonl]`: blind-review
win rates, the votes as CSV, and the preference pairs the votes make (with duplicates and contradictions reported)."""
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
    p.add_argument("--against", metavar="RUN_ID", default=None,
                   help="With --run: the win rate against this run (e.g. a preference run against its parent) "
                        "instead of against the base model.")
    p.add_argument("--pairs", metavar="FILE.jsonl",
                   help="Write the preference pairs the votes make (of --run, or all): one {prompt, chosen, rejected, "
                        "reviewer, chosen_side, rejected_side, created_at} per line; ties and 'both bad' votes are "
                        "not pairs, contradictory votes are left out and listed.")
    p.add_argument("--json", action="store_true", help="Print JSON instead of sentences.")
    p.set_defaults(func=run_reviews)


def run_reviews(args) -> int:
    import sqlite3

    from workbench import runs
    from workbench.evaluation import preferences, reviews

    try:
        if args.against and not args.run:
            raise reviews.ReviewError("--against needs --run: the run whose win rate against it is wanted.")
        against = runs.validate_run_id(args.against) if args.against and args.against != reviews.BASE else \
            reviews.BASE
        run_ids = [runs.validate_run_id(args.run)] if args.run else reviews.reviewed_runs()
        results = [reviews.win_rate(run_id, against) for run_id in run_ids]
        exported = reviews.export_csv(args.export, args.run) if args.export else None
        report = preferences.pairs_from_votes(args.run) if args.pairs else None
        if report is not None:
            preferences.write_pairs_jsonl(report["pairs"], args.pairs)
    except (runs.RunError, reviews.ReviewError, OSError, sqlite3.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if report is not None:
        print(preferences.describe(report), file=sys.stderr)
        print(f"wrote {len(report['pairs'])} pair{'s' * (len(report['pairs']) != 1)} to {args.pairs}", file=sys.stderr)
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
