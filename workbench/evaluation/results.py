"""A scored run's results in its folder: metrics.json and predictions.jsonl written (predictions first, metrics last:
metrics.json appearing means the evaluation finished) and read back, with a damaged file named rather than read in
part or taken for "not scored yet"."""
from __future__ import annotations

import json
from pathlib import Path

from workbench import paths, runs


def write_results(run_dir: Path, metrics: dict, predictions: list[dict]) -> None:
    folder = runs.RunFolder(run_dir)
    paths.atomic_write(folder.predictions, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    paths.atomic_write(folder.metrics, json.dumps(metrics, indent=1, ensure_ascii=False))


def read_metrics(run_id: str) -> dict | None:
    """A run's metrics.json, or None when it has none or it is damaged (`metrics_damage` says which)."""
    return _metrics(run_id)[0]


def metrics_damage(run_id: str) -> str:
    """Why a run's metrics.json cannot be read ('' when it is fine or absent)."""
    return _metrics(run_id)[1]


def read_predictions(run_id: str) -> list[dict]:
    """A run's per-example answers; [] when it has none or the file is damaged (`predictions_damage` says which)."""
    return _predictions(run_id)[0]


def predictions_damage(run_id: str) -> str:
    return _predictions(run_id)[1]


def _metrics(run_id: str) -> tuple[dict | None, str]:
    return _read(run_id, "metrics", lambda text: json.loads(text),
                 lambda data: isinstance(data, dict) and isinstance(data.get("base"), dict),
                 "not the metrics object the evaluation writes", None)


def _predictions(run_id: str) -> tuple[list[dict], str]:
    return _read(run_id, "predictions", lambda text: [json.loads(line) for line in text.splitlines() if line.strip()],
                 lambda rows: all(isinstance(r, dict) for r in rows), "a line is not an answer record", [])


def _read(run_id: str, name: str, parse, valid, invalid: str, empty):
    """(content, '') / (empty, '') when absent / (empty, why) when the file cannot be used."""
    try:
        path = getattr(runs.folder(run_id), name)
        data = parse(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, runs.RunError):
        return empty, ""
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        return empty, f"{path.name} of run {run_id} is damaged ({type(e).__name__}: {str(e)[:120]})"
    if not valid(data):
        return empty, f"{path.name} of run {run_id} is damaged ({invalid})"
    return data, ""
