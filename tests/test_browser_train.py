"""The Train tab driven in a real browser (headless Debian Chromium via Playwright) against the real app."""
from __future__ import annotations

import re

import pytest

from workbench import runs

pytestmark = [pytest.mark.browser, pytest.mark.integration]


def open_tab(page, url, name):
    page.goto(url)
    page.get_by_role("tab", name=name).click()


def test_train_tab_starts_a_run_shows_curves_survives_refresh_and_stops(app_server, page):
    open_tab(page, app_server.url, "Train")
    page.locator("#train-estimate").get_by_text(re.compile("CPU|GPU")).wait_for()
    page.locator("#train-new-cli").get_by_text("python -m workbench train --preset quick-demo-cpu").wait_for()
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
