"""Each tab driven in a real browser (headless Debian Chromium via Playwright) against the real app."""
from __future__ import annotations

import re

import pytest

from workbench import runs

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def open_tab(page, url, name):
    page.goto(url)
    page.get_by_role("tab", name=name).click()


def test_data_tab_loads_dbdemos_searches_filters_and_previews(app_server, page, dbdemos_dir):
    open_tab(page, app_server.url, "Data")
    summary = page.locator("#data-summary")
    summary.get_by_text(re.compile(r"78 rows")).wait_for()  # the shipped sample opens by default
    page.get_by_role("radio", name="dbdemos folder").check()
    page.locator("#data-path textarea").fill(str(dbdemos_dir))
    page.get_by_role("button", name="Load", exact=True).click()
    summary.get_by_text(re.compile(r"4,769 rows")).wait_for(timeout=60_000)
    page.locator("#data-search textarea, #data-search input").first.fill("stack function")
    page.locator("#data-search textarea, #data-search input").first.press("Enter")
    summary.get_by_text(re.compile(r"showing \d+ of \d+ matching")).wait_for()
    matching = int(re.search(r"of ([\d,]+) matching", summary.inner_text()).group(1).replace(",", ""))
    assert 0 < matching < 4769
    assert "stack" in page.locator("#data-table").inner_text().lower()
    page.locator("#data-view input").click()
    page.get_by_role("option", name="flagged by cleaning").click()
    page.wait_for_function("() => /of [\\d,]+ matching/.test(document.querySelector('#data-summary').innerText)")
    page.get_by_role("button", name="Preview changes").click()
    page.get_by_text(re.compile(r"strip_quotes.*\d+ edited")).wait_for()
    example = page.locator("#data-example")
    example.get_by_text("<|im_start|>assistant", exact=False).first.wait_for(timeout=60_000)
    assert "loss" in example.inner_text().lower()


def test_train_tab_starts_a_run_shows_curves_survives_refresh_and_stops(app_server, page):
    open_tab(page, app_server.url, "Train")
    page.locator("#train-estimate").get_by_text(re.compile("CPU|GPU")).wait_for()
    page.locator("#train-start").click()
    state = page.locator("#train-state")
    page.wait_for_function("() => Number(document.querySelector('#train-step')?.innerText || 0) >= 4",
                           timeout=180_000)
    points = page.locator("#train-curves .scatterlayer .point")
    first = points.count()
    assert first > 0
    page.wait_for_function(f"() => document.querySelectorAll('#train-curves .scatterlayer .point').length > {first}",
                           timeout=120_000)  # the curve gains points while the page is open
    run_id = runs.list_runs()[0]["id"]
    page.reload()
    page.get_by_role("tab", name="Train").click()
    page.wait_for_function("() => document.querySelectorAll('#train-curves .scatterlayer .point').length > 0",
                           timeout=30_000)  # the same curve is back after a refresh
    assert runs.read_status(run_id)["state"] == "running"
    page.locator("#train-stop").click()
    page.wait_for_function("() => ['stopped','completed'].includes(document.querySelector('#train-state')?.innerText)",
                           timeout=120_000)
    assert runs.read_status(run_id)["state"] in ("stopped", "completed")
    assert state.inner_text() in ("stopped", "completed")
