"""The Data tab's views of one row: its full text, exactly what the model sees (the formatted example with the
tokens that carry the loss), and the token lengths of the whole table."""
from __future__ import annotations

import functools

import gradio as gr
import pandas as pd
import plotly.express as px

from workbench.config import EMBEDDED_MODEL
from workbench.data import browse

MAX_LENGTH = 512  # the handlers' default when called without the "Cut at" field
LIMIT_RANGE = (16, 131072)


def default_max_length() -> int:
    """The sequence limit of the preset Start picks by default on this machine (the Train tab's "Kind of run":
    embedded-gpu with a GPU, quick-demo-cpu without), so "would be cut" counts what that run would cut."""
    from workbench.config import preset
    from workbench.models import detected_gpu

    return preset("embedded-gpu" if detected_gpu()[0] else "quick-demo-cpu").model.max_seq_length


def _limit(value) -> int | None:
    """The "Cut at" field as a whole number of tokens in LIMIT_RANGE, or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if number != number or number != int(number) or not LIMIT_RANGE[0] <= number <= LIMIT_RANGE[1]:
        return None
    return int(number)


def _limit_problem() -> str:
    return (f"⚠️ **Cut at** must be a whole number of tokens from {LIMIT_RANGE[0]} to {LIMIT_RANGE[1]:,} "
            f"(the longest example a run trains on).")


def row_detail(state, row_id) -> str:
    """The full text of one row (the table shows cut cells)."""
    table = state.get("table")
    if table is None or not row_id:
        return ""
    row = table[table["id"] == row_id]
    if row.empty:
        return ""
    r = row.iloc[0]
    parts = [f"**Row `{row_id}`** ({r['split']} split)", f"**Question**\n\n{_quote(r['instruction'])}",
             f"**Answer**\n\n{_quote(r['output'])}"]
    if str(r.get("context", "")).strip():
        parts.append(f"**Context**\n\n{_quote(r['context'])}")
    return "\n\n".join(parts)


def _quote(text) -> str:
    return "\n".join("> " + line for line in str(text).splitlines() or [""])


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """The embedded model's tokenizer, loaded once: the example view re-renders on every row change."""
    from workbench.models import load_tokenizer

    return load_tokenizer(EMBEDDED_MODEL)


def _example(state, row_id, template, max_length=MAX_LENGTH, progress=gr.Progress()):
    table = state.get("table")
    if table is None or not row_id:
        return None, "*Pick a row id from the table to see exactly what the model is trained on.*"
    from workbench.formatting import marked_view

    row = table[table["id"] == row_id]
    if row.empty:
        return None, f"Row {row_id} is not in the current table."
    limit = _limit(max_length)
    if limit is None:
        return None, _limit_problem()
    progress(0.2, desc="Loading the tokenizer")
    pieces = marked_view(row.iloc[0].to_dict(), _tokenizer(), limit, template)
    n_loss = sum(1 for _, loss in pieces if loss)
    return ([(t, "loss" if loss else None) for t, loss in pieces],
            f"{len(pieces)} tokens (cut at {limit}); the **{n_loss} highlighted tokens** (the answer and its "
            f"end-of-turn marker) carry the loss — the prompt only conditions the model.")


def _example_and_row(state, row_id, template, max_length=MAX_LENGTH, progress=gr.Progress()):
    """The formatted example and the full row, for the picked id of the table now shown. Every change of the table
    (Load, mapping, cleaning, undo) runs this, because the picked id often stays the same (`r0`) while the row
    behind it is another one: the id dropdown's change event would not fire."""
    return (*_example(state, row_id, template, max_length, progress), row_detail(state, row_id))


def _token_stats(state, template, max_length=MAX_LENGTH, progress=gr.Progress()):
    table = state.get("table")
    if table is None:
        return "*Load data first.*", None
    limit = _limit(max_length)
    if limit is None:
        return _limit_problem(), None
    progress(0.1, desc="Loading the tokenizer")
    stats = browse.token_stats(table, _tokenizer(), limit, template,
                               progress=lambda f, m: progress(f, desc=m))
    counts = pd.DataFrame({"question (whole prompt)": stats["prompt_tokens"], "answer": stats["answer_tokens"],
                           "whole example": stats["total_tokens"]})
    fig = px.histogram(counts.melt(var_name="part", value_name="tokens"), x="tokens", color="part", nbins=60,
                       barmode="overlay", title="Tokens per example (SmolLM2 tokenizer)")
    fig.add_vline(x=limit, line_dash="dash", annotation_text=f"max_seq_length {limit}")
    return (f"{len(table):,} examples: median {stats['median_total']} tokens, p95 {stats['p95_total']}; "
            f"**{stats['over_max_length']}** are longer than {limit} tokens and would be cut."), fig
