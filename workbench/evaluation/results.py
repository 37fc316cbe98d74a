"""A scored run's results in its folder: metrics.json and predictions.jsonl written (predictions first, metrics last:
metrics.json appearing means the evaluation finished) and read back, with a damaged file named rather than read in
part or taken for "not scored yet"."""
from __future__ import annotations

import json
from pathlib import Path

from workbench import paths, runs
from workbench.data.dataset import read_jsonl


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
    def parse(path: Path) -> dict:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("base"), dict):
            raise ValueError("not the metrics object the evaluation writes")
        return data

    return _read(run_id, "metrics", parse, None)


def _predictions(run_id: str) -> tuple[list[dict], str]:
    return _read(run_id, "predictions", read_jsonl, [])


def _read(run_id: str, name: str, parse, empty):
    """(content, '') / (empty, '') when absent / (empty, why) when the file cannot be used."""
    try:
        path = getattr(runs.folder(run_id), name)
        return parse(path), ""
    except (FileNotFoundError, runs.RunError):
        return empty, ""
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        return empty, paths.damaged(f"{path.name} of run {run_id}", e)
