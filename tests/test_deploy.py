"""Deploy and push sequences against a recording stand-in for HfApi, model cards, offline messages, CLI.

The Hugging Face Hub cannot be reached from these machines, so the deploy and push sequences run against
`RecordingHfApi` below: a stand-in injected in place of `huggingface_hub.HfApi` that records every call
and checks it against the REAL HfApi method's signature (a misspelt method or argument fails the test).
The offline messages are tested with the real HfApi.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
from huggingface_hub import HfApi, SpaceRuntime

from conftest import run_cli
from workbench import runs
from workbench.training import jobs
from workbench.deploy import hub_export
from workbench.deploy import space_deploy
from workbench.config import preset

TOKEN = "hf_" + "S3cr3tT0kenValue" * 3


class RecordingHfApi:
    """Records calls; each must fit the real HfApi method (name and arguments), or the test fails."""

    def __init__(self, stage: str = "RUNNING", logs=()):
        self.calls: list[tuple[str, dict]] = []
        self.stage, self.logs = stage, list(logs)
        self.uploaded: list[str] = []
        self.uploaded_text: dict[str, str] = {}

    def __getattr__(self, name):
        real = getattr(HfApi, name)  # AttributeError: no such method in huggingface_hub
        signature = inspect.signature(real)

        def call(*args, **kwargs):
            bound = signature.bind(self, *args, **kwargs)  # TypeError: the real method would not accept this call
            self.calls.append((name, {k: v for k, v in bound.arguments.items() if k != "self"}))
            if name == "upload_folder":
                folder = Path(kwargs["folder_path"])
                self.uploaded = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
                self.uploaded_text = {f: (folder / f).read_text(errors="replace") for f in self.uploaded
                                      if f.endswith((".md", ".yaml", ".txt", ".json"))}
            if name == "wait_for_space":
                return SpaceRuntime({"stage": self.stage, "hardware": {"current": None, "requested": "a10g-small"}})
            if name == "fetch_space_logs":
                return iter(self.logs)
            return None

        return call


def write_space_yaml(path: Path, volumes: bool = True) -> Path:
    path.write_text(f"""
