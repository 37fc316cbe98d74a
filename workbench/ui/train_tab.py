"""Train tab: pick a model and preset, every setting with its help, estimate, Start/Stop/Resume,
live progress and curves read from the run folder, log tail, CLI equivalent, history, overlays."""
from __future__ import annotations

import html

import gradio as gr
import yaml
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from workbench import runs
from workbench.training import estimate
from workbench.training import jobs
from workbench.deploy import space
from workbench.training import events as events_mod
from workbench.config import EMBEDDED_MODEL, MISTRAL_7B, PRESETS, ConfigError, RunConfig, coerce, iter_fields, preset
from workbench.data.dataset import DataError
from workbench.ui import guard

MODEL_CHOICES = [EMBEDDED_MODEL, MISTRAL_7B]


def _model_choices() -> list[str]:
    """The embedded model and Mistral-7B, plus the deployment's default model when it is another one."""
    default = space.default_model()
    return MODEL_CHOICES + ([default] if default not in MODEL_CHOICES else [])
# Settings shown elsewhere on the tab (model picker, preset) are not repeated in the form.
FORM_SKIP = {"model.name_or_path", "preset"}
FORM_FIELDS = [(n, f) for n, f, _ in iter_fields() if n not in FORM_SKIP]  # one order for widgets and values


def _widget(name, f, value):
    label, info = name, f.metadata.get("help", "")
    if "choices" in f.metadata:
        return gr.Dropdown(list(f.metadata["choices"]), value=value, label=label, info=info)
    if isinstance(value, bool):
        return gr.Checkbox(value=value, label=label, info=info)
    if isinstance(value, (int, float)):
        return gr.Number(value=value, label=label, info=info, precision=0 if isinstance(value, int) else None)
    if isinstance(value, (list, dict)):
        return gr.Textbox(value=_display(value), label=label, info=info)
    return gr.Textbox(value=value, label=label, info=info)


def _display(value):
    """Lists and mappings are edited as text: 'a, b' and '{key: value}' (YAML)."""
    if isinstance(value, list):
        return ", ".join(map(str, value))
    if isinstance(value, dict):
        return yaml.safe_dump(value, default_flow_style=True).strip() if value else ""
    return value


def _form_values(cfg: RunConfig):
    return [_display(cfg.get(name)) for name, _ in FORM_FIELDS]


def config_from_form(model: str, preset_name: str, values) -> RunConfig:
    """Widgets -> RunConfig, generically from the dataclass fields (no string-keyed hand mapping)."""
    cfg = preset(preset_name) if preset_name else RunConfig()
    cfg.model.name_or_path = (model or EMBEDDED_MODEL).strip()
    for (name, f), value in zip(FORM_FIELDS, values):
        try:
            cfg.set(name, coerce(f, value))
        except (TypeError, ValueError):
            raise ConfigError([f"{name}: '{value}' is not a valid value ({f.metadata.get('help', '')[:80]})."])
    return cfg


def _estimate_text(model, preset_name, *values):
    """The estimate (or what to fix) and the command line that starts the same run."""
    try:
        cfg = config_from_form(model, preset_name, values)
    except ConfigError as e:
        return f"<div class='wb-error'>{'<br>'.join(e.messages)}</div>", gr.skip()
    problems = cfg.validate()
    gpu, total = estimate.detected_gpu()
    steps = cfg.training.max_steps or None
    text = estimate.describe(cfg, gpu, total, steps)
    command = f"Same run from a terminal:\n```\n{jobs.cli_for_config(cfg)}\n```"
    if problems:
        return "<div class='wb-error'>" + "<br>".join(problems) + "</div>" + text, command
    return text, command


def _start(request: gr.Request, model, preset_name, *values):
    guard.require(request, "train")
    try:
        cfg = config_from_form(model, preset_name, values)
        _free_chat_memory()
        run_id = jobs.start_run(cfg)
    except ConfigError as e:
        raise gr.Error(" ".join(e.messages)) from None
    except (jobs.JobError, runs.RunError, DataError) as e:
        raise gr.Error(str(e)) from None
    gr.Info(f"Started run {run_id}")
    return _history(run_id)


