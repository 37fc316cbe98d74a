"""Deploy tab: where the app runs and who you are, the Space plan from space.yaml (and deploying it), and
publishing a run's adapter to the Hub with its model card. Pushing and deploying are admin actions."""
from __future__ import annotations

import os
import re

import gradio as gr

from workbench import paths, runs
from workbench.config import ConfigError
from workbench.deploy import hub_export
from workbench.deploy import space
from workbench.deploy import space_deploy
from workbench.safety import redact, safe_join
from workbench.ui import guard


def manifests() -> list[str]:
    """The Space manifests the tab may read: space*.yaml / space*.yml files in the app folder, listed by the server."""
    return sorted(p.name for pattern in ("space*.yaml", "space*.yml") for p in paths.REPO_ROOT.glob(pattern)
                  if p.is_file())


def _config_path(name: str):
    """The manifest a request picks, by name from the server's own list: a request never names a path the app then
    reads (any other file of the app folder, e.g. a run's config, would otherwise be parsed and its keys echoed)."""
    name = (name or "space.yaml").strip()
    known = manifests()
    if name not in known:
        raise guard.refusal(f"'{name[:80]}' is not one of the Space manifests in the app folder "
                       f"({', '.join(known) or 'none: add a space.yaml'}); pick one from the list.")
    return safe_join(paths.REPO_ROOT, name)


def _capture(fn, *args, **kwargs) -> str:
    """Run fn with a collecting log; problems go first, so they are what the user sees."""
    lines: list[str] = []
    try:
        fn(*args, log=lambda m: lines.append(str(m)), **kwargs)
    except space.SpaceConfigError as e:
        lines.insert(0, "space.yaml has problems:\n" + "\n".join(f"  - {m}" for m in e.messages) + "\n")
    except (space_deploy.DeployError, hub_export.HubError, runs.RunError) as e:
        lines.insert(0, f"error: {e}\n")
    return redact("\n".join(lines))


def _plan(config: str) -> str:
    """Validate space.yaml and show the front matter, bundle and Hub calls (no network)."""
    return _capture(space_deploy.deploy, _config_path(config), dry_run=True)


def _deploy(config: str, request: gr.Request) -> str:
    guard.require(request, "deploy")
    return _capture(space_deploy.deploy, _config_path(config), wait=False)


def _adapter_runs() -> list[str]:
    """Runs with a finished adapter: the same listing the Chat tab offers."""
    from workbench.chat import session as chat

    return [r["id"] for r in chat.chat_runs()]


def card_markdown(card: str) -> str:
    """A model card for the preview: its YAML header shown as a YAML block (Markdown would run it into one line)."""
    if card.startswith("---\n"):
        end = card.find("\n---", 4)
        if end != -1:
            header, body = card[4:end], card[end + 4:].lstrip("\n")
            return f"```yaml\n{header}\n```\n\n{body}"
    return card


def preview_repo(run_id: str) -> str:
    """The repository a card is previewed for before one is typed: 'you/<the run's name>' (the card's title is the
    repository's name, so a generic placeholder titled every preview "adapter")."""
    name = ""
    try:
        name = runs.load_run_config(run_id).name
    except (runs.RunError, ConfigError):  # the run id then; the card itself says what is wrong
        pass
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name or run_id).strip("-.")[:80] or "adapter"
    return f"you/{slug}"


def _card(run_id: str, repo: str) -> str:
    if not run_id:
        return "Pick a run with a finished adapter first."
    try:
        run_id = runs.validate_run_id(run_id)
        typed = (repo or "").strip()
        card = card_markdown(hub_export.model_card(run_id, hub_export.validate_repo_id(typed or preview_repo(run_id))))
    except (runs.RunError, hub_export.HubError, ConfigError) as e:
        return f"error: {e}"
    if not typed:
        card = (f"*No repository typed yet: previewed as `{preview_repo(run_id)}`; the card takes the name of the "
                f"repository you push to.*\n\n" + card)
    return card


NO_REPO = "Type the model repository to push to (owner/name, e.g. alice/smollm2-databricks-lora) first."


