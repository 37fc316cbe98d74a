"""The Train tab's "Find a recipe" panel in a real browser (headless Debian Chromium via Playwright) against the real
app: a tiny recipe search (2 trials of 2 steps, the embedded model on CPU) starts from the Train tab's own settings,
its trials appear in the table with their settings and scores, it survives a refresh, and "Use this recipe" starts
the full run with the chosen trial's settings (checked in the run folder), which the test then stops."""
from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from test_browser_metrics import cell_texts
from test_browser_train import open_tab
from workbench import runs
from workbench.training import search

pytestmark = [pytest.mark.browser, pytest.mark.integration]

# The Train tab's form, shrunk so a trial is two short steps and one tiny evaluation after the model loads (the model
# load is most of a trial's time on a CPU). Two steps, not one: the full run's Stop then lands before its last step
# ends, so it ends 'stopped' instead of completing and being scored.
TINY_FORM = {"Stop after steps (0 = all epochs)": "2", "Evaluate every (steps)": "2", "Batch size": "2",
             "At most this many training examples (0 = all)": "4",
             "At most this many evaluation examples (0 = all)": "2", "Longest example (tokens)": "64", "Questions to score": "2", "Longest generated answer (tokens)": "8"}
FOLDED = ["Settings (each explained)", "Model", "Data", "More training settings", "Evaluation after training"]


def panel_state(page) -> str:
    return page.locator("#search-state").inner_text()


def open_panel(page):
    page.get_by_text("Find a recipe (search LoRA settings on your data)").click()
    page.locator("#search-start").wait_for()


def test_find_a_recipe_shows_trials_survives_refresh_and_uses_one(app_server, page):
    open_tab(page, app_server.url, "Train")
    page.locator("#train-new-cli").get_by_text("python -m workbench train --preset quick-demo-cpu").wait_for()
    settings = page.locator("#train-settings")
    for title in FOLDED:
        (page if title == FOLDED[0] else settings).get_by_text(title, exact=True).first.click()
    for label, value in TINY_FORM.items():
        settings.get_by_label(label, exact=True).fill(value)

    open_panel(page)
    page.locator("#search-trials input").fill("2")
    # Search only the rank, 16 (the preset's own, always added) or 64: two recipes for two trials, so the sampler
    # tries both ("every combination"); an unticked group keeps the recipe's own value.
    for group, keep in (("#search-target-modules", ()), ("#search-r", ("64",)), ("#search-learning-rate", ())):
        for box in page.locator(f"{group} input[type=checkbox]").all():
            box.set_checked(box.evaluate("b => b.closest('label').innerText.trim()") in keep)
    page.locator("#search-start").click()

    page.wait_for_function("() => document.querySelectorAll('#search-trials-table [role=row]').length >= 2",
                           timeout=60_000)  # a trial row while the search runs
    assert panel_state(page) == "running"
    first = cell_texts(page, "#search-trials-table")[0]
    assert re.match(r"0\s+(starting|running)\s+all-linear\s+16 / 32\s+0\.001", first), first
    search_id = search.list_searches()[0]["id"]
    page.locator("#search-status").get_by_text(search_id).wait_for()

    # A refresh while it runs: the panel picks the search up again from its folder.
    assert search.read_search(search_id)["state"] == "running"
    page.reload()
    page.get_by_role("tab", name="Train").click()
    open_panel(page)
    page.locator("#search-status").get_by_text(search_id).wait_for()
    expect(page.locator("#search-pick input")).to_have_value(search_id)
    page.wait_for_function("() => document.querySelectorAll('#search-trials-table [role=row]').length >= 2")

    # Both trials finish; each row shows its settings and its eval loss, the best one starred.
    expect(page.locator("#search-state")).to_have_text("completed", timeout=180_000)
    page.wait_for_function("() => document.querySelectorAll('#search-trials-table [role=row]').length === 3")
    data = search.read_search(search_id)
    assert data["sampler"] == "every combination" and [t["state"] for t in data["trials"]] == ["completed"] * 2
    rows = {row.split()[0]: row for row in cell_texts(page, "#search-trials-table")}
    trials = {t["number"]: t for t in data["trials"]}
    assert trials[1]["params"] == {"lora.target_modules": "all-linear", "lora.r": 64, "training.learning_rate": 1e-3}
    for number, trial in trials.items():
        row = rows[str(number)]
        assert f"{trial['params']['lora.r']} / {2 * trial['params']['lora.r']}" in row and "completed" in row
        assert str(trial["eval_loss"]) in row and "2/2" in row and trial["run_id"] in row
    assert rows[str(data["best"]["number"])].split()[1] == "★"

    # "Use this recipe" on trial 1 (r64): the full run starts and the panel follows it.
    page.locator("#search-trial input").click()
    page.get_by_role("option", name="1", exact=True).click()
    page.locator("#search-use").click()
    page.locator("#search-used").get_by_text("Started run").wait_for()
    run_id = page.locator("#search-used strong").inner_text()
    expect(page.locator("#search-full-id")).to_have_text(run_id)
    expect(page.locator("#search-full-state")).to_have_text(re.compile("queued|running|stopping|completed"))
    # The Train tab's Run list picks the new run without a refresh (it used to need one), and so does a refresh; its
    # Stop ends it (so it does not keep the CPU busy).
    expect(page.locator("#train-run input")).to_have_value(run_id)
    page.reload()
    page.get_by_role("tab", name="Train").click()
    expect(page.locator("#train-run input")).to_have_value(run_id)
    expect(page.locator("#train-state")).to_have_text(re.compile("queued|running|stopping|completed"))
    if runs.read_status(run_id)["state"] in runs.ACTIVE_STATES:
        expect(page.locator("#train-stop")).to_be_enabled()
        page.locator("#train-stop").click()
    # It is a normal run with the trial's settings (not the form's r16), scored when it ends.
    listed = next(r for r in runs.list_runs() if r["id"] == run_id)
    assert listed["name"] == f"{search_id}-trial-1-full"
    cfg, trial_run = runs.load_run_config(run_id), runs.load_run_config(trials[1]["run_id"])
    assert (cfg.lora.target_modules, cfg.lora.r, cfg.lora.alpha) == (search.ALL_LINEAR, 64, 128)
    assert cfg.training.learning_rate == 1e-3 and cfg.training.max_steps == 2 and cfg.eval.run_after_training
    assert cfg.lora == trial_run.lora and cfg.training == trial_run.training and cfg.data == trial_run.data

    deadline = time.time() + 120
    while time.time() < deadline:  # until its process has exited (a run that completed first is scored, then ends)
        status = runs.read_status(run_id)
        if status["state"] not in runs.ACTIVE_STATES and not runs.process_alive(status.get("pid"),
                                                                                 status.get("pid_started")):
            break
        time.sleep(1)
    assert runs.read_status(run_id)["state"] in ("stopped", "completed")
