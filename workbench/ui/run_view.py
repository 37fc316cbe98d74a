"""What the Train tab shows about a run: the progress line, the cleaned log tail, the curves."""
from __future__ import annotations

import html
import re

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench.training import estimate
from workbench.training import events as events_mod
from workbench.evaluation import evaluate


def memory_text(progress: dict) -> str:
    """Peak memory as the progress line shows it: one figure, or one per process (per GPU) for a several-process run."""
    for key, label in (("gpu_mem_gb", "GPU"), ("cpu_mem_gb", "RAM")):
        ranks = progress.get(f"{key}_ranks")
        if ranks and len(ranks) > 1:
            each = " / ".join(f"{v:.1f}" for v in ranks)
            return f"{label} {each} GB ({len(ranks)} {'GPUs' if label == 'GPU' else 'processes'})"
        if key in progress:
            return f"{label} {progress[key]:.1f} GB"
    return ""


def progress_html(status: dict, events: list[dict], scoring: dict | None = None) -> str:
    p = events_mod.fold(events, status)  # the pure fold of the run's events (tested without a UI)
    state = p.get("state", "no run")
    step, total = int(p.get("step", 0) or 0), int(p.get("total_steps", 0) or 0)
    frac = min(step / total, 1.0) if total else 0.0
    eta = estimate.eta_seconds(events, step, total) if state == "running" else None  # from the measured pace
    per_step = estimate.measured_seconds_per_step(events)
    pace = f" · {per_step:.1f} s/step" if per_step else ""
    mem = memory_text(p)
    color = {"failed": "#dc2626", "completed": "#16a34a", "interrupted": "#d97706"}.get(state, "#2563eb")
    notes = [n for n in (p.get("reason"), p.get("nonfinite") and f"Warning: {p['nonfinite']}") if n]
    resumed = state in ("queued", "running") and bool(events)
    if state in ("queued", "running") and not step and not events:
        notes.insert(0, "Loading the model and preparing the data… (about half a minute on a CPU; the first "
                        "use of the embedded model also converts it once, ≈20 s)")
    elif resumed and (state == "queued" or ("start_step" in status and status["start_step"] is None)):
        # a resumed run's new process is loading (training has not begun: the callback sets start_step)
        notes.insert(0, f"Resuming from step {step}: loading the model and the checkpoint…")
    if resumed and not logged_since_start(events, status):  # no step logged by this process: the old pace would
        eta, pace = None, ""  # give a stale ETA; it comes back with the first new log step
    reason = "".join(f"<div class='wb-warn'>{html.escape(str(n))}</div>" for n in notes) + preference_line(status)
    steps_text = f"{step}/{total}" if total else f"{step}/…"
    if eta is None and state == "running" and total and step >= total:  # the last step is done: evaluation, saving
        eta_text = "finishing (final evaluation and save)"
    else:
        eta_text = _fmt(eta) if eta is not None else ("measuring…" if state == "running" else "—")
    scoring_line = ""
    if scoring:
        sfrac = min(max(float(scoring.get("fraction") or 0), 0.0), 1.0)
        scoring_line = (f"<div class='wb-warn' id='train-scoring'><b>{html.escape(evaluate.progress_text(scoring))}"
                        f"</b> — the Metrics tab shows the results when it finishes."
                        f"<div style='background:#e5e7eb;border-radius:4px;height:8px;margin-top:4px'><div style="
                        f"'background:#2563eb;width:{sfrac * 100:.1f}%;height:8px;border-radius:4px'></div></div></div>")
    return (f"<div id='train-progress'><b>State: <span id='train-state'>{state}</span></b> · step "
            f"<span id='train-step'>{step}</span><span id='train-total'>{steps_text[len(str(step)):]}</span> · "
            f"elapsed {_fmt(p.get('elapsed'))} · ETA <span id='train-eta'>{eta_text}</span>{pace} · "
            f"{p.get('tokens_per_s', '—')} tokens/s · {mem}"
            f"<div style='background:#e5e7eb;border-radius:4px;height:14px;margin-top:6px'>"
            f"<div style='background:{color};width:{frac * 100:.1f}%;height:14px;border-radius:4px'></div></div>"
            f"{reason}{scoring_line}</div>")


def logged_since_start(events: list[dict], status: dict) -> bool:
    """Whether the run's current process has logged a step (an event newer than status' started_at). A queued run
    (resumed, its process not started yet) has not; a status without a start time counts as logged."""
    from datetime import datetime

    if status.get("state") == "queued":
        return False
    try:
        started = datetime.fromisoformat(str(status["started_at"])).timestamp()
    except (KeyError, TypeError, ValueError):
        return True
    return any(isinstance(e, dict) and isinstance(e.get("ts"), (int, float)) and e["ts"] >= started for e in events)


def preference_line(status: dict) -> str:
    """For a preference run: its parent, and whether the reference adapter was checked to be the parent's."""
    if status.get("kind") != "preference":
        return ""
    ref = status.get("reference_is_parent")
    check = (" · reference = the parent's adapter, frozen (weights checked)" if ref is True else
             " · <b>the reference adapter did not match the parent's</b>" if ref is False else
             " · reference: the parent's adapter, frozen")
    return (f"<div id='train-pref-line'>Preference run (DPO) from parent <b>{html.escape(str(status.get('parent_run')))}"
            f"</b>{check}</div>")