def _free_chat_memory() -> None:
    """A run about to start gets the memory the Chat tab holds (the stated GPU policy: training first)."""
    from workbench.chat import session as chat

    chat.release()


def _stop(run_id, request: gr.Request):
    guard.require(request, "stop")
    if not run_id:
        raise gr.Error("Pick a run first.")
    try:
        jobs.stop_run(run_id)
    except (jobs.JobError, runs.RunError) as e:
        raise gr.Error(str(e)) from None
    gr.Info("Stop requested: the run saves a checkpoint and ends as 'stopped'.")


def _resume(run_id, request: gr.Request):
    guard.require(request, "resume")
    if not run_id:
        raise gr.Error("Pick a run first.")
    try:
        _free_chat_memory()
        jobs.resume_run(run_id)
    except (jobs.JobError, runs.RunError) as e:
        raise gr.Error(str(e)) from None
    gr.Info(f"Resumed {run_id}.")


def _history(selected=None):
    rows = runs.list_runs()
    table = [[r["id"], r["state"], f"{r['step']}/{r['total_steps']}", r["model"], r["created"]] for r in rows]
    ids = [r["id"] for r in rows]
    value = selected if selected in ids else (ids[0] if ids else None)
    return gr.update(choices=ids, value=value), table, gr.update(choices=ids)


def progress_html(status: dict, events: list[dict]) -> str:
    p = events_mod.fold(events, status)  # the pure fold of the run's events (tested without a UI)
    state = p.get("state", "no run")
    step, total = int(p.get("step", 0) or 0), int(p.get("total_steps", 0) or 0)
    frac = min(step / total, 1.0) if total else 0.0
    eta = p.get("eta_s") if state == "running" else None
    mem = f"GPU {p['gpu_mem_gb']:.1f} GB" if "gpu_mem_gb" in p else (
        f"RAM {p['cpu_mem_gb']:.1f} GB" if "cpu_mem_gb" in p else "")
    color = {"failed": "#dc2626", "completed": "#16a34a", "interrupted": "#d97706"}.get(state, "#2563eb")
    notes = [n for n in (p.get("reason"), p.get("nonfinite") and f"Warning: {p['nonfinite']}") if n]
    reason = "".join(f"<div class='wb-warn'>{html.escape(str(n))}</div>" for n in notes)
    return (f"<div id='train-progress'><b>State: <span id='train-state'>{state}</span></b> · step "
            f"<span id='train-step'>{step}</span>/{total} · elapsed {_fmt(p.get('elapsed'))} · ETA "
            f"{_fmt(eta) if eta is not None else '—'} · {p.get('tokens_per_s', '—')} tokens/s · {mem}"
            f"<div style='background:#e5e7eb;border-radius:4px;height:14px;margin-top:6px'>"
            f"<div style='background:{color};width:{frac * 100:.1f}%;height:14px;border-radius:4px'></div></div>"
            f"{reason}</div>")


def _fmt(seconds) -> str:
    seconds = int(seconds or 0)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def curves(events_by_run: dict[str, list[dict]]) -> go.Figure:
    fig = make_subplots(rows=1, cols=3, subplot_titles=("loss (solid) / eval loss (dashed)", "learning rate",
                                                        "grad norm"))
    for run_id, events in events_by_run.items():
        label = run_id[-24:]
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
    fig.update_layout(height=340, margin={"t": 40, "b": 30, "l": 40, "r": 10}, legend={"orientation": "h"})
    return fig