def _push(run_id: str, repo: str, private: bool, merged: bool, request: gr.Request) -> str:
    """The push log. A failure is its last line (and a toast), after the lines of what was done before it: raising
    instead would drop those lines and mark the log "Error"."""
    guard.require(request, "push")
    if not run_id:
        gr.Warning("Pick a run with a finished adapter first.")
        return "Pick a run with a finished adapter first."
    try:
        runs.validate_run_id(run_id)  # a malformed id is refused outright (never a path)
    except runs.RunError as e:
        raise guard.refusal(str(e)) from None
    if not (repo or "").strip():  # said as what to do, not as "'' is not a Hub repository id"
        gr.Warning(NO_REPO)
        return NO_REPO
    lines: list[str] = []
    try:
        hub_export.push(run_id, repo, merged=bool(merged), private=bool(private), log=lambda m: lines.append(str(m)))
    except (hub_export.HubError, runs.RunError) as e:
        gr.Warning(redact(str(e)))
        lines.append(f"error: {e}")
    return redact("\n".join(lines))


def status_text() -> str:
    lines = []
    if space.on_space():
        lines.append(f"Running on the Hugging Face Space **{os.environ.get('SPACE_ID')}**.")
    else:
        lines.append("Running locally (not on a Hugging Face Space).")
    warning = space.storage_warning()
    lines.append(f"⚠️ {warning}" if warning else f"Runs and caches are stored under `{paths.home()}`.")
    policy = os.environ.get("WORKBENCH_POLICY")
    lines.append(f"Access policy: `{os.path.basename(policy)}` (admins train/push, reviewers chat/vote)." if policy else
                 "Access policy: none — everyone who can open this page may do everything (fine on localhost).")
    return "\n\n".join(lines)


def _refresh():
    ids = _adapter_runs()
    return status_text(), gr.update(choices=ids, value=ids[0] if ids else None)


def build(demo: gr.Blocks) -> None:
    status = gr.Markdown(status_text(), elem_id="deploy-status")
    with gr.Accordion("Hugging Face Space (space.yaml)", open=True):
        gr.Markdown("`space.yaml` describes the Space: hardware, privacy, sleep time, storage volume, secret names, "
                    "who may train. **Show plan** validates it and lists the exact Hub calls without contacting "
                    "anything; the command line does the same: `python -m workbench deploy --dry-run`.")
        found = manifests()
        config = gr.Dropdown(found, value="space.yaml" if "space.yaml" in found else (found or [None])[0],
                             label="Manifest (a space*.yaml file in the app folder)", elem_id="deploy-manifest")
        with gr.Row():
            plan_btn = gr.Button("Show plan (dry run)")
            deploy_btn = gr.Button("Deploy now", variant="stop")
        plan_out = gr.Code(label="Plan / deploy log", language="markdown", elem_id="deploy-plan")
    with gr.Accordion("Publish an adapter to the Hub", open=True):
        gr.Markdown("Pushes the run's final LoRA adapter with a model card (base model, data source and licence, full "
                    "config, metrics, training curve). CLI: `python -m workbench push --run RUN --repo you/name`.")
        with gr.Row():
            run_pick = gr.Dropdown([], label="Run (with a finished adapter)", allow_custom_value=True)
            repo = gr.Textbox(label="Model repository (owner/name)", placeholder="alice/smollm2-databricks-lora")
        with gr.Row():
            private = gr.Checkbox(True, label="Private repository")
            merged = gr.Checkbox(False, label="Also push a merged model (16-bit; large for 7B models)")
        with gr.Row():
            card_btn = gr.Button("Preview model card")
            push_btn = gr.Button("Push to the Hub", variant="primary")
        push_out = gr.Textbox(label="Push log", lines=4, elem_id="push-log")
        card_out = gr.Markdown(elem_id="card-preview")

    plan_btn.click(_plan, config, plan_out)
    deploy_btn.click(_deploy, config, plan_out, concurrency_limit=1, concurrency_id="deploy")
    card_btn.click(_card, [run_pick, repo], card_out)
    push_btn.click(_push, [run_pick, repo, private, merged], push_out, concurrency_limit=1, concurrency_id="push")
    demo.load(_refresh, None, [status, run_pick])
