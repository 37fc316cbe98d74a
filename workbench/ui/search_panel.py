"""The Train tab's "Find a recipe" panel: start a recipe search from the settings above, watch its trials (read from
the search folder on a timer, redrawn only when search.json changed), stop it, and train the best recipe in full."""
from __future__ import annotations

import html

import gradio as gr

from workbench import runs
from workbench.config import PRESETS, ConfigError, preset
from workbench.data.dataset import DataError
from workbench.training import jobs
from workbench.training import search
from workbench.ui import guard

INTRO = ("**Find a recipe.** Not sure which LoRA settings suit your data? The search trains several variants of the "
         "recipe above, one after another (each is a normal run: it appears in the Run list with its curve; set "
         "*steps per trial* to make each variant a short run instead of the whole schedule), "
         "scores each by its loss on the held-out questions, and stops a variant early when it falls behind the "
         "others. Trial 0 is the recipe above as it is, so the best trial is at least as good as what you have. "
         "Then **Use this recipe** trains the winner in full and scores it. Like training, one search at a time.")
CHOICES = {"lora.target_modules": ("Layers that get adapters", ["attention", "all-linear"]),
           "lora.r": ("Adapter rank (alpha scales with it, keeping the recipe's alpha ÷ rank)", ["16", "64", "256"]),
           "training.learning_rate": ("Learning rate", ["1e-4", "2e-4", "4e-4", "8e-4"]),
           "training.epochs": ("Passes over the data (epochs)", ["1", "2", "3"])}


def status_html(data: dict | None) -> str:
    if not data:
        return "<div class='wb-empty' id='search-status'>No search yet.</div>"
    state, best = data.get("state", "?"), data.get("best")
    budget = data.get("budget", {})
    limit = " and ".join(x for x in (f"{budget['trials']} trials" if budget.get("trials") else "",
                                     f"{budget['minutes']:g} min" if budget.get("minutes") else "") if x)
    if budget.get("trial_steps"):
        limit += f", {budget['trial_steps']} steps each"
    so_far = " so far" if state in search.ACTIVE else ""
    found = f" · best{so_far}: trial {best['number']}, eval loss {best['eval_loss']:.4f}" if best else ""
    reason = f"<div class='wb-warn'>{html.escape(data['reason'])}</div>" if data.get("reason") else ""
    return (f"<div id='search-status'><b>{html.escape(data.get('id', ''))}: <span id='search-state'>{state}</span></b>"
            f" · {search.trained_count(data)} trial(s) of at most {limit} · settings picked by "
            f"{html.escape(data.get('sampler', '?'))}{found}{reason}</div>")


def _space(layers, ranks, rates, epochs) -> dict:
    """An unticked group means: keep the recipe's own value for that setting."""
    return {"lora.target_modules": list(layers or []), "lora.r": list(ranks or []),
            "training.learning_rate": list(rates or []), "training.epochs": list(epochs or [])}


def _view(search_id, seen):
    """Timer tick: a stat of the searches folder and the search's files; redraw only when they changed."""
    try:
        key = search.change_marker(search_id)
    except search.SearchError:
        key = "-"
    if key == seen:
        return (gr.skip(),) * 5
    listed = search.list_searches()
    ids = [s["id"] for s in listed]
    search_id = search_id if search_id in ids else (ids[0] if ids else None)
    data = next((s for s in listed if s["id"] == search_id), None)
    done = [t["number"] for t in (data or {}).get("trials", []) if t.get("state") == "completed"]
    best = ((data or {}).get("best") or {}).get("number")
    return (search.change_marker(search_id) if search_id else key, gr.update(choices=ids, value=search_id),
            status_html(data), search.trial_rows(data) if data else [],
            gr.update(choices=[str(n) for n in done], value=str(best) if best is not None else None))


def full_run_html(run_id: str, status: dict) -> str:
    step, total = status.get("step") or 0, status.get("total_steps") or "…"
    scoring = " · scoring" if status.get("eval_state") == "running" else ""
    return (f"<div id='search-full-run'>Full run <b id='search-full-id'>{html.escape(run_id)}</b>: <span "
            f"id='search-full-state'>{html.escape(str(status.get('state', '?')))}</span> · step {step}/{total}"
            f"{scoring}</div>")


def _full_run_view(run_id, seen):
    """Timer tick: the promoted run's state and step, redrawn only when its status or events changed."""
    if not run_id:
        return gr.skip(), gr.skip()
    try:
        key = runs.change_marker(run_id)
        return (gr.skip(), gr.skip()) if key == seen else (key, full_run_html(run_id, runs.read_status(run_id)))
    except runs.RunError:
        return gr.skip(), gr.skip()


