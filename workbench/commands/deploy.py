"""`python -m workbench deploy`: create or update the Hugging Face Space described by space.yaml."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("deploy", help="Create or update the Hugging Face Space described by space.yaml.",
                       description="Validate space.yaml, print the generated README front matter, the upload bundle "
                                   "and the exact Hub calls, then (without --dry-run) apply them with huggingface_hub: "
                                   "create/update the Space, hardware, privacy, sleep time, volumes, secrets (values "
                                   "read from your environment), variables, upload the app, and wait until it runs.")
    p.add_argument("--config", default="space.yaml", help="The Space manifest (default: space.yaml).")
    p.add_argument("--dry-run", action="store_true", help="Print the plan and the front matter; contact nothing.")
    p.add_argument("--no-wait", action="store_true", help="Do not wait for the Space to build and start.")
    p.set_defaults(func=run_deploy)


def run_deploy(args) -> int:
    from workbench.deploy import hub_export
    from workbench.deploy import space
    from workbench.deploy import space_deploy

    try:
        space_deploy.deploy(args.config, dry_run=args.dry_run, wait=not args.no_wait)
        return 0
    except space.SpaceConfigError as e:
        print(f"error: {args.config} has {len(e.messages)} problem(s):", file=sys.stderr)
        print("\n".join(f"  - {m}" for m in e.messages), file=sys.stderr)
    except (space_deploy.DeployError, hub_export.HubError) as e:
        print(f"error: {e}", file=sys.stderr)
    return 1
