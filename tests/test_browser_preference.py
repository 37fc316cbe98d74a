"""Issue 17 in a real browser: blind votes -> preference pairs (Data tab) -> a preference run from the parent (Train
tab, preference-cpu) -> the preference run against its parent in blind review (Chat tab) -> the parent-vs-child win
rate (Metrics tab).

Setup through the real APIs where the UI path is covered elsewhere: a finished parent run with a real LoRA adapter
(test_eval_run's run folder) and blind votes recorded through the review API (test_preference_run.vote_on_parent:
10 pairs, a contradiction, a tie). One more vote is cast here through the Chat tab."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from test_eval_run import adapter_dir, build_run  # noqa: F401 (adapter_dir is a fixture)
from test_preference_run import PARENT, vote_on_parent
from workbench import runs
from workbench.evaluation import reviews

pytestmark = [pytest.mark.browser, pytest.mark.integration]
QUESTION = "Which command lists the tables of a Databricks schema?"  # not one of the API votes' questions


@pytest.fixture
def no_stray_run(wb_home):
    """A failed test must not leave its training process running (it outlives the app server)."""
    yield
    for r in runs.list_runs():
        pid = runs.read_status(r["id"]).get("pid") if r["state"] in runs.ACTIVE_STATES else None
        if isinstance(pid, int):
            try:
                os.kill(pid, signal.SIGTERM)  # the recipe saves and ends as 'stopped'
            except ProcessLookupError:
                continue
            for _ in range(60):
                if not runs.process_alive(pid, runs.read_status(r["id"]).get("pid_started")):
                    break
                time.sleep(0.5)


def open_tab(page, name):
    page.get_by_role("tab", name=name).click()


def blind_vote(page, question: str, reviewer: str) -> None:
    """Ask `question` in blind mode (12 new tokens) and vote 'left is better'."""
    from playwright.sync_api import expect

    page.locator("#chat-blind input").check()
    expect(page.locator("#chat-vote-left")).to_be_visible()
    page.locator("#chat-reviewer textarea").fill(reviewer)
    page.get_by_text("Generation settings").click()
    page.locator("#chat-max-new input").fill("12")
    page.locator("#chat-question textarea").fill(question)
    page.locator("#chat-send").click()
    expect(page.locator("#chat-vote-left")).to_be_enabled(timeout=120_000)  # on only once the pair is answered
    expect(page.locator("#chat-status")).to_contain_text("Done")
    page.locator("#chat-vote-left").click()
    expect(page.locator("#chat-reveal")).to_contain_text("Revealed")


def test_votes_become_pairs_a_preference_run_and_a_blind_comparison_with_its_parent(adapter_dir, no_stray_run,  # noqa: F811
                                                                                     app_server, page):
    from playwright.sync_api import expect

    build_run(adapter_dir, PARENT)
    vote_on_parent(10)  # 10 preferring votes, 2 contradicting each other, 1 tie
    page.goto(app_server.url)

    # Chat: one more blind vote, the parent against the base model, cast in the browser.
    open_tab(page, "Chat")
    expect(page.locator("#chat-run input")).to_have_value(re.compile(PARENT))
    blind_vote(page, QUESTION, "bea")
    assert any(v["reviewer"] == "bea" and v["choice"] == "left" for v in reviews.votes(PARENT))

    # Data: the votes as pairs, with the report (the contradiction listed, not averaged) and the table.
    open_tab(page, "Data")
    page.get_by_text("Preference pairs (from blind review votes").click()
    page.locator("#pref-show").click()
    report = page.locator("#pref-report")
    expect(report).to_contain_text("13 preferring vote(s) read")  # 10 + 2 contradicting + the browser's vote
    expect(report).to_contain_text("1 tie(s)")
    expect(page.locator("#pref-contradictions")).to_contain_text("Is Spark lazy?")
    expect(page.locator("#pref-table")).to_contain_text("reviewer0")
    assert re.search(r"1[01] usable pairs", page.locator("#pref-count").inner_text())  # 11 unless both answers match

    # Train: a preference run from the parent with the preference-cpu preset; readiness shown before Start.
    open_tab(page, "Train")
    page.locator("#train-kind").get_by_text("Preference tuning (DPO").click()
    expect(page.locator("#train-pref-parent input")).to_have_value(PARENT, timeout=30_000)
    expect(page.locator("#train-pref-preview")).to_contain_text("enough to run, too few to trust")
    # the command line names the picked parent (pairs: the votes, the default)
    expect(page.locator("#train-new-cli code")).to_have_text(
        f"python -m workbench train --preset preference-cpu --parent {PARENT}", timeout=30_000)
    page.locator("#train-settings").get_by_text("Settings (each explained)").click()  # 2 of the preset's 8 steps: a
    steps = page.get_by_label("Stop after steps (0 = all epochs)")                  # shared 2-core CPU is slow
    steps.fill("2")
    steps.press("Tab")
    expect(page.locator("#train-new-cli code")).to_have_text(
        f"python -m workbench train --preset preference-cpu --parent {PARENT} --set training.max_steps=2",
        timeout=30_000)
    page.locator("#train-start").click()
    expect(page.locator("#train-pref-line")).to_contain_text(PARENT, timeout=60_000)  # the new run is shown
    expect(page.locator("#train-state")).to_have_text("completed", timeout=240_000)
    expect(page.locator("#train-pref-line")).to_contain_text(PARENT)  # the completed run shown is the new child
    child = next(r["id"] for r in runs.list_runs() if r["id"] != PARENT)
    expect(page.locator("#train-curves")).to_contain_text("Reward margin")
    expect(page.locator("#train-curves")).to_contain_text("Preference accuracy")
    assert page.locator("#train-curves .scatterlayer .point").count() > 0
    status = runs.read_status(child)
    assert status["kind"] == "preference" and status["parent_run"] == PARENT and status["reference_is_parent"]

    # Chat: the preference run (newest) is compared against its parent by default; a blind vote counts for them.
    page.reload()
    open_tab(page, "Chat")
    expect(page.locator("#chat-run input")).to_have_value(re.compile(child))
    expect(page.locator("#chat-other input")).to_have_value(re.compile(f"Parent run: {PARENT}"))
    blind_vote(page, QUESTION, "bea")
    expect(page.locator("#chat-tally")).to_contain_text(f"vs {PARENT}: 1 vote")
    (vote,) = reviews.votes(child)
    assert {vote["left_side"], vote["right_side"]} == {child, PARENT}

    # Metrics: the parent-vs-child win rate with its interval, and the held-out preference accuracy.
    open_tab(page, "Metrics")
    expect(page.locator("#metrics-run input")).to_have_value(re.compile(child))
    win = page.locator("#metrics-parent-win")
    expect(win).to_contain_text("1 rated vote(s)", timeout=30_000)  # the tab redraws when the votes change
    expect(win).to_contain_text("95% CI")
    expect(page.locator("#metrics-pref-accuracy")).to_contain_text("held-out pair(s)")