# Lines of train.log that are known to be harmless on this setup; the tab hides them (train.log keeps them).
HARMLESS = [re.compile(p) for p in (
    r"gemm_4bit_forward", r"No module named 'kernels'", r"pip install kernels", r"^\s*warnings\.warn\(",
    r"FutureWarning", r"UserWarning: .*(deprecated|will be removed)", r"^\s*$")]
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
LOG_LINES = 14


def clean_log(text: str, lines: int = LOG_LINES) -> str:
    """What the tab shows of train.log: escape codes removed, a progress bar redrawn with carriage returns kept
    only in its last state, known-harmless warnings dropped, and the newest `lines` lines."""
    out = []
    for raw in _ANSI.sub("", text).replace("\r\n", "\n").split("\n"):
        line = raw.split("\r")[-1] if "\r" in raw.rstrip("\r") else raw.rstrip("\r")
        line = line.rstrip()
        if any(p.search(line) for p in HARMLESS):
            continue
        if out and _same_bar(out[-1], line):
            out[-1] = line  # consecutive states of one progress bar: keep the latest
            continue
        out.append(line)
    return "\n".join(out[-lines:])


_BAR = re.compile(r"^(.*?)\s*\d+%\|")


def _same_bar(previous: str, line: str) -> bool:
    a, b = _BAR.match(previous), _BAR.match(line)
    return bool(a and b and a.group(1) == b.group(1))


def _fmt(seconds) -> str:
    seconds = int(seconds or 0)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _short(run_id: str) -> str:
    parts = run_id.split("-", 2)
    return f"{parts[2]} ({parts[1][:4]})" if len(parts) == 3 and parts[0].isdigit() else run_id[-24:]


def empty_figure(message: str, height: int = 360) -> go.Figure:
    """What a chart shows before there is anything to draw: one plain sentence, no empty axes."""
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font={"size": 14, "color": "#6b7280"})
    fig.update_layout(height=height, xaxis={"visible": False}, yaxis={"visible": False},
                      plot_bgcolor="rgba(0,0,0,0)", margin={"t": 40, "b": 40, "l": 20, "r": 20})
    return fig


REWARD_KEYS = ("reward_margin", "reward_chosen", "reward_rejected", "preference_accuracy")


def curves(events_by_run: dict[str, list[dict]]) -> go.Figure:
    """Loss, learning rate and gradient norm; for preference runs also a second row: reward margin, chosen and
    rejected rewards, preference accuracy (training solid, held-out pairs dashed)."""
    preference = any(k in e for events in events_by_run.values() for e in events for k in REWARD_KEYS)
    titles = ("Loss (solid) · eval loss (dashed)", "Learning rate", "Gradient norm")
    if preference:
        titles += ("Reward margin (chosen − rejected)", "Rewards: chosen · rejected (dotted)",
                   "Preference accuracy")
    fig = make_subplots(rows=2 if preference else 1, cols=3, subplot_titles=titles, vertical_spacing=0.16)
    rates = []
    for run_id, events in events_by_run.items():
        label = _short(run_id)
        rates += [e["learning_rate"] for e in events if isinstance(e.get("learning_rate"), (int, float))]
        train = [e for e in events if "loss" in e]
        evals = [e for e in events if "eval_loss" in e]
        fig.add_trace(go.Scatter(x=[e["step"] for e in train], y=[e["loss"] for e in train], name=f"{label} loss",
                                 mode="lines+markers"), 1, 1)
        if evals:
            fig.add_trace(go.Scatter(x=[e["step"] for e in evals], y=[e["eval_loss"] for e in evals],
                                     name=f"{label} eval", mode="lines+markers", line={"dash": "dash"}), 1, 1)
        fig.add_trace(go.Scatter(x=[e["step"] for e in train], y=[e.get("learning_rate") for e in train],
                                 name=f"{label} lr", showlegend=False), 1, 2)
        fig.add_trace(go.Scatter(x=[e["step"] for e in train], y=[e.get("grad_norm") for e in train],
                                 name=f"{label} grad", showlegend=False), 1, 3)
        if preference:
            _reward_traces(fig, label, events)
    # Learning rates are small numbers (2e-4): scientific ticks, and an axis from 0 that a constant rate cannot
    # collapse to an empty -1…1 range.
    top = max(rates, default=0.0)
    fig.update_yaxes(tickformat=".1e", rangemode="tozero", row=1, col=2,
                     **({"range": [0, top * 1.15]} if top > 0 else {}))
    if preference:
        fig.update_yaxes(range=[-0.05, 1.05], row=2, col=3)
    fig.update_annotations(font_size=13)
    fig.update_layout(height=640 if preference else 360, margin={"t": 50, "b": 40, "l": 60, "r": 10},
                      legend={"orientation": "h", "y": -0.18})
    return fig


def _reward_traces(fig, label: str, events: list[dict]) -> None:
    """The second row of a preference run's curves: TRL's rewards on the training batches and the held-out pairs."""
    panels = [("reward_margin", 2, 1, "margin", None), ("reward_chosen", 2, 2, "chosen", None),
              ("reward_rejected", 2, 2, "rejected", "dot"), ("preference_accuracy", 2, 3, "accuracy", None)]
    for key, row, col, what, dash in panels:
        for prefix, style in (("", dash), ("eval_", "dash")):
            points = [e for e in events if isinstance(e.get(prefix + key), (int, float))]
            if points:
                fig.add_trace(go.Scatter(x=[e["step"] for e in points], y=[e[prefix + key] for e in points],
                                         name=f"{label} {'eval ' if prefix else ''}{what}", mode="lines+markers",
                                         line={"dash": style} if style else {}, showlegend=False), row, col)
