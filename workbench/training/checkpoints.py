"""Checkpoints a run can trust: a completion marker written last, a content check before resuming, and the
fallback to the newest intact checkpoint when the latest one is damaged.

The Trainer writes checkpoint-<step>/ in place (adapter weights, optimizer, scheduler, RNG state, and
trainer_state.json last). After it has finished, the callback writes `workbench-complete.json` listing every file
and its size; a kill mid-write leaves no marker, and a file truncated later no longer matches its size. No torch
here: the checks read JSON, zip directories (torch's .pt/.pth format) and safetensors headers.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from workbench import paths
from workbench.runs import RunFolder, checkpoint_step

MARKER = "workbench-complete.json"
SET_ASIDE_PREFIX = "damaged-"  # not matched by the Trainer's "checkpoint-*" glob, so it never resumes or rotates it


def mark_complete(checkpoint: Path) -> None:
    """Record that the Trainer finished writing `checkpoint` (call after it has saved; rank 0 only)."""
    files = {p.relative_to(checkpoint).as_posix(): p.stat().st_size
             for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != MARKER}
    paths.atomic_write(checkpoint / MARKER, json.dumps({"step": checkpoint_step(checkpoint), "files": files}, indent=1))


def problem(checkpoint: Path) -> str | None:
    """None when the checkpoint is complete and its files read back; else what is wrong, in a few words."""
    marker = checkpoint / MARKER
    if marker.is_file():
        try:
            files = json.loads(marker.read_text(encoding="utf-8"))["files"]
        except (ValueError, KeyError, TypeError, OSError):
            return f"its {MARKER} is damaged"
        for name, size in files.items():
            p = checkpoint / name
            if not p.is_file():
                return f"{name} is missing"
            if p.stat().st_size != size:
                return f"{name} is {p.stat().st_size} bytes, {size} were written"
    # Without a marker (a checkpoint from before markers, or a kill between the Trainer's last write and the marker)
    # the content decides; with one, the content is checked too: a file can be overwritten with the same size.
    state = checkpoint / "trainer_state.json"
    try:
        step = json.loads(state.read_text(encoding="utf-8")).get("global_step")
    except FileNotFoundError:
        return "trainer_state.json is missing (the save was cut short)"
    except (ValueError, AttributeError, OSError, UnicodeDecodeError):
        return "trainer_state.json is not valid JSON"
    if step != checkpoint_step(checkpoint):
        return f"trainer_state.json says step {step!r}, the folder says {checkpoint_step(checkpoint)}"
    weights = [p for p in checkpoint.glob("adapter_model*.safetensors")]
    if not weights:
        return "the adapter weights (adapter_model.safetensors) are missing"
    for p in weights:
        why = _safetensors_problem(p)
        if why:
            return f"{p.name} {why}"
    if not (checkpoint / "optimizer.pt").is_file():
        return "optimizer.pt is missing"
    for p in sorted([*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]):
        why = _zip_problem(p)
        if why:
            return f"{p.name} {why}"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """The safetensors library reads the header and checks that the tensors' byte ranges cover the file exactly."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            if not list(fh.keys()):
                return "holds no tensors"
    except (SafetensorError, OSError, ValueError) as e:
        return f"does not load ({str(e)[:120]})"
    return None


def _zip_problem(path: Path) -> str | None:
    """torch.save writes a zip archive: a cut-short file has no central directory, a damaged one fails its CRCs."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"is incomplete or not a torch file ({str(e)[:80]})"
    return f"is damaged (bad data in {bad})" if bad else None


def pick_for_resume(run: RunFolder) -> tuple[Path | None, list[str]]:
    """The newest intact checkpoint, and one note per newer checkpoint that was passed over (and why)."""
    notes = []
    for checkpoint in run.checkpoint_dirs():
        why = problem(checkpoint)
        if why is None:
            return checkpoint, notes
        notes.append(f"{checkpoint.name} is damaged ({why})")
    return None, notes


def set_aside(checkpoint: Path) -> Path:
    """Rename a damaged checkpoint so the Trainer neither resumes from it nor overwrites it; kept for inspection."""
    target = checkpoint.with_name(SET_ASIDE_PREFIX + checkpoint.name)
    n = 1
    while target.exists():
        n += 1
        target = checkpoint.with_name(f"{SET_ASIDE_PREFIX}{n}-{checkpoint.name}")
    checkpoint.rename(target)
    return target
