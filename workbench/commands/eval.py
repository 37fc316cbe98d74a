"""`python -m workbench eval`: base vs fine-tuned scores of a run, or the base model alone on a dataset."""
from __future__ import annotations

import json
import sys


def register(sub) -> None:
    p = sub.add_parser("eval", help="Score a run (base vs fine-tuned) or the base model alone: perplexity, ROUGE, "
                                    "BLEU on the held-out split.",
                       description="With --run: score base and fine-tuned on the run's held-out split and write "
                                   "metrics.json and predictions.jsonl into the run folder. With --base: score the "
                                   "base model alone on the eval split of --data (nothing is written unless --output).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--run", metavar="RUN_ID", help="A trained run (see `python -m workbench runs`).")
    what.add_argument("--base", action="store_true", help="Score the base model alone (no adapter).")
    p.add_argument("--model", help="With --base: the base model (default: the embedded SmolLM2-135M-Instruct).")
    p.add_argument("--data", help="With --base: 'sample', 'dbdemos' or a data file (default: sample).")
    p.add_argument("--dbdemos-dir", default="", help="With --base --data dbdemos: the folder of the dbdemos files.")
    p.add_argument("--max-examples", type=int, help="Score at most this many held-out questions (0 = all).")
    p.add_argument("--max-new-tokens", type=int, help="Longest generated answer, in tokens.")
    p.add_argument("--batch-size", type=int, help="Questions generated together.")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="Where to run (default: the run's setting).")
    p.add_argument("--no-cache", action="store_true", help="Recompute the base model's results even if cached.")
    p.add_argument("--output", help="Also write the metrics JSON to this file.")
    p.add_argument("--json", action="store_true", help="Print the metrics as JSON instead of a table.")
    p.add_argument("--export", metavar="FILE.csv|FILE.json",
                   help="With --run: do not score; write the run's existing metrics to FILE (.csv or .json) and its "
                        "per-example predictions beside it (FILE-predictions.csv|json), as the Metrics tab exports.")
    p.set_defaults(func=run_eval)


def _base_config(args):
    from workbench.config import EMBEDDED_MODEL, RunConfig

    cfg = RunConfig()
    cfg.model.name_or_path = args.model or EMBEDDED_MODEL
    cfg.data.source = args.data or "sample"
    cfg.data.dbdemos_dir = args.dbdemos_dir
    return cfg


def _apply_overrides(cfg, args):
    for name in ("max_examples", "max_new_tokens", "batch_size"):
        value = getattr(args, name)
        if value is not None:
            setattr(cfg.eval, name, value)
    problems = cfg.validate()
    if problems:
        raise ValueError(" ".join(problems))
    return cfg


class _Bar:
    """tqdm bar driven by the (fraction, message) progress callback."""

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=100, unit="%", file=sys.stderr, bar_format="{l_bar}{bar}| {elapsed}<{remaining}")

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.set_description(message[:60])
        self.bar.update(max(0, round(fraction * 100) - self.bar.n))

    def close(self):
        self.bar.close()


def run_eval(args) -> int:
    from workbench import runs
    from workbench.evaluation import evaluate
    from workbench.evaluation.export import export as export_run

    if args.run and (args.model or args.data):
        print("error: --model and --data go with --base; a run is scored with its own model and held-out split.",
              file=sys.stderr)
        return 2
    if args.export:
        if not args.run:
            print("error: --export goes with --run RUN_ID (it exports that run's metrics).", file=sys.stderr)
            return 2
        try:
            written = export_run(runs.validate_run_id(args.run), args.export)
        except (evaluate.EvalError, runs.RunError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print("wrote " + " and ".join(str(p) for p in written))
        return 0
    if args.run:
        try:
            reason = evaluate.refusal(runs.validate_run_id(args.run))
        except runs.RunError as e:
            reason = str(e)
        if reason:
            print(f"error: {reason}", file=sys.stderr)
            return 1
    bar = _Bar()
    try:
        if args.run:
            cfg = _apply_overrides(runs.load_run_config(args.run), args)  # checks the values early
            metrics = evaluate.evaluate_run(args.run, progress=bar, device=args.device, use_cache=not args.no_cache,
                                            eval_settings=cfg.eval)
        else:
            cfg = _apply_overrides(_base_config(args), args)
            metrics = evaluate.evaluate_base(cfg, progress=bar, device=args.device, use_cache=not args.no_cache)
    except (evaluate.EvalError, runs.RunError, ValueError) as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    bar.close()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump(metrics, fh, indent=1)
    print(json.dumps(metrics, indent=1) if args.json else format_table(metrics))
    if args.run and not args.json:
        print(f"\nwrote {runs.folder(args.run).metrics} and {runs.folder(args.run).predictions.name}")
    return 0


def format_table(metrics: dict) -> str:
    from workbench.evaluation.scoring import LABELS, format_value

    base, tuned, change = metrics["base"], metrics.get("tuned"), metrics.get("change_pct", {})
    lines = []
    leak = metrics.get("leakage") or {}
    if leak.get("flagged"):
        lines += ["!" * 78, f"!! {leak.get('message', 'LEAKAGE: evaluation rows also occur in training.')}",
                  "!" * 78, ""]
    head = f"{'metric':12} {'base':>10}" + (f" {'fine-tuned':>11} {'change':>9}" if tuned else "")
    lines += [f"{metrics['eval_examples']} held-out questions, {metrics['answer_tokens']} reference answer tokens"
              f"{' (base results from cache)' if metrics.get('base_cached') else ''}", head, "-" * len(head)]
    for key, label in LABELS.items():
        row = f"{label:12} {format_value(key, base[key]):>10}"
        if tuned:
            pct = change.get(key)
            row += f" {format_value(key, tuned[key]):>11} {('%+.1f%%' % pct) if pct is not None else '—':>9}"
        lines.append(row)
    if tuned:
        lines.append("(perplexity: lower is better; ROUGE/BLEU: 0-1, higher is better)")
    return "\n".join(lines)
