"""The Data tab in a real browser (headless Debian Chromium) against the real app: load the dbdemos folder,
search, filter, preview cleaning, apply + undo, see the formatted example and the leakage report."""
from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def summary_rows(page) -> int:
    return int(re.search(r"([\d,]+) rows", page.locator("#data-summary").inner_text()).group(1).replace(",", ""))


def test_data_tab_dbdemos_search_filter_clean_preview_leakage(app_server, page, dbdemos_dir):
    page.goto(app_server.url)
    page.get_by_role("tab", name="Data").click()
    summary = page.locator("#data-summary")
    summary.get_by_text(re.compile(r"^78 rows|78 rows")).wait_for(timeout=60_000)  # the sample opens loaded

    # a path that does not exist: a clear message, and the sample stays on screen
    page.get_by_role("radio", name="file path").check()
    missing = app_server.log.parent / "data" / "no_such_file.csv"  # inside the data folder the app may open
    page.locator("#data-path textarea").fill(str(missing))
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text(re.compile(r"does not exist; check the path")).wait_for()
    assert summary_rows(page) == 78
    # a server file outside the data folders: refused without saying whether it exists
    page.locator("#data-path textarea").fill("/etc/passwd")
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text(re.compile(r"Only files inside")).first.wait_for()
    assert summary_rows(page) == 78

    page.get_by_role("radio", name="dbdemos folder").check()
    page.locator("#data-path textarea").fill(str(dbdemos_dir))
    page.get_by_role("button", name="Load", exact=True).click()
    summary.get_by_text(re.compile(r"4,769 rows")).wait_for(timeout=60_000)

    search = page.locator("#data-search textarea, #data-search input").first
    search.fill("unity catalog")
    search.press("Enter")
    summary.get_by_text(re.compile(r"showing [\d,]+–[\d,]+ of [\d,]+ matching")).wait_for()
    page.wait_for_function("() => !/of 4,769 matching/.test(document.querySelector('#data-summary').innerText)")
    matching = int(re.search(r"of ([\d,]+) matching", summary.inner_text()).group(1).replace(",", ""))
    assert 0 < matching < 4769
    assert "unity catalog" in page.locator("#data-table").inner_text().lower()
    # Found by using the app: a typed page number did nothing, and Load (or Apply mapping) ignored the search still
    # in the box, showing every row under it.
    pages = int(re.search(r"page 1 of (\d+)", summary.inner_text()).group(1))
    assert pages > 1
    page_box = page.locator("#data-page input")
    page_box.fill("2")
    page_box.press("Enter")
    summary.get_by_text(re.compile(r"page 2 of")).wait_for()
    page_box.fill("-3")
    page_box.press("Enter")
    summary.get_by_text(re.compile(r"page 1 of")).wait_for()
    expect(page_box).to_have_value("1")  # clamped, and the box says so
    page.get_by_role("button", name="Load", exact=True).click()  # the same folder again, the search still set
    page.get_by_text(re.compile(r"Loaded \*?\*?4,769 rows")).first.wait_for(timeout=60_000)
    summary.get_by_text(re.compile(rf"of {matching:,} matching · page 1 of")).wait_for(timeout=60_000)

    page.locator("#data-view input").click()
    page.get_by_role("option", name="duplicates").click()
    page.wait_for_function(
        f"() => !/of {matching:,} matching/.test(document.querySelector('#data-summary').innerText)")
    dup_matching = int(re.search(r"of ([\d,]+) matching", summary.inner_text()).group(1).replace(",", ""))
    assert dup_matching < matching
    # every row shown is marked in the narrow 'dup' column with a word, not a wrapped true/false
    first_row = page.locator("#data-table [role=row]").nth(1).inner_text()
    assert "yes" in first_row.split() and "true" not in first_row.lower()

    # the formatted example: the chat template with the answer tokens marked as loss-bearing
    example = page.locator("#data-example")
    example.get_by_text("<|im_start|>assistant", exact=False).first.wait_for(timeout=90_000)
    assert "loss" in example.inner_text().lower()
    page.get_by_text(re.compile(r"highlighted tokens")).wait_for()

    # cleaning: preview names the counts; apply shrinks the table; undo restores it
    page.get_by_role("button", name="Preview changes", exact=True).click()
    page.get_by_text(re.compile(r"strip_quotes.*2,674 edited")).wait_for()
    page.get_by_text(re.compile(r"drop_duplicate_pairs.*103 dropped")).wait_for()
    page.get_by_role("button", name="Apply", exact=True).click()
    summary.get_by_text(re.compile(r"^\s*4,665 rows|4,665 rows")).wait_for(timeout=60_000)
    page.get_by_role("button", name="Undo", exact=True).click()
    summary.get_by_text(re.compile(r"4,769 rows")).wait_for(timeout=60_000)

    # leakage: the split is clean; the shipped eval set overlaps training completely
    page.get_by_text("Token lengths, leakage, export").click()
    page.locator("#data-against textarea").fill(str(dbdemos_dir / "databricks_doc_eval_set.parquet"))
    page.get_by_role("button", name="Check leakage").click()
    leak = page.locator("#data-leakage")
    leak.get_by_text(re.compile(r"LEAKAGE: 171 of 171")).wait_for(timeout=60_000)
    assert "No leakage" in leak.inner_text()

    # token statistics (progress shown while 4,769 examples are tokenized) and the export download
    page.get_by_role("button", name="Token statistics", exact=True).click()
    page.get_by_text(re.compile(r"4,769 examples: median \d+ tokens")).wait_for(timeout=90_000)
    page.get_by_role("button", name="Export cleaned JSONL", exact=True).click()
    link = page.locator("#data-export a").first
    link.wait_for(timeout=60_000)
    assert "cleaned_instructions" in page.locator("#data-export").inner_text()
    with page.expect_download() as download:
        link.click()
    lines = download.value.path().read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4769 and json.loads(lines[0]).keys() == {"instruction", "input", "output", "context"}
