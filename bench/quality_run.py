"""Benchmark (not a test): does the default recipe help? Train the embedded model on the dbdemos data,
then score base vs fine-tuned on the held-out split and print the seed-style markdown table.

Meant for the GPU machine (on 2 CPU cores a full run takes hours; use --max-steps for a smoke check):

    python bench/quality_run.py --device cuda [--max-steps 0] [--eval-examples 200] [--dbdemos-dir DIR]
    python bench/quality_run.py --device cpu --max-steps 4 --eval-examples 4 --max-new-tokens 16   # smoke check
    python bench/quality_run.py --device cuda --preset embedded-gpu --set lora.r=256 --set lora.alpha=512 --eval-examples 400

The recipe is RunConfig's defaults (the seed notebook's: r16/alpha32 on q/k/v/o, lr 2e-4, 3 epochs,
batch 4 x accumulation 4, cosine) with the embedded SmolLM2-135M-Instruct instead of Mistral-7B.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SEED = {"perplexity": (27.18, 11.12), "rouge1": (0.340, 0.388), "rouge2": (0.111, 0.202), "rougeL": (0.188, 0.254),
        "bleu": (0.0655, 0.0567)}  # Mistral-7B, the founding notebook


def recipe(args):
    from workbench.config import EMBEDDED_MODEL, RunConfig

    if args.preset:  # a shipped preset as it is (the embedded-gpu quality run); only data, device and scoring set
        from workbench.config import preset

        cfg = preset(args.preset)
        cfg.name = f"quality-{args.preset}"
        cfg.data.source = "dbdemos"
        cfg.data.dbdemos_dir = args.dbdemos_dir
        cfg.training.device = args.device
        cfg.training.max_steps = args.max_steps
    else:
        cfg = RunConfig(name="quality-run", preset="default-recipe")
        cfg.model.name_or_path = args.model or EMBEDDED_MODEL
        cfg.data.source = "dbdemos"
        cfg.data.dbdemos_dir = args.dbdemos_dir
        cfg.training.device = args.device
        cfg.training.max_steps = args.max_steps
        cfg.training.optimizer = "paged_adamw_8bit" if args.device == "cuda" else "adamw_torch"
        cfg.training.gradient_checkpointing = args.gradient_checkpointing == "on"
        cfg.training.batch_size, cfg.training.grad_accum = args.batch_size, args.grad_accum
    from workbench.config_checks import apply_sets

    apply_sets(cfg, args.set)  # e.g. --preset embedded-gpu --set lora.r=256 --set lora.alpha=512
    cfg.eval.run_after_training = False  # scored below, with progress printed
    cfg.data.max_eval_examples = args.eval_examples  # the held-out rows kept (and eval-loss'd) = the rows scored
    cfg.eval.max_examples = args.eval_examples
    cfg.eval.max_new_tokens = args.max_new_tokens
    cfg.eval.batch_size = args.eval_batch_size
    return cfg


def markdown(metrics: dict) -> str:
    from workbench.evaluation.scoring import LABELS

    lines = ["| Metric | Base | Fine-tuned | Change | Seed (Mistral-7B) base → tuned |", "|---|---|---|---|---|"]
    for key, label in LABELS.items():
        fmt = "{:.2f}" if key == "perplexity" else "{:.4f}"
        pct = metrics["change_pct"].get(key)
        seed = SEED[key]
        lines.append(f"| {label} | {fmt.format(metrics['base'][key])} | {fmt.format(metrics['tuned'][key])} | "
                     f"{'—' if pct is None else f'{pct:+.1f}%'} | {seed[0]} → {seed[1]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--max-steps", type=int, default=0,
                        help="Stop after this many steps (0 = the recipe's 3 epochs).")
    parser.add_argument("--model", help="Base model (default: the embedded SmolLM2-135M-Instruct).")
    parser.add_argument("--preset", help="Train this shipped preset as it is (e.g. embedded-gpu) instead of the seed "
                                         "recipe; --batch-size/--grad-accum/--gradient-checkpointing then do not apply.")
    parser.add_argument("--dbdemos-dir", default="", help="Folder of the dbdemos parquet files.")
    parser.add_argument("--eval-examples", type=int, default=200, help="Held-out questions scored (0 = all).")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--eval-batch-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4, help="Per-step batch (the seed: 4).")
    parser.add_argument("--grad-accum", type=int, default=4,
                        help="Accumulation (the seed: 4; 16 x 1 is the same effective batch in fewer, larger steps).")
    parser.add_argument("--gradient-checkpointing", choices=("on", "off"), default="on",
                        help="The seed recipe's memory saver; a 135M model does not need it (1.8x faster off).")
    parser.add_argument("--train-only", action="store_true",
                        help="Stop after training; score later with `python -m workbench eval --run RUN_ID`.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a setting of the recipe (repeatable), as `python -m workbench train --set`.")
    parser.add_argument("--home", help="WORKBENCH_HOME for the run folder (default: a new temporary folder).")
    args = parser.parse_args()
    os.environ["WORKBENCH_HOME"] = args.home or tempfile.mkdtemp(prefix="quality-run-")

    from workbench import runs
    from workbench.evaluation import evaluate
    from workbench.training.jobs import create_run
    from workbench.training.recipe import main as train_main

    cfg = recipe(args)
    run_id = create_run(cfg)
    run_dir = runs.run_path(run_id)
    print(f"run folder: {run_dir}", flush=True)
    if train_main(run_dir, resume=False) != 0 or runs.read_status(run_id).get("state") != "completed":
        print(f"training did not complete: {runs.read_status(run_id).get('reason')}", file=sys.stderr)
        return 1
    if args.train_only:
        print(f"trained: python -m workbench eval --run {run_id}  (WORKBENCH_HOME={os.environ['WORKBENCH_HOME']})")
        return 0
    metrics = evaluate.evaluate_run(run_id, progress=evaluate.print_progress)
    steps = runs.read_status(run_id).get("step")
    train_rows = sum(1 for _ in runs.folder(run_id).train_data.open())
    print(f"\n{cfg.model.name_or_path} · {steps} steps on {train_rows} training rows · "
          f"{metrics['eval_examples']} held-out questions · {metrics['device']} · eval {metrics['seconds']} s")
    if metrics["leakage"].get("flagged"):
        print(f"WARNING: {metrics['leakage']['message']}")
    print()
    print(markdown(metrics))
    print(f"\nmetrics: {run_dir / 'metrics.json'}")
    print(json.dumps({"run": run_id, "base": metrics["base"], "tuned": metrics["tuned"],
                      "change_pct": metrics["change_pct"], "train_elapsed_s": (runs.read_events(run_id) or [{}])[-1].get("elapsed")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
