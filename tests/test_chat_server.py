"""The Chat tab through the real app server and gradio_client: streaming, the adapter switch, Stop, blind votes.

One app server (real `python app.py`, real 4-bit embedded model, real trained adapters) serves every
test in this module, so the model loads once.
"""
from __future__ import annotations

import os
import sqlite3

import pytest

from conftest import AppServer
from test_chat_support import (QUESTION, REFERENCE_TOKENS, RUN_A, RUN_B, _built_runs, copy_runs,  # noqa: F401
                               plain_base_answer)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def chat_server(_built_runs, tmp_path_factory):
    home = tmp_path_factory.mktemp("chat-server-home")
    (home / "runs").mkdir()
    copy_runs(_built_runs, home / "runs")
    env = {k: v for k, v in os.environ.items() if not k.startswith("WORKBENCH_") and k != "SPACE_ID"}
    env.update(WORKBENCH_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    server = AppServer(env)
    yield server, home
    server.stop()


@pytest.fixture
def client(chat_server):
    from gradio_client import Client

    return Client(chat_server[0].url, verbose=False)


def answer(history) -> str:
    """The last assistant message's text from a Chatbot value (content as a string or as parts)."""
    content = history[-1]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    return content


def ask(client, question=QUESTION, run=RUN_A, other="base", blind=False, max_new=REFERENCE_TOKENS, hist=([], [])):
    # repetition penalty 1.0 (off): the answers are compared with plain greedy generate
    job = client.submit(question, hist[0], hist[1], run, other, blind, "", 0, 0.9, max_new, 42, 1.0,
                        api_name="/chat")
    job.result()
    return job.outputs()


def test_both_columns_stream_and_the_base_column_is_the_plain_base_model(client, plain_base_answer):
    outputs = ask(client)
    pairs = [(answer(o[0]), answer(o[1])) for o in outputs]
    left, right = pairs[-1]
    assert left == plain_base_answer  # adapter really off for the base row of the mixed batch
    assert right and right != left  # and on for the fine-tuned row
    growing = [p for p in pairs if p[0] and p[1] and p[0] != left and p[1] != right]
    assert len(growing) >= 5, pairs  # several partial updates in which BOTH columns are mid-answer
    assert all(left.startswith(p[0].strip()) and right.startswith(p[1].strip()) for p in pairs if p[0] and p[1])
    assert outputs[-1][2] == "### Base model (adapter off)" and RUN_A in outputs[-1][3]
    assert outputs[-1][4].startswith("Done")

    # second turn: each column keeps its own history, the base column still matches base-only behaviour
    follow = ask(client, "Give one example.", hist=(outputs[-1][0], outputs[-1][1]), max_new=8)
    assert [m["role"] for m in follow[-1][0]] == ["user", "assistant", "user", "assistant"]
    assert answer(follow[-1][0][:2]) == left and answer(follow[-1][1][:2]) == right
    assert answer(follow[-1][0]) and answer(follow[-1][1])


def test_adapter_vs_adapter(client, plain_base_answer):
    outputs = ask(client, run=RUN_A, other=RUN_B)
    left, right = answer(outputs[-1][0]), answer(outputs[-1][1])
    assert RUN_B in outputs[-1][2] and RUN_A in outputs[-1][3]
    assert left and right and left != right
    assert plain_base_answer not in (left, right)  # neither row fell back to the base model


def test_sampling_is_repeatable_with_a_seed(client):
    def sample(seed):
        job = client.submit(QUESTION, [], [], RUN_A, "base", False, "Answer briefly.", 1.0, 0.95, 12, seed,
                            api_name="/chat")
        final = job.result()
        return answer(final[0]), answer(final[1])

    first = sample(7)
    assert first == sample(7)
    assert any(sample(seed) != first for seed in (8, 9))


def test_stop_ends_generation_early(client):
    job = client.submit(QUESTION, [], [], RUN_A, "base", False, "", 0, 0.9, 400, 42, 1.0, api_name="/chat")
    for out in job:
        if len(answer(out[0]).split()) >= 2:
            client.predict(api_name="/stop")  # answers nothing itself: the stream's last update says Stopped
            break
    job.result()
    final = job.outputs()[-1]
    assert final[4].startswith("Stopped"), final[4]
    tokens = [int(part.split(":")[1].split("tokens")[0]) for part in final[4].split("(", 1)[1].split(";")[:2]]
    assert max(tokens) < 400


def test_blind_vote_records_the_hidden_mapping_and_reveals_it(client, chat_server, plain_base_answer):
    outputs = ask(client, blind=True)
    left, right = answer(outputs[-1][0]), answer(outputs[-1][1])
    assert outputs[-1][2:4] == ("### Left", "### Right")  # nothing gives the sides away before the vote
    result = client.predict("ann", "clear and correct", api_name="/vote_right")
    reveal, tally = result[0], result[1]
    assert "recorded" in reveal and "Revealed" in reveal
    assert "1 vote" in tally
    refused = client.predict("ann", "", api_name="/vote_left")  # a plain message, not an error badge
    assert "already voted" in refused[0] and "chat-vote-refused" in refused[0]
    db = chat_server[1] / "data" / "reviews.sqlite"
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT reviewer, question, left_side, right_side, left_answer, right_answer, choice, "
                            "comment, settings FROM votes").fetchall()
    assert len(rows) == 1
    reviewer, question, left_side, right_side, left_answer, right_answer, choice, comment, settings = rows[0]
    assert (reviewer, question, choice, comment) == ("ann", QUESTION, "right", "clear and correct")
    assert (left_answer, right_answer) == (left, right)
    assert {left_side, right_side} == {"base", RUN_A}
    base_text = left if left_side == "base" else right
    assert base_text == plain_base_answer  # the stored mapping is the true one
    assert '"max_new_tokens": 24' in settings
    reveal_base_side = "left" if "left was **Base model" in reveal else "right"
    assert reveal_base_side == ("left" if left_side == "base" else "right")


def test_bad_input_gives_clear_errors(client, chat_server, plain_base_answer):
    # the user's own input (an empty question, a setting out of range): a notice in the status line, no exception
    # (an exception marks every output of the event "Error"); a bad run id is still refused outright
    assert "Type a question" in client.predict("  ", [], [], RUN_A, "base", False, "", 0, 0.9, 8, 42, 1.0,
                                               api_name="/chat")[4]
    with pytest.raises(Exception, match="not a valid run id"):
        client.predict("hi", [], [], "../etc", "base", False, "", 0, 0.9, 8, 42, 1.0, api_name="/chat")
    assert "Max new tokens" in client.predict("hi", [], [], RUN_A, "base", False, "", 0, 0.9, 0, 42, 1.0,
                                              api_name="/chat")[4]
    assert "Nothing to vote on" in client.predict("ann", "", api_name="/vote_tie")[0]
    broken = chat_server[1] / "runs" / "20250103-000000-broken"
    (broken / "adapter").mkdir(parents=True)
    (broken / "config.yaml").write_text((chat_server[1] / "runs" / RUN_A / "config.yaml").read_text())
    (broken / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(Exception, match=f"The adapter of run '{broken.name}' is damaged .*train the run again"):
        client.predict("hi", [], [], broken.name, "base", False, "", 0, 0.9, 8, 42, 1.0, api_name="/chat")
    outputs = ask(client, max_new=4)  # the held model still serves the good runs afterwards
    assert plain_base_answer.startswith(answer(outputs[-1][0])) and answer(outputs[-1][1])