space_id: alice/forge
hardware: t4-medium
private: true
sleep_time: 1800
volumes: {'[{type: bucket, source: alice/forge-data, mount_path: /data}]' if volumes else '[]'}
secrets: [HF_TOKEN, MISSING_SECRET]
variables: {{GREETING: hello}}
access: {{admins: [alice], reviewers: [carol], visitors: read-only}}
""")
    return path


def test_deploy_makes_the_exact_calls_in_order(tmp_path):
    api = RecordingHfApi()
    out: list[str] = []
    result = space_deploy.deploy(write_space_yaml(tmp_path / "space.yaml"), api=api, env={"HF_TOKEN": TOKEN},
                                 log=out.append, settle_s=0)
    rid = "alice/forge"
    expected = [
        ("create_repo", dict(repo_id=rid, repo_type="space", space_sdk="gradio", private=True, exist_ok=True)),
        ("update_repo_settings", dict(repo_id=rid, repo_type="space", private=True)),
        ("request_space_hardware", dict(repo_id=rid, hardware="t4-medium", sleep_time=1800)),
        ("create_bucket", dict(bucket_id="alice/forge-data", private=True, exist_ok=True)),
    ]
    assert api.calls[:4] == expected
    name, kw = api.calls[4]
    assert name == "set_space_volumes" and [v.to_dict() for v in kw["volumes"]] == [
        {"type": "bucket", "source": "alice/forge-data", "mountPath": "/data"}]
    assert api.calls[5] == ("add_space_secret", dict(repo_id=rid, key="HF_TOKEN", value=TOKEN))  # the real value
    assert [c[1]["key"] for c in api.calls[6:9]] == ["GREETING", "WORKBENCH_VOLUME", "WORKBENCH_DEFAULT_MODEL"]
    name, kw = api.calls[9]
    assert name == "upload_folder" and kw["repo_type"] == "space" and kw["repo_id"] == rid
    assert api.calls[10][0] == "wait_for_space" and len(api.calls) == 11
    assert str(result.runtime.stage) == "RUNNING"
    # what was uploaded: the app, the generated README/requirements/space.yaml — never envs, runs, tests, .git
    assert {"app.py", "README.md", "requirements.txt", "space.yaml", "workbench/cli.py"} <= set(api.uploaded)
    assert not [f for f in api.uploaded if f.startswith((".venv/", ".git/", ".workbench/", "tests/", "runs/"))]
    assert api.uploaded_text["README.md"].startswith("---\ntitle: tech-llm-forge\n")
    assert "alice/forge-data" in api.uploaded_text["space.yaml"]
    log = "\n".join(out)
    assert TOKEN not in log and TOKEN not in json.dumps(api.uploaded_text)  # the secret only went to add_space_secret
    assert "MISSING_SECRET is not set" in log


def test_deploy_failure_shows_the_build_log_without_secrets(tmp_path):
    api = RecordingHfApi(stage="BUILD_ERROR", logs=["Collecting torch", f"token={TOKEN}", "ERROR: no matching dist"])
    with pytest.raises(space_deploy.DeployError) as err:
        space_deploy.deploy(write_space_yaml(tmp_path / "space.yaml"), api=api, env={"HF_TOKEN": TOKEN},
                            log=lambda m: None, settle_s=0)
    msg = str(err.value)
    assert "BUILD_ERROR" in msg and "ERROR: no matching dist" in msg and TOKEN not in msg and "[REDACTED]" in msg
    assert api.calls[-1] == ("fetch_space_logs", {"repo_id": "alice/forge", "build": True})


def test_dry_run_contacts_nothing_and_placeholder_blocks_a_real_deploy(tmp_path):
    api = RecordingHfApi()
    out: list[str] = []
    space_deploy.deploy(space_deploy.paths.REPO_ROOT / "space.yaml", dry_run=True, api=api, env={}, log=out.append)
    assert api.calls == [] and "Dry run" in out[-1] and "sdk: gradio" in out[0]
    with pytest.raises(space_deploy.DeployError, match="your-username"):
        space_deploy.deploy(space_deploy.paths.REPO_ROOT / "space.yaml", api=api, env={}, log=out.append)
    assert api.calls == []


def test_deploy_offline_gives_a_clear_message_with_the_real_hfapi(tmp_path):
    # The real HfApi: refused by HF_HUB_OFFLINE when huggingface_hub read it at import, else by the network.
    with pytest.raises(space_deploy.DeployError, match="Cannot reach the Hugging Face Hub"):
        space_deploy.deploy(write_space_yaml(tmp_path / "space.yaml"), env={"HF_TOKEN": TOKEN}, log=lambda m: None,
                            settle_s=0)


@pytest.mark.integration
def test_deploy_cli_dry_run_and_invalid_config(tmp_path):
    ok = run_cli("deploy", "--dry-run", "--config", write_space_yaml(tmp_path / "space.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "api.create_repo(repo_id='alice/forge'" in ok.stdout and "hf_oauth: true" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("space_id: nope\nhardware: gpu-please\naccess: {admins: []}\n")
    res = run_cli("deploy", "--dry-run", "--config", bad)
    assert res.returncode == 1 and "3 problem(s)" in res.stderr and "Traceback" not in res.stderr


# -- adapter export ---------------------------------------------------------------------------------

@pytest.fixture
def trained_run():
    """A real run folder (real data split) with a real peft LoRA adapter on a tiny random Llama — saved,
    not trained: pushing does not depend on the weights' values. Events and metrics.json are written in the
    run-folder format so the card has a curve and a table to show."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = preset("quick-demo-cpu")
    cfg.name = "card test"
    run_id = jobs.create_run(cfg)
    run_dir = runs.run_path(run_id)
    torch.manual_seed(0)
    tiny = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=64))
    get_peft_model(tiny, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(run_dir / "adapter")
    for step, loss in enumerate([2.5, 2.1, 1.8, 1.6], start=1):
        runs.append_event(run_id, {"step": step * 10, "loss": loss, "learning_rate": 2e-4, "grad_norm": 1.0})
    runs.append_event(run_id, {"step": 40, "eval_loss": 1.7})
    (run_dir / "metrics.json").write_text(json.dumps({
        "eval_examples": 8, "base": {"perplexity": 9.0, "rougeL": 0.20}, "tuned": {"perplexity": 6.0, "rougeL": 0.30},
        "change_pct": {"perplexity": -33.3, "rougeL": 50.0}}))
    return run_id


def test_push_makes_the_exact_calls_and_uploads_adapter_and_card(trained_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    api = RecordingHfApi()
    result = hub_export.push(trained_run, "alice/forge-lora", private=True, api=api, log=lambda m: None)
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][1] == dict(repo_id="alice/forge-lora", repo_type="model", private=True, exist_ok=True)
    assert api.calls[1][1]["repo_type"] == "model" and api.calls[1][1]["repo_id"] == "alice/forge-lora"
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "config.yaml", "metrics.json"} <= \
        set(api.uploaded) == set(result["files"])
    card = api.uploaded_text["README.md"]
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card and "library_name: peft" in card
    assert "tech-llm-forge, MIT" in card or "MIT licence" in card  # the sample data's licence note
    assert "| perplexity | 9.0000 | 6.0000 | -33.3% |" in card
    assert "2.500 → 1.600" in card and "| 40 |  | 1.7 |" in card  # loss sparkline summary and eval row
    assert f"learning_rate: {runs.load_run_config(trained_run).training.learning_rate}" in card  # the full config
    assert TOKEN not in json.dumps(api.uploaded_text)


