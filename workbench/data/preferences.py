"""Preference pairs as data: the rule for duplicates and contradictions, the "too few pairs" floor, and preference
files ({prompt, chosen, rejected} with the common column names guessed) read with the Q&A loader's checks.

A pair is {id, prompt, chosen, rejected, reviewer, chosen_side, rejected_side, created_at, vote_id, votes, source}
(a pair from a file has empty reviewer/sides and source 'file'). Both sources give the same report, made by
pair_report(); blind review votes become pairs in workbench.evaluation.preferences.

The rule, reported and never averaged:
- **duplicates**: the same question (normalized), the same two sides (for a file: the same two answers) and the same
  winner several times (several reviewers agreeing). Each distinct (prompt, chosen, rejected) text (normalized) is
  trained on once; agreeing votes on identical texts collapse to one pair (its `votes` field counts them).
- **contradictions**: the same question and the same two sides, but some votes prefer one side and some the other.
  The reviewers disagree, so no side is "chosen": every vote of such a group is left out of training and listed.
- a pair whose chosen and rejected answers are the same text teaches nothing and is dropped (`identical`).

`MIN_PAIRS` is the one place the floor lives (the CLI, the training job and the UI all ask `readiness()`).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pandas as pd

from workbench import paths, safety
from workbench.data.dataset import _as_text, _reject_nested, guess_columns_by_name
from workbench.data.loading import DataError, load_table, normalize

# Below 8 pairs a preference run is refused: the held-out share (a quarter, at least 2 pairs) must leave at least 6
# to train on, and with 2 held-out pairs the preference accuracy can only read 0%, 50% or 100%. Even at 8 it is a
# demonstration, not evidence: below RECOMMENDED_PAIRS the run is allowed but the message says the result is noisy.
MIN_PAIRS = 8
RECOMMENDED_PAIRS = 50
PAIR_FIELDS = ("id", "prompt", "chosen", "rejected", "reviewer", "chosen_side", "rejected_side", "created_at",
               "vote_id", "votes", "source")
RULE = ("ties and 'both bad' votes are not pairs; agreeing votes on identical answers count once; contradictory "
        "votes (same question and sides, opposite preferences) are left out of training and listed")


class PreferenceError(ValueError):
    """Preference data cannot be used as asked; the message says what to do."""


def pair_report(candidates: list[dict], skipped: dict | None = None, unit: str = "preferring vote") -> dict:
    """Apply the duplicate/contradiction rule (module docstring) to candidate pairs (from votes or a file).

    Returns {pairs, duplicates, contradictions, identical, excluded, skipped, n_candidates, rule}:
    `pairs` is what trains (ids p0, p1, … in the order of the first vote), `duplicates` and `contradictions` are
    lists of groups {prompt, sides, votes: [{vote_id, reviewer, chosen_side}], …}, `identical` counts pairs dropped
    because their chosen and rejected answers are the same text, `excluded` how many candidates the
    contradictions removed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    identical = 0
    for order, pair in enumerate(candidates):
        pair = {**pair, "_order": order}
        if normalize(pair["chosen"]) == normalize(pair["rejected"]):
            identical += 1  # nothing to learn: both answers say the same
            continue
        sides = tuple(sorted((pair.get("chosen_side") or "", pair.get("rejected_side") or "")))
        key = (normalize(pair["prompt"]), sides) if any(sides) else \
            (normalize(pair["prompt"]), tuple(sorted((normalize(pair["chosen"]), normalize(pair["rejected"])))))
        groups[key].append(pair)
    pairs, duplicates, contradictions, excluded = [], [], [], 0
    for (_, sides), members in groups.items():
        winners = {_winner(p) for p in members}
        summary = {"prompt": members[0]["prompt"], "sides": list(sides) if members[0].get("chosen_side") else [],
                   "votes": [{"vote_id": p.get("vote_id"), "reviewer": p.get("reviewer", ""),
                              "chosen_side": p.get("chosen_side", ""), "chosen": p["chosen"][:200]} for p in members]}
        if len(winners) > 1:
            contradictions.append(summary)
            excluded += len(members)
            continue
        if len(members) > 1:
            duplicates.append(summary)
        distinct: dict[tuple, dict] = {}
        for p in members:
            text = (normalize(p["prompt"]), normalize(p["chosen"]), normalize(p["rejected"]))
            if text in distinct:
                distinct[text]["votes"] = distinct[text].get("votes", 1) + 1
            else:
                distinct[text] = dict(p)
        pairs.extend(distinct.values())
    pairs.sort(key=lambda p: p["_order"])
    pairs = [{"id": f"p{i}", **{k: v for k, v in p.items() if k not in ("id", "_order")}} for i, p in enumerate(pairs)]
    return {"pairs": pairs, "duplicates": duplicates, "contradictions": contradictions, "identical": identical,
            "excluded": excluded, "skipped": dict(skipped or {}), "n_candidates": len(candidates), "unit": unit,
            "rule": RULE}


