"""The Metrics tab in a real browser (headless Chromium) against the real app.

Setup: one run scored by the real evaluation code before the app starts, and one with a trained adapter
but no scores yet, which the test scores through the Evaluate button.
"""
from __future__ import annotations

import re

import pytest

from test_eval_run import adapter_dir, build_run  # noqa: F401 (adapter_dir is a fixture)
from workbench.evaluation import evaluate

pytestmark = [pytest.mark.browser, pytest.mark.integration]


@pytest.fixture
def scored_runs(adapter_dir):  # noqa: F811
    scored = build_run(adapter_dir, run_id="20250101-000000-scored", leak=True, max_new_tokens=8)
    evaluate.evaluate_run(scored)
    # same held-out rows and settings: the Evaluate button finds the base results in the cache
    unscored = build_run(adapter_dir, run_id="20250102-000000-unscored", leak=True, max_new_tokens=8)
    return scored, unscored


def cell_texts(page, selector):
    """The text of each data row of a gr.Dataframe (its grid marks rows with role=row; the first is the header)."""
    return page.locator(f"{selector} [role=row]").all_inner_texts()[1:]


def test_metrics_tab_shows_table_examples_search_evaluate_and_compare(scored_runs, app_server, page):
    scored, unscored = scored_runs
    metrics = evaluate.read_metrics(scored)
    page.goto(app_server.url)
    page.get_by_role("tab", name="Metrics").click()

    summary = page.locator("#metrics-summary")
    summary.get_by_text("ROUGE-L", exact=True).wait_for()
    rows = cell_texts(page, "#metrics-summary")
    ppl_row = next(r for r in rows if r.startswith("Perplexity"))
    assert f"{metrics['base']['perplexity']:.2f}" in ppl_row and f"{metrics['tuned']['perplexity']:.2f}" in ppl_row
    assert any(r.startswith("Blind-review win rate") for r in rows)
    page.locator("#metrics-leakage").get_by_text(re.compile("LEAKAGE: 1 of 4")).wait_for()
    # grouped bars were drawn: base and fine-tuned for ROUGE-1/2/L and perplexity (BLEU may be a zero-height bar)
    page.wait_for_function("() => document.querySelectorAll('#metrics-chart .bars path').length >= 8")
    page.locator("#metrics-loss .scatterlayer .point").first.wait_for()

    # per-example view: regressions first, then a search narrows it to one question
    predictions = sorted(evaluate.read_predictions(scored), key=lambda p: p["rougeL_change"])
    examples = page.locator("#metrics-examples")
    examples.get_by_text(predictions[0]["question"]).first.wait_for()
    assert cell_texts(page, "#metrics-examples")[0].startswith(predictions[0]["question"])
    target = predictions[-1]["question"]
    search = page.locator("#metrics-search textarea, #metrics-search input").first
    search.fill(target)  # no Enter: it filters as you type, as the Data tab's search does (found by using the app)
    page.wait_for_function("() => document.querySelectorAll('#metrics-examples [role=row]').length < 5")
    assert any(r.startswith(target) for r in cell_texts(page, "#metrics-examples"))

    # score the other run through the button; its table appears
    page.locator("#metrics-run input").click()
    page.get_by_role("option", name=re.compile(unscored)).click()
    page.locator("#metrics-empty").get_by_text(re.compile("has no metrics yet")).wait_for()
    from playwright.sync_api import expect
    expect(page.locator("#metrics-chart")).to_contain_text("No scores yet")  # a sentence, not empty axes
    page.locator("#metrics-evaluate").click()
    page.wait_for_function("() => /Perplexity\\s+\\d+\\.\\d{2}/"
                           ".test(document.querySelector('#metrics-summary')?.innerText)",
                           timeout=240_000)
    assert evaluate.read_metrics(unscored)["base_cached"] is True
    page.locator("#metrics-info").get_by_text(re.compile("came from the cache")).wait_for()

    # two runs side by side
    page.get_by_text("Compare runs side by side").click()
    page.locator("#metrics-compare input").click()
    page.get_by_role("option", name=scored).click()
    page.locator("#metrics-compare input").click()
    page.get_by_role("option", name=unscored).click()
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelectorAll('#metrics-compare-table [role=row]').length === 3")
    compared = "\n".join(cell_texts(page, "#metrics-compare-table"))
    assert scored in compared and unscored in compared and "YES" in compared  # leaked runs are marked
