"""Metrics tab: base vs fine-tuned table and chart, loss curves, per-example answers (regressions first),
several runs side by side (ui/metrics_compare), blind-review win rate, export, and a button that scores a run."""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench import paths, runs
from workbench.evaluation import evaluate
from workbench.evaluation.export import export as export_run
from workbench.evaluation import reviews
from workbench.evaluation import scoring
from workbench.ui import guard
from workbench.ui.metrics_compare import compare_chart, compare_table, compare_warning
from workbench.ui.run_view import empty_figure

LABELS = scoring.LABELS
SUMMARY_HEADERS = ["Metric", "Base", "Fine-tuned", "Change %"]
EXAMPLE_HEADERS = ["Question", "Reference", "Base answer", "Fine-tuned answer", "ROUGE-L base", "ROUGE-L tuned",
                   "ROUGE-L change"]
ORDERS = ["Regressions first", "Improvements first", "Original order"]
EMPTY = ("<div class='wb-empty' id='metrics-empty'>No run has metrics yet. Train a run in the <b>Train</b> tab "
         "(it is scored automatically when training ends if <code>eval.run_after_training</code> is on), or pick a "
         "completed run above and press <b>Evaluate</b>, or run <code>python -m workbench eval --run RUN_ID</code>."
         "</div>")


# -- what to show (plain data; no widgets) ----------------------------------------------------

_fmt = scoring.format_value


def _change_text(key: str, pct) -> str:
    if pct is None:
        return "—"
    better = pct < 0 if key in scoring.LOWER_IS_BETTER else pct > 0
    return f"{pct:+.1f}% " + ("(better)" if better else "(worse)" if pct else "")


def win_rate_row(run_id: str) -> list:
    """The blind-review row: the Chat tab's votes for this run (tuned vs base), with a 95% Wilson interval."""
    label = "Blind-review win rate"
    try:
        result = reviews.win_rate(run_id)
    except Exception as e:  # noqa: BLE001 - an unreadable vote store must not hide the metrics
        return [label, "—", "—", f"unavailable ({type(e).__name__}: {str(e)[:80]})"]
    rate = result["win_rate"]
    if rate is None:
        return [label, "—", "—", "no votes yet (blind review in the Chat tab)"]
    note = f"{result['rated']} rated votes, 95% CI {result['ci_low']:.0%}–{result['ci_high']:.0%}"
    return [label, f"{1 - rate:.0%}", f"{rate:.0%}", note]


def preference_html(run_id: str | None) -> str:
    """For a preference run: the blind win rate against its parent (95% interval) and the held-out preference
    accuracy; empty for any other run."""
    from workbench.evaluation import preferences

    if not run_id:
        return ""
    try:
        parent = preferences.parent_of(run_id)
    except Exception:  # noqa: BLE001 - an unreadable config: no preference section, the rest still shows
        return ""
    if not parent:
        return ""
    try:
        won = preferences.parent_win_rate(run_id)
        rate = (f"<b>{won['win_rate']:.0%}</b> (95% CI {won['ci_low']:.0%}–{won['ci_high']:.0%}) over {won['rated']} "
                f"rated vote(s)" if won["win_rate"] is not None else "no rate yet")
        win = f"{rate} — {html.escape(won['text'])}"
    except Exception as e:  # noqa: BLE001 - an unreadable vote store must not hide the metrics
        win = f"unavailable ({type(e).__name__}: {html.escape(str(e)[:80])})"
    acc = preferences.read_preference_metrics(run_id)
    if acc and acc.get("pairs"):
        coarse = " (so few pairs that it can only read a few values: a demonstration)" if acc["pairs"] < 8 else ""
        accuracy = (f"<b>{acc['accuracy']:.0%}</b> of {acc['pairs']} held-out pair(s){coarse}: how often this run's "
                    f"implicit reward prefers the chosen answer · mean reward margin {acc['mean_margin']:+.3f} · the "
                    f"parent alone gives the chosen answer the higher likelihood in "
                    f"{_share(acc.get('reference_prefers_chosen'))}, this run in {_share(acc.get('policy_prefers_chosen'))}"
                    f" · computed {html.escape(str(acc.get('computed_at', '')))}"
                    + (f" on {html.escape(str(acc['device']))}" if acc.get("device") else ""))
    elif acc:
        accuracy = "no held-out pairs were kept for this run."
    else:
        accuracy = "not computed yet: press <b>Score preference accuracy</b> once the run has completed."
    return (f"<div id='metrics-preference'><b>Preference run</b> tuned from parent <code>{html.escape(parent)}</code> "
            f"(the parent's adapter was the frozen reference)."
            f"<div id='metrics-parent-win'>Blind review, this run vs its parent: {win}</div>"
            f"<div id='metrics-pref-accuracy'>Held-out preference accuracy: {accuracy}</div></div>")


