"""The run folder's one owner (RunFolder) and what a damaged file in it may and may not break: the listing, the
CLI, the app, resume; deleting a run; --set values that must fail before anything loads; the shipped presets."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from conftest import REPO, AppServer, run_cli
from workbench import paths, runs
from workbench.config import PRESETS, RunConfig, preset
from workbench.training import jobs


def make_run(run_id: str, status=None, **status_fields) -> runs.RunFolder:
    """A run folder as the app leaves it: config.yaml and (optionally) a status.json with the given content."""
    run = runs.folder(run_id, must_exist=False)
    run.path.mkdir(parents=True)
    preset("quick-demo-cpu").save(run.config)
    if status is not None:
        run.status_file.write_bytes(status)
    elif status_fields:
        run.write_status(**status_fields)
    return run


# -- item 4: a damaged status.json ----------------------------------------------------------------

DAMAGED = {"a-list": b"[1, 2, 3]", "random-bytes": bytes(range(256)) * 3, "step-null": b'{"state": "completed", '
           b'"step": null, "total_steps": null, "name": null}', "step-text": b'{"state": "stopped", "step": "7"}',
           "truncated": b'{"state": "runn'}


def test_a_damaged_status_shows_as_unreadable_with_the_reason_and_the_rest_still_lists():
    for run_id, content in DAMAGED.items():
        make_run(run_id, content)
    make_run("healthy", state="completed", step=30, total_steps=30, name="ok")
    out = run_cli("runs")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "healthy" in out.stdout and "completed" in out.stdout
    listed = {r["id"]: r for r in json.loads(run_cli("runs", "--json").stdout)}
    assert listed["healthy"]["state"] == "completed" and listed["healthy"]["step"] == 30
    assert listed["step-null"] == {**listed["step-null"], "state": "completed", "step": 0, "total_steps": 0}
    for run_id in ("a-list", "random-bytes", "step-text", "truncated"):
        assert listed[run_id]["state"] == "unreadable", listed[run_id]
        assert "status.json is damaged" in listed[run_id]["reason"] and f"delete {run_id}" in listed[run_id]["reason"]
    assert "a JSON list" in listed["a-list"]["reason"] and "not valid JSON" in listed["truncated"]["reason"]
    assert "step='7'" in listed["step-text"]["reason"]
    assert "unreadable" in out.stdout and "a JSON list, not an object" in out.stdout


def test_the_app_starts_with_damaged_run_folders(wb_home):
    from gradio_client import Client

    for run_id, content in DAMAGED.items():
        make_run(run_id, content)
    make_run("running-no-pid", b'{"state": "running", "pid": "x"}')
    server = AppServer(os.environ.copy())  # raises with the app's log if it exits or does not answer
    try:
        assert urllib.request.urlopen(server.url, timeout=30).status == 200
        assert Client(server.url, verbose=False).view_api(return_format="dict", print_info=False)
    finally:
        server.stop()


def test_writing_a_status_over_a_damaged_one_keeps_only_well_typed_fields():
    run = make_run("r1", b'{"name": "keep", "step": "seven", "extra": 1}')
    assert run.read_status()["state"] == "unreadable"
    run.write_status(state="interrupted")
    status = run.read_status()
    assert status["state"] == "interrupted" and status["name"] == "keep" and status["extra"] == 1
    assert "step" not in status


# -- item 8: bad lines in events.jsonl ------------------------------------------------------------

def test_bad_event_lines_are_skipped_counted_and_dropped_on_resume():
    run = make_run("ev", state="stopped")
    lines = ['{"step": 1, "loss": 2.0}', "[1, 2]", '{"step": "2", "loss": 1.9}', '"text"', "not json",
             '{"step": 2, "loss": 1.8}', '{"step": true}', '{"step": 3, "loss": 1.7}', '{"step": 4, "lo']
    run.events.write_text("\n".join(lines), encoding="utf-8")  # the last line is still being written
    events, bad = run.read_event_log()
    assert [e["step"] for e in events] == [1, 2, 3] and bad == 5
    assert runs.events_note("ev").startswith("5 bad lines in events.jsonl skipped")
    out = run_cli("runs")
    assert out.returncode == 0 and "5 bad lines in events.jsonl skipped" in out.stdout, out.stdout + out.stderr
    assert run.truncate_events(2) == 7  # the resume path: keep what the checkpoint covers, drop the rest
    assert run.read_event_log() == ([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.8}], 0)


def test_the_views_render_with_bad_event_lines():
    from workbench.training import events as fold
    from workbench.ui import train_tab

    run = make_run("ev2", state="stopped", total_steps=10)
    run.events.write_text('{"step": 1, "loss": 2.0, "elapsed": 1.0}\n[]\n{"step": "x"}\n', encoding="utf-8")
    events = runs.read_events("ev2")
    assert fold.fold(events, runs.read_status("ev2"))["step"] == 1
    assert train_tab.curves({"ev2": events}) is not None
    assert "2 bad lines" in runs.events_note("ev2")


# -- item 9: a damaged config.yaml on resume -----------------------------------------------------------

def test_resume_with_a_damaged_config_fails_with_the_yaml_error_as_reason():
    run = make_run("cfg", state="stopped", reason="Stopped on request")
    run.config.write_text("training:\n  epochs: [unclosed\n", encoding="utf-8")
    out = run_cli("resume", "cfg")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "not valid YAML" in out.stderr and "config.yaml" in out.stderr
    status = runs.read_status("cfg")
    assert status["state"] == "failed" and "not valid YAML" in status["reason"], status


@pytest.mark.integration  # imports transformers in the training process (no model is loaded)
def test_the_training_process_itself_fails_a_run_whose_config_is_damaged():
    run = make_run("cfg2", state="stopped")
    run.config.write_text("model: [1, 2\n", encoding="utf-8")
    out = run_cli("train", "--run-dir", run.path, "--resume")
    assert out.returncode == 1 and "Traceback" not in out.stdout + out.stderr, out.stdout + out.stderr
    status = runs.read_status("cfg2")
    assert status["state"] == "failed" and "not valid YAML" in status["reason"], status
    assert "not valid YAML" in run.log.read_text()
    assert jobs.active_run() is None


# -- item 10: --set values that cannot be that setting ------------------------------------------------

@pytest.mark.parametrize("setting,expected", [
    ("training.epochs=abc", "training.epochs: 'abc' is not a number; write it like training.epochs=3.0"),
    ("training.max_steps=1.5", "training.max_steps: '1.5' is not a whole number"),
    ("data.columns={bad", "data.columns: '{bad' is not a mapping"),
    ("training.seed=-5", "training.seed -5 is out of range; use a whole number from 0"),
    ("training.gradient_checkpointing=maybe", "is not true or false"),
    ("data.columns={answer: a}", "data.columns {'answer': 'a'} is not a mapping of record fields"),
    ("training.max_steps", "has no '='; write KEY=VALUE")])
def test_bad_set_values_get_one_line_naming_the_field_before_anything_loads(setting, expected):
    out = run_cli("train", "--preset", "quick-demo-cpu", "--set", setting)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert len(errors) == 1 and expected in errors[0], out.stderr
    assert not any(paths.runs_dir().iterdir())  # refused before a run folder (or the data, or a model) was made


# -- 12.4: the shipped presets ---------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_shipped_preset_file_loads_validates_and_describes_itself(name):
    path = REPO / "workbench" / "presets" / f"{name}.yaml"
    assert PRESETS[name].path == path
    cfg = RunConfig.load(path)
    assert cfg.validate() == [] and cfg.preset == name and cfg == preset(name)
    assert len(PRESETS[name].description) > 40
    assert run_cli("config", "--check", path).returncode == 0
    assert name in run_cli("config", "--list").stdout


# -- item 11: deleting a run ---------------------------------------------------------------------------

HOLDER = """
import sys, time
from workbench import runs
from workbench.training import jobs
jobs.claim_slot_for_current_process(sys.argv[1])   # what the training process does first: slot + training lock
runs.write_status(sys.argv[1], state="running", **runs.process_record())
print("holding", flush=True)
time.sleep(600)
"""


def test_delete_is_refused_while_the_run_trains_and_removes_it_afterwards():
    run = make_run("victim", state="queued")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "victim"], cwd=REPO, env=os.environ.copy(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        refused = run_cli("delete", "victim", "--yes")
        assert refused.returncode == 1 and "training now; stop it first" in refused.stderr, refused.stderr
        with pytest.raises(runs.RunError, match="stop it first"):
            runs.delete_run("victim")
        assert run.config.is_file()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert run_cli("delete", "victim").returncode == 1  # no --yes, no terminal: nothing happens
    assert run.config.is_file()
    out = run_cli("delete", "victim", "--yes")
    assert out.returncode == 0 and "deleted run victim" in out.stdout, out.stderr
    assert not run.path.exists() and [r for r in runs.list_runs() if r["id"] == "victim"] == []
    gone = run_cli("delete", "victim", "--yes")
    assert gone.returncode == 1 and "No run 'victim'" in gone.stderr
    assert run_cli("delete", "../etc", "--yes").returncode == 1


def test_a_dead_trainer_is_interrupted_by_its_process_record_not_its_command_line():
    run = make_run("dead", state="queued")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, "dead"], cwd=REPO, env=os.environ.copy(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        # The holder's command line does not name a run folder; it is alive because it holds what it recorded.
        assert runs.run_alive(run.read_status()) and runs.reconcile() == [] and jobs.active_run() == "dead"
        with pytest.raises(jobs.JobError, match="training now"):
            jobs.resume_run("dead")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert runs.reconcile() == ["dead"] and run.read_status()["state"] == "interrupted"
    assert jobs.active_run() is None
