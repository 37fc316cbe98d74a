"""Issue 13 in a real browser (headless Debian Chromium) against the real app: the data cleaned in the Data tab is
what the Train tab trains on, also after an app restart; the Data table pages over all matches and the formatted
example follows the source; Metrics and Train say "Scoring… n/N" from the run folder and Evaluate is disabled."""
from __future__ import annotations

import json
import os
import re

import pytest

from conftest import AppServer
from workbench import paths, runs
from workbench.config import preset
from workbench.data import dataset as data

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def rows_in_summary(page) -> int:
    return int(re.search(r"([\d,]+) rows", page.locator("#data-summary").inner_text()).group(1).replace(",", ""))


def test_cleaned_data_is_what_start_trains_on_and_survives_a_restart(app_server, page, dbdemos_dir):
    from playwright.sync_api import expect

    page.goto(app_server.url)
    page.get_by_role("tab", name="Data").click()
    summary = page.locator("#data-summary")
    expect(summary).to_contain_text("78 rows", timeout=60_000)
    page.get_by_role("radio", name="dbdemos folder").check()
    page.locator("#data-path textarea").fill(str(dbdemos_dir))
    page.get_by_role("button", name="Load", exact=True).click()
    expect(summary).to_contain_text("4,769 rows", timeout=90_000)
    page.get_by_role("button", name="Apply", exact=True).click()  # the default cleaning steps
    page.wait_for_function("() => !document.querySelector('#data-summary').innerText.includes('4,769 rows')",
                           timeout=90_000)
    cleaned = rows_in_summary(page)
    assert 0 < cleaned < 4769
    cleaned_text = f"{cleaned:,}"
    expect(page.locator("#data-saved")).to_contain_text(f"{cleaned_text} records")

    # the table shows cut cells; a click shows the whole row
    page.locator("#data-table [role=row]").nth(1).locator("[role=gridcell], td").nth(2).click()
    expect(page.locator("#data-row-full")).to_contain_text("Question")

    page.get_by_role("tab", name="Train").click()
    box = page.locator("#train-dataset")
    expect(box).to_contain_text(f"{cleaned_text} records", timeout=30_000)
    expect(box).to_contain_text("dbdemos")
    expect(box).to_contain_text("cleaned:")
    expect(page.locator("#train-data-choice input[value=\"The Data tab's dataset\"]")).to_be_checked()
    expect(page.locator("#train-new-cli")).to_contain_text("datasets/current.jsonl")

    app_server.stop()  # an app restart: the cleaned dataset is still there and still what Start uses
    again = AppServer(os.environ.copy())
    try:
        page.goto(again.url)
        page.get_by_role("tab", name="Data").click()
        expect(page.locator("#data-summary")).to_contain_text(f"{cleaned_text} rows", timeout=60_000)
        page.get_by_role("tab", name="Train").click()
        expect(page.locator("#train-dataset")).to_contain_text(f"{cleaned_text} records", timeout=30_000)
    finally:
        again.stop()