def _share(value) -> str:
    return f"{value:.0%}" if isinstance(value, (int, float)) else "—"


def summary_table(metrics: dict | None, run_id: str = "") -> pd.DataFrame:
    if not metrics:
        return pd.DataFrame(columns=SUMMARY_HEADERS)
    base, tuned, change = metrics["base"], metrics.get("tuned", {}), metrics.get("change_pct", {})
    rows = [[label, _fmt(k, base.get(k)), _fmt(k, tuned.get(k)), _change_text(k, change.get(k))]
            for k, label in LABELS.items()]
    if run_id:
        rows.append(win_rate_row(run_id))
    return pd.DataFrame(rows, columns=SUMMARY_HEADERS)


def metrics_chart(metrics: dict | None) -> go.Figure:
    """Grouped bars base vs fine-tuned; perplexity on its own axis (another scale, lower is better)."""
    if not metrics or not metrics.get("base"):
        return empty_figure("No scores yet: pick a scored run, or press Evaluate.")
    fig = make_subplots(rows=1, cols=2, column_widths=[0.75, 0.25],
                        subplot_titles=("ROUGE / BLEU (0-1, higher is better)", "Perplexity<br>(lower is better)"))
    if metrics:
        text_keys = [k for k in LABELS if k != "perplexity"]
        for side, color in (("base", "#94a3b8"), ("tuned", "#2563eb")):
            values = metrics.get(side) or {}
            name = "Base" if side == "base" else "Fine-tuned"
            fig.add_trace(go.Bar(x=[LABELS[k] for k in text_keys], y=[values.get(k) for k in text_keys], name=name,
                                 marker_color=color, legendgroup=side), 1, 1)
            fig.add_trace(go.Bar(x=["Perplexity"], y=[values.get("perplexity")], name=name, marker_color=color,
                                 legendgroup=side, showlegend=False), 1, 2)
    fig.update_layout(barmode="group", height=360, margin={"t": 60, "b": 40, "l": 50, "r": 10},
                      legend={"orientation": "h", "y": -0.15})
    return fig


def loss_chart(events: list[dict]) -> go.Figure:
    train = [e for e in events if "loss" in e]
    if not train and not any("eval_loss" in e for e in events):
        return empty_figure("No training curve yet: pick a run.")
    fig = go.Figure()
    evals = [e for e in events if "eval_loss" in e]
    fig.add_trace(go.Scatter(x=[e["step"] for e in train], y=[e["loss"] for e in train], name="training loss",
                             mode="lines+markers"))
    if evals:
        fig.add_trace(go.Scatter(x=[e["step"] for e in evals], y=[e["eval_loss"] for e in evals], name="eval loss",
                                 mode="lines+markers", line={"dash": "dash"}))
    fig.update_layout(title={"text": "Loss during training", "y": 0.97, "x": 0.5, "xanchor": "center"}, xaxis_title="step", height=360,
                      margin={"t": 60, "b": 40, "l": 50, "r": 10}, legend={"orientation": "h", "y": -0.2})
    return fig


def examples_table(predictions: list[dict], query: str = "", order: str = ORDERS[0]) -> pd.DataFrame:
    """Per-example answers, filtered by `query` (any text column) and ordered by the ROUGE-L change."""
    rows = predictions
    q = (query or "").strip().lower()
    if q:
        rows = [p for p in rows if any(q in str(p.get(k, "")).lower()
                                       for k in ("question", "reference", "base_answer", "tuned_answer"))]
    if order == ORDERS[0]:
        rows = sorted(rows, key=lambda p: p.get("rougeL_change", 0.0))
    elif order == ORDERS[1]:
        rows = sorted(rows, key=lambda p: -p.get("rougeL_change", 0.0))
    data = [[p.get("question", ""), p.get("reference", ""), p.get("base_answer", ""), p.get("tuned_answer", ""),
             round(p.get("rougeL_base", 0.0), 3), round(p.get("rougeL_tuned", 0.0), 3),
             round(p.get("rougeL_change", 0.0), 3)] for p in rows]
    return pd.DataFrame(data, columns=EXAMPLE_HEADERS)


