"""The current dataset: the Data tab's mapped and cleaned table, saved under the data folder so a run trains on
exactly it and it survives an app restart.

`<data_dir>/datasets/current.jsonl` holds the records ({id, instruction, input, output, context}) and
`current.json` a small manifest (where they came from, the mapping, the cleaning steps applied with their
counts, the row count, when). The file name is fixed here, never taken from a request. A run uses it through
an ordinary file source (`data.source: <that path>`, no further cleaning), so the run folder records the path
and its own copy of the split, as for any other source.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from workbench import paths
from workbench.config import DataConfig
from workbench.data.dataset import RECORD_COLUMNS, read_jsonl, write_jsonl

NAME = "current"


def folder() -> Path:
    return paths.data_dir() / "datasets"


def records_path() -> Path:
    return folder() / f"{NAME}.jsonl"


def manifest_path() -> Path:
    return folder() / f"{NAME}.json"


def save(table: pd.DataFrame, source: str, mapping: dict | None = None, steps: list[dict] | None = None) -> dict:
    """Write the table's records and the manifest (records first, manifest last: a manifest means a whole file).

    `steps`: the cleaning reports applied so far, each {step, edited, dropped} (as cleaning.apply_steps gives).
    """
    if table is None or table.empty:
        raise ValueError("There is no data to save; load a source and apply its mapping first.")
    cols = ["id"] + RECORD_COLUMNS
    path = write_jsonl(table[cols].to_dict("records"), folder() / f".{NAME}.jsonl.tmp")
    path.replace(records_path())
    manifest = {"source": str(source or ""), "mapping": dict(mapping or {}), "rows": int(len(table)),
                "cleaning": [{k: s.get(k, 0) for k in ("step", "edited", "dropped")} for s in steps or []],
                "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "file": records_path().name}
    paths.atomic_write(manifest_path(), json.dumps(manifest, indent=1, ensure_ascii=False))
    return manifest


def manifest() -> dict | None:
    """The saved dataset's manifest, or None when nothing is saved, its records file is gone, or the manifest is
    damaged (`damage()` says so)."""
    return _manifest_and_damage()[0]


def _manifest_and_damage() -> tuple[dict | None, str]:
    try:
        data = json.loads(manifest_path().read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, ""
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, paths.damaged(manifest_path(), e)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), int):
        return None, paths.damaged(manifest_path(), "not the manifest the Data tab writes")
    return (data if records_path().is_file() else None), ""


def damage() -> str:
    """Why the saved dataset cannot be opened ('' when it can, or when nothing is saved). Its files are left as they
    are; saving a new dataset from the Data tab replaces them."""
    meta, why = _manifest_and_damage()
    if why or meta is None:
        return why
    try:
        read_jsonl(records_path())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return paths.damaged(records_path(), e)
    return ""


def load() -> tuple[pd.DataFrame, dict] | None:
    """(records table, manifest) of the saved dataset, or None (nothing saved, or damaged: `damage()`)."""
    meta = manifest()
    if meta is None:
        return None
    try:
        rows = read_jsonl(records_path())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    table = pd.DataFrame(rows, columns=["id"] + RECORD_COLUMNS).fillna("").astype(str)
    return table, meta


def change_key() -> str:
    """Cheap 'did the saved dataset change?' key (a stat, no read); "-" while nothing is saved (the Train tab reads
    any other key as "a dataset was saved" and switches to it)."""
    key = paths.change_marker("", [manifest_path()])
    return "-" if key == ":-" else key


def data_config(base: DataConfig) -> DataConfig:
    """`base` (split, caps, template of the run) pointed at the saved dataset: a file source, cleaned already."""
    from dataclasses import replace

    if manifest() is None:
        raise ValueError("No dataset is saved from the Data tab yet; load and clean one there first.")
    return replace(base, source=str(records_path()), dbdemos_dir="", columns={}, cleaning=[])


def cleaning_summary(meta: dict) -> str:
    steps = meta.get("cleaning") or []
    if not steps:
        return "no cleaning steps applied"
    return "cleaned: " + ", ".join(f"{s['step']} ({s['dropped']:,} dropped, {s['edited']:,} edited)" for s in steps)


def describe(meta: dict | None, data_cfg: DataConfig | None = None) -> str:
    """One line for people: what the saved dataset is and how a run with `data_cfg` splits it."""
    if meta is None:
        return "No dataset saved from the Data tab yet."
    d = data_cfg or DataConfig()
    caps = []
    if d.max_train_examples:
        caps.append(f"at most {d.max_train_examples:,} trained on")
    if d.max_eval_examples:
        caps.append(f"at most {d.max_eval_examples:,} scored")
    cap = f" ({', '.join(caps)}, as the settings say)" if caps else ""
    return (f"{meta['rows']:,} records from {meta.get('source') or 'the Data tab'} · {cleaning_summary(meta)} · "
            f"{d.eval_fraction:.0%} held out (seed {d.split_seed}){cap} · saved {meta.get('saved_at', '')}")
