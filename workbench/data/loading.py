"""Reading Q&A tables from files and folders (CSV/TSV, Parquet, JSON/JSONL, saved HF datasets, dbdemos).

Every problem becomes a DataError whose message names the problem and the fix; the source file is
only ever read, never written.
"""
from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import pandas as pd

from workbench import paths, safety

SUPPORTED = ".csv, .tsv, .parquet, .json, .jsonl, or a saved Hugging Face dataset folder"
DBDEMOS_FILES = ("training_dataset_question.parquet", "training_dataset_answer.parquet")


class DataError(ValueError):
    """A problem with the user's data; the message names the problem and the fix."""


def max_file_mb() -> float:
    """Largest file accepted: the upload limit (WORKBENCH_MAX_UPLOAD_MB, default 100)."""
    try:
        return safety.max_upload_mb()
    except safety.UnsafeInput as e:
        raise DataError(str(e)) from None


def load_table(source: str | Path) -> pd.DataFrame:
    """Read a file or dataset folder into a DataFrame; never modifies the source."""
    text = str(source).strip()
    if not text:
        raise DataError("No data source given; choose the sample, the dbdemos folder, or a file.")
    if "\x00" in text:
        raise DataError("The path contains a NUL character; type or paste the path again.")
    p = Path(text).expanduser()
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except OSError as e:
        raise DataError(f"{text[:200]} cannot be checked ({e.strerror or e}); check the path.") from None
    if not exists:
        raise DataError(f"{p} does not exist; check the path (supported: {SUPPORTED}).")
    if is_dir:
        return _guarded(_load_folder, p, "folder")
    return _guarded(_load_file, p, "file")


def _guarded(reader, p: Path, what: str) -> pd.DataFrame:
    """Turn any unexpected library error into a DataError, so the app and CLI never crash on bad data."""
    try:
        return reader(p)
    except DataError:
        raise
    except PermissionError:
        raise DataError(f"{p} cannot be read (permission denied); copy it somewhere readable.") from None
    except (MemoryError, RecursionError) as e:
        raise DataError(f"{p.name} is too large or too deeply nested to load ({type(e).__name__}); "
                        f"split or flatten it first.") from None
    except Exception as e:  # noqa: BLE001 - pandas/pyarrow/datasets raise many types for bad input
        raise DataError(f"{p.name} could not be read as a Q&A {what} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else 'no details'}); check that it is a valid "
                        f"{SUPPORTED} source.") from None


def _load_file(p: Path) -> pd.DataFrame:
    size, limit = p.stat().st_size, max_file_mb()
    if size / 1e6 > limit:
        raise DataError(f"{p.name} is {size / 1e6:,.0f} MB, over the {limit:,.0f} MB limit; split it or "
                        f"sample it first (or raise WORKBENCH_MAX_UPLOAD_MB).")
    if size == 0:
        raise DataError(f"{p.name} is empty (0 bytes); choose a file that holds question/answer rows.")
    suffix = p.suffix.lower()
    readers = {".csv": _read_csv, ".tsv": _read_csv, ".txt": _read_csv, ".parquet": _read_parquet,
               ".json": _read_json, ".jsonl": _read_json, ".ndjson": _read_json}
    if suffix not in readers:
        raise DataError(f"{p.name}: unsupported file type '{suffix or 'none'}'; use {SUPPORTED}.")
    _reject_binary(p, suffix)
    return _finish_table(readers[suffix](p), p.name)


def _reject_binary(p: Path, suffix: str) -> None:
    with p.open("rb") as fh:
        head = fh.read(4096)
    if suffix == ".parquet":
        if not head.startswith(b"PAR1"):
            raise DataError(f"{p.name} is not a Parquet file (its first bytes are not 'PAR1'); "
                            f"re-export it as Parquet or use CSV/JSONL.")
        return
    if b"\x00" in head:
        raise DataError(f"{p.name} looks binary (contains NUL bytes), not {suffix[1:].upper()} text; "
                        f"check that it is the right file.")


def _decode(p: Path) -> tuple[str, str]:
    """UTF-8 text, or Windows-1252/latin-1 text when it is not UTF-8 (the encoding is reported)."""
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
    import csv

    text, encoding = _decode(p)
    sep = "\t" if p.suffix.lower() == ".tsv" else None
    try:
        with warnings.catch_warnings():  # a row longer than the header would silently become an index
            warnings.simplefilter("error", pd.errors.ParserWarning)
            header = pd.read_csv(io.StringIO(text), sep=sep, engine="python", header=None, nrows=1, dtype=str)
            df = pd.read_csv(io.StringIO(text), sep=sep, engine="python", dtype=str, index_col=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{p.name} has no header and no rows; it needs a header line such as "
                        f"'question,answer' and one row per pair.") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, ValueError, csv.Error) as e:
        raise DataError(f"{p.name} could not be parsed as CSV ({str(e).splitlines()[0][:160]}); check quoting "
                        f"and that every row has the same number of fields.") from None
    names = [str(c).strip() for c in header.iloc[0].tolist()] if len(header) else []
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:  # pandas silently renames repeats to 'x.1'; say so instead
        raise DataError(f"{p.name} has duplicate column names {dups}; rename them so each is unique.")
    df.attrs["encoding"] = encoding
    return df


