"""Train tab: pick a model and preset, every setting with its help, estimate, Start/Stop/Resume,
live progress and curves read from the run folder, log tail, CLI equivalent, history, overlays."""
from __future__ import annotations

import html

import gradio as gr
import yaml

from workbench import runs
from workbench.training import estimate
from workbench.training import jobs
from workbench.deploy import space
from workbench.config import EMBEDDED_MODEL, MISTRAL_7B, PRESETS, ConfigError, RunConfig, iter_fields, preset
from workbench.config_checks import coerce
from workbench.data import workspace
from workbench.data.dataset import DataError
from workbench.ui import guard
from workbench.ui import preference_panel
from workbench.ui import search_panel
from workbench.ui.run_view import LOG_LINES, clean_log, curves, progress_html  # noqa: F401 (tests read them here)
from workbench.ui.train_runs import (  # noqa: F401 (the tab's handlers; tests read them here)
    _compare_choices, _history, _runs_tick, _view, buttons_for)

MODEL_CHOICES = [EMBEDDED_MODEL, MISTRAL_7B]


def _model_choices() -> list[str]:
    """The embedded model and Mistral-7B, plus the deployment's default model when it is another one."""
    default = space.default_model()
    return MODEL_CHOICES + ([default] if default not in MODEL_CHOICES else [])

# Settings shown elsewhere on the tab (model picker, preset) are not repeated in the form. The run kind comes from
# the preset (the "Kind of run" choice picks one); a preference run's parent and pairs have their own controls
# (ui/preference_panel), chosen from lists, so no request names a run folder or a file there.
FORM_SKIP = {"model.name_or_path", "preset", "kind", "preference.parent_run", "preference.pairs"}
FORM_FIELDS = [(n, f) for n, f, _ in iter_fields() if n not in FORM_SKIP]  # one order for widgets and values


SECTIONS = [("model", "Model"), ("data", "Data"), ("lora", "LoRA adapter"), ("training", "Training"),
            ("eval", "Evaluation after training"), ("preference", "Preference tuning (preference runs only)")]
KINDS = ["Supervised (question → answer)", "Preference tuning (DPO from review votes)"]
# Settings most people never change: folded under "More … settings" in their section.
ADVANCED = {"model.quant_type", "model.double_quant", "model.compute_dtype", "data.dbdemos_dir", "data.columns",
            "data.cleaning", "data.split_seed", "data.template", "lora.bias", "lora.dropout",
            "training.lr_scheduler", "training.warmup_ratio", "training.weight_decay", "training.max_grad_norm",
            "training.optimizer", "training.logging_steps", "training.eval_steps", "training.save_strategy",
            "training.save_steps", "training.save_every_minutes", "training.seed", "training.num_processes",
            "eval.batch_size", "model.load_in_4bit", "name"}
# Plain labels where the field name alone is jargon; the rest are the field name in words.
LABELS = {"model.max_seq_length": "Longest example (tokens)", "model.load_in_4bit": "Load the base model in 4 bits",
          "model.quant_type": "4-bit format", "model.double_quant": "Double quantization",
          "model.compute_dtype": "Compute precision", "data.source": "Data source (when not using the Data tab's)",
          "data.dbdemos_dir": "dbdemos folder", "data.columns": "Column mapping", "data.cleaning": "Cleaning steps",
          "data.eval_fraction": "Share held out for evaluation", "data.split_seed": "Split seed",
          "data.max_train_examples": "At most this many training examples (0 = all)",
          "data.max_eval_examples": "At most this many evaluation examples (0 = all)",
          "data.template": "Prompt layout", "data.system_prompt": "System prompt", "lora.r": "Adapter rank (r)",
          "lora.alpha": "Adapter strength (alpha)", "lora.dropout": "Adapter dropout",
          "lora.target_modules": "Layers that get an adapter", "lora.bias": "Train bias terms",
          "training.epochs": "Passes over the data (epochs)", "training.max_steps": "Stop after steps (0 = all epochs)",
          "training.batch_size": "Batch size", "training.grad_accum": "Gradient accumulation",
          "training.learning_rate": "Learning rate", "training.lr_scheduler": "Learning-rate schedule",
          "training.warmup_ratio": "Warm-up share", "training.max_grad_norm": "Clip updates above (grad norm)",
          "training.gradient_checkpointing": "Save memory (gradient checkpointing)",
          "training.logging_steps": "Record progress every (steps)", "training.eval_steps": "Evaluate every (steps)",
          "training.save_strategy": "Save checkpoints", "training.save_every_minutes": "Also save every (minutes)",
          "training.num_processes": "Training processes", "training.device": "Device",
          "eval.run_after_training": "Score base vs fine-tuned when training ends",
          "eval.max_new_tokens": "Longest generated answer (tokens)", "eval.max_examples": "Questions to score",
          "eval.batch_size": "Questions generated together", "name": "Run name",
          "preference.beta": "DPO beta (higher stays closer to the parent)",
          "preference.eval_fraction": "Share of the pairs held out"}
