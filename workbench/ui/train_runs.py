"""The Train tab's run list and live view: the Run list and history (following runs started anywhere), the progress
line, curves and log of the run picked, redrawn only when its files change."""
from __future__ import annotations

import os

import gradio as gr

from workbench import paths, runs
from workbench.evaluation import evaluate
from workbench.training import jobs
from workbench.ui.run_view import clean_log, curves, progress_html


def _history(selected=None):
    rows = runs.list_runs()
    table = [[r["id"], r["state"], f"{r['step']}/{r['total_steps']}", r["model"], r["created"]] for r in rows]
    ids = [r["id"] for r in rows]
    value = selected if selected in ids else (ids[0] if ids else None)
    return gr.update(choices=ids, value=value), table, gr.update(choices=[i for i in ids if i != value])


def buttons_for(state: str | None) -> tuple:
    """Stop only while the run is active; Resume only when it stopped or broke off (and can continue)."""
    return (gr.update(interactive=state in runs.ACTIVE_STATES),
            gr.update(interactive=state in ("stopped", "interrupted", "failed")))


def _view(run_id, compare, last_seen):
    """Timer tick: cheap check of the run folder (stat calls); redraw only what changed."""
    n = 8
    if not run_id:
        return (gr.skip(), "<div class='wb-empty'>No run yet: choose a preset and press Start.</div>",
                *[gr.skip()] * 4, *buttons_for(None))
    try:
        folder = runs.folder(run_id)
        data_key = "|".join(runs.change_marker(r) for r in [run_id, *(compare or [])])  # stat() calls only
        data_key += "|" + paths.change_marker("", [folder.eval_progress])
        log_path = folder.log
    except runs.RunError:
        return (gr.skip(), "Run not found.", *[gr.skip()] * (n - 2))
    key = f"{data_key}#{log_path.stat().st_size if log_path.is_file() else 0}"
    if key == last_seen:
        return (gr.skip(),) * n
    log = clean_log(runs.log_tail(run_id))
    if data_key == (last_seen or "").split("#")[0]:  # only the log grew (e.g. the model is loading)
        return (key, gr.skip(), gr.skip(), log, *[gr.skip()] * (n - 4))
    status = runs.read_status(run_id)
    events, note = runs.events_with_note(run_id)  # one read; the note says when bad lines were skipped
    series = {run_id: events}
    for other in compare or []:
        if other != run_id:
            series[other] = runs.read_events(other)
    state = status.get("state")
    cmd = jobs.cli_equivalent(run_id, resume=state in ("stopped", "interrupted"))
    scoring = evaluate.read_progress(run_id)
    note = f"<div class='wb-warn' id='train-events-note'>{note}</div>" if note else ""
    return (key, progress_html(status, events, scoring) + note, curves(series), log, f"```\n{cmd}\n```",
            _history(run_id)[1], *buttons_for(state))


def _runs_key() -> tuple[str, str | None]:
    """(key, training run): which runs exist and which one trains, from a directory listing and the slot file (no
    status reads)."""
    names = sorted(n for n in os.listdir(paths.runs_dir()) if not n.startswith("."))
    active = jobs.active_run()
    return f"{','.join(names)}|{active or ''}", active


def _runs_tick(run_id, seen):
    """Timer tick: runs started elsewhere (a recipe search's trials, its 'Use this recipe' run, the CLI) or deleted
    there join or leave the Run list and history; a run that starts training is picked when the one shown is not
    training, so the tab follows what trains."""
    key, active = _runs_key()
    if key == seen:
        return (gr.skip(),) * 4
    if active and active != run_id:
        try:
            shown_active = bool(run_id) and runs.read_status(run_id).get("state") in runs.ACTIVE_STATES
        except runs.RunError:
            shown_active = False
        if not shown_active:
            return (key, *_history(active))
    listed, table, compare = _history(run_id)
    if run_id in listed["choices"]:  # the shown run stays: its value is not sent back, since this tick's run_id may
        listed = gr.update(choices=listed["choices"])  # be stale (Start picked its new run after the tick was sent)
    return key, listed, table, compare


def _compare_choices(run_id, chosen):
    """The overlay list offers every run but the one shown."""
    ids = [r["id"] for r in runs.list_runs()]
    return gr.update(choices=[i for i in ids if i != run_id], value=[i for i in chosen or [] if i != run_id])