def _winner(pair: dict) -> str:
    """Which side won, or for pairs without sides (a file) which answer text won."""
    return pair.get("chosen_side") or normalize(pair["chosen"])


def readiness(n_pairs: int) -> dict:
    """{ok, level, message}: whether `n_pairs` usable pairs are enough for a preference run (level 'refuse', 'warn'
    or 'ok'), in words the Train tab and the CLI show as they stand."""
    if n_pairs < MIN_PAIRS:
        return {"ok": False, "level": "refuse", "n_pairs": n_pairs,
                "message": f"Only {n_pairs} usable preference pair{'s' * (n_pairs != 1)}; a preference run needs at "
                           f"least {MIN_PAIRS} (a quarter is held out to measure preference accuracy, and with fewer "
                           f"the measurement can only read 0%, 50% or 100%). Collect more blind votes that prefer one "
                           f"side in the Chat tab, or load a preference file."}
    if n_pairs < RECOMMENDED_PAIRS:
        return {"ok": True, "level": "warn", "n_pairs": n_pairs,
                "message": f"{n_pairs} preference pairs: enough to run, too few to trust; below "
                           f"{RECOMMENDED_PAIRS} pairs the held-out accuracy and the win rate move a lot with each "
                           f"vote. Treat the result as a demonstration."}
    return {"ok": True, "level": "ok", "n_pairs": n_pairs, "message": f"{n_pairs} preference pairs."}


def describe(report: dict) -> str:
    """A few lines for people: how many pairs, what was skipped, duplicates and contradictions."""
    skipped = report.get("skipped") or {}
    unit = report.get("unit", "preferring vote")
    lines = [f"{len(report['pairs'])} preference pair{'s' * (len(report['pairs']) != 1)} from "
             f"{report['n_candidates']} {unit}{'s' * (report['n_candidates'] != 1)}"
             + (f" ({skipped.get('tie', 0)} ties and {skipped.get('both_bad', 0)} 'both bad' votes are not pairs)"
                if "tie" in skipped else "")
             + (f" ({skipped['empty']} row{'s' * (skipped['empty'] != 1)} with an empty prompt, chosen or rejected "
                f"answer skipped)" if skipped.get("empty") else "") + "."]
    if report["identical"]:
        lines.append(f"{report['identical']} pair(s) dropped: the chosen and rejected answers are the same text.")
    for group in report["duplicates"]:
        who = sorted({v["reviewer"] for v in group["votes"] if v["reviewer"]})
        lines.append(f"Duplicate: {len(group['votes'])} {unit}s agree on {group['prompt'][:80]!r}"
                     + (f" (reviewers {', '.join(who)})." if who else "."))
    for group in report["contradictions"]:
        winners = ", ".join(f"{v['reviewer'] or '?'} chose {v['chosen_side'] or repr(v['chosen'][:40])}"
                            for v in group["votes"])
        lines.append(f"Contradiction, left out of training: {group['prompt'][:80]!r} ({winners}).")
    lines.append(readiness(len(report["pairs"]))["message"])
    return "\n".join(lines)


