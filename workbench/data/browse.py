"""Searching, filtering and summarising a record table (used by the Data tab and `data inspect`)."""
from __future__ import annotations

import pandas as pd

from workbench.config import DataConfig
from workbench.data.cleaning import duplicate_rows, flag_rows
from workbench.data.dataset import split

VIEWS = ("all rows", "duplicates", "flagged by cleaning", "train split", "eval split")


def annotate(df: pd.DataFrame, eval_fraction: float | None = None, seed: int | None = None) -> pd.DataFrame:
    """Add split, q_chars, a_chars, duplicate and flagged columns for browsing. The split defaults to DataConfig's,
    so the Data tab shows the split a run with default settings will use."""
    defaults = DataConfig()
    eval_fraction = defaults.eval_fraction if eval_fraction is None else eval_fraction
    seed = defaults.split_seed if seed is None else seed
    out = df.copy()
    out["split"] = split(out, eval_fraction, seed) if len(out) else []
    out["q_chars"] = out["instruction"].str.len()
    out["a_chars"] = out["output"].str.len()
    out["duplicate"] = duplicate_rows(out) if len(out) else []
    out["flagged"] = flag_rows(out) if len(out) else []
    return out


def filter_table(df: pd.DataFrame, query: str = "", min_chars: int = 0, max_chars: int = 0,
                 view: str = "all rows") -> pd.DataFrame:
    """Full-text search (all words must occur, case-insensitive) + answer-length range + a view."""
    mask = pd.Series(True, index=df.index)
    text = (df["instruction"] + "\n" + df["output"] + "\n" + df["context"]).str.lower()
    for word in (query or "").lower().split():
        mask &= text.str.contains(word, regex=False)
    if min_chars:
        mask &= df["a_chars"] >= min_chars
    if max_chars:
        mask &= df["a_chars"] <= max_chars
    if view == "duplicates":
        mask &= df["duplicate"]
    elif view == "flagged by cleaning":
        mask &= df["flagged"]
    elif view in ("train split", "eval split"):
        mask &= df["split"] == view.split()[0]
    return df[mask]


def char_stats(df: pd.DataFrame) -> dict:
    """Length summaries and duplicate count; an annotate()d table's 'duplicate' column is reused, not recomputed."""
    q, a = df["instruction"].str.len(), df["output"].str.len()
    if "duplicate" in df:
        dup = int(df["duplicate"].sum())
    else:
        dup = int(duplicate_rows(df).sum()) if len(df) else 0
    def summary(s):
        return {"min": int(s.min()), "median": int(s.median()), "p95": int(s.quantile(0.95)), "max": int(s.max())} \
            if len(s) else {}
    return {"rows": len(df), "question_chars": summary(q), "answer_chars": summary(a),
            "duplicate_rows": dup,
            "empty_context": int((df["context"].str.strip() == "").sum())}


def token_stats(df: pd.DataFrame, tokenizer, max_length: int, template: str = "chat", progress=None) -> dict:
    """Token counts of every formatted example with the model's tokenizer, and how many get cut."""
    from workbench.formatting import prompt_text

    prompts = [prompt_text(r, tokenizer, template) for r in df.to_dict("records")]
    answers = df["output"].tolist()
    if progress:
        progress(0.3, "Tokenizing questions")
    p_len = [len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    if progress:
        progress(0.6, "Tokenizing answers")
    a_len = [len(x) for x in tokenizer(answers, add_special_tokens=False)["input_ids"]]
    total = pd.Series([p + a + 1 for p, a in zip(p_len, a_len)])
    return {"prompt_tokens": p_len, "answer_tokens": a_len, "total_tokens": total.tolist(),
            "median_total": int(total.median()) if len(total) else 0,
            "p95_total": int(total.quantile(0.95)) if len(total) else 0,
            "over_max_length": int((total > max_length).sum()), "max_length": max_length}
