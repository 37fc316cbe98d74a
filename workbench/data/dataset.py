"""Q&A data: load any source, map columns onto instruction records, clean, split, check leakage.

A record is {id, instruction, input, output, context}. Every step works on a pandas DataFrame with
those columns so the UI table, the CLI and the training run see the same rows.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench import paths
from workbench.config import DataConfig
from workbench.data.loading import DataError, load_dbdemos, load_table, normalize  # noqa: F401 (re-exported)

RECORD_COLUMNS = ["instruction", "input", "output", "context"]

# Column names people use for each record field, most specific first.
GUESSES = {
    "instruction": ["instruction", "question", "prompt", "query", "request", "input_text", "q", "user", "title"],
    "output": ["output", "answer", "response", "expected_response", "completion", "reply", "target", "a",
               "assistant", "answers"],
    "context": ["context", "expected_retrieved_context", "passage", "document", "doc", "retrieved_context"],
    "input": ["input"],
}


# -- mapping ----------------------------------------------------------------------------------

def guess_mapping(columns) -> dict:
    """{record_field: column} from common names; instruction and output are required."""
    return guess_columns_by_name(columns, GUESSES)


def guess_columns_by_name(columns, guesses: dict) -> dict:
    """{target: column}: for each target, the first of its common names present (case-insensitive), each column used
    once."""
    lower = {str(c).lower().strip(): c for c in columns}
    mapping: dict = {}
    for target, names in guesses.items():
        for name in names:
            if name in lower and lower[name] not in mapping.values():
                mapping[target] = lower[name]
                break
    return mapping


def apply_mapping(df: pd.DataFrame, mapping: dict | None = None) -> pd.DataFrame:
    """Return a DataFrame with id + the record columns, as clean strings."""
    mapping = {k: v for k, v in (mapping or guess_mapping(df.columns)).items() if v}
    cols = list(map(str, df.columns))
    for need, hint in (("instruction", "question"), ("output", "answer")):
        if need not in mapping:
            raise DataError(f"No column for the {hint}s: columns are {', '.join(cols)}; map '{need}' to one of "
                            f"them (e.g. --map {need}=<column>).")
    for target, col in mapping.items():
        if target not in RECORD_COLUMNS:
            raise DataError(f"Unknown record field '{target}'; map onto {', '.join(RECORD_COLUMNS)}.")
        if col not in df.columns:
            raise DataError(f"Column '{col}' not found; columns are {', '.join(cols)} — map '{target}' to one "
                            f"of them.")
    for target in ("instruction", "output"):
        _reject_nested(df[mapping[target]], mapping[target])
    out = pd.DataFrame(index=df.index)
    for target in RECORD_COLUMNS:
        out[target] = df[mapping[target]].map(_as_text) if target in mapping else ""
    empty = (out["instruction"].str.strip() == "") | (out["output"].str.strip() == "")
    if empty.all():
        raise DataError(f"Every row has an empty question or answer (columns {mapping['instruction']!r} and "
                        f"{mapping['output']!r}); check the column mapping.")
    out = out[~empty].reset_index(drop=True)
    out.insert(0, "id", [f"r{i}" for i in range(len(out))])
    out.attrs["empty_rows_dropped"] = int(empty.sum())
    return out


def _reject_nested(column: pd.Series, name: str) -> None:
    """Questions/answers must be text: a column of objects or lists needs flattening first."""
    nested = column.map(_is_nested)
    if len(column) and nested.mean() > 0.5:
        first = column[nested].iloc[0]
        keys = f" (objects with keys {', '.join(map(str, list(first)[:5]))})" if isinstance(first, dict) else ""
        raise DataError(f"Column '{name}' holds nested JSON{keys}, not text; flatten the file so the question "
                        f"and answer are plain text fields, or map another column.")


def _is_nested(value) -> bool:
    """A dict, list or array (e.g. a Parquet list cell), not a plain value."""
    return isinstance(value, (dict, list)) or (hasattr(value, "tolist") and not isinstance(value, str))


def _as_text(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if _is_nested(value):
        return json.dumps(value.tolist() if hasattr(value, "tolist") else value, ensure_ascii=False)
    return str(value)


def load_raw(source: str, dbdemos_dir: str = "") -> pd.DataFrame:
    """'sample', 'dbdemos' or a path -> the table as read (before column mapping)."""
    source = (source or "").strip()
    if source == "sample":
        return load_table(paths.SAMPLE_DATA)
    if source == "dbdemos":
        return load_dbdemos(dbdemos_dir or None)
    return load_table(source)


def load_source(data_cfg: DataConfig) -> pd.DataFrame:
    """Source name or path -> mapped record table (not yet cleaned)."""
    return apply_mapping(load_raw(data_cfg.source, data_cfg.dbdemos_dir), data_cfg.columns or None)


# -- split and leakage ------------------------------------------------------------------------

def split(df: pd.DataFrame, eval_fraction: float, seed: int) -> pd.Series:
    """'train'/'eval' per row, by a hash of the row's duplicate group: rows that share a normalized question
    or a normalized answer always land on the same side, so the split itself cannot leak."""
    def side(key: str) -> str:
        h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
        return "eval" if int.from_bytes(h[:8], "big") / 2**64 < eval_fraction else "train"
    return pd.Series([side(k) for k in duplicate_groups(df)], index=df.index, dtype=object)


def duplicate_groups(df: pd.DataFrame) -> list[str]:
    """Per row, the smallest normalized question of its group (rows linked by equal questions or answers)."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    questions, answers = df["instruction"].map(normalize).tolist(), df["output"].map(normalize).tolist()
    for q, a in zip(questions, answers):
        if a:  # answers that normalize to nothing ('...') link nothing
            rq, ra = find("q:" + q), find("a:" + a)
            if rq != ra:
                parent[max(rq, ra)] = min(rq, ra)
    smallest: dict[str, str] = {}
    for q in questions:
        root = find("q:" + q)
        smallest[root] = min(smallest.get(root, q), q)
    return [smallest[find("q:" + q)] for q in questions]