DATA_TAB, DATA_SETTINGS = "The Data tab's dataset", "The data settings below"


def label_of(name: str) -> str:
    return LABELS.get(name) or name.split(".")[-1].replace("_", " ").capitalize()


def _widget(name, f, value):
    label, info = label_of(name), f.metadata.get("help", "")
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


def training_config(model, preset_name, data_choice, values) -> RunConfig:
    """The form's RunConfig; with the Data tab's dataset chosen, its data points at the saved file (a path the
    server chooses: workspace.records_path(), never one from the request)."""
    cfg = config_from_form(model, preset_name, values)
    if data_choice == DATA_TAB and cfg.kind != "preference":  # a preference run takes the parent's Q&A split
        try:
            cfg.data = workspace.data_config(cfg.data)
        except ValueError as e:
            raise ConfigError([f"{e} Or choose '{DATA_SETTINGS}'."]) from None
    return cfg


def dataset_text(data_choice, preset_name="quick-demo-cpu", data_cfg=None) -> str:
    """What Start will train on, shown beside it: the record count, the cleaning summary and the split (the form's
    data settings when given, else the preset's)."""
    meta = workspace.manifest()
    try:
        data_cfg = data_cfg or (preset(preset_name).data if preset_name else None)
        kind = preset(preset_name).kind if preset_name else "sft"
    except ConfigError:
        data_cfg, kind = None, "sft"
    if kind == "preference":
        return ("<div id='train-dataset'><b>Trains on:</b> preference pairs (chosen under “Preference tuning” "
                "below); the Metrics tab scores it on the parent run's held-out questions.</div>")
    if data_choice == DATA_TAB:
        why = workspace.damage()  # reads the records once: Start would fail on them
        if why:
            return (f"<div class='wb-error' id='train-dataset'>The Data tab's saved dataset is damaged: "
                    f"{html.escape(why)}. Load the data in the Data tab again, or choose “The data settings "
                    f"below”.</div>")
        if meta is None:
            return ("<div class='wb-warn' id='train-dataset'>No dataset saved from the Data tab yet: load and clean one "
                    "there (it is saved as you go), or choose “The data settings below”.</div>")
        return f"<div id='train-dataset'><b>Trains on:</b> {html.escape(workspace.describe(meta, data_cfg))}</div>"
    source = data_cfg.source if data_cfg else "?"
    saved = f" The Data tab's dataset ({meta['rows']:,} records) is not used." if meta else ""
    return (f"<div id='train-dataset'><b>Trains on:</b> data.source “{html.escape(source)}” as set below, with its "
            f"cleaning steps applied when the run starts.{saved}</div>")


def _dataset_from_form(data_choice, preset_name, model, *values) -> str:
    """The "Trains on" line as the form now stands: a held-out share or caps edited below show at once (Start
    trains with them). A form that does not parse yet falls back to the preset's data settings."""
    try:
        data_cfg = config_from_form(model, preset_name, values).data
    except ConfigError:
        data_cfg = None
    return dataset_text(data_choice, preset_name, data_cfg)


