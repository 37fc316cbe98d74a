"""Export a scored run: the metrics table and the per-example predictions as CSV or JSON (the Metrics tab's
download and `python -m workbench eval --run ID --export FILE`)."""
from __future__ import annotations

import json
from pathlib import Path

from workbench.evaluation import scoring
from workbench.evaluation.evaluate import (EvalError, metrics_damage, predictions_damage, read_metrics,
                                           read_predictions)

EXPORT_FORMATS = ("csv", "json")


def export(run_id: str, metrics_file: str | Path) -> list[Path]:
    """Write a scored run's metrics table to `metrics_file` (.csv or .json) and its per-example predictions
    beside it (`<stem>-predictions.csv|json`). Returns both paths."""
    import pandas as pd

    out = Path(metrics_file)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in EXPORT_FORMATS:
        raise EvalError(f"Export to a .csv or .json file (got '{out.name}'), e.g. --export {run_id}.csv.")
    metrics = read_metrics(run_id)
    if not metrics and metrics_damage(run_id):
        raise EvalError(f"{metrics_damage(run_id)}; score the run again to rewrite it: "
                        f"`python -m workbench eval --run {run_id}` (or Evaluate in the Metrics tab).")
    if not metrics:
        raise EvalError(f"Run '{run_id}' has no metrics to export yet; evaluate it first: "
                        f"`python -m workbench eval --run {run_id}` (or Evaluate in the Metrics tab).")
    if predictions_damage(run_id):
        raise EvalError(f"{predictions_damage(run_id)}; score the run again to rewrite it: "
                        f"`python -m workbench eval --run {run_id}`.")
    predictions = read_predictions(run_id)
    out.parent.mkdir(parents=True, exist_ok=True)
    pred_file = out.with_name(f"{out.stem}-predictions.{fmt}")
    if fmt == "csv":
        rows = [{"metric": label, "base": metrics["base"].get(k), "fine_tuned": metrics.get("tuned", {}).get(k),
                 "change_pct": metrics.get("change_pct", {}).get(k)} for k, label in scoring.LABELS.items()]
        pd.DataFrame(rows).to_csv(out, index=False)
        pd.DataFrame(predictions).to_csv(pred_file, index=False)
    else:
        out.write_text(json.dumps(metrics, indent=1, ensure_ascii=False), encoding="utf-8")
        pred_file.write_text(json.dumps(predictions, indent=1, ensure_ascii=False), encoding="utf-8")
    return [out, pred_file]
