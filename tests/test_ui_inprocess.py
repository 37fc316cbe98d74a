"""The fast UI tier: the real app built in this process (`launch(prevent_thread_lock=True)`) and driven through
its real HTTP API with gradio_client — seconds instead of a browser's minute, same handlers and server."""
from __future__ import annotations

import pytest

from conftest import free_port


@pytest.fixture
def client():
    from gradio_client import Client

    from workbench.ui.app import build_app

    demo = build_app()
    demo.queue().launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def test_data_tab_loads_and_maps_the_sample(client):
    msg, *mapping = client.predict("sample (shipped)", "", None, api_name="/_load")
    assert "Loaded **78 rows** from the shipped sample" in msg
    guessed = [m["value"] for m in mapping]
    assert guessed[:2] == ["question", "answer"], guessed  # instruction <- question, output <- answer
    summary, table, *_ = client.predict(*guessed, api_name="/apply_map")
    assert "**78 rows**" in summary
    assert 0 < len(table["data"]) <= 78 and {"instruction", "output"} <= set(table["headers"])


def test_a_file_whose_columns_cannot_be_guessed_says_so_and_which_table_is_shown(client, tmp_path):
    # Found by using the app: "Loaded 1 rows ... The mapping below is guessed" over blank mapping boxes, while the
    # table under it still showed the previous source, and a toast with a CLI flag (--map) as the only hint.
    from workbench import paths

    client.predict("sample (shipped)", "", None, api_name="/_load")
    client.predict("question", "answer", "", "", api_name="/apply_map")
    wrong = paths.data_dir() / "wrong.csv"  # a data folder: the 'file path' source may read it
    wrong.parent.mkdir(parents=True, exist_ok=True)
    wrong.write_text("foo,bar\n1,2\n")
    msg, *mapping = client.predict("file path", str(wrong), None, api_name="/_load")
    assert "Loaded <b>1 row</b> from wrong.csv with columns: foo, bar" in msg  # not literal ** in an HTML block
    assert "No column looks like the question or the answer" in msg and "press Apply mapping" in msg
    assert "Until then the table shows the shipped sample" in msg and "guessed" not in msg
    assert [m["value"] for m in mapping][:2] == ["", ""]
    # Picking the columns by hand then applies them.
    summary, table, *_ = client.predict("foo", "bar", "", "", api_name="/apply_map")
    assert "**1 rows**" in summary or "**1 row**" in summary


def test_until_the_mapping_applies_the_table_shown_keeps_its_own_source_name(tmp_path):
    # Found by using the app: loading a file whose columns could not be guessed recorded ITS name as the source of the
    # table still shown (the sample), so the saved training dataset and the Train tab's "Trains on" line said
    # "78 records from odd.csv" while they were the sample's rows.
    from workbench import paths
    from workbench.ui import data_tab

    state = data_tab._load("sample (shipped)", "", None, data_tab._empty_state())[0]
    state = data_tab._apply_mapping(state, "question", "answer", "", "")[0]
    shown = state["source"]
    assert shown and len(state["table"]) > 10
    odd = paths.data_dir() / "odd.csv"
    odd.parent.mkdir(parents=True, exist_ok=True)
    odd.write_text("foo,bar\n1,2\n")
    state = data_tab._load("file path", str(odd), None, state)[0]
    assert state["source"] == shown and len(state["table"]) > 10  # the shown table and its name, unchanged
    state = data_tab._apply_mapping(state, "foo", "bar", "", "")[0]
    assert state["source"] == "odd.csv" and len(state["table"]) == 1  # the new name comes with the new table


def test_a_visitor_without_a_policy_is_an_admin_and_a_bad_path_gets_a_plain_error(client):
    msg, *_ = client.predict("file path", "/etc/passwd", None, api_name="/_load")
    assert "wb-error" in msg and "Only files inside" in msg


