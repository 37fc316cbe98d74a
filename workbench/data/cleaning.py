"""Cleaning steps: each is explicit and reviewable — what it would change, with counts and examples.

A step takes the record table and returns (new_table, changes) where changes lists, per touched
row, the id, what happened ('edited' or 'dropped') and the before/after text.
"""
from __future__ import annotations

import re

import pandas as pd

from workbench.data.loading import DataError, normalize

SHORT_ANSWER_CHARS = 20

_CHATTER = re.compile(
    r"^\s*[\(\[]?\s*(note|please note|i will not|i won't|i have not|here (is|are) (the|a|some)|"
    r"question\s*\d*\s*:|sure[,!]|as an ai)\b", re.IGNORECASE)
_NUMBERING = re.compile(r"^\s*(\d{1,3}[.)]|q\d*[.:)]|question\s*\d*\s*[:.])\s+", re.IGNORECASE)
_QUOTES = "\"'“”‘’`"


def _strip_quotes(text: str) -> str:
    t = text.strip()
    while len(t) >= 2 and t[0] in _QUOTES and t[-1] in _QUOTES:
        t = t[1:-1].strip()
    return t


def _strip_numbering(text: str) -> str:
    return _NUMBERING.sub("", text, count=1).strip()


def _first_question(text: str) -> str:
    """Keep the question line of a multi-line question; drop generator chatter and pasted answers."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if len(lines) <= 1:
        return text.strip()
    keep = [ln for ln in lines if not _CHATTER.match(ln)]
    if not keep:
        return ""
    with_q = [ln for ln in keep if ln.rstrip().endswith("?")]
    return _strip_quotes(_strip_numbering(with_q[0] if with_q else keep[0]))


def _edit(df, column, fn):
    new = df[column].map(fn)
    changed = new != df[column]
    changes = [{"id": i, "action": "edited", "field": column, "before": b, "after": a}
               for i, b, a in zip(df.loc[changed, "id"], df.loc[changed, column], new[changed])]
    out = df.copy()
    out[column] = new
    return out, changes


def _drop(df, mask, reason):
    changes = [{"id": i, "action": "dropped", "field": "row", "before": q, "after": reason}
               for i, q in zip(df.loc[mask, "id"], df.loc[mask, "instruction"])]
    return df[~mask].copy(), changes


def strip_quotes(df):
    out, ch1 = _edit(df, "instruction", _strip_quotes)
    out, ch2 = _edit(out, "output", _strip_quotes)
    return out, ch1 + ch2


def strip_numbering(df):
    return _edit(df, "instruction", _strip_numbering)


def drop_generator_chatter(df):
    out, changes = _edit(df, "instruction", _first_question)
    out, dropped = _drop(out, out["instruction"].str.strip() == "", "only generator chatter, no question")
    return out, changes + dropped


def drop_short_answers(df):
    mask = df["output"].str.strip().str.len() < SHORT_ANSWER_CHARS
    return _drop(df, mask, f"answer shorter than {SHORT_ANSWER_CHARS} characters")


def drop_duplicate_pairs(df):
    key = df["instruction"].map(normalize) + "\x00" + df["output"].map(normalize)
    return _drop(df, key.duplicated(keep="first"), "same question and answer as an earlier row")


def drop_duplicate_questions(df):
    return _drop(df, df["instruction"].map(normalize).duplicated(keep="first"),
                 "same question as an earlier row (kept the first answer)")


def drop_duplicate_answers(df):
    return _drop(df, df["output"].map(normalize).duplicated(keep="first"),
                 "same answer as an earlier row")


STEPS = {
    "strip_numbering": (strip_numbering, "Remove list numbering such as '1. ' or 'Q: ' at the start of a question."),
    "strip_quotes": (strip_quotes, "Remove quote marks wrapped around a whole question or answer."),
    "drop_generator_chatter": (drop_generator_chatter, "Multi-line questions: keep the question line, drop "
                               "generator notes ('(Note: I will not…)') and pasted answers."),
    "drop_short_answers": (drop_short_answers, f"Drop rows whose answer is under {SHORT_ANSWER_CHARS} characters."),
    "drop_duplicate_pairs": (drop_duplicate_pairs, "Drop exact repeats of a question+answer pair (after normalizing)."),
    "drop_duplicate_questions": (drop_duplicate_questions, "Keep only the first answer of a repeated question."),
    "drop_duplicate_answers": (drop_duplicate_answers, "Keep only the first question of a repeated answer."),
}


def check_steps(names) -> None:
    unknown = [n for n in names if n not in STEPS]
    if unknown:
        raise DataError(f"Unknown cleaning step(s) {unknown}; choose from {', '.join(STEPS)}.")


def apply_steps(df: pd.DataFrame, names) -> tuple[pd.DataFrame, list[dict]]:
    """Apply steps in order; return the cleaned table and a per-step report (counts + examples)."""
    check_steps(names)
    report = []
    for name in names:
        fn, description = STEPS[name]
        before = len(df)
        df, changes = fn(df)
        report.append({"step": name, "description": description,
                       "edited": sum(c["action"] == "edited" for c in changes),
                       "dropped": before - len(df), "examples": changes[:5]})
    return df.reset_index(drop=True), report


def preview(df: pd.DataFrame, names) -> list[dict]:
    """What each step WOULD change, applied in sequence, without touching `df`."""
    return apply_steps(df.copy(), names)[1]


def flag_rows(df: pd.DataFrame) -> pd.Series:
    """Rows any default step would touch: shown as 'flagged' in the Data tab."""
    flagged = pd.Series(False, index=df.index)
    for name in ("strip_quotes", "strip_numbering", "drop_generator_chatter", "drop_short_answers"):
        _, changes = STEPS[name][0](df)
        flagged |= df["id"].isin({c["id"] for c in changes})
    return flagged


def duplicate_rows(df: pd.DataFrame) -> pd.Series:
    """Rows whose normalized question or answer occurs more than once."""
    q, a = df["instruction"].map(normalize), df["output"].map(normalize)
    return q.duplicated(keep=False) | a.duplicated(keep=False)