def _read_parquet(p: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise DataError(f"{p.name} could not be read as Parquet ({type(e).__name__}: {str(e)[:160]}); "
                        f"re-export it or use CSV/JSONL.") from None


def _read_json(p: Path) -> pd.DataFrame:
    text, encoding = _decode(p)
    stripped = text.strip()
    if not stripped:
        raise DataError(f"{p.name} holds only whitespace; it needs JSON records.")
    if stripped[0] == "[":
        rows = _parse_json(stripped, p)
    elif stripped[0] == "{":
        rows = _json_lines(stripped, p)
    else:
        raise DataError(f"{p.name} does not start with '[' or '{{', so it is not JSON records; use a list of "
                        f"objects or one object per line (JSONL).")
    if not isinstance(rows, list):
        raise DataError(f"{p.name}: expected a list of objects, found a {type(rows).__name__}.")
    bad = next((r for r in rows if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{p.name}: expected a list of objects (one per Q&A pair), found "
                        f"{type(bad).__name__} items.")
    df = pd.DataFrame(rows)
    df.attrs["encoding"] = encoding
    return df


def _parse_json(text: str, p: Path):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{p.name}: invalid JSON at line {e.lineno} ({e.msg}); fix it or use one JSON "
                        f"object per line (JSONL).") from None


def _json_lines(text: str, p: Path) -> list:
    """JSONL, or a single (possibly pretty-printed) object wrapping one list of records."""
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == 1:
                return _unwrap(_parse_json(text, p), p)
            raise DataError(f"{p.name}: line {n} is not valid JSON ({e.msg}); each line must be one "
                            f"object like {{\"question\": ..., \"answer\": ...}}.") from None
    if len(rows) == 1 and isinstance(rows[0], dict):
        lists = [v for v in rows[0].values() if isinstance(v, list) and v and isinstance(v[0], dict)]
        if len(lists) == 1:
            return lists[0]
    return rows


def _unwrap(obj, p: Path) -> list:
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
    raise DataError(f"{p.name}: a single JSON object without one list of records inside; use a list of "
                    f"objects or JSONL.")


def _load_folder(p: Path) -> pd.DataFrame:
    if any((p / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
        from datasets import DatasetDict, load_from_disk

        try:
            ds = load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001 - datasets raises many types for broken folders
            raise DataError(f"{p} looks like a saved Hugging Face dataset but could not be loaded "
                            f"({type(e).__name__}: {str(e)[:160]}); re-save it with save_to_disk().") from None
        if isinstance(ds, DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        return _finish_table(ds.to_pandas(), p.name)
    if (p / DBDEMOS_FILES[0]).is_file():
        return load_dbdemos(p)
    raise DataError(f"Folder {p} is not a dataset: no saved Hugging Face dataset (dataset_info.json) and no "
                    f"dbdemos files inside. Choose a file ({SUPPORTED}) or such a folder.")


def _finish_table(df: pd.DataFrame, name: str) -> pd.DataFrame:
    if df.columns.duplicated().any():
        dups = sorted(set(map(str, df.columns[df.columns.duplicated()])))
        raise DataError(f"{name} has duplicate column names {dups}; rename them so each is unique.")
    if len(df.columns) == 0:
        raise DataError(f"{name} has no columns; it needs at least a question and an answer column.")
    if len(df) == 0:
        raise DataError(f"{name} has columns ({', '.join(map(str, df.columns))}) but no rows; add Q&A rows.")
    df.columns = [str(c).strip() for c in df.columns]
    return df


def load_dbdemos(folder: str | Path | None = None) -> pd.DataFrame:
    """The Databricks docs Q&A: join question.id == answer.question_id (joining on id alone is wrong)."""
    folder = Path(str(folder).strip()).expanduser() if folder and str(folder).strip() else paths.default_dbdemos_dir()
    q_path, a_path = (folder / name for name in DBDEMOS_FILES)
    if not q_path.is_file() or not a_path.is_file():
        raise DataError(f"The dbdemos files are not in {folder} (need {DBDEMOS_FILES[0]} and {DBDEMOS_FILES[1]}). "
                        f"Point to the folder that holds them, or download them: in the app, open 'Download the dbdemos "
                        f"files' at the bottom of the Data tab; from a terminal, `python -m workbench data "
                        f"fetch-dbdemos --dest DIR --accept-licence`.")
    try:
        q = pd.read_parquet(q_path, columns=["id", "question"])
        a = pd.read_parquet(a_path, columns=["question_id", "answer"])
    except Exception as e:  # noqa: BLE001 - pyarrow errors for missing columns / corrupt files
        raise DataError(f"The dbdemos files in {folder} could not be read ({type(e).__name__}: {str(e)[:160]}); "
                        f"download them again with `python -m workbench data fetch-dbdemos`.") from None
    df = q.merge(a, left_on="id", right_on="question_id", how="inner").drop(columns=["question_id"])
    if df.empty:
        raise DataError(f"No question in {q_path.name} matches an answer in {a_path.name} (question.id == "
                        f"answer.question_id); download the files again.")
    return df.rename(columns={"id": "source_id"})


def normalize(text: str) -> str:
    """Lowercase, strip quotes/numbering/punctuation and collapse spaces, for duplicate and leak checks."""
    t = str(text).lower().strip().strip("\"'“”‘’` ")
    t = re.sub(r"^\s*\d+[.)]\s+", "", t)
    t = re.sub(r"[^\w\s]", " ", t)
    return re.sub(r"\s+", " ", t).strip()