def test_a_chat_that_fails_says_why_and_leaves_stop_and_votes_off(client):
    """The Chat tab's send on a run whose adapter is damaged: the reason reaches the page (not a bare 'Error'), and
    the last update puts Stop and the vote buttons back off, with 'Failed' where the status was 'Preparing…'."""
    from gradio_client.exceptions import AppError

    from workbench import paths
    from workbench.chat import session as chat

    run = paths.runs_dir() / "20250101-000000-damaged"
    (run / "adapter").mkdir(parents=True)
    from workbench.config import RunConfig

    RunConfig().save(run / "config.yaml")
    (run / "status.json").write_text('{"state": "completed"}')
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00")  # a header cut short
    job = client.submit("What is Delta Lake?", [], [], run.name, chat.BASE, False, "", 0.0, 1.0,
                        16, 0, api_name="/chat")
    with pytest.raises(AppError, match="is damaged"):
        job.result()
    last = job.outputs()[-1]
    assert "**Failed:**" in last[4] and "train the run again" in last[4]
    assert all(update.get("interactive") is False for update in last[8:])  # 4 vote buttons and Stop


def test_the_app_imports_transformers_before_any_handler_runs():
    """A fresh app process: building the app imports transformers in one thread, so the handlers a page load starts
    at once in worker threads never import it concurrently (that race gave "cannot import name 'AutoTokenizer'" in
    the Data tab of a fresh app; several threads doing the first import together reproduce it). Checked in a new
    process, after the threads' race, as the page load does it."""
    import subprocess
    import sys

    from conftest import REPO

    code = """
import sys, threading
from workbench.ui.app import build_app
build_app()
assert 'transformers' in sys.modules
errors = []
def first_use(name):
    try:
        exec(f'from transformers import {name}')
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=first_use, args=(n,)) for n in ['AutoTokenizer', 'AutoConfig'] * 4]
[t.start() for t in threads]; [t.join() for t in threads]
print(errors)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_send_without_a_run_says_what_to_do_and_marks_nothing_as_an_error(client):
    # Found by using the app: Send on a fresh install (no trained run) raised, and Gradio then showed a bare "Error"
    # badge on both answer columns and the question box once the toast had gone.
    out = client.predict("What is Delta Lake?", [], [], "", "base", False, "", 0, 0.9, 16, 42, 1.0, api_name="/chat")
    status = out[4]
    assert "Pick a fine-tuned run first" in status and "Train tab" in status
    assert out[5] in ({"__type__": "update"}, "What is Delta Lake?")  # the question box is left as it is


def test_the_compare_panel_starts_with_its_own_columns_and_a_sentence():
    # Seen in the browser: before any run was picked, "Compare runs side by side" showed a table headed "1 2 3"
    # (Gradio's placeholder) and an empty plot frame.
    from workbench.ui.app import build_app

    demo = build_app()
    props = {c["props"].get("elem_id"): c["props"] for c in demo.config["components"]}
    assert props["metrics-compare-table"]["value"]["headers"][:3] == ["Run", "Examples", "PPL base"]
    assert "Pick two or more scored runs" in str(props["metrics-compare-plot"]["value"])


def test_a_refused_click_is_a_toast_not_a_traceback_in_the_server_log(client, capfd):
    # Found by using the app: every refusal (busy slot, "Pick a search first.", "nothing to stop") wrote a ~30-line
    # traceback into app.log, burying the real errors there.
    from workbench.ui import guard

    assert guard.refusal("x").print_exception is False
    capfd.readouterr()
    with pytest.raises(Exception, match="Pick a search first"):
        client.predict(None, api_name="/search_stop")
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Pick a search first" not in err


def test_a_view_with_no_match_says_0_of_0_not_a_negative_range():
    # Found by using the app: "duplicates" on the sample read "showing 0–-1 of 0 matching".
    from workbench.ui import data_tab

    state = data_tab._load("sample (shipped)", "", None, data_tab._empty_state())[0]
    state = data_tab._apply_mapping(state, "question", "answer", "", "")[0]
    summary = data_tab._refresh(state, "zzzz-matches-nothing", 0, 0, "all rows")[0]
    assert "showing 0 of 0 matching" in summary and "–-" not in summary


def test_a_chat_refused_for_its_input_is_a_notice_not_error_badges(client):
    # Found by using the app: Send with an empty question (or max new tokens 0) put "Error" badges on both answer
    # columns and the status, as if the app had failed; the reason is the user's to fix.
    from workbench import paths
    from workbench.config import RunConfig

    run = paths.runs_dir() / "20250101-000000-some-run"
    run.mkdir(parents=True)
    RunConfig().save(run / "config.yaml")
    (run / "status.json").write_text('{"state": "completed"}')
    for question, max_new, says in (("", 16, "Type a question first"), ("What is Delta Lake?", 0, "out of range")):
        out = client.predict(question, [], [], run.name, "base", False, "", 0.0, 1.0, max_new, 0, 1.0, api_name="/chat")
        assert says in out[4], out[4]  # said in the status line; no exception, so no Error badge


def test_a_table_too_small_to_split_is_said_in_the_data_tab_before_start_refuses_it():
    # Found by using the app: a 4-row table (split 4/0 by its hashes) read "4 rows (4 train / 0 eval)" and "This is the training dataset"
    # with no warning; only Start then refused it ("The split left 4 training and 0 evaluation rows").
    from workbench import paths
    from workbench.ui import data_tab

    small = paths.data_dir() / "small.csv"
    small.parent.mkdir(parents=True, exist_ok=True)
    small.write_text("question,answer\nWhat is a table?,A set of rows.\n")  # one row: one side of the split is empty
    state = data_tab._load("file path", str(small), None, data_tab._empty_state())[0]
    state = data_tab._apply_mapping(state, "question", "answer", "", "")[0]
    summary = data_tab._refresh(state, "", 0, 0, "all rows")[0]
    assert "Too few rows to split" in summary and "Start will refuse" in summary
    state = data_tab._load("sample (shipped)", "", None, data_tab._empty_state())[0]
    state = data_tab._apply_mapping(state, "question", "answer", "", "")[0]
    assert "Too few rows" not in data_tab._refresh(state, "", 0, 0, "all rows")[0]


def test_token_statistics_cut_at_the_limit_of_the_run_this_machine_would_start():
    # Found by using the app: the statistics counted "longer than 512 tokens and would be cut" while the default run
    # on a CPU (quick-demo-cpu) cuts at 256, so most cut examples went uncounted.
    from workbench.config import preset
    from workbench.ui import data_example, data_tab

    assert data_example.default_max_length() == preset("quick-demo-cpu").model.max_seq_length == 256  # no GPU here
    state = data_tab._load("sample (shipped)", "", None, data_tab._empty_state())[0]
    state = data_tab._apply_mapping(state, "question", "answer", "", "")[0]
    text, fig = data_example._token_stats(state, "chat", 64)
    cut_64 = int(text.split("**")[1])
    assert "longer than 64 tokens" in text and fig.layout.shapes[0].x0 == 64
    cut_512 = int(data_example._token_stats(state, "chat", 512)[0].split("**")[1])
    assert cut_64 > cut_512
    for bad in (None, "", "abc", 0, 8, 10.5, 16.5, float("nan"), 10**9):  # 16.5: said, not rounded without a word
        text, fig = data_example._token_stats(state, "chat", bad)
        assert "Cut at" in text and fig is None, bad
    row = state["table"]["id"].iloc[0]
    pieces, note = data_example._example(state, row, "chat", 16)
    assert len(pieces) <= 16 and "cut at 16" in note
    assert data_example._example(state, row, "chat", "x")[0] is None


def test_clearing_or_turning_blind_off_heads_the_columns_with_the_models_of_the_next_send():
    # Found by using the app: after Blind was switched off the headers stayed "Left | Right" until the next answer.
    from workbench.ui import chat_tab

    run = "20250101-000000-some-run"
    assert chat_tab._clear(run, None, False)[4:6] == ("### Base model (adapter off)", f"### Fine-tuned: {run}")
    assert chat_tab._clear(run, "20250102-000000-other", False)[4] == "### Fine-tuned: 20250102-000000-other"
    for args in ((run, None, True), (None, None, False), ("<img src=x onerror=alert(1)>", None, False)):
        assert chat_tab._clear(*args)[4:6] == ("### Left", "### Right"), args  # blind, no run, not a run id
