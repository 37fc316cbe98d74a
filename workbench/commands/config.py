"""`python -m workbench config`: print a preset as YAML, or check a config file."""
from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("config", help="Print a preset's RunConfig as YAML, list presets, or validate a config file.")
    p.add_argument("--preset", help="Preset to print (see --list).")
    p.add_argument("--list", action="store_true", help="List the presets with their descriptions.")
    p.add_argument("--check", metavar="FILE", help="Validate a config YAML and print what to fix.")
    p.set_defaults(func=run)


def run(args) -> int:
    from workbench.config import PRESETS, ConfigError, RunConfig, preset

    if args.list:
        for name, (_, text) in PRESETS.items():
            print(f"{name}\n    {text}")
        return 0
    if args.check:
        try:
            cfg = RunConfig.load(args.check)
        except ConfigError as e:
            print("\n".join(f"error: {m}" for m in e.messages), file=sys.stderr)
            return 1
        problems = cfg.validate()
        for m in problems:
            print(f"error: {m}", file=sys.stderr)
        if not problems:
            print(f"{args.check}: OK")
        return 1 if problems else 0
    try:
        cfg = preset(args.preset) if args.preset else RunConfig()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(cfg.to_yaml())
    return 0
