"""The command line: `python -m workbench <command> ...`.

Each module in workbench/commands/ adds one sub-command through `register(subparsers)` and sets
`func` on its parser; heavy libraries are imported inside the handlers so `--help` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import workbench.commands as commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench",
                                     description="tech-llm-forge: fine-tune, evaluate and compare LLMs with 4-bit LoRA.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"workbench.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
