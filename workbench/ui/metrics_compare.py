"""The Metrics tab's side-by-side view of several scored runs: a table, a chart with one colour per run, and a warning
when they were scored on different held-out questions."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.evaluation import evaluate, scoring
from workbench.ui.run_view import empty_figure

LABELS = scoring.LABELS
_fmt = scoring.format_value


def compare_table(run_ids: list[str]) -> pd.DataFrame:
    """One row per run: tuned scores, base perplexity and the change, so several runs read side by side."""
    cols = ["Run", "Examples", "PPL base", "PPL tuned", "ROUGE-1", "ROUGE-2", "ROUGE-L", "BLEU", "PPL change %",
            "Leakage"]
    rows = []
    for run_id in run_ids or []:
        m = evaluate.read_metrics(run_id)
        if not m or "tuned" not in m:
            continue
        t, change = m["tuned"], m.get("change_pct", {})
        pct = change.get("perplexity")
        rows.append([run_id, m.get("eval_examples"), _fmt("perplexity", m["base"]["perplexity"]),
                     _fmt("perplexity", t["perplexity"]), *(_fmt(k, t.get(k)) for k in ("rouge1", "rouge2",
                                                                                         "rougeL", "bleu")),
                     f"{pct:+.1f}" if pct is not None else "—",
                     "YES" if (m.get("leakage") or {}).get("flagged") else "no"])
    return pd.DataFrame(rows, columns=cols)


COLORS = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


def compare_chart(run_ids: list[str]) -> go.Figure:
    """One colour per run, the same in both panels and the legend (the legend names each run once)."""
    fig = make_subplots(rows=1, cols=2, column_widths=[0.75, 0.25],
                        subplot_titles=("Fine-tuned ROUGE / BLEU", "Fine-tuned<br>perplexity"))
    scored = [(r, m) for r in run_ids or [] if (m := evaluate.read_metrics(r)) and "tuned" in m]
    if not scored:
        return empty_figure("Pick two or more scored runs to compare them.")
    keys = [k for k in LABELS if k != "perplexity"]
    for i, (run_id, m) in enumerate(scored):
        color = COLORS[i % len(COLORS)]
        fig.add_trace(go.Bar(x=[LABELS[k] for k in keys], y=[m["tuned"].get(k) for k in keys], name=short_id(run_id),
                             legendgroup=run_id, marker_color=color, hovertext=run_id), 1, 1)
        fig.add_trace(go.Bar(x=["Perplexity"], y=[m["tuned"]["perplexity"]], name=short_id(run_id),
                             legendgroup=run_id, showlegend=False, marker_color=color, hovertext=run_id), 1, 2)
    fig.update_layout(barmode="group", height=360, margin={"t": 60, "b": 40, "l": 50, "r": 10},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def short_id(run_id: str) -> str:
    """A run id a legend can hold: the date-time stamp dropped when the name part says enough."""
    parts = run_id.split("-", 2)
    name = parts[2] if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() else run_id
    return f"{name} ({parts[1][:4]})" if name != run_id else run_id[-28:]


def compare_warning(run_ids: list[str]) -> str:
    """A warning when the compared runs were scored on different held-out questions (the numbers do not compare)."""
    sets = {}
    for run_id in run_ids or []:
        m = evaluate.read_metrics(run_id)
        if m and "tuned" in m:
            sets.setdefault(heldout_key(run_id), []).append(run_id)
    if len(sets) <= 1:
        return ""
    groups = "; ".join(", ".join(ids) for ids in sets.values())
    return (f"<div class='wb-warn' id='metrics-compare-warning'>These runs were scored on <b>different held-out "
            f"questions</b> ({groups}), so their scores do not compare directly. Compare runs trained on the same data "
            f"and split.</div>")


def heldout_key(run_id: str) -> str:
    """Which questions a run was scored on: the questions of its predictions, hashed."""
    import hashlib

    questions = [p.get("question", "") for p in evaluate.read_predictions(run_id)]
    return hashlib.sha256("\x00".join(questions).encode()).hexdigest()[:12]