def _estimate_text(parent, pairs_choice, model, preset_name, data_choice, *values):
    """The estimate (or what to fix) and the command line that starts the same run (a preference run's with the
    parent and pairs picked under Preference tuning)."""
    try:
        cfg = training_config(model, preset_name, data_choice, values)
    except ConfigError as e:
        return f"<div class='wb-error'>{'<br>'.join(e.messages)}</div>", gr.skip()
    if cfg.kind == "preference":
        cfg.preference.parent_run = str(parent or "")
        try:
            cfg.preference.pairs = preference_panel.pairs_setting(pairs_choice)
        except DataError:  # no preference file loaded: the preview beside it says so
            cfg.preference.pairs = "votes"
    problems = cfg.validate()
    gpu, total = estimate.detected_gpu()
    meta = workspace.manifest() if data_choice == DATA_TAB else None
    steps = estimate.planned_steps(cfg, meta["rows"] if meta else None)
    text = estimate.describe(cfg, gpu, total, steps, None if gpu else estimate.measured_on_this_machine(cfg))
    command = f"Same run from a terminal:\n```\n{jobs.cli_for_config(cfg)}\n```"
    if problems:
        return "<div class='wb-error'>" + "<br>".join(problems) + "</div>" + text, command
    return text, command


def _start(request: gr.Request, parent, pairs_choice, model, preset_name, data_choice, *values):
    guard.require(request, "train")
    try:
        cfg = training_config(model, preset_name, data_choice, values)
        if cfg.kind == "preference":  # parent and pairs from the Preference tuning controls (lists, not paths)
            preference_panel.apply_preference(cfg, parent, pairs_choice)
        _free_chat_memory()
        run_id = jobs.start_run(cfg)
    except ConfigError as e:
        raise guard.refusal(" ".join(e.messages)) from None
    except (jobs.JobError, runs.RunError, DataError) as e:
        raise guard.refusal(str(e)) from None
    what = "preference run" if cfg.kind == "preference" else "run"
    gr.Info(f"Started {what} {run_id}: loading the model and the data first (about half a minute on a CPU).")
    return _history(run_id)


def _free_chat_memory() -> None:
    """A run about to start gets the memory the Chat tab holds (the stated GPU policy: training first)."""
    from workbench.chat import session as chat

    chat.release()


def _stop(run_id, request: gr.Request):
    guard.require(request, "stop")
    if not run_id:
        raise guard.refusal("Pick a run first.")
    try:
        jobs.stop_run(run_id)
    except (jobs.JobError, runs.RunError) as e:
        raise guard.refusal(str(e)) from None
    gr.Info("Stop requested: the run saves a checkpoint and ends as 'stopped'.")


def _resume(run_id, request: gr.Request):
    guard.require(request, "resume")
    if not run_id:
        raise guard.refusal("Pick a run first.")
    try:
        _free_chat_memory()
        jobs.resume_run(run_id)
    except (jobs.JobError, runs.RunError) as e:
        raise guard.refusal(str(e)) from None
    gr.Info(f"Resumed {run_id}.")


def _delete(run_id, confirm, request: gr.Request):
    guard.require(request, "delete")
    if not run_id:
        raise guard.refusal("Pick a run first.")
    if not confirm:  # a warning, not an error badge over the form
        gr.Warning(f"Tick “Yes, delete the selected run” first: deleting {run_id} removes its folder (checkpoints, "
                   f"adapter, metrics) for good.")
        return (gr.skip(),) * 4
    try:
        runs.delete_run(run_id)
    except runs.RunError as e:
        raise guard.refusal(str(e)) from None
    gr.Info(f"Deleted run {run_id}.")
    return (*_history(None), False)


def _is_preference(preset_name) -> bool:
    try:
        return bool(preset_name) and preset(preset_name).kind == "preference"
    except ConfigError:
        return False


def _pick_kind(kind):
    """The "Kind of run" choice picks the preset for this machine (the form, estimate and controls follow it)."""
    gpu = bool(estimate.detected_gpu()[0])
    if kind == KINDS[1]:
        return "preference-gpu" if gpu else "preference-cpu"
    return "embedded-gpu" if gpu else "quick-demo-cpu"