def notice_html(run_id: str | None, metrics: dict | None) -> str:
    """Leakage (loud), a failed evaluation's reason, or the empty state."""
    if not run_id:
        return EMPTY
    status = runs.read_status(run_id)
    parts = []
    scoring_now = evaluate.read_progress(run_id)
    if scoring_now:
        parts.append(scoring_html(scoring_now))
    if status.get("eval_error") and not scoring_now:
        parts.append(f"<div class='wb-error' id='metrics-eval-error'><b>The last evaluation failed:</b> "
                     f"{status['eval_error']}</div>")
    if not metrics and scoring_now:
        return "".join(parts)
    damage = "" if metrics else evaluate.metrics_damage(run_id)
    if damage:
        parts.append(f"<div class='wb-error' id='metrics-damaged'><b>{html.escape(damage)}.</b> Its scores cannot be "
                     f"shown; press <b>Evaluate</b> to score the run again (it rewrites the file).</div>")
        return "".join(parts)
    if not metrics:
        parts.append(EMPTY if not any(evaluate.read_metrics(r["id"]) for r in runs.list_runs()) else
                     f"<div class='wb-empty' id='metrics-empty'>Run {run_id} has no metrics yet"
                     f"{' (state: ' + status.get('state', '?') + ')' if status.get('state') else ''}: press "
                     f"<b>Evaluate</b> once it has completed.</div>")
        return "".join(parts)
    leak = metrics.get("leakage") or {}
    if leak.get("flagged"):
        parts.append(f"<div class='wb-error' id='metrics-leakage' style='font-size:1.15em'><b>⚠ {leak['message']}"
                     f"</b></div>")
    damage = evaluate.predictions_damage(run_id)
    if damage:
        parts.append(f"<div class='wb-warn' id='metrics-predictions-damaged'>{html.escape(damage)}: the per-example "
                     f"table is empty. Press <b>Evaluate</b> to score the run again.</div>")
    cached = " Base-model results came from the cache." if metrics.get("base_cached") else ""
    parts.append(f"<div id='metrics-info'>{metrics['eval_examples']} held-out questions · "
                 f"{metrics['answer_tokens']} reference answer tokens · {metrics.get('model', '')} · scored "
                 f"{metrics.get('created_at', '')} on {metrics.get('device', '?')} in {metrics.get('seconds', '?')} s."
                 f"{cached}</div>")
    return "".join(parts)


def scoring_html(progress: dict) -> str:
    """'Scoring… n/N questions' and a bar, from the run folder's eval_progress.json."""
    frac = min(max(float(progress.get("fraction") or 0), 0.0), 1.0)
    return (f"<div class='wb-warn' id='metrics-scoring'><b>{evaluate.progress_text(progress)}</b>"
            f"<div style='background:#e5e7eb;border-radius:4px;height:10px;margin-top:4px'><div style='background:"
            f"#2563eb;width:{frac * 100:.1f}%;height:10px;border-radius:4px'></div></div></div>")


def evaluate_button(run_id: str | None):
    """Evaluate is enabled only when the run can be scored now; otherwise its reason shows under it."""
    if not run_id:
        return gr.update(interactive=False), "Pick a run to score."
    reason = evaluate.refusal(run_id)
    if reason is None and runs.adapter_path(run_id) is None:
        reason = f"Run '{run_id}' has no trained adapter yet; it can be scored once training completes."
    elif reason is None:
        reason = runs.folder(run_id).adapter_damage() or None
    return gr.update(interactive=reason is None), (f"*Evaluate is unavailable: {reason}*" if reason else "")


def _listing() -> tuple[list[dict], dict[str, float]]:
    """Every run (newest first) and, for each scored one, the modification time of its metrics.json."""
    listed, scored = runs.list_runs(), {}
    for r in listed:
        p = paths_metrics(r["id"])
        if p.is_file():
            scored[r["id"]] = p.stat().st_mtime
    return listed, scored


def run_choices(listing=None) -> tuple[list[tuple[str, str]], str | None]:
    """(label, run id) for every run, scored ones marked; default: the newest scored run, else the newest."""
    listed, scored = listing or _listing()
    choices = [(f"{r['id']} · {r['state']}{' · scored' if r['id'] in scored else ''}", r["id"]) for r in listed]
    default = next((r["id"] for r in listed if r["id"] in scored), listed[0]["id"] if listed else None)
    return choices, default


def paths_metrics(run_id: str) -> Path:
    return runs.folder(run_id, must_exist=False).metrics


def export_files(run_id: str, fmt: str) -> list[str]:
    """metrics and predictions of a run as CSV or JSON files in a fresh temporary folder (core: evaluation.export)."""
    out = Path(tempfile.mkdtemp(prefix="wb-metrics-")) / f"{runs.validate_run_id(run_id)}.{fmt.lower()}"
    try:
        return [str(p) for p in export_run(run_id, out)]
    except evaluate.EvalError as e:
        raise ValueError(str(e)) from None


