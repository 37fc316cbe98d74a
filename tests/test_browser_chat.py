"""A real browser on the real app: ask a question, both columns fill in, vote blind, the vote is counted."""
from __future__ import annotations

import pytest

from test_chat_support import RUN_B, _built_runs, adapter_runs  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def test_blind_review_in_the_browser(adapter_runs, app_server, page):
    from playwright.sync_api import expect

    page.goto(app_server.url)
    page.get_by_role("tab", name="Chat").click()
    run_box = page.locator("#chat-run input")
    expect(run_box).to_have_value(f"{RUN_B} (chat-negated)")  # newest run with an adapter is preselected
    # Blind is off: the columns are headed by their models from the start (they read "Left | Right" until an answer)
    expect(page.locator("#chat-left-head")).to_have_text("Base model (adapter off)")
    expect(page.locator("#chat-right-head")).to_have_text(f"Fine-tuned: {RUN_B}")
    page.locator("#chat-blind input").check()
    expect(page.locator("#chat-vote-left")).to_be_visible()
    page.locator("#chat-reviewer textarea").fill("bea")
    page.get_by_text("Generation settings").click()
    page.locator("#chat-max-new input").fill("12")
    page.locator("#chat-examples button").first.click()  # one click puts a held-out question in the box
    expect(page.locator("#chat-question textarea")).to_have_value("What does the stack function do in Databricks SQL?")
    page.locator("#chat-send").click()

    status = page.locator("#chat-status")
    expect(status).to_contain_text("Done", timeout=120_000)
    for column in ("#chat-left", "#chat-right"):
        bot = page.locator(f"{column} [data-testid='bot']").last
        expect(bot).not_to_be_empty()
    expect(page.locator("#chat-left-head")).to_have_text("Left")  # sides hidden until the vote
    expect(page.locator("#chat-tally")).to_contain_text("0 votes")

    page.locator("#chat-comment textarea").fill("left reads better")
    page.locator("#chat-vote-left").click()
    expect(page.locator("#chat-reveal")).to_contain_text("Revealed")
    expect(page.locator("#chat-tally")).to_contain_text("1 vote")
    expect(page.locator("#chat-left-head")).to_contain_text("Left —")

    from workbench.evaluation import reviews

    (vote,) = reviews.votes(RUN_B)
    assert (vote["reviewer"], vote["choice"], vote["comment"]) == ("bea", "left", "left reads better")
    assert vote["winner"] == vote["left_side"] and {vote["left_side"], vote["right_side"]} == {"base", RUN_B}
    shown_left = page.locator("#chat-left [data-testid='bot']").last.inner_text().strip()
    assert shown_left and shown_left.split()[0] in vote["left_answer"]
    for choice in ("left", "right", "tie", "both_bad"):  # one vote per answered pair: the buttons turn off
        expect(page.locator(f"#chat-vote-{choice}")).to_be_disabled()
    expect(page.locator("#chat-stop")).to_be_disabled()  # nothing is generating

    # the same question again by the same reviewer: the store refuses a second vote, said plainly (no error badge)
    page.locator("#chat-examples button").first.click()
    page.locator("#chat-send").click()
    # the status still says "Done" from the first answer, so it cannot tell us the second one is finished: the vote
    # buttons can (off since the vote, back on only once the new pair is answered) -- a slow CI once took > 5 s here
    expect(page.locator("#chat-vote-tie")).to_be_enabled(timeout=120_000)
    expect(status).to_contain_text("Done")
    page.locator("#chat-vote-tie").click()
    expect(page.locator("#chat-vote-refused")).to_contain_text("already voted")
    expect(page.locator("#chat-vote-tie")).to_be_disabled()
    expect(page.locator(".toast-body.error, .error")).to_have_count(0)
    assert len(reviews.votes(RUN_B)) == 1
    expect(status).not_to_contain_text("Stopping")

    # Blind off: the cleared columns say at once which model is on which side (they stayed "Left | Right" before)
    page.locator("#chat-blind input").uncheck()
    expect(page.locator("#chat-left-head")).to_have_text("Base model (adapter off)")
    expect(page.locator("#chat-right-head")).to_have_text(f"Fine-tuned: {RUN_B}")
    expect(page.locator("#chat-vote-box")).to_be_hidden()

    # Clear while an answer streams: the answer stops and the columns stay empty (the stream used to refill them)
    page.locator("#chat-max-new input").fill("200")
    page.locator("#chat-question textarea").fill("Explain Delta Lake time travel in detail.")
    page.locator("#chat-send").click()
    expect(status).to_contain_text("Generating", timeout=120_000)
    page.locator("#chat-clear").click()
    page.wait_for_timeout(3000)  # long enough for a stream that was not stopped to write into the columns again
    for column in ("#chat-left", "#chat-right"):
        expect(page.locator(f"{column} [data-testid='bot']")).to_have_count(0)
    expect(page.locator("#chat-send")).to_be_enabled()
