"""`python -m workbench push`: publish a run's LoRA adapter (and optionally a merged model) to the Hub."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("push", help="Push a run's adapter to a Hugging Face model repo with a generated model card.",
                       description="Uploads the run's final adapter with a model card (base model, data source and "
                                   "licence, full config, metrics table, training curve). Needs a token with write "
                                   "access (`hf auth login` or HF_TOKEN).")
    p.add_argument("--run", required=True, metavar="RUN_ID", help="The run to publish (see `python -m workbench runs`).")
    p.add_argument("--repo", required=True, metavar="OWNER/NAME", help="The model repository, e.g. alice/my-lora.")
    p.add_argument("--merged", action="store_true",
                   help="Also push the base model with the adapter merged in (16-bit, under merged/; large for 7B).")
    p.add_argument("--private", action="store_true", help="Create the repository as private.")
    p.add_argument("--dry-run", action="store_true", help="Print the model card and the files; contact nothing.")
    p.set_defaults(func=run_push)


def run_push(args) -> int:
    from workbench import runs
    from workbench.deploy import hub_export

    try:
        hub_export.push(args.run, args.repo, merged=args.merged, private=args.private, dry_run=args.dry_run)
        return 0
    except (hub_export.HubError, runs.RunError) as e:
        print(f"error: {e}", file=sys.stderr)
    return 1