def build(demo: gr.Blocks, config_inputs: list | None = None) -> None:
    """The panel. `config_inputs` are the Train tab's model, preset, data choice and form widgets (the search starts
    from exactly what Start would train); without them the panel has its own preset picker."""
    with gr.Accordion("Find a recipe (search LoRA settings on your data)", open=False, elem_id="search-panel"):
        gr.Markdown(INTRO)
        if config_inputs is None:
            config_inputs = [gr.Dropdown(list(PRESETS), value="quick-demo-cpu", label="Start from preset")]
        with gr.Row():
            trials = gr.Number(6, precision=0, label="Budget: at most this many trials", elem_id="search-trials")
            minutes = gr.Number(0, label="Budget: minutes (0 = no limit; a trial running then is stopped)",
                                elem_id="search-minutes")
            trial_steps = gr.Number(0, precision=0, elem_id="search-trial-steps",
                                    label="Steps per trial (0 = each trial trains the whole recipe; e.g. a quarter "
                                          "of it makes a search ~4x quicker, then Use this recipe trains it in full; "
                                          "short trials favour high learning rates)")
        groups = []
        with gr.Row():
            for name, (label, choices) in CHOICES.items():
                groups.append(gr.CheckboxGroup(choices, value=choices, label=label,
                                               elem_id=f"search-{name.split('.')[-1].replace('_', '-')}"))
        with gr.Row():
            start_btn = gr.Button("Start search", variant="primary", elem_id="search-start")
            stop_btn = gr.Button("Stop search", variant="stop", elem_id="search-stop")
        search_pick = gr.Dropdown([], label="Search", elem_id="search-pick")
        status = gr.HTML(status_html(None), elem_id="search-status-box")
        table = gr.Dataframe(headers=search.COLUMNS, interactive=False, wrap=True, elem_id="search-trials-table",
                             column_widths=["7%", "9%", "9%", "8%", "8%", "6%", "8%", "7%", "16%", "22%"],
                             label="Trials (★ = lowest eval loss; click a header to sort)")
        with gr.Row():
            trial_pick = gr.Dropdown([], label="Trial to train in full (default: the best)", elem_id="search-trial")
            use_btn = gr.Button("Use this recipe", elem_id="search-use")
        used = gr.Markdown(elem_id="search-used")
        full_run = gr.HTML(elem_id="search-full-run-box")
    seen = gr.State("")
    promoted = gr.State("")  # the full run this page started with "Use this recipe", followed until it ends
    full_seen = gr.State("")
    timer = gr.Timer(2.0)
    private = {"api_visibility": "private"}

    def start(request: gr.Request, trials_n, minutes_n, steps_n, layers, ranks, rates, epochs, *config):
        guard.require(request, "train")
        try:
            cfg = _base_config(config)
            space = _space(layers, ranks, rates, epochs)
            search_id = search.start_search(cfg, space, int(trials_n or 0), float(minutes_n or 0), int(steps_n or 0))
        except ConfigError as e:
            raise guard.refusal(" ".join(e.messages)) from None
        except (search.SearchError, jobs.JobError, runs.RunError, DataError) as e:
            raise guard.refusal(str(e)) from None
        gr.Info(f"Started search {search_id}: trial 0 is loading the model and the data.")
        note = search.epochs_note(cfg, space, int(steps_n or 0) > 0) if epochs else ""
        if note:  # the epoch boxes were ticked but cannot matter: say so rather than ignore them silently
            gr.Warning(note)
        return gr.update(choices=[search_id], value=search_id), ""

    def stop(search_id, request: gr.Request):
        guard.require(request, "stop")
        if not search_id:
            raise guard.refusal("Pick a search first.")
        try:
            search.stop_search(search_id)
        except search.SearchError as e:
            raise guard.refusal(str(e)) from None
        gr.Info("Stop requested: the current trial saves a checkpoint and the search ends.")

    def use(search_id, trial, request: gr.Request):
        guard.require(request, "train")
        if not search_id:
            raise guard.refusal("Pick a search first.")
        try:
            run_id = search.use_recipe(search_id, int(trial) if trial not in (None, "") else None)
        except (search.SearchError, jobs.JobError, runs.RunError, DataError) as e:
            raise guard.refusal(str(e)) from None
        return (f"Started run **{run_id}** with trial {trial if trial not in (None, '') else 'best'}'s settings; it "
                f"is scored when it ends. Its progress is below, and the Run list above picks it within a few seconds."), run_id

    start_btn.click(start, [trials, minutes, trial_steps, *groups, *config_inputs], [search_pick, seen], api_name="search_start",
                    concurrency_limit=1, concurrency_id="train-start")
    stop_btn.click(stop, search_pick, None, api_name="search_stop")
    use_btn.click(use, [search_pick, trial_pick], [used, promoted], api_name="search_use", concurrency_limit=1,
                  concurrency_id="train-start")
    view_io = ([search_pick, seen], [seen, search_pick, status, table, trial_pick])
    timer.tick(_view, *view_io, **private)
    timer.tick(_full_run_view, [promoted, full_seen], [full_seen, full_run], **private)
    search_pick.input(lambda: "", None, seen, **private)  # another search picked: redraw on the next tick
    demo.load(_view, *view_io, **private)


def _base_config(config):
    """The Train tab's RunConfig (its form), or the panel's own preset when it stands alone."""
    if len(config) == 1:
        return preset(config[0])
    from workbench.ui import train_tab

    model, preset_name, data_choice, *values = config
    return train_tab.training_config(model, preset_name, data_choice, values)