def test_data_table_pages_all_matches_and_the_example_follows_the_source(app_server, page, dbdemos_dir):
    from playwright.sync_api import expect

    page.goto(app_server.url)
    page.get_by_role("tab", name="Data").click()
    expect(page.locator("#data-summary")).to_contain_text("78 rows", timeout=60_000)
    example = page.locator("#data-example")
    sample_first = data.apply_mapping(data.load_raw("sample"))["instruction"][0]
    expect(example).to_contain_text(sample_first[:25], timeout=60_000)
    expect(page.locator("#data-row-full")).to_contain_text(sample_first[:25])

    page.get_by_role("radio", name="dbdemos folder").check()
    page.locator("#data-path textarea").fill(str(dbdemos_dir))
    page.get_by_role("button", name="Load", exact=True).click()
    expect(page.locator("#data-summary")).to_contain_text("4,769 rows", timeout=90_000)
    dbdemos_first = data.apply_mapping(data.load_dbdemos(dbdemos_dir))["instruction"][0]
    expect(example).to_contain_text(dbdemos_first.strip()[:25], timeout=60_000)  # not the sample's row any more
    expect(example).not_to_contain_text(sample_first[:25])
    # The full row follows too: the picked id stays `r0`, so it once kept showing the sample's r0 under the new table.
    row_full = page.locator("#data-row-full")
    expect(row_full).to_contain_text(dbdemos_first.strip().replace("`", "")[:25])  # markdown: code without ticks
    expect(row_full).not_to_contain_text(sample_first[:25])

    search = page.locator("#data-search textarea, #data-search input").first
    search.fill("unity catalog")
    search.press("Enter")
    expect(page.locator("#data-summary")).to_contain_text("page 1 of", timeout=30_000)
    page.wait_for_function("() => !/of 4,769 matching/.test(document.querySelector('#data-summary').innerText)")
    text = page.locator("#data-summary").inner_text()
    matching, pages = (int(x.replace(",", "")) for x in re.search(r"of ([\d,]+) matching · page 1 of (\d+)",
                                                                    text).groups())
    assert f"showing 1–{min(matching, 25)} of {matching:,} matching" in text  # the whole first page
    first_row = page.locator("#data-table [role=row]").nth(1).inner_text()
    if pages > 1:  # the pager reaches every match (the old table showed one row, then blank space)
        page.locator("#data-next").click()
        expect(page.locator("#data-summary")).to_contain_text(f"showing 26–{min(matching, 50)} of {matching:,}")
        expect(page.locator("#data-table [role=row]").nth(1)).not_to_have_text(first_row)


def test_metrics_and_train_show_scoring_progress_and_evaluate_waits(app_server, page):
    from playwright.sync_api import expect

    run_id = "20250101-000000-scoring"
    folder = paths.runs_dir() / run_id
    (folder / "data").mkdir(parents=True)
    preset("quick-demo-cpu").save(folder / "config.yaml")
    rows = data.apply_mapping(data.load_raw("sample")).to_dict("records")
    data.write_jsonl(rows[:16], folder / "data" / "eval.jsonl")
    runs.write_status(run_id, state="completed", eval_state="running", created_at=runs.now_iso())
    (folder / "eval_progress.json").write_text(json.dumps({
        "fraction": 0.3, "phase": "base_gen", "phase_label": "base model, generating answers", "done": 5,
        "total": 16, "message": "generating 5/16"}))
    with paths.file_lock(folder / ".eval.lock"):  # what evaluate_run holds while it scores
        page.goto(app_server.url)
        page.get_by_role("tab", name="Metrics").click()
        expect(page.locator("#metrics-scoring")).to_contain_text("Scoring… 5/16 questions", timeout=30_000)
        expect(page.locator("#metrics-evaluate")).to_be_disabled()
        expect(page.locator("#metrics-evaluate-reason")).to_contain_text("being scored now")
        expect(page.locator("#metrics-empty")).to_have_count(0)  # no "press Evaluate" while it scores
        page.get_by_role("tab", name="Train").click()
        page.locator("#train-run input").click()
        page.get_by_role("option", name=run_id).click()
        expect(page.locator("#train-scoring")).to_contain_text("Scoring… 5/16 questions", timeout=30_000)
        expect(page.locator("#train-stop")).to_be_disabled()
    runs.write_status(run_id, eval_state="completed")
    page.get_by_role("tab", name="Metrics").click()
    expect(page.locator("#metrics-scoring")).to_have_count(0, timeout=30_000)  # the timer notices by itself


def test_delete_run_button_removes_the_run(app_server, page):
    from playwright.sync_api import expect

    run_id = "20250101-000000-old"
    folder = paths.runs_dir() / run_id
    folder.mkdir(parents=True)
    preset("quick-demo-cpu").save(folder / "config.yaml")
    runs.write_status(run_id, state="completed", created_at=runs.now_iso())
    page.goto(app_server.url)
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train-run input")).to_have_value(run_id, timeout=30_000)
    expect(page.locator("#train-resume")).to_be_disabled()  # a completed run has nothing to resume
    page.get_by_text("Delete a run (admins)").click()
    page.locator("#train-delete").click()  # without the confirmation tick: refused, nothing deleted
    page.get_by_text("Tick “Yes, delete the selected run” first").first.wait_for()
    assert folder.is_dir()
    page.locator("#train-delete-confirm input").check()
    page.locator("#train-delete").click()
    page.wait_for_function("() => !document.querySelector('#train-run input').value")
    assert not folder.exists()
