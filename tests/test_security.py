"""Input security: names and paths stay in their folder, uploads have a limit, YAML is loaded safely,
secrets are redacted from what the workbench writes or shows."""
from __future__ import annotations

import ast
import os

import pytest

from conftest import REPO
from workbench import paths, runs, safety
from workbench.safety import UnsafeInput


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a\\b", "/etc/passwd", "x\x00y", ".hidden", "-rf",
                                  "a..b"])
def test_bad_file_names_are_refused(name):
    with pytest.raises(UnsafeInput):
        safety.safe_file_name(name)


def test_good_file_names_pass():
    assert safety.safe_file_name(" my export (1).jsonl ") == "my export (1).jsonl"


def test_safe_join_refuses_absolute_parent_and_symlink_escapes(tmp_path):
    base = tmp_path / "base"
    (base / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (base / "escape").symlink_to(outside)
    (base / "inner").symlink_to(base / "sub")
    assert safety.safe_join(base, "sub/file.txt") == (base / "sub" / "file.txt").resolve()
    assert safety.safe_join(base, "inner/x") == (base / "sub" / "x").resolve()  # a link that stays inside is fine
    for bad, msg in [("/etc/passwd", "absolute"), ("~/x", "absolute"), ("../x", "climbs out"),
                     ("sub/../../x", "climbs out"), ("escape/x", "outside"), ("", "Empty"), ("a\x00b", "Empty")]:
        with pytest.raises(UnsafeInput, match=msg):
            safety.safe_join(base, bad)


@pytest.mark.parametrize("run_id", ["../x", "..", "a/b", "/abs", "", " ", "a\x00", "x" * 200, "-x", ".hidden"])
def test_run_ids_with_traversal_are_refused(run_id):
    with pytest.raises(runs.RunError):
        runs.run_path(run_id, must_exist=False)


def test_a_run_folder_that_is_a_symlink_out_of_the_runs_folder_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.yaml").write_text("name: x\n")
    (paths.runs_dir() / "sneaky").symlink_to(outside)
    with pytest.raises(runs.RunError, match="outside the runs folder"):
        runs.run_path("sneaky")


def test_uploads_have_a_size_limit_and_must_be_plain_files(tmp_path, monkeypatch):
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * (2 * 2**20))
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "1")
    with pytest.raises(UnsafeInput, match="above the 1 MB upload limit"):
        safety.check_upload(big)
    assert safety.check_upload(big, limit_mb=5) == big
    link = tmp_path / "link.csv"
    link.symlink_to(big)
    with pytest.raises(UnsafeInput, match="symbolic link"):
        safety.check_upload(link, limit_mb=5)
    with pytest.raises(UnsafeInput, match="not a regular file"):
        safety.check_upload(tmp_path, limit_mb=5)
    with pytest.raises(UnsafeInput, match="No file"):
        safety.check_upload("")
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "lots")
    with pytest.raises(UnsafeInput, match="not a number"):
        safety.max_upload_mb()


def test_data_loader_refuses_files_over_the_limit(tmp_path, monkeypatch):
    from workbench.data import loading as data_load

    f = tmp_path / "qa.jsonl"
    f.write_text('{"question": "q", "answer": "a"}\n' * 40_000)  # ~1.3 MB
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "1")
    with pytest.raises(data_load.DataError, match="over the 1 MB limit"):
        data_load.load_table(f)


def test_yaml_with_python_tags_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    text = f"x: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(UnsafeInput, match="not valid YAML"):
        safety.load_yaml(text)
    from workbench.config import ConfigError, RunConfig

    with pytest.raises((ConfigError, ValueError)):
        RunConfig.from_yaml(text)
    assert not marker.exists()


def test_no_unsafe_yaml_loading_anywhere_in_the_code():
    """Every YAML read in the project goes through yaml.safe_load (or safe_load_all)."""
    offenders = []
    for path in [*(REPO / "workbench").rglob("*.py"), REPO / "app.py", *(REPO / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and getattr(node.value, "id", "") == "yaml" and node.attr in (
                    "load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader",
                    "UnsafeLoader", "FullLoader"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} yaml.{node.attr}")
    assert offenders == []


def test_redact_hides_secrets_from_env_extra_and_token_shapes():
    env = {"HF_TOKEN": "hf_" + "a" * 34, "MY_API_KEY": "k-123456789", "DB_PASSWORD": "hunter2hunter2",
           "HOME": "/root", "SHORT_TOKEN": "abc"}
    text = ("token hf_" + "a" * 34 + " key k-123456789 pw hunter2hunter2 home /root short abc "
            "other hf_" + "Z" * 30 + " header Authorization: Bearer abc.def.ghi-jkl_mno gh ghp_" + "b" * 36 +
            " extra my-own-secret-value")
    out = safety.redact(text, extra=["my-own-secret-value"], env=env)
    for secret in ["hf_" + "a" * 34, "k-123456789", "hunter2hunter2", "hf_" + "Z" * 30, "abc.def.ghi-jkl_mno",
                   "ghp_" + "b" * 36, "my-own-secret-value"]:
        assert secret not in out
    assert "/root" in out and "short abc" in out and "Bearer [REDACTED]" in out
    assert safety.redact(None) == ""


def test_model_card_and_deploy_log_are_redacted(monkeypatch, tmp_path):
    """Secrets in the environment never reach the deploy plan text or its log."""
    from workbench.deploy import space_deploy

    secret = "hf_" + "Q" * 36
    monkeypatch.setenv("HF_TOKEN", secret)
    cfg = tmp_path / "space.yaml"
    cfg.write_text("space_id: alice/forge\nsecrets: [HF_TOKEN]\nvariables: {NOTE: " + secret[:3] + "}\n"
                   "access: {admins: [alice]}\n")
    out: list[str] = []
    space_deploy.deploy(cfg, dry_run=True, env=dict(os.environ), log=out.append)
    assert secret not in "\n".join(out) and "add_space_secret" in "\n".join(out)


def test_app_refuses_a_malformed_auth_pair():
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "app.py", "--auth", "alice-without-password"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "expects USER:PASSWORD" in res.stderr and "Traceback" not in res.stderr