# -- handlers ---------------------------------------------------------------------------------

def _render(run_id, query, order):
    metrics = evaluate.read_metrics(run_id) if run_id else None
    predictions = evaluate.read_predictions(run_id) if metrics else []
    events, note = runs.events_with_note(run_id) if run_id else ([], "")  # note: bad lines were skipped
    note = f"<div class='wb-warn' id='metrics-events-note'>{note}</div>" if note else ""
    pref = preference_html(run_id)
    return (notice_html(run_id, metrics) + note, summary_table(metrics, run_id or ""), metrics_chart(metrics),
            loss_chart(events), examples_table(predictions, query, order), pref, gr.update(visible=bool(pref)))


def _examples(run_id, query, order):
    return examples_table(evaluate.read_predictions(run_id) if run_id else [], query, order)


def _refresh(selected):
    return _pick_updates(selected, _listing())


def _pick_updates(selected, listing):
    """The run dropdown (keeping `selected` while it exists) and the scored runs offered for comparison."""
    listed, scored = listing
    choices, default = run_choices(listing)
    ids = [r["id"] for r in listed]
    value = selected if selected in ids else default
    return gr.update(choices=choices, value=value), gr.update(choices=[i for i in ids if i in scored])


def _signature(run_id, listing) -> str:
    """Cheap 'did anything change?' key for the timer: run ids, states and metrics file times, the picked run's
    events/status and scoring progress (stat calls), and the review votes file (a new vote changes the win rate)."""
    listed, scored = listing
    key = f"{run_id}|" + ",".join(f"{r['id']}:{r['state']}:{scored.get(r['id'], 0)}" for r in listed)
    if run_id:
        try:
            folder = runs.run_path(run_id)
            key += ("|" + runs.change_marker(run_id) + "|" + _mtime(runs.RunFolder(folder).eval_progress)
                    + "|" + _mtime(runs.RunFolder(folder).preference_metrics))
        except runs.RunError:
            key += "|gone"
    db = reviews.db_path()
    return key + "|" + _mtime(db) + _mtime(db.with_name(db.name + "-wal"))


def _mtime(path: Path) -> str:
    return paths.change_marker("", [path])


def _poll(run_id, query, order, seen):
    listing = _listing()  # one pass over the runs serves both the change check and the refreshed lists
    key = _signature(run_id, listing)
    if key == seen:
        return (gr.skip(),) * 12
    pick, compare = _pick_updates(run_id, listing)
    return (key, pick, compare, *_render(run_id, query, order), *evaluate_button(run_id))


def _evaluate(run_id, request: gr.Request, progress=gr.Progress()):
    guard.require(request, "eval")
    if not run_id:
        raise guard.refusal("Pick a run first (the runs list is above).")
    reason = evaluate.refusal(run_id)  # the rule lives in core: `eval --run` obeys it too
    if reason:
        gr.Warning(reason)
        return run_id
    try:
        metrics = evaluate.evaluate_run(run_id, progress=lambda f, m: progress(f, desc=m))
    except evaluate.EvalError as e:
        raise guard.refusal(str(e)) from None
    gr.Info(f"Scored {run_id}: perplexity {metrics['base']['perplexity']:.2f} → {metrics['tuned']['perplexity']:.2f}")
    return run_id


def _score_preference(run_id, request: gr.Request, progress=gr.Progress()):
    """Held-out preference accuracy of a preference run (the model loaded with its adapter and its parent's)."""
    guard.require(request, "eval")
    from workbench.evaluation import preferences

    if not run_id:
        raise guard.refusal("Pick a preference run first (the runs list is above).")
    progress(0.1, desc="Scoring the held-out pairs: loading the model with this run's and its parent's adapters…")
    try:
        result = preferences.preference_accuracy(run_id)
    except (preferences.PreferenceError, runs.RunError) as e:
        raise guard.refusal(str(e)) from None
    acc = result.get("accuracy")
    gr.Info(f"Held-out preference accuracy of {run_id}: "
            + (f"{acc:.0%} of {result['pairs']} pairs." if acc is not None else "no held-out pairs."))
    return preference_html(run_id)


def _export(run_id, fmt, request: gr.Request):
    guard.require(request, "export")
    if not run_id:
        raise guard.refusal("Pick a run with metrics first.")
    try:
        return export_files(run_id, fmt)
    except ValueError as e:
        raise guard.refusal(str(e)) from None


