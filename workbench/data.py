"""Q&A data: load any source, map columns onto instruction records, clean, split, check leakage.

A record is {id, instruction, input, output, context}. Every step works on a pandas DataFrame with
those columns so the UI table, the CLI and the training run see the same rows.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from workbench import paths
from workbench.config import DataConfig

RECORD_COLUMNS = ["instruction", "input", "output", "context"]
SUPPORTED = ".csv, .tsv, .parquet, .json, .jsonl, or a saved Hugging Face dataset folder"

# Column names people use for each record field, most specific first.
GUESSES = {
    "instruction": ["instruction", "question", "prompt", "query", "request", "input_text", "q", "user", "title"],
    "output": ["output", "answer", "response", "expected_response", "completion", "reply", "target", "a",
               "assistant", "answers"],
    "context": ["context", "expected_retrieved_context", "passage", "document", "doc", "retrieved_context"],
    "input": ["input"],
}


class DataError(ValueError):
    """A problem with the user's data; the message names the problem and the fix."""


def max_file_mb() -> float:
    return float(os.environ.get("WORKBENCH_MAX_UPLOAD_MB", "100"))


# -- loading ----------------------------------------------------------------------------------

def load_table(source: str | Path) -> pd.DataFrame:
    """Read a file or dataset folder into a DataFrame of strings; never modifies the source."""
    p = Path(source).expanduser()
    if not str(source).strip():
        raise DataError("No data source given; choose the sample, the dbdemos folder, or a file.")
    if not p.exists():
        raise DataError(f"{p} does not exist; check the path (supported: {SUPPORTED}).")
    if p.is_dir():
        return _load_folder(p)
    size_mb = p.stat().st_size / 1e6
    if size_mb > max_file_mb():
        raise DataError(f"{p.name} is {size_mb:,.0f} MB, over the {max_file_mb():,.0f} MB limit; split it or "
                        f"sample it first (or raise WORKBENCH_MAX_UPLOAD_MB).")
    if p.stat().st_size == 0:
        raise DataError(f"{p.name} is empty (0 bytes); choose a file that holds question/answer rows.")
    suffix = "".join(p.suffixes[-1:]).lower()
    readers = {".csv": _read_csv, ".tsv": _read_csv, ".txt": _read_csv, ".parquet": _read_parquet,
               ".json": _read_json, ".jsonl": _read_json, ".ndjson": _read_json}
    if suffix not in readers:
        raise DataError(f"{p.name}: unsupported file type '{suffix or 'none'}'; use {SUPPORTED}.")
    _reject_binary(p, suffix)
    df = readers[suffix](p)
    return _finish_table(df, p.name)


def _reject_binary(p: Path, suffix: str) -> None:
    head = p.read_bytes()[:4096]
    if suffix == ".parquet":
        if not head.startswith(b"PAR1"):
            raise DataError(f"{p.name} is not a Parquet file (its first bytes are not 'PAR1'); "
                            f"re-export it as Parquet or use CSV/JSONL.")
        return
    if b"\x00" in head:
        raise DataError(f"{p.name} looks binary (contains NUL bytes), not {suffix[1:].upper()} text; "
                        f"check that it is the right file.")


def _decode(p: Path) -> tuple[str, str]:
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError as e:
        try:
            return raw.decode("cp1252"), "cp1252"
        except UnicodeDecodeError:
            raise DataError(f"{p.name} is not UTF-8 text (bad byte at position {e.start}); save it as UTF-8 "
                            f"(e.g. in a spreadsheet: 'CSV UTF-8').") from None


def _read_csv(p: Path) -> pd.DataFrame:
    import io

    text, encoding = _decode(p)
    sep = "\t" if p.suffix.lower() == ".tsv" else None
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep, engine="python", dtype=str, keep_default_na=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p.name} has no header and no rows; it needs a header line such as "
                        f"'question,answer' and one row per pair.") from None
    except (pd.errors.ParserError, ValueError, csv_error()) as e:
        raise DataError(f"{p.name} could not be parsed as CSV ({str(e).splitlines()[0][:160]}); check quoting "
                        f"and that every row has the same number of fields.") from None
    df.attrs["encoding"] = encoding
    return df


