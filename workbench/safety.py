"""Input safety: names and paths that stay inside their folder, upload limits, safe YAML, secret redaction.

Every check raises UnsafeInput with a message that says what was refused and what to do instead.
Run ids themselves are checked by workbench.runs.validate_run_id / run_path.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

# Names of environment variables whose values are secrets (matched anywhere in the name).
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|ACCESS_?KEY|CREDENTIAL", re.I)
# Token shapes worth hiding even when they did not come from the environment.
TOKEN_PATTERNS = [
    re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"),                      # Hugging Face user/org tokens
    re.compile(r"\bapi_org_[A-Za-z0-9]{20,}\b"),                 # old Hugging Face org tokens
    re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{20,}\b"),          # OpenAI-style keys
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"),               # GitHub tokens
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),       # Authorization headers
]
REDACTED = "[REDACTED]"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._()+-]{0,199}$")


class UnsafeInput(ValueError):
    """Input refused for safety; the message says why and what to use instead."""


# -- names and paths ---------------------------------------------------------------------------

def safe_file_name(name: str) -> str:
    """A plain file name: no folders, no '..', no hidden or control characters."""
    name = str(name or "").strip()
    if not name or "\x00" in name or "/" in name or "\\" in name or name in (".", ".."):
        raise UnsafeInput(f"'{name[:80]}' is not a plain file name; use letters, digits, '.', '_', '-' and no folders.")
    if not _FILE_NAME.match(name) or ".." in name:
        raise UnsafeInput(f"'{name[:80]}' is not allowed as a file name; start with a letter or digit and use only "
                          f"letters, digits, spaces, '.', '_', '-', '(', ')', '+' (no '..').")
    return name


def safe_join(base: str | Path, relative: str | Path) -> Path:
    """base/relative, refusing absolute paths, '..' and symlinks that lead outside base."""
    rel = str(relative or "").strip()
    if not rel or "\x00" in rel:
        raise UnsafeInput("Empty or invalid path; give a path relative to the folder.")
    p = Path(rel)
    if p.is_absolute() or rel.startswith("~"):
        raise UnsafeInput(f"'{rel[:120]}' is an absolute path; give a path relative to {base}.")
    if ".." in p.parts:
        raise UnsafeInput(f"'{rel[:120]}' climbs out of its folder with '..'; give a path inside {base}.")
    root = Path(base).resolve()
    target = (root / p).resolve()
    if target != root and root not in target.parents:
        raise UnsafeInput(f"'{rel[:120]}' leads outside {root} (through a symbolic link); refusing to use it.")
    return target


def inside(base: str | Path, path: str | Path) -> bool:
    """True when `path` (after resolving symlinks) lies inside `base`."""
    root, target = Path(base).resolve(), Path(path).resolve()
    return target == root or root in target.parents


def server_path(path: str | Path, roots: list[Path], what: str = "file") -> Path:
    """A server path named by a request, resolved (links followed) and inside one of `roots`; anything else is
    refused without saying whether it exists."""
    text = str(path or "").strip()
    if "\x00" in text:
        raise UnsafeInput("The path contains a NUL character; type or paste the path again.")
    if not text:
        raise UnsafeInput(f"No data source given; type the path of a {what} inside {' or '.join(map(str, roots))}.")
    target = Path(text).expanduser()
    if any(inside(root, target) for root in roots):
        return target.resolve()
    raise UnsafeInput(f"Only files inside {' or '.join(map(str, roots))} can be opened from the app; upload the "
                      f"{what} instead, or ask the admin to add its folder to WORKBENCH_DATA_ROOTS.")


def max_upload_mb() -> float:
    """Largest accepted upload (WORKBENCH_MAX_UPLOAD_MB, default 100) — the limit the data loader uses too."""
    raw = os.environ.get("WORKBENCH_MAX_UPLOAD_MB", "100")
    try:
        return float(raw)
    except ValueError:
        raise UnsafeInput(f"WORKBENCH_MAX_UPLOAD_MB={raw!r} is not a number; set it to e.g. 100.") from None


def check_upload(path: str | Path, limit_mb: float | None = None, inside_dir: str | Path | None = None) -> Path:
    """An uploaded file: a regular file (not a link or folder) no bigger than the limit and, when `inside_dir`
    is given, lying inside that folder (Gradio's upload folder: a request can claim any path as its upload)."""
    p = Path(str(path or ""))
    if not str(path or "").strip():
        raise UnsafeInput("No file was uploaded; drop a file on the upload box.")
    if inside_dir is not None and not inside(inside_dir, p.parent):
        raise UnsafeInput(f"{p.name} was not received through the upload box; drop the file on it (files already "
                          f"on the server cannot be opened as uploads).")
    if p.is_symlink():
        raise UnsafeInput(f"{p.name} is a symbolic link; upload the file itself.")
    if not p.is_file():
        raise UnsafeInput(f"{p.name} is not a regular file; upload a single file.")
    limit = max_upload_mb() if limit_mb is None else limit_mb
    size_mb = p.stat().st_size / 2**20
    if size_mb > limit:
        raise UnsafeInput(f"{p.name} is {size_mb:.1f} MB, above the {limit:g} MB upload limit; upload a smaller "
                          f"file or raise WORKBENCH_MAX_UPLOAD_MB.")
    return p


# -- YAML ---------------------------------------------------------------------------------------

def load_yaml(text_or_path: str | Path, what: str = "YAML file"):
    """yaml.safe_load of a file or string; tags that build Python objects are refused with a clear message."""
    if isinstance(text_or_path, Path):
        try:
            text = text_or_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UnsafeInput(f"{what} {text_or_path} does not exist; check the path.") from None
        except (OSError, UnicodeDecodeError) as e:
            raise UnsafeInput(f"{what} {text_or_path} cannot be read ({e}); save it as UTF-8 text.") from None
    else:
        text = text_or_path
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise UnsafeInput(f"{what} is not valid YAML{at}: {getattr(e, 'problem', None) or e}. "
                          f"Fix the indentation/quoting there (only plain YAML is read; Python tags are refused).") from None


# -- secrets ------------------------------------------------------------------------------------

def secret_values(env=None) -> list[str]:
    """Values of environment variables whose names look secret (long enough to be worth hiding)."""
    env = os.environ if env is None else env
    return sorted({v for k, v in env.items() if SECRET_NAME.search(k) and v and len(v) >= 6}, key=len, reverse=True)


def redact(text, extra: tuple | list = (), env=None) -> str:
    """Hide secret values (from the environment, `extra`, and token-shaped strings) in text meant for
    logs, run folders, model cards or the UI."""
    if text is None:
        return ""
    out = str(text)
    for value in [*sorted((e for e in extra if e and len(e) >= 4), key=len, reverse=True), *secret_values(env)]:
        out = out.replace(value, REDACTED)
    for pat in TOKEN_PATTERNS:
        out = pat.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, out)
    return out