def write_pairs_jsonl(pairs: list[dict], path: str | Path) -> int:
    """Write pairs as JSONL (prompt, chosen, rejected first; then reviewer, sides, time); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps({k: pair.get(k) for k in PAIR_FIELDS if k in pair}, ensure_ascii=False) + "\n")
    return len(pairs)


# -- preference files ---------------------------------------------------------------------------

# Column names people use, most specific first (Anthropic HH, UltraFeedback, OpenAI-style and spreadsheet exports).
GUESSES = {
    "prompt": ["prompt", "question", "instruction", "query", "input", "user", "context", "text"],
    "chosen": ["chosen", "preferred", "winner", "better", "chosen_response", "response_chosen", "accepted", "good",
               "positive", "win", "answer_chosen", "preferred_response"],
    "rejected": ["rejected", "loser", "worse", "rejected_response", "response_rejected", "dispreferred", "bad",
                 "negative", "lose", "answer_rejected", "non_preferred", "dispreferred_response"],
}
FIELDS = ("prompt", "chosen", "rejected")


def guess_columns(columns) -> dict:
    """{prompt|chosen|rejected: column} from common names (case-insensitive)."""
    return guess_columns_by_name(columns, GUESSES)


def pairs_source(source: str, server: bool = True) -> Path:
    """A preference file named by a request: with `server` (the app and its API) it must lie in the data folders or
    the upload folder (workbench.safety rules; anything else is refused without saying whether it exists); the CLI
    passes server=False and reads any path its user can."""
    try:
        if server:
            return safety.server_path(source, [*paths.data_roots(), paths.upload_dir()], "preference file")
    except safety.UnsafeInput as e:
        raise DataError(str(e)) from None
    text = str(source or "").strip()
    if not text:
        raise DataError("No preference file given; name a JSONL, CSV, JSON or Parquet file with prompt, chosen and "
                        "rejected columns.")
    return Path(text).expanduser()


def load_preference_file(source: str | Path, columns: dict | None = None, server: bool = False) -> dict:
    """Read a preference file (CSV/TSV, JSON/JSONL, Parquet, a saved dataset folder) into the report pair_report()
    makes, plus `columns` (the mapping used) and `file`. `columns` maps prompt/chosen/rejected onto column names;
    the rest is guessed. Chat-style cells (a list of {role, content} messages, as in Anthropic HH) use the last
    message's text. The same checks as the Q&A loader (size, empty, encoding, binary, NaN) raise DataError."""
    path = pairs_source(str(source), server)
    df = load_table(path)
    mapping = {**guess_columns(df.columns), **{k: v for k, v in (columns or {}).items() if v}}
    cols = ", ".join(map(str, df.columns))
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise DataError(f"Unknown preference field(s) {', '.join(unknown)}; map {', '.join(FIELDS)} onto columns.")
    for need, what in (("prompt", "prompts (questions)"), ("chosen", "chosen (preferred) answers"),
                       ("rejected", "rejected answers")):
        if need not in mapping:
            raise DataError(f"{path.name}: no column for the {what}; columns are {cols}. Name the columns prompt, "
                            f"chosen and rejected, or map '{need}' to one of them.")
        if mapping[need] not in df.columns:
            raise DataError(f"{path.name}: column '{mapping[need]}' not found; columns are {cols} — map '{need}' to "
                            f"one of them.")
    table = pd.DataFrame({field: df[mapping[field]].map(_message_text) for field in FIELDS})
    for field in FIELDS:
        _reject_nested(table[field], mapping[field])
        table[field] = table[field].map(_as_text).str.strip()
    empty = (table == "").any(axis=1)
    if empty.all():
        raise DataError(f"{path.name}: every row has an empty prompt, chosen or rejected answer (columns "
                        f"{', '.join(repr(mapping[f]) for f in FIELDS)}); check the column mapping.")
    candidates = [{"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected, "reviewer": "", "chosen_side": "",
                   "rejected_side": "", "created_at": "", "vote_id": None, "votes": 1, "source": "file"}
                  for r in table[~empty].itertuples(index=False)]
    report = pair_report(candidates, {"empty": int(empty.sum())}, unit="row")
    return {**report, "columns": mapping, "file": path.name}


def _message_text(value):
    """A chat-style cell (list of {role, content}) -> the last message's content; anything else unchanged."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value[-1]["content"]
    return value


# -- the Data tab's preference file ---------------------------------------------------------------
# A preference file loaded in the app is saved (its usable pairs, after the rule above) under the data folder, at a
# path the server chooses; the Train tab's "the Data tab's preference file" trains on that path, so no request ever
# names the file a run reads.

def saved_path() -> Path:
    return paths.data_dir() / "preferences" / "current.jsonl"


def saved_manifest_path() -> Path:
    return paths.data_dir() / "preferences" / "current.json"


def save_loaded(report: dict) -> dict:
    """Save a loaded file's usable pairs as the Data tab's preference file; returns its manifest."""
    from datetime import datetime, timezone

    tmp = saved_path().with_name(".current.jsonl.tmp")
    write_pairs_jsonl(report["pairs"], tmp)
    tmp.replace(saved_path())
    meta = {"file": report.get("file", ""), "columns": report.get("columns", {}), "pairs": len(report["pairs"]),
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    paths.atomic_write(saved_manifest_path(), json.dumps(meta, indent=1, ensure_ascii=False))
    return meta


def saved_manifest() -> dict | None:
    """The saved preference file's manifest, or None when none is saved (or its pairs file is gone)."""
    try:
        meta = json.loads(saved_manifest_path().read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return meta if isinstance(meta, dict) and saved_path().is_file() else None
