"""Where the workbench keeps its files: runs, the model cache, review votes, caches.

Everything hangs off WORKBENCH_HOME (default: ./.workbench beside app.py for local use; on a
Hugging Face Space with a mounted volume, a folder on that volume — see workbench.space).
Each location can also be overridden on its own through an environment variable.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def home() -> Path:
    env = os.environ.get("WORKBENCH_HOME")
    if env:
        return Path(env).expanduser()
    volume = os.environ.get("WORKBENCH_VOLUME")  # set by the Space runtime detection
    if volume:
        return Path(volume) / "workbench"
    return REPO_ROOT / ".workbench"


def _dir(env_name: str, default: Path) -> Path:
    p = Path(os.environ[env_name]).expanduser() if os.environ.get(env_name) else default
    p.mkdir(parents=True, exist_ok=True)
    return p


def runs_dir() -> Path:
    """Run folders (WORKBENCH_RUNS_DIR)."""
    return _dir("WORKBENCH_RUNS_DIR", home() / "runs")


def model_cache() -> Path:
    """Converted/cached models (WORKBENCH_MODEL_CACHE); shared by all runs."""
    return _dir("WORKBENCH_MODEL_CACHE", Path.home() / ".cache" / "tech-llm-forge" / "models")


def cache_dir() -> Path:
    """Small computed caches, such as base-model eval results (WORKBENCH_CACHE_DIR)."""
    return _dir("WORKBENCH_CACHE_DIR", home() / "cache")


def data_dir() -> Path:
    """Shared records such as review votes (SQLite) and exported datasets."""
    return _dir("WORKBENCH_DATA_DIR", home() / "data")


SAMPLE_DATA = REPO_ROOT / "workbench" / "sample_data" / "databricks_sql_pyspark_qa.jsonl"


def default_dbdemos_dir() -> Path:
    """The dbdemos files: WORKBENCH_DBDEMOS_DIR, else ../shared/data/databricks-docs-qa beside the repo."""
    env = os.environ.get("WORKBENCH_DBDEMOS_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "data" / "databricks-docs-qa"


def atomic_write(path: Path, text: str) -> None:
    """Write UTF-8 text through a temporary file and a rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


@contextmanager
def file_lock(path: Path, wait: bool = True):
    """Hold an exclusive lock on `path` (created if missing) for the `with` block. Other processes wait for it,
    or with wait=False this raises BlockingIOError at once when someone holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