def _view(run_id, compare, last_seen):
    """Timer tick: cheap check of the run's last event; redraw only when something changed."""
    if not run_id:
        return (gr.skip(), "<div class='wb-empty'>No run yet: choose a preset and press Start.</div>",
                gr.skip(), gr.skip(), gr.skip(), gr.skip())
    try:
        data_key = "|".join(runs.change_marker(r) for r in [run_id, *(compare or [])])  # stat() calls only
        log_path = runs.run_path(run_id) / "train.log"
    except runs.RunError:
        return gr.skip(), "Run not found.", gr.skip(), gr.skip(), gr.skip(), gr.skip()
    key = f"{data_key}#{log_path.stat().st_size if log_path.is_file() else 0}"
    if key == last_seen:
        return (gr.skip(),) * 6
    log = runs.log_tail(run_id)
    if data_key == (last_seen or "").split("#")[0]:  # only the log grew (e.g. the model is loading)
        return key, gr.skip(), gr.skip(), log, gr.skip(), gr.skip()
    status = runs.read_status(run_id)
    events = runs.read_events(run_id)
    series = {run_id: events}
    for other in compare or []:
        if other != run_id:
            series[other] = runs.read_events(other)
    cmd = jobs.cli_equivalent(run_id, resume=status.get("state") in ("stopped", "interrupted"))
    return key, progress_html(status, events), curves(series), log, f"```\n{cmd}\n```", _history(run_id)[1]


def build(demo: gr.Blocks) -> None:
    gr.Markdown("Pick a base model and a preset, adjust anything, and start a 4-bit LoRA run in the background. "
                "It keeps running if you close or refresh this page. **One training run at a time**: Start is "
                "refused while another run trains.")
    with gr.Row():
        model = gr.Dropdown(_model_choices(), value=space.default_model(), allow_custom_value=True, label="Base model",
                            info="The embedded SmolLM2-135M runs offline on a CPU; Mistral-7B needs a GPU; or type "
                                 "any Hugging Face model id or a local model folder.")
        preset_pick = gr.Dropdown(list(PRESETS), value="quick-demo-cpu", label="Preset",
                                  info=" · ".join(f"{k}: {v[1]}" for k, v in PRESETS.items()))
    estimate_md = gr.Markdown(elem_id="train-estimate")
    new_cli = gr.Markdown(elem_id="train-new-cli")
    form = []
    with gr.Accordion("All settings (each explained)", open=False):
        defaults = preset("quick-demo-cpu")
        for name, f in FORM_FIELDS:
            form.append(_widget(name, f, defaults.get(name)))
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop")
        resume_btn = gr.Button("Resume", elem_id="train-resume")
    with gr.Row():
        run_pick = gr.Dropdown([], label="Run", elem_id="train-run")
        compare = gr.Dropdown([], multiselect=True, label="Overlay other runs' curves")
    progress = gr.HTML(elem_id="train-progress-box")
    plot = gr.Plot(label="Curves", elem_id="train-curves")
    with gr.Row():
        log = gr.Textbox(label="Log (tail)", lines=8, max_lines=8, autoscroll=True)
        cli = gr.Markdown(label="Command-line equivalent")
    history = gr.Dataframe(headers=["run", "state", "step", "model", "created"], interactive=False,
                           label="Run history")
    last_seen = gr.State("")
    timer = gr.Timer(2.0)

    # The cheap part (choose a preset) fills the form from the RunConfig fields.
    def load_preset(name):
        return _form_values(preset(name))

    preset_pick.change(load_preset, preset_pick, form)
    for comp in (model, preset_pick, *form):
        comp.change(_estimate_text, [model, preset_pick, *form], [estimate_md, new_cli])
    start_btn.click(_start, [model, preset_pick, *form], [run_pick, history, compare],
                    concurrency_limit=1, concurrency_id="train-start").then(
        lambda: "", None, last_seen)
    stop_btn.click(_stop, run_pick, None)
    resume_btn.click(_resume, run_pick, None).then(lambda: "", None, last_seen)
    view_io = ([run_pick, compare, last_seen], [last_seen, progress, plot, log, cli, history])
    timer.tick(_view, *view_io)
    run_pick.change(_view, *view_io)
    compare.change(_view, *view_io)

    def on_load():
        pick, table, comp = _history(jobs.active_run())
        return pick, table, comp

    demo.load(on_load, None, [run_pick, history, compare]).then(
        _estimate_text, [model, preset_pick, *form], [estimate_md, new_cli])