def test_model_card_licence_note_for_dbdemos_data(trained_run):
    cfg = runs.load_run_config(trained_run)
    cfg.data.source = "dbdemos"
    cfg.save(runs.run_path(trained_run) / "config.yaml")
    card = hub_export.model_card(trained_run, "alice/x")
    assert "Databricks License" in card and "generated by an LLM" in card


def test_push_refuses_bad_input_before_contacting_the_hub(trained_run, tmp_path):
    api = RecordingHfApi()
    with pytest.raises(runs.RunError, match="not a valid run id"):
        hub_export.push("../../etc", "alice/x", api=api)
    with pytest.raises(hub_export.HubError, match="owner/name"):
        hub_export.push(trained_run, "not a repo", api=api)
    with pytest.raises(runs.RunError, match="No run"):
        hub_export.push("20990101-000000-nothing", "alice/x", api=api)
    cfg = preset("quick-demo-cpu")
    no_adapter = jobs.create_run(cfg)
    with pytest.raises(hub_export.HubError, match="no final adapter"):
        hub_export.push(no_adapter, "alice/x", api=api)
    assert api.calls == []


def test_push_offline_and_without_token_say_what_to_do(trained_run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(hub_export.HubError, match="Cannot reach the Hugging Face Hub") as err:
        hub_export.push(trained_run, "alice/x", log=lambda m: None)  # the real HfApi, offline
    assert TOKEN not in str(err.value)
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setenv("HF_HOME", str(Path(runs.paths.home()) / "no-hf-home"))  # no saved login either
    with pytest.raises(hub_export.HubError, match="hf auth login"):
        hub_export.push(trained_run, "alice/x", log=lambda m: None)


@pytest.mark.integration
def test_push_cli_dry_run_prints_the_card(trained_run):
    res = run_cli("push", "--run", trained_run, "--repo", "alice/forge-lora", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "# forge-lora" in res.stdout and "Dry run: nothing was sent" in res.stdout
    bad = run_cli("push", "--run", "../x", "--repo", "alice/forge-lora")
    assert bad.returncode == 1 and "not a valid run id" in bad.stderr and "Traceback" not in bad.stderr


def test_network_errors_are_explained():
    import httpx

    msg = hub_export.explain_hub_error(httpx.ConnectError("Name or service not known"), "pushing")
    assert "Cannot reach the Hugging Face Hub" in msg
    assert "Cannot reach" in hub_export.explain_hub_error(ConnectionError("down"), "deploying")


@pytest.mark.integration
def test_push_merged_folds_a_real_adapter_into_the_embedded_model():
    """The real embedded model (16-bit, not 4-bit: merging into 4-bit weights is lossy) with a real adapter."""
    from peft import LoraConfig, get_peft_model

    from workbench import models

    cfg = preset("quick-demo-cpu")
    run_id = jobs.create_run(cfg)
    base_cfg = runs.load_run_config(run_id).model
    base_cfg.load_in_4bit = False
    model, _, _ = models.load_model(base_cfg, "cpu")
    lora = LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)  # non-zero: merging changes weights
    get_peft_model(model, lora).save_pretrained(runs.run_path(run_id) / "adapter")
    api = RecordingHfApi()
    hub_export.push(run_id, "alice/forge-merged", merged=True, api=api, log=lambda m: None)
    assert {"merged/config.json", "merged/model.safetensors", "merged/tokenizer.json", "adapter_model.safetensors"} \
        <= set(api.uploaded)
    assert 'subfolder="merged"' in api.uploaded_text["README.md"]
    assert json.loads(api.uploaded_text["merged/config.json"])["architectures"] == ["LlamaForCausalLM"]


def test_card_preview_without_a_repository_is_titled_by_the_run_not_adapter(trained_run):
    # Found by using the app: with the repository box empty the preview was titled "adapter" (a fixed placeholder).
    from workbench.ui import deploy_tab

    card = deploy_tab._card(trained_run, "")
    assert "\n# card-test\n" in card and "previewed as `you/card-test`" in card and "# adapter" not in card
    typed = deploy_tab._card(trained_run, "alice/x")
    assert "\n# x\n" in typed and "previewed as" not in typed
    assert deploy_tab._card(trained_run, "not a repo").startswith("error:")
