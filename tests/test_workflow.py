"""Issue 13: one workflow across the tabs. Fast tests of the pieces, on real run folders, real SQLite, real
subprocesses and the real CLI (the browser tests in test_browser_workflow.py drive the same through the app)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO, run_cli
from workbench import paths, runs
from workbench.config import DataConfig, preset
from workbench.data import browse, cleaning, workspace
from workbench.data import dataset as data
from workbench.evaluation import evaluate, reviews


def sample_table():
    return data.apply_mapping(data.load_raw("sample"))


def fake_run(run_id="20250101-000000-flow", state="completed", events=None):
    folder = paths.runs_dir() / run_id
    (folder / "data").mkdir(parents=True)
    preset("quick-demo-cpu").save(folder / "config.yaml")
    rows = sample_table().to_dict("records")
    data.write_jsonl(rows[8:20], folder / "data" / "train.jsonl")
    data.write_jsonl(rows[:4], folder / "data" / "eval.jsonl")
    if events:
        (folder / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    runs.write_status(run_id, state=state, created_at=runs.now_iso())
    return run_id


# -- 13.1 the Data tab's dataset is what trains --------------------------------------------------

@pytest.mark.parametrize("which,damage", [("manifest", b'{"rows": '), ("manifest", b"\xff\xfe"),
                                          ("manifest", b"[]"), ("records", b'{"id": "r0", "instr'),
                                          ("records", b"\xff\xfe\n")])
def test_a_damaged_saved_dataset_is_said_in_both_tabs_and_its_files_are_kept(which, damage):
    """The Data tab's saved dataset (manifest or records) cut short or not UTF-8: the Data tab opens the sample with
    the reason above it (not silently, not a crash), the Train tab says so where it names what Start trains on, and
    the files keep their bytes until a new save replaces them."""
    from workbench.ui import data_tab, train_tab

    workspace.save(sample_table().head(20), "the shipped sample")
    path = workspace.manifest_path() if which == "manifest" else workspace.records_path()
    path.write_bytes(damage)
    assert workspace.load() is None and f"{path.name} is damaged" in workspace.damage()
    state, msg, *_ = data_tab._load_unless_open("sample (shipped)", "", None, data_tab._empty_state())
    assert "saved training dataset cannot be opened" in msg and f"{path.name} is damaged" in msg
    assert "Loaded **78 rows**" in msg  # the sample instead, said
    text = train_tab.dataset_text(train_tab.DATA_TAB)
    assert "saved dataset is damaged" in text and path.name in text
    assert path.read_bytes() == damage
    workspace.save(sample_table().head(20), "the shipped sample")  # a new save replaces the damaged files
    assert workspace.damage() == "" and workspace.load()[1]["rows"] == 20


def test_saved_dataset_is_what_a_run_trains_on_and_survives_a_new_process():
    table, report = cleaning.apply_steps(sample_table(), ["drop_short_answers", "drop_duplicate_pairs"])
    table = table.head(60)
    meta = workspace.save(table, "the shipped sample", {"instruction": "question"}, report)
    assert meta["rows"] == 60 and [s["step"] for s in meta["cleaning"]] == ["drop_short_answers",
                                                                             "drop_duplicate_pairs"]
    assert workspace.records_path().parent == paths.data_dir() / "datasets"
    # another process (an app restart) reads the same dataset back
    out = subprocess.run([sys.executable, "-c", "from workbench.data import workspace; t, m = workspace.load(); "
                          "print(len(t), m['rows'], m['source'])"], cwd=REPO, capture_output=True, text=True,
                         env=os.environ.copy(), check=True)
    assert out.stdout.split() == ["60", "60", "the", "shipped", "sample"]
    cfg = preset("quick-demo-cpu")
    cfg.data = workspace.data_config(cfg.data)
    assert cfg.data.source == str(workspace.records_path()) and cfg.data.cleaning == []
    from workbench.training import jobs

    run_id = jobs.create_run(cfg)
    folder = runs.run_path(run_id)
    trained = data.read_jsonl(folder / "data" / "train.jsonl") + data.read_jsonl(folder / "data" / "eval.jsonl")
    assert {r["instruction"] for r in trained} <= set(table["instruction"])
    report = json.loads((folder / "data" / "report.json").read_text())
    assert report["rows_loaded"] == 60  # exactly the saved rows, no re-cleaning
    assert "60 records" in workspace.describe(workspace.manifest(), cfg.data)
    assert "drop_short_answers" in workspace.describe(workspace.manifest())


def test_train_tab_uses_the_saved_dataset_by_a_server_chosen_path():
    from workbench.config import ConfigError
    from workbench.ui import train_tab

    values = train_tab._form_values(preset("quick-demo-cpu"))
    with pytest.raises(ConfigError, match="No dataset is saved"):
        train_tab.training_config("", "quick-demo-cpu", train_tab.DATA_TAB, values)
    workspace.save(sample_table(), "the shipped sample")
    cfg = train_tab.training_config("", "quick-demo-cpu", train_tab.DATA_TAB, values)
    assert cfg.data.source == str(paths.data_dir() / "datasets" / "current.jsonl")
    assert train_tab.training_config("", "quick-demo-cpu", train_tab.DATA_SETTINGS, values).data.source == "sample"
    text = train_tab.dataset_text(train_tab.DATA_TAB, "quick-demo-cpu")
    assert f"{len(sample_table())} records" in text and "at most 64 trained on" in text


def test_the_trains_on_line_follows_the_form_s_data_settings():
    """Found by using the app: with "Share held out for evaluation" set to 0.5 in the form, the line beside Start still
    said "10% held out" (the preset's), while the run then trained on the form's split."""
    from workbench.ui import train_tab

    workspace.save(sample_table(), "the shipped sample")
    values = train_tab._form_values(preset("quick-demo-cpu"))
    names = [n for n, _ in train_tab.FORM_FIELDS]
    values[names.index("data.eval_fraction")] = 0.5
    text = train_tab._dataset_from_form(train_tab.DATA_TAB, "quick-demo-cpu", "", *values)
    assert "50% held out" in text and "10% held out" not in text
    values[names.index("data.eval_fraction")] = "not a number"  # a form that does not parse: the preset's split
    assert "10% held out" in train_tab._dataset_from_form(train_tab.DATA_TAB, "quick-demo-cpu", "", *values)


def test_data_tab_saves_for_admins_only_and_reopens_the_saved_dataset():
    from workbench.ui import data_tab

    state = dict(data_tab._empty_state(), table=browse.annotate(sample_table()), source="sample")
    state, _ = data_tab._apply_cleaning(state, ["drop_short_answers"], None)
    assert "training dataset" in data_tab._autosave(state, None)  # no policy: everyone may train locally
    opened, message, _ = data_tab._open_saved(data_tab._empty_state())
    assert len(opened["table"]) == len(state["table"]) and "saved training dataset" in message
    assert opened["steps"][0][0]["step"] == "drop_short_answers"


# -- 12.4 split defaults typed once ----------------------------------------------------------------

def test_split_defaults_come_from_dataconfig(monkeypatch):
    import argparse

    from workbench.commands import chat as chat_cmd
    from workbench.commands import data as data_cmd
    from workbench.chat.streaming import ChatSettings

    # change the one default (as a later edit of config.py would); every view of the split must follow it
    names = [f.name for f in __import__("dataclasses").fields(DataConfig)]
    defaults = list(DataConfig.__init__.__defaults__)
    defaults[names.index("eval_fraction")] = 0.25
    monkeypatch.setattr(DataConfig.__init__, "__defaults__", tuple(defaults))
    assert DataConfig().eval_fraction == 0.25
    t = sample_table()
    assert (browse.annotate(t)["split"] == data.split(t, 0.25, DataConfig().split_seed)).all()
    parser = argparse.ArgumentParser()
    data_cmd.register(parser.add_subparsers())
    assert parser.parse_args(["data", "split", "sample", "--out-dir", "x"]).eval_fraction == 0.25
    parser = argparse.ArgumentParser()
    chat_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["chat", "q", "--run", "r"])
    d = ChatSettings()
    assert (args.temperature, args.top_p, args.max_new_tokens, args.seed) == (d.temperature, d.top_p,
                                                                               d.max_new_tokens, d.seed)


# -- 13.2 / 12.3 scoring progress, the "not while training" rule in core, export -------------------

def test_scoring_progress_is_read_from_the_run_folder_while_the_eval_lock_is_held():
    run_id = fake_run()
    folder = runs.run_path(run_id)
    record = evaluate.ProgressRecord(folder, total=16, every_s=0)
    record(0.13 + (0.52 - 0.13) * 0.5, "base model: generating 8/16")
    assert evaluate.read_progress(run_id) is None  # nobody holds the eval lock: not being scored
    runs.write_status(run_id, eval_state="running")
    with paths.file_lock(folder / ".eval.lock"):
        progress = evaluate.read_progress(run_id)
        assert (progress["done"], progress["total"]) == (8, 16)
        assert evaluate.progress_text(progress).startswith("Scoring… 8/16 questions (base model, generating")
        assert evaluate.progress_text(progress).endswith("% of all scoring")  # the share is of the whole scoring
        assert "being scored now" in evaluate.refusal(run_id)
        from workbench.ui import metrics_tab, train_tab

        assert "Scoring… 8/16 questions" in metrics_tab.notice_html(run_id, None)
        assert "press <b>Evaluate</b>" not in metrics_tab.notice_html(run_id, None)
        button, reason = metrics_tab.evaluate_button(run_id)
        assert button["interactive"] is False and "being scored now" in reason
        assert "Scoring… 8/16" in train_tab.progress_html(runs.read_status(run_id), [],
                                                          evaluate.read_progress(run_id))
    assert evaluate.refusal(run_id) is None


@pytest.fixture
def training_process():
    """A live process holding the training slot for a run in state 'running' (what jobs.start_run leaves)."""
    run_id = fake_run("20250101-000009-busy", state="running")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(runs.run_path(run_id))])
    (paths.runs_dir() / ".active.json").write_text(json.dumps({"run_id": run_id, "pid": proc.pid}))
    runs.write_status(run_id, pid=proc.pid)
    yield run_id
    proc.kill()
    proc.wait()


def test_eval_is_refused_in_core_and_by_the_cli_while_a_run_trains(training_process):
    scored = fake_run()
    reason = evaluate.refusal(scored)
    assert training_process in reason and "is training now" in reason
    with pytest.raises(evaluate.EvalError, match="is training now"):
        evaluate.evaluate_run(scored)
    result = run_cli("eval", "--run", scored)
    assert result.returncode == 1 and "is training now" in result.stderr
    runs.write_status(training_process, state="completed")  # its own end-of-training scoring is allowed
    assert evaluate.refusal(training_process) is None


@pytest.mark.parametrize("suffix", ["csv", "json"])
def test_eval_export_cli_writes_metrics_and_predictions(tmp_path, suffix):
    run_id = fake_run()
    out = tmp_path / f"m.{suffix}"
    result = run_cli("eval", "--run", run_id, "--export", out)
    assert result.returncode == 1 and "no metrics to export yet; evaluate it first" in result.stderr and "eval --run" in result.stderr
    metrics = {"base": {"perplexity": 20.0, "rougeL": 0.1}, "tuned": {"perplexity": 10.0, "rougeL": 0.2},
               "change_pct": {"perplexity": -50.0}, "eval_examples": 1, "answer_tokens": 5}
    evaluate.write_results(runs.run_path(run_id), metrics, [{"question": "q?", "tuned_answer": "a"}])
    result = run_cli("eval", "--run", run_id, "--export", out)
    assert result.returncode == 0, result.stderr
    predictions = tmp_path / f"m-predictions.{suffix}"
    if suffix == "csv":
        table = pd.read_csv(out)
        assert table.loc[table["metric"] == "Perplexity", "fine_tuned"].item() == 10.0
        assert pd.read_csv(predictions)["question"].tolist() == ["q?"]
    else:
        assert json.loads(out.read_text())["tuned"]["rougeL"] == 0.2
        assert json.loads(predictions.read_text()) == [{"question": "q?", "tuned_answer": "a"}]
    bad = run_cli("eval", "--run", run_id, "--export", tmp_path / "m.xlsx")
    assert bad.returncode == 1 and ".csv or .json" in bad.stderr


# -- 12.3 / 13.6 the blind-review round in core; the tab disables the buttons and says "already voted" ------

def test_blind_review_round_flips_fairly_votes_once_and_reveals():
    flips = {reviews.blind_sides("run-x") for _ in range(200)}
    assert flips == {("run-x", "base"), ("base", "run-x")}
    pending = reviews.pending_vote("What is OPTIMIZE?", ("base", "run-x"), "run-x", ("A", "B"), {"t": 0})
    assert pending["other"] == "base" and not pending["voted"]
    voted = reviews.cast_vote(pending, "bea", "right", "ok")
    assert voted["voted"] and "right was **run-x**" in reviews.reveal(voted)
    with pytest.raises(reviews.ReviewError, match="already voted"):
        reviews.cast_vote(voted, "bea", "left")
    with pytest.raises(reviews.ReviewError, match="Nothing to vote on"):
        reviews.cast_vote(None, "bea", "left")
    assert reviews.win_rate("run-x")["wins"] == 1


def test_chat_vote_refusal_is_a_plain_message_and_buttons_turn_off():
    import gradio as gr

    from workbench.ui import chat_tab

    pending = reviews.pending_vote("Q?", ("run-y", "base"), "run-y", ("a", "b"))
    # Found by using the app: a vote refused for a missing reviewer name turned the buttons off, so after typing the
    # name that answer pair could no longer be voted on. A refusal the reviewer can fix leaves them as they are.
    nameless = chat_tab._vote("tie", pending, "", "", None)
    assert "type your name" in nameless[1] and all(b == gr.skip() for b in nameless[6:])
    assert reviews.votes("run-y") == []
    out = chat_tab._vote("tie", pending, "bea", "", None)
    assert out[0]["voted"] and "Revealed" in out[1]
    assert all(b["interactive"] is False for b in out[6:])
    again = chat_tab._vote("tie", out[0], "bea", "", None)  # no exception: no red error badge
    assert "already voted" in again[1] and all(b["interactive"] is False for b in again[6:])
    assert len(reviews.votes("run-y")) == 1


def test_chat_stop_never_overwrites_the_status():
    import gradio as gr

    from workbench.ui import chat_tab

    class Req:  # the two attributes the handler reads from gr.Request
        username, session_hash = None, "s1"

    assert chat_tab._stop(Req()) == gr.skip()  # nothing generating: the status line stays as it was
    event = chat_tab._STOPS["s1"] = __import__("threading").Event()
    assert chat_tab._stop(Req()) == gr.skip() and event.is_set()  # the stream itself reports "Stopped"
    assert not getattr(event, "cleared", False)  # Stop keeps the answers so far; only Clear drops them
    cleared = chat_tab._STOPS["s1"] = __import__("threading").Event()
    chat_tab._clear("run-x", None, False, Req())
    assert cleared.is_set() and cleared.cleared
    chat_tab._STOPS.pop("s1")


# -- 13.7 tabs notice changes cheaply ------------------------------------------------------------

def test_change_signatures_see_new_votes_events_and_adapters():
    from workbench.ui import chat_tab, metrics_tab

    run_id = fake_run()
    sig_m = metrics_tab._signature(run_id, metrics_tab._listing())
    sig_c = chat_tab.runs_signature()
    reviews.record_vote("bea", "q", run_id, "base", "a", "b", "left")
    assert metrics_tab._signature(run_id, metrics_tab._listing()) != sig_m
    assert chat_tab.runs_signature() != sig_c
    sig_m, sig_c = metrics_tab._signature(run_id, metrics_tab._listing()), chat_tab.runs_signature()
    runs.append_event(run_id, {"step": 1, "loss": 2.0})
    assert metrics_tab._signature(run_id, metrics_tab._listing()) != sig_m
    sig_c = chat_tab.runs_signature()
    (runs.run_path(run_id) / "adapter").mkdir()
    (runs.run_path(run_id) / "adapter" / "adapter_config.json").write_text("{}")
    assert chat_tab.runs_signature() != sig_c
    assert chat_tab._poll(None, None, chat_tab.runs_signature())[0] == __import__("gradio").skip()


# -- 13.9 / 13.5 the Data tab ------------------------------------------------------------------------

def test_data_table_pages_over_all_matches_with_cut_cells_and_full_text_on_selection():
    from workbench.ui import data_tab

    table = browse.annotate(sample_table())
    long = "x " * 400
    table.loc[0, "output"] = long
    state = dict(data_tab._empty_state(), table=table)
    summary, shown, _, ids, page = data_tab._refresh(state, "", 0, 0, "all rows", 1)
    assert len(shown) == data_tab.PAGE_ROWS and page == 1 and "page 1 of 4" in summary
    assert shown["output"].str.len().max() <= data_tab.CELL_CHARS + 1
    summary, shown, _, ids, page = data_tab._refresh(state, "", 0, 0, "all rows", 99)
    assert page == 4 and len(shown) == len(table) - 3 * data_tab.PAGE_ROWS
    assert long.strip() in data_tab.row_detail(state, table.loc[0, "id"]).replace("> ", "", 1)


# -- 13.12 smaller items ---------------------------------------------------------------------------------

def test_compare_warns_on_different_heldout_sets_and_card_header_stays_yaml():
    from workbench.ui import deploy_tab, metrics_tab

    metrics = {"base": {"perplexity": 20.0}, "tuned": {"perplexity": 10.0}, "eval_examples": 1, "answer_tokens": 5}
    a, b, c = fake_run("20250101-000001-a"), fake_run("20250101-000002-b"), fake_run("20250101-000003-c")
    for run_id, q in ((a, "q1"), (b, "q1"), (c, "q2")):
        evaluate.write_results(runs.run_path(run_id), metrics, [{"question": q}])
    assert metrics_tab.compare_warning([a, b]) == ""
    assert "different held-out" in metrics_tab.compare_warning([a, c])
    fig = metrics_tab.compare_chart([a, c])
    assert fig.data[0].marker.color == fig.data[1].marker.color != fig.data[2].marker.color
    card = deploy_tab.card_markdown("---\nlicense: apache-2.0\nbase_model: x\n---\n# Title\n")
    assert card.startswith("```yaml\nlicense: apache-2.0\nbase_model: x\n```") and "# Title" in card


def test_dbdemos_error_points_to_the_download_section(tmp_path):
    with pytest.raises(data.DataError, match="Download the dbdemos files"):
        data.load_dbdemos(tmp_path)


# -- 13.13 scripts/test.sh as root -------------------------------------------------------------------

def test_test_sh_installs_chromium_when_sudo_is_empty(tmp_path):
    """The chromium block of scripts/test.sh, run as root would run it (SUDO empty), against an apt-get on PATH
    that records its environment: `$SUDO DEBIAN_FRONTEND=… apt-get` failed with 'command not found'."""
    script = (REPO / "scripts" / "test.sh").read_text()
    block = script[script.index('if [ ! -x /usr/bin/chromium ]'):script.index("\nfi\n") + 4]
    block = block.replace('[ "$(id -u)" = 0 ] || SUDO=sudo', "true")  # as root: SUDO stays empty
    block = block.replace("/usr/bin/chromium", str(tmp_path / "no-chromium"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$DEBIAN_FRONTEND $*" >> {tmp_path / "calls"}\n')
    apt.chmod(0o755)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == ["noninteractive update -qq", "noninteractive install -y -qq chromium"]


def test_push_failures_are_the_log_s_last_line_not_an_error_badge():
    # Found by using the app: Push with no run (or a failing push) raised, so the push log lost the lines written
    # before the failure and showed a bare "Error" badge once the toast had gone.
    import gradio as gr

    from workbench.ui import deploy_tab

    assert deploy_tab._push("", "alice/x", True, False, None) == "Pick a run with a finished adapter first."
    run_id = fake_run("20250101-000004-no-adapter")
    log = deploy_tab._push(run_id, "alice/x", True, False, None)
    assert log.splitlines()[-1].startswith("error: ") and "adapter" in log
    assert deploy_tab._push(run_id, "  ", True, False, None) == deploy_tab.NO_REPO  # what to do, not "'' is not…"
    with pytest.raises(gr.Error, match="not a valid run id"):  # a malformed id is still refused outright
        deploy_tab._push("../../etc", "alice/x", True, False, None)


def test_the_cleaning_summary_says_dropped_not_minus_zero_rows():
    # Seen in both tabs' "Trains on": "strip_numbering (−0 rows, 0 edited)".
    from workbench.data import workspace

    meta = {"cleaning": [{"step": "strip_numbering", "dropped": 0, "edited": 3},
                         {"step": "drop_duplicate_pairs", "dropped": 1200, "edited": 0}]}
    assert workspace.cleaning_summary(meta) == ("cleaned: strip_numbering (0 dropped, 3 edited), "
                                                "drop_duplicate_pairs (1,200 dropped, 0 edited)")