def _preference_view(preset_name, parent, source, request: gr.Request = None):
    """With a preference preset: the Preference tuning controls (parent runs listed afresh) and what Start would train
    on, with the readiness verdict. A view: it reads run folders and the votes, and writes nothing."""
    if not _is_preference(preset_name):
        return gr.update(value=KINDS[0]), gr.update(visible=False), gr.skip(), gr.skip()
    choices = preference_panel.parent_choices()
    parent = parent if parent in choices else (choices[0] if choices else None)
    return (gr.update(value=KINDS[1]), gr.update(visible=True), gr.update(choices=choices, value=parent),
            preference_panel.preview_html(parent, source, names=guard.may(request, "vote")))


def _preference_preview(parent, source, request: gr.Request = None):
    return preference_panel.preview_html(parent, source, names=guard.may(request, "vote"))


def build(demo: gr.Blocks) -> None:
    gpu = estimate.detected_gpu()[0]
    gr.Markdown("Pick a base model and a preset, check what it trains on, and start a 4-bit LoRA run in the "
                "background. It keeps running if you close or refresh this page. **One training run at a time**: "
                "Start is refused while another run trains" + (" (it needs the GPU)." if gpu else
                                                                " (this machine has no GPU: runs use the CPU)."))
    kind_pick = gr.Radio(KINDS, value=KINDS[0], label="Kind of run", elem_id="train-kind",
                         info="Preference tuning trains a finished run further on reviewers' blind A/B votes.")
    with gr.Row():
        model = gr.Dropdown(_model_choices(), value=space.default_model(), allow_custom_value=True, label="Base model",
                            info="The embedded SmolLM2-135M runs offline on a CPU; Mistral-7B needs a GPU; or type "
                                 "any Hugging Face model id or a local model folder.")
        preset_pick = gr.Dropdown(list(PRESETS), value="quick-demo-cpu", label="Preset", elem_id="train-preset")
    gr.Markdown("\n".join(f"- **{k}** — {v[1]}" for k, v in PRESETS.items()), elem_id="train-presets")
    with gr.Row():
        has_saved = workspace.manifest() is not None
        data_choice = gr.Radio([DATA_TAB, DATA_SETTINGS], value=DATA_TAB if has_saved else DATA_SETTINGS,
                               label="Training data", elem_id="train-data-choice", scale=1)
        data_md = gr.HTML(elem_id="train-data-box")
    pref_group, pref_parent, pref_source, pref_preview, pref_check = preference_panel.build_train()
    estimate_md = gr.Markdown(elem_id="train-estimate")
    with gr.Row():
        start_btn = gr.Button("Start training", variant="primary", elem_id="train-start")
        stop_btn = gr.Button("Stop", variant="stop", elem_id="train-stop", interactive=False)
        resume_btn = gr.Button("Resume", elem_id="train-resume", interactive=False)
    new_cli = gr.Markdown(elem_id="train-new-cli")
    defaults = preset("quick-demo-cpu")
    widgets = {}
    with gr.Accordion("Settings (each explained)", open=False, elem_id="train-settings"):
        for section, title in SECTIONS:
            names = [n for n, _ in FORM_FIELDS if n.split(".")[0] == section or (section == "model" and n == "name")]
            with gr.Accordion(title, open=section in ("training",)):
                for name in [n for n in names if n not in ADVANCED]:
                    widgets[name] = _widget(name, dict(FORM_FIELDS)[name], defaults.get(name))
                more = [n for n in names if n in ADVANCED]
                if more:
                    with gr.Accordion(f"More {title.split()[0].lower() if section != 'lora' else 'LoRA'} settings",
                                      open=False):
                        for name in more:
                            widgets[name] = _widget(name, dict(FORM_FIELDS)[name], defaults.get(name))
    form = [widgets[name] for name, _ in FORM_FIELDS]  # the order config_from_form reads them in
    with gr.Row():
        run_pick = gr.Dropdown([], label="Run", elem_id="train-run")
        compare = gr.Dropdown([], multiselect=True, label="Overlay other runs' curves", elem_id="train-compare")
    progress = gr.HTML(elem_id="train-progress-box")
    plot = gr.Plot(label="Curves", elem_id="train-curves")
    with gr.Row():
        log = gr.Textbox(label="Log (newest lines; known-harmless warnings hidden — train.log has everything)",
                         lines=LOG_LINES, max_lines=LOG_LINES, autoscroll=True, elem_id="train-log")
        cli = gr.Markdown(label="Command-line equivalent")
    history = gr.Dataframe(headers=["run", "state", "step", "model", "created"], interactive=False,
                           label="Run history")
    with gr.Accordion("Delete a run (admins)", open=False):
        with gr.Row():
            confirm = gr.Checkbox(False, label="Yes, delete the selected run", elem_id="train-delete-confirm")
            delete_btn = gr.Button("Delete run", variant="stop", elem_id="train-delete")
    last_seen = gr.State("")
    data_seen = gr.State("")
    runs_seen = gr.State("")
    timer = gr.Timer(2.0)
    private = {"api_visibility": "private"}

    # The cheap part (choose a preset) fills the form from the RunConfig fields.
    def load_preset(name):
        return _form_values(preset(name))

    def data_tick(choice, seen):
        """When the Data tab saved another dataset (a stat call per tick): train on it. The line beside Start follows
        through data_seen's change (so the form's values are not sent on every tick)."""
        key = workspace.change_key()
        if key == seen:
            return gr.skip(), gr.skip()
        return key, DATA_TAB if key != "-" else choice

    estimate_in = [model, preset_pick, data_choice, *form]
    cli_in = [pref_parent, pref_source, *estimate_in]
    preset_pick.change(load_preset, preset_pick, form, **private)
    for comp in (model, preset_pick, data_choice, *form, pref_parent, pref_source):
        comp.change(_estimate_text, cli_in, [estimate_md, new_cli], **private)
    data_form_in = [data_choice, preset_pick, model, *form]
    data_fields = [w for (name, _), w in zip(FORM_FIELDS, form) if name.startswith("data.")]
    for comp in (preset_pick, data_choice, *data_fields):
        comp.change(_dataset_from_form, data_form_in, data_md, **private)
    pref_io = ([preset_pick, pref_parent, pref_source], [kind_pick, pref_group, pref_parent, pref_preview])
    kind_pick.input(_pick_kind, kind_pick, preset_pick, **private)
    preset_pick.change(_preference_view, *pref_io, **private)
    pref_check.click(_preference_view, *pref_io, **private)
    for comp in (pref_parent, pref_source):
        comp.change(_preference_preview, [pref_parent, pref_source], pref_preview, **private)
    start_btn.click(_start, [pref_parent, pref_source, *estimate_in], [run_pick, history, compare],
                    concurrency_limit=1, concurrency_id="train-start").then(
        lambda: "", None, last_seen, **private)
    stop_btn.click(_stop, run_pick, None)
    delete_btn.click(_delete, [run_pick, confirm], [run_pick, history, compare, confirm]).then(
        lambda: "", None, last_seen, **private)
    resume_btn.click(_resume, run_pick, None).then(lambda: "", None, last_seen, **private)
    view_io = ([run_pick, compare, last_seen], [last_seen, progress, plot, log, cli, history, stop_btn, resume_btn])
    timer.tick(_view, *view_io, **private)
    timer.tick(data_tick, [data_choice, data_seen], [data_seen, data_choice], **private)
    data_seen.change(_dataset_from_form, data_form_in, data_md, **private)
    timer.tick(_runs_tick, [run_pick, runs_seen], [runs_seen, run_pick, history, compare], **private)
    run_pick.change(_view, *view_io, **private).then(_compare_choices, [run_pick, compare], compare, **private)
    compare.change(_view, *view_io, **private)

    def on_load():
        pick, table, comp = _history(jobs.active_run())
        return pick, table, comp

    demo.load(on_load, None, [run_pick, history, compare], **private).then(
        _estimate_text, cli_in, [estimate_md, new_cli], **private).then(
        _dataset_from_form, data_form_in, data_md, **private).then(_preference_view, *pref_io, **private)
    search_panel.build(demo, estimate_in)  # "Find a recipe": a search starts from these same settings