def csv_error():
    import csv

    return csv.Error


def _read_parquet(p: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(p)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{p.name} could not be read as Parquet ({type(e).__name__}: {str(e)[:160]}); "
                        f"re-export it or use CSV/JSONL.") from None


def _read_json(p: Path) -> pd.DataFrame:
    text, _ = _decode(p)
    stripped = text.strip()
    if not stripped:
        raise DataError(f"{p.name} holds only whitespace; it needs JSON records.")
    rows: list
    if stripped[0] == "[":
        try:
            rows = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise DataError(f"{p.name}: invalid JSON at line {e.lineno} ({e.msg}); fix it or use one JSON "
                            f"object per line (JSONL).") from None
    elif stripped[0] == "{" and "\n" not in stripped:
        rows = [json.loads(stripped)]
    else:
        rows = []
        for n, line in enumerate(stripped.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                if n == 1 and stripped[0] == "{":  # a single pretty-printed object, e.g. {"data": [...]}
                    try:
                        rows = _unwrap(json.loads(stripped), p)
                        break
                    except json.JSONDecodeError:
                        pass
                raise DataError(f"{p.name}: line {n} is not valid JSON ({e.msg}); each line must be one "
                                f"object like {{\"question\": ..., \"answer\": ...}}.") from None
    if rows and not all(isinstance(r, dict) for r in rows):
        raise DataError(f"{p.name}: expected a list of objects (one per Q&A pair), found "
                        f"{type(next(r for r in rows if not isinstance(r, dict))).__name__} items.")
    return pd.DataFrame(rows)


def _unwrap(obj, p: Path) -> list:
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    raise DataError(f"{p.name}: a single JSON object without one list of records inside; use a list of "
                    f"objects or JSONL.")


def _load_folder(p: Path) -> pd.DataFrame:
    if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file() or (p / "state.json").is_file():
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(p))
        except Exception as e:
            raise DataError(f"{p} looks like a saved Hugging Face dataset but could not be loaded "
                            f"({type(e).__name__}: {str(e)[:160]}); re-save it with save_to_disk().") from None
        if isinstance(ds, DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        return _finish_table(ds.to_pandas(), p.name)
    if (p / "training_dataset_question.parquet").is_file():
        return load_dbdemos(p)
    raise DataError(f"Folder {p} is not a dataset: no saved Hugging Face dataset (dataset_info.json) and no "
                    f"dbdemos files inside. Choose a file ({SUPPORTED}) or such a folder.")


def _finish_table(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if df.columns.duplicated().any():
        dups = sorted(set(df.columns[df.columns.duplicated()]))
        raise DataError(f"{name} has duplicate column names {dups}; rename them so each is unique.")
    if len(df.columns) == 0:
        raise DataError(f"{name} has no columns; it needs at least a question and an answer column.")
    if len(df) == 0:
        raise DataError(f"{name} has columns ({', '.join(map(str, df.columns))}) but no rows; add Q&A rows.")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def load_dbdemos(folder: str | Path | None = None) -> pd.DataFrame:
    """The Databricks docs Q&A: join question.id == answer.question_id (joining on id alone is wrong)."""
    folder = Path(folder) if folder else paths.default_dbdemos_dir()
    q_path, a_path = folder / "training_dataset_question.parquet", folder / "training_dataset_answer.parquet"
    if not q_path.is_file() or not a_path.is_file():
        raise DataError(f"The dbdemos files are not in {folder} (need training_dataset_question.parquet and "
                        f"training_dataset_answer.parquet). Point to the folder that holds them, or download "
                        f"them: python -m workbench data fetch-dbdemos --dest DIR --accept-licence")
    q = pd.read_parquet(q_path)[["id", "question"]]
    a = pd.read_parquet(a_path)[["question_id", "answer"]]
    df = q.merge(a, left_on="id", right_on="question_id", how="inner").drop(columns=["question_id"])
    return df.rename(columns={"id": "source_id"})


# -- mapping ----------------------------------------------------------------------------------

def guess_mapping(columns) -> dict:
    """{record_field: column} from common names; instruction and output are required."""
    lower = {str(c).lower().strip(): c for c in columns}
    mapping: dict = {}
    for target, names in GUESSES.items():
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
    out = pd.DataFrame(index=df.index)
    for target in RECORD_COLUMNS:
        out[target] = df[mapping[target]].map(_as_text) if target in mapping else ""
    nested = out[["instruction", "output"]].map(lambda v: v.startswith(("{", "["))).all(axis=0)
    if nested.any() and len(out) > 0 and out["instruction"].str.startswith(("{", "[")).mean() > 0.9:
        raise DataError("The question column holds nested JSON objects, not text; map a text field instead "
                        "(flatten the file first).")
    out.insert(0, "id", [f"r{i}" for i in range(len(out))])
    return out.reset_index(drop=True)


def _as_text(value) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    if hasattr(value, "tolist") and not isinstance(value, str):
        return json.dumps(value.tolist(), ensure_ascii=False)
    return str(value)


def load_source(data_cfg: DataConfig) -> pd.DataFrame:
    """Source name or path -> mapped record table (not yet cleaned)."""
    source = (data_cfg.source or "").strip()
    if source == "sample":
        raw = load_table(paths.SAMPLE_DATA)
    elif source == "dbdemos":
        raw = load_dbdemos(data_cfg.dbdemos_dir or None)
    else:
        raw = load_table(source)
    records = apply_mapping(raw, data_cfg.columns or None)
    empty = (records["instruction"].str.strip() == "") | (records["output"].str.strip() == "")
    if empty.all():
        raise DataError("Every row has an empty question or answer; check the column mapping.")
    return records[~empty].reset_index(drop=True).assign(id=lambda d: [f"r{i}" for i in range(len(d))])


# -- split and leakage ------------------------------------------------------------------------

def normalize(text: str) -> str:
    """Lowercase, strip quotes/numbering/punctuation and collapse spaces, for duplicate and leak checks."""
    t = str(text).lower().strip().strip("\"'“”‘’` ")
    t = re.sub(r"^\s*\d+[.)]\s+", "", t)
    t = re.sub(r"[^\w\s]", " ", t)
    return re.sub(r"\s+", " ", t).strip()


def split(df: pd.DataFrame, eval_fraction: float, seed: int) -> pd.Series:
    """'train'/'eval' per row, by a hash of the normalized question: duplicates land on one side."""
    def side(q: str) -> str:
        h = hashlib.sha256(f"{seed}:{normalize(q)}".encode()).digest()
        return "eval" if int.from_bytes(h[:8], "big") / 2**64 < eval_fraction else "train"
    return df["instruction"].map(side)


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


def prepare_dataset(data_cfg: DataConfig) -> PreparedData:
    """Load, map, clean (config steps), split and cap: the exact records a run trains and scores on."""
    from workbench.cleaning import apply_steps

    df = load_source(data_cfg)
    loaded = len(df)
    df, cleaning = apply_steps(df, list(data_cfg.cleaning))
    if df.empty:
        raise DataError("Cleaning removed every row; turn off some cleaning steps or check the data.")
    sides = split(df, data_cfg.eval_fraction, data_cfg.split_seed)
    train, eval_ = df[sides == "train"], df[sides == "eval"]
    if train.empty or eval_.empty:
        raise DataError(f"The split left {len(train)} training and {len(eval_)} evaluation rows; use more data "
                        f"or change data.eval_fraction.")
    if data_cfg.max_train_examples:
        train = train.head(data_cfg.max_train_examples)
    if data_cfg.max_eval_examples:
        eval_ = eval_.head(data_cfg.max_eval_examples)
    report = {"source": data_cfg.source, "rows_loaded": loaded, "rows_after_cleaning": len(df),
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
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]