def leakage(train: pd.DataFrame, eval_: pd.DataFrame) -> dict:
    """Eval rows whose normalized question or answer also occurs in training."""
    tq, ta = set(train["instruction"].map(normalize)), set(train["output"].map(normalize))
    q_hit = eval_["instruction"].map(normalize).isin(tq)
    a_hit = eval_["output"].map(normalize).isin(ta)
    leaked = q_hit | a_hit
    n = int(len(eval_))
    return {"eval_rows": n, "question_overlap": int(q_hit.sum()), "answer_overlap": int(a_hit.sum()),
            "leaked_rows": int(leaked.sum()), "leaked_fraction": round(float(leaked.mean()) if n else 0.0, 4),
            "leaked_ids": eval_.loc[leaked, "id"].tolist()[:50] if "id" in eval_ else []}


def leakage_message(report: dict) -> str:
    if not report.get("leaked_rows"):
        return f"No leakage: none of the {report.get('eval_rows', 0)} evaluation rows occurs in training."
    return (f"LEAKAGE: {report['leaked_rows']} of {report['eval_rows']} evaluation rows "
            f"({report['leaked_fraction']:.0%}) also occur in training ({report['question_overlap']} by question, "
            f"{report['answer_overlap']} by answer). Scores on them measure memory, not learning; "
            f"use a held-out split.")


@dataclass
class PreparedData:
    train: list = field(default_factory=list)
    eval: list = field(default_factory=list)
    report: dict = field(default_factory=dict)


def prepare_dataset(data_cfg: DataConfig, records: pd.DataFrame | None = None) -> PreparedData:
    """Load, map, clean (config steps), split and cap: the exact records a run trains and scores on.

    `records`: the mapped table of `data_cfg.source` when the caller has loaded it already (not re-read).
    """
    from workbench.data.cleaning import apply_steps

    df = load_source(data_cfg) if records is None else records
    loaded, empty = len(df), df.attrs.get("empty_rows_dropped", 0)
    df, cleaning = apply_steps(df, list(data_cfg.cleaning))
    if df.empty:
        raise DataError("Cleaning removed every row; turn off some cleaning steps or check the data.")
    sides = split(df, data_cfg.eval_fraction, data_cfg.split_seed)
    train, eval_ = df[sides == "train"], df[sides == "eval"]
    if train.empty or eval_.empty:
        raise DataError(f"The split left {len(train)} training and {len(eval_)} evaluation rows of {len(df)}; a run "
                        f"needs at least one of each: use more data, or change the share held out for evaluation "
                        f"(data.eval_fraction, now {data_cfg.eval_fraction:.0%}).")
    if data_cfg.max_train_examples:
        train = train.head(data_cfg.max_train_examples)
    if data_cfg.max_eval_examples:
        eval_ = eval_.head(data_cfg.max_eval_examples)
    report = {"source": data_cfg.source, "rows_loaded": loaded, "empty_rows_dropped": empty,
              "rows_after_cleaning": len(df),
              "cleaning": cleaning, "train_rows": len(train), "eval_rows": len(eval_),
              "leakage": leakage(train, eval_)}
    cols = ["id"] + RECORD_COLUMNS
    return PreparedData(train[cols].to_dict("records"), eval_[cols].to_dict("records"), report)


def write_jsonl(records, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL file; ValueError when a line is not JSON or not an object (a damaged file)."""
    with Path(path).open(encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if not all(isinstance(r, dict) for r in rows):
        raise ValueError("a line is not a JSON object")
    return rows