def build(demo: gr.Blocks) -> None:
    gr.Markdown("Base model vs fine-tuned on the run's **held-out** questions: perplexity of the reference answers "
                "(lower is better) and ROUGE/BLEU of generated answers (0-1, higher is better). "
                "See docs/metrics.md for exactly how each number is computed.")
    with gr.Row():
        run_pick = gr.Dropdown([], label="Run", elem_id="metrics-run", scale=4)
        refresh_btn = gr.Button("Refresh", scale=1)
        eval_btn = gr.Button("Evaluate", variant="primary", elem_id="metrics-evaluate", scale=1)
    eval_reason = gr.Markdown(elem_id="metrics-evaluate-reason")
    notice = gr.HTML(EMPTY, elem_id="metrics-notice")
    with gr.Row():
        pref_box = gr.HTML(elem_id="metrics-pref-box")
        pref_btn = gr.Button("Score preference accuracy", elem_id="metrics-pref-score", visible=False, scale=0,
                             min_width=220)
    summary = gr.Dataframe(headers=SUMMARY_HEADERS, interactive=False, elem_id="metrics-summary",
                           label="Base vs fine-tuned")
    with gr.Row():
        chart = gr.Plot(label="Scores", elem_id="metrics-chart")
        losses = gr.Plot(label="Loss curves", elem_id="metrics-loss")
    gr.Markdown("### Per-example answers\nSorted by the change in ROUGE-L, regressions first; click a column "
                "header to sort by it.")
    with gr.Row():
        search = gr.Textbox(label="Search questions, references and answers", elem_id="metrics-search", scale=3)
        order = gr.Dropdown(ORDERS, value=ORDERS[0], label="Order", scale=1)
    examples = gr.Dataframe(headers=EXAMPLE_HEADERS, interactive=False, wrap=True, max_height=600,
                            column_widths=["17%", "21%", "21%", "21%", "6%", "6%", "8%"],
                            elem_id="metrics-examples", label="Per-example")
    with gr.Accordion("Compare runs side by side", open=False):
        compare = gr.Dropdown([], multiselect=True, label="Scored runs", elem_id="metrics-compare")
        compare_note = gr.HTML(elem_id="metrics-compare-note")
        # Empty states: the table's own columns (not Gradio's placeholder "1 2 3") and a sentence instead of axes.
        compare_df = gr.Dataframe(compare_table([]), interactive=False, elem_id="metrics-compare-table")
        compare_plot = gr.Plot(compare_chart([]), elem_id="metrics-compare-plot")
    with gr.Accordion("Export", open=False):
        with gr.Row():
            fmt = gr.Radio(["CSV", "JSON"], value="CSV", label="Format")
            export_btn = gr.Button("Export metrics and predictions")
        files = gr.File(file_count="multiple", label="Download", elem_id="metrics-export")
    seen = gr.State("")
    timer = gr.Timer(5.0)

    view_out = [notice, summary, chart, losses, examples, pref_box, pref_btn]
    private = {"api_visibility": "private"}
    run_pick.change(_render, [run_pick, search, order], view_out, **private).then(
        evaluate_button, run_pick, [eval_btn, eval_reason], **private)
    search.change(_examples, [run_pick, search, order], examples, **private)  # filters as you type, as the Data tab does
    order.change(_examples, [run_pick, search, order], examples, **private)
    compare.change(lambda ids: (compare_warning(ids), compare_table(ids), compare_chart(ids)), compare,
                   [compare_note, compare_df, compare_plot], **private)
    refresh_btn.click(_refresh, run_pick, [run_pick, compare]).then(
        _render, [run_pick, search, order], view_out, **private).then(
        evaluate_button, run_pick, [eval_btn, eval_reason], **private)
    eval_btn.click(_evaluate, run_pick, run_pick, concurrency_limit=1, concurrency_id="metrics-eval").then(
        _refresh, run_pick, [run_pick, compare], **private).then(
        _render, [run_pick, search, order], view_out, **private).then(
        evaluate_button, run_pick, [eval_btn, eval_reason], **private)
    export_btn.click(_export, [run_pick, fmt], files)
    pref_btn.click(_score_preference, run_pick, pref_box, concurrency_limit=1, concurrency_id="metrics-eval")
    timer.tick(_poll, [run_pick, search, order, seen], [seen, run_pick, compare, *view_out, eval_btn, eval_reason],
               **private)
    demo.load(_refresh, run_pick, [run_pick, compare], **private).then(
        _render, [run_pick, search, order], view_out, **private).then(
        evaluate_button, run_pick, [eval_btn, eval_reason], **private)
