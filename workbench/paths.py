"""Where the workbench keeps its files: runs, the model cache, review votes, caches.

Everything hangs off WORKBENCH_HOME (default: ./.workbench beside app.py for local use; on a
Hugging Face Space with a mounted volume, a folder on that volume — see workbench.space).
Each location can also be overridden on its own through an environment variable.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
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


def upload_dir() -> Path:
    """Where Gradio keeps the files it received from browsers (GRADIO_TEMP_DIR, which app.py sets before
    Gradio loads). The only folder an uploaded file may be read from: a request can name any path as its
    "uploaded file", so the handler checks that it really lies here."""
    env = os.environ.get("GRADIO_TEMP_DIR")
    return Path(env).expanduser() if env else Path(tempfile.gettempdir()) / "tech-llm-forge-uploads"


def data_roots() -> list[Path]:
    """Folders whose files a request may name (the Data tab's 'file path', 'dbdemos folder', leakage check):
    the data folder, the dbdemos folder, and any folders listed in WORKBENCH_DATA_ROOTS (os.pathsep-separated).
    Everything else on the server is out of reach of the UI and its API; the CLI reads any path its user can."""
    extra = [Path(p).expanduser() for p in os.environ.get("WORKBENCH_DATA_ROOTS", "").split(os.pathsep) if p.strip()]
    return [data_dir(), default_dbdemos_dir(), *extra]


def change_marker(key: str, files) -> str:
    """A cheap 'did anything change?' key for views that poll: size and mtime of each file (stat only, no read)."""
    parts = [str(key)]
    for path in files:
        try:
            st = Path(path).stat()
            parts.append(f"{st.st_size}:{st.st_mtime_ns}")
        except FileNotFoundError:
            parts.append("-")
    return ":".join(parts)


def damaged(path: Path | str, problem: BaseException | str) -> str:
    """The one wording for a file that exists but cannot be used, as the views and the CLI say it."""
    why = problem if isinstance(problem, str) else f"{type(problem).__name__}: {str(problem)[:160]}"
    return f"{path} is damaged ({why})"


def atomic_write(path: Path, text: str) -> None:
    """Write UTF-8 text through a temporary file and a rename: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def acquire_lock(path: Path, wait_s: float | None = None):
    """Take an exclusive lock on `path` (created if missing) and return its open file: the lock lasts until that file
    is closed or the process ends (the kernel drops it even on kill -9). wait_s=None waits as long as it takes;
    otherwise BlockingIOError after about that many seconds (0 = try once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a")
    deadline = time.monotonic() + (wait_s or 0)
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX if wait_s is None else fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            if time.monotonic() >= deadline:
                fh.close()
                raise
            time.sleep(0.05)  # lock_held() below holds it for microseconds; a retry gets past such a probe


def lock_held(path: Path) -> bool:
    """True when another open file holds the lock on `path` (a probe: takes and drops it at once when free)."""
    if not path.exists():
        return False
    try:
        fh = acquire_lock(path, wait_s=0)
    except BlockingIOError:
        return True
    fh.close()
    return False


@contextmanager
def file_lock(path: Path, wait: bool = True):
    """Hold an exclusive lock on `path` for the `with` block. Other processes wait for it, or with wait=False this
    raises BlockingIOError at once when someone holds it."""
    fh = acquire_lock(path, None if wait else 0)
    try:
        yield
    finally:
        fh.close()  # closing the file drops the lock
