"""Recipe search (issue 18): the space and its rules, one search at a time through the training slot, and a tiny real
search (real Optuna, real run folders, the embedded model in real 4-bit on CPU) whose bad trial is pruned."""
from __future__ import annotations

import json
import math
import os
import time

import pytest

from conftest import run_cli
from workbench import paths, runs
from workbench.config import PRESETS, preset
from workbench.training import jobs
from workbench.training import search

TINY = ["--set", "training.max_steps=3", "--set", "training.eval_steps=1", "--set", "training.save_steps=1",
        "--set", "training.logging_steps=1", "--set", "training.batch_size=2", "--set", "data.max_train_examples=8",
        "--set", "data.max_eval_examples=4", "--set", "model.max_seq_length=96"]


# -- fast: the space, the presets, the rules ------------------------------------------------------

def test_space_adds_the_starting_value_and_drops_epochs_when_steps_are_fixed():
    base = preset("quick-demo-cpu")  # lr 1e-3, r16 on q/k/v/o, max_steps set
    base.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]
    space = search.normalize_space(base)
    assert "training.epochs" not in space  # max_steps is set: epochs change nothing
    assert space["training.learning_rate"] == [1e-4, 2e-4, 4e-4, 8e-4, 1e-3]
    assert space["lora.r"] == [16, 64, 256]
    assert search.recipe_params(base, space) == {"lora.target_modules": "attention", "lora.r": 16,
                                                 "training.learning_rate": 1e-3}
    base.training.max_steps = 0
    assert search.normalize_space(base)["training.epochs"] == [1.0, 2.0, 3.0]
    with pytest.raises(search.SearchError, match="searchable settings are lora.target_modules"):
        search.normalize_space(base, {"lora.dropout": [0.1]})
    with pytest.raises(search.SearchError, match="positive"):
        search.normalize_space(base, {"training.learning_rate": ["-1"]})


def test_the_starting_recipe_s_neighbours_come_first_one_setting_one_step_away():
    """After trial 0 a search tries the starting recipe's nearest variants (half the trial budget) before TPE: from the
    seed recipe the first is all linear layers (the biggest gain measured); from a recipe at the edge of a choice list
    there is no step beyond it; a step never repeats the starting recipe."""
    space = {"lora.target_modules": ["all-linear", "attention"], "lora.r": [16, 64, 256],
             "training.learning_rate": [1e-4, 2e-4, 4e-4, 8e-4], "training.epochs": [1.0, 2.0, 3.0]}
    seed = {"lora.target_modules": "attention", "lora.r": 16, "training.learning_rate": 2e-4, "training.epochs": 3.0}
    got = search.neighbours(space, seed)
    assert got[:3] == [dict(seed, **{"lora.target_modules": "all-linear"}), dict(seed, **{"lora.r": 64}),
                       dict(seed, **{"training.learning_rate": 4e-4})]
    assert dict(seed, **{"training.epochs": 2.0}) in got and all(g != seed for g in got)
    assert not any(g["lora.r"] < 16 or g["training.epochs"] > 3 for g in got)  # no step beyond the edge
    assert all(sum(g[k] != seed[k] for k in seed) == 1 for g in got)  # one setting moved
    best = {"lora.target_modules": "all-linear", "lora.r": 64, "training.learning_rate": 4e-4, "training.epochs": 3.0}
    assert search.neighbours(space, best, 2) == [dict(best, **{"lora.r": 256}),
                                                 dict(best, **{"training.learning_rate": 8e-4})]
    assert search.neighbours({"lora.r": [16]}, {"lora.r": 16}) == []
    assert search.neighbours_tried(6) == 3 and search.neighbours_tried(1) == 1
    assert search.neighbours_tried(0) == len(search.NEIGHBOUR_ORDER)


def test_epoch_choices_that_cannot_matter_are_said_not_silently_dropped():
    """Found by using the app: ticked epoch boxes were dropped without a word on a recipe with max steps or with
    short trials. The search says why (the panel as a warning, the CLI as a note when --space asked for epochs)."""
    base = preset("quick-demo-cpu")  # max_steps is set
    assert "max steps (32)" in search.epochs_note(base, None, False)
    base.training.max_steps = 0
    assert "steps per trial" in search.epochs_note(base, None, True)
    assert search.epochs_note(base, None, False) == "" and search.epochs_note(base, {"lora.r": [16]}, True) == ""
    out = run_cli("search", "--preset", "quick-demo-cpu", "--space", "training.epochs=1,2", "--trials", "0")
    assert "note: Epochs are not searched" in out.stderr


def test_apply_sets_layers_rank_with_alpha_twice_rank_and_learning_rate():
    cfg = search.apply(preset("quick-demo-cpu"), {"lora.target_modules": "all-linear", "lora.r": 64,
                                                  "training.learning_rate": 4e-4})
    assert cfg.lora.target_modules == search.ALL_LINEAR and (cfg.lora.r, cfg.lora.alpha) == (64, 128)
    assert cfg.training.learning_rate == 4e-4 and cfg.validate() == []
    assert preset("quick-demo-cpu").lora.r == 16  # the base is not changed


def test_trial_0_is_the_starting_recipe_as_it_is_even_when_alpha_is_not_twice_the_rank():
    """Found by using the app: with the form at r8 / alpha 32, trial 0 trained r8 / alpha 16 (alpha was forced to 2 x r),
    so 'trial 0 is your recipe as it is' was false. Alpha now keeps the starting recipe's alpha/r ratio."""
    base = preset("quick-demo-cpu")
    base.lora.r, base.lora.alpha = 8, 32
    assert search.apply(base, {"lora.r": 8}).lora.alpha == 32  # trial 0: the recipe itself
    assert search.apply(base, {"lora.r": 64}).lora.alpha == 256  # the same 4x ratio
    data = {"base": base.to_dict(), "trials": [{"number": 0, "state": "completed", "params": {"lora.r": 8},
                                                "eval_loss": 1.0, "run_id": "x"}]}
    assert "8 / 32" in search.trial_rows(data)[0]


def test_gpu_presets_embedded_uses_the_measured_best_recipe_and_the_seed_stays_the_seed():
    best, seed = preset("embedded-gpu"), preset("seed-mistral-7b-gpu")
    assert (best.lora.target_modules, best.lora.r, best.lora.alpha, best.training.learning_rate) == \
        (search.ALL_LINEAR, 128, 256, 4e-4)
    assert (seed.lora.target_modules, seed.lora.r, seed.lora.alpha, seed.training.learning_rate) == \
        (search.ATTENTION, 16, 32, 2e-4)
    text = PRESETS["embedded-gpu"].description
    for measured in ("-45.8%", "-30.7%", "+79.9%", "+57.9%", "H200", "seed-mistral-7b-gpu"):
        assert measured in text


def test_budget_and_last_evaluation_rules_say_what_to_fix():
    base = preset("quick-demo-cpu")
    with pytest.raises(search.SearchError, match="budget"):
        search.create_search(base, trials=0, minutes=0)
    base.training.max_steps, base.training.eval_steps = 7, 3
    with pytest.raises(search.SearchError, match="multiple of training.eval_steps"):
        search.create_search(base, trials=2)
    with pytest.raises(search.SearchError, match="Pick a fine-tuning preset"):  # not "name a parent run"
        search.create_search(preset("preference-cpu"), trials=2)


def test_short_trials_train_a_fixed_number_of_steps_and_use_trains_the_whole_recipe():
    """--trial-steps: each trial is a short run evaluated four times (so the pruner can act after a quarter of it),
    epochs are not searched (they change nothing at a fixed number of steps), and the full run keeps the schedule."""
    base = preset("embedded-gpu")
    assert base.training.max_steps == 0 and base.training.epochs == 3.0
    with pytest.raises(search.SearchError, match="Steps per trial"):
        search.create_search(base, trials=2, trial_steps=-1)
    search_id = search.create_search(base, trials=4, trial_steps=200)
    data = search.read_search(search_id)
    assert data["budget"]["trial_steps"] == 200 and "training.epochs" not in data["space"]
    shown = run_cli("search", "--show", search_id)  # found by using the app: the header left the steps out
    assert shown.returncode == 0 and "budget 4 trials, 200 steps a trial" in shown.stdout
    trial = search.short_trial(search.apply(base, {"lora.r": 16}), 200)
    t = trial.training
    assert (t.max_steps, t.eval_steps, t.save_steps, t.save_strategy) == (200, 50, 200, "steps")
    assert trial.validate() == [] and trial.lora.r == 16
    odd = search.short_trial(preset("embedded-gpu"), 30)  # the last evaluation still falls on the last step
    assert odd.training.max_steps % odd.training.eval_steps == 0 and odd.training.max_steps >= 28
    capped = search.short_trial(preset("quick-demo-cpu"), 200)  # never longer than the recipe itself
    assert capped.training.max_steps <= 32
    data["trials"] = [{"number": 0, "state": "completed", "params": {"lora.r": 64}, "eval_loss": 1.0, "run_id": "x"}]
    (search.folder(search_id) / "search.json").write_text(json.dumps(data))
    full = search.trial_config(search_id, 0)
    assert (full.training.max_steps, full.training.epochs, full.lora.r) == (0, 3.0, 64)  # the whole schedule


def test_settings_already_scored_are_not_trained_again_and_do_not_spend_the_budget():
    """TPE may propose settings it already has a result for (the GPU proof lost one trial of eight that way): the
    earlier result counts again (a pruned one stays pruned), no run is started, the budget counts trained trials only,
    and a sampler that proposes only repeats ends the search."""
    import optuna

    sid = search.create_search(preset("quick-demo-cpu"), space={"training.learning_rate": [1e-3, 2e-4]}, trials=3)
    data = search.read_search(sid)
    scored, pruned = {"training.learning_rate": 1e-3}, {"training.learning_rate": 2e-4}
    data["trials"] = [dict(number=0, params=scored, state="completed", eval_loss=1.25, run_id="r0", step=6,
                           total_steps=6, reason=""),
                      dict(number=1, params=pruned, state="pruned", eval_loss=2.5, run_id="r1", step=2, total_steps=6,
                           reason="Pruned")]
    trials = search._Trials(search.folder(sid), data, 0.01)
    study = optuna.create_study(direction="minimize")
    for params in (scored, pruned, *[scored] * 6):
        study.enqueue_trial(params)
    study.optimize(trials, n_trials=8, callbacks=[trials.stop_if_requested])
    repeats = data["trials"][2:]
    assert [t["state"] for t in repeats] == ["repeat"] * search.REPEATS_BEFORE_STOP  # then the search ended
    assert [t.state.name for t in study.trials[:2]] == ["COMPLETE", "PRUNED"] and study.trials[0].value == 1.25
    assert "same settings as trial 0" in repeats[0]["reason"] and repeats[1]["eval_loss"] == 2.5
    assert search.trained_count(data) == 2 and runs.list_runs() == []  # nothing trained, budget not spent
    assert search.best_trial(data)["number"] == 0
    rows = search.trial_rows(data)
    assert rows[2][1] == "repeat" and "nothing was trained" in rows[2][-1]


def test_one_search_at_a_time_and_not_while_a_run_trains():
    base = preset("quick-demo-cpu")
    # A run holds the training slot (this process stands in for its trainer: a live pid).
    jobs._claim("some-run", os.getpid())
    with pytest.raises(search.SearchError, match="Run 'some-run' is training now"):
        search.start_search(base, trials=2)
    runs.slot_file().unlink()
    # A search runs: its process holds the search lock and is recorded in its search.json.
    running = search.create_search(base, trials=2)
    data = search.read_search(running)
    data.update(state="running", **runs.process_record())
    (search.folder(running) / "search.json").write_text(json.dumps(data))
    lock = paths.acquire_lock(search.search_lock_path(), wait_s=0)
    try:
        with pytest.raises(search.SearchError, match=f"Search '{running}' is running"):
            search.start_search(base, trials=2)
    finally:
        lock.close()
    # Its process gone (the lock dropped): the search is interrupted, its trials kept, and a new one may start.
    assert search.list_searches()[0]["state"] == "interrupted"
    assert search.active_search() is None
    with pytest.raises(search.SearchError, match="no completed trial"):
        search.use_recipe(running)


def test_cli_errors_name_the_fix():
    out = run_cli("search", "--list")
    assert out.returncode == 0 and "No searches yet" in out.stdout
    out = run_cli("search", "--preset", "quick-demo-cpu", "--space", "lora.dropout=0.1")
    assert out.returncode == 1 and "searchable settings are" in out.stderr
    out = run_cli("search", "--preset", "quick-demo-cpu", "--trials", "0")
    assert out.returncode == 1 and "--trials 6" in out.stderr
    out = run_cli("search", "--list", "--trial", "2")  # found by using the app: --trial without --use was ignored
    assert out.returncode == 1 and "--trial picks the trial that --use trains" in out.stderr
    out = run_cli("search", "--use", "search-nope")
    assert out.returncode == 1 and "search --list" in out.stderr


# -- integration: a tiny real search -----------------------------------------------------------------

def last_eval_loss(run_id: str) -> float:
    return [e["eval_loss"] for e in runs.read_events(run_id) if "eval_loss" in e][-1]


@pytest.mark.integration
def test_tiny_search_runs_real_trials_prunes_the_bad_one_and_use_starts_the_best_recipe():
    import optuna

    # Trial 0 is the preset itself (lr 1e-3); the only other recipe in the space is a learning rate so small that the
    # adapter barely moves, so at the first evaluation (step 1 of 6, no warm-up) it is behind trial 0 and the median pruner stops
    # it (the stop lands at the end of the step in progress, well before step 6).
    out = run_cli("search", "--preset", "quick-demo-cpu", "--trials", "2", "--space", "training.learning_rate=1e-7",
                  "--space", "lora.r=16", "--space", "lora.target_modules=attention",
                  "--set", "lora.target_modules=q_proj,k_proj,v_proj,o_proj", "--set", "training.warmup_ratio=0",
                  *[a.replace("max_steps=3", "max_steps=6") for a in TINY], timeout=1500)  # time for the 1 s poll
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    listed = json.loads(run_cli("search", "--list", "--json").stdout)
    assert [(s["state"], s["trials"]) for s in listed] == [("completed", 2)]
    data = search.read_search(listed[0]["id"])
    assert data["sampler"] == "every combination"
    good, bad = data["trials"]
    assert (good["state"], good["params"]["training.learning_rate"]) == ("completed", 1e-3)
    assert (bad["state"], bad["params"]["training.learning_rate"]) == ("pruned", 1e-7)
    # Each trial is a normal run folder; the score is the run's own last held-out eval loss.
    assert math.isclose(good["eval_loss"], last_eval_loss(good["run_id"]), abs_tol=1e-4)
    assert runs.read_status(good["run_id"])["state"] == "completed"
    pruned = runs.read_status(bad["run_id"])
    assert pruned["state"] == "stopped" and pruned["step"] < pruned["total_steps"]
    assert "Pruned by recipe search" in pruned["reason"] and pruned["search"] == data["id"]
    first_good = next(e["eval_loss"] for e in runs.read_events(good["run_id"]) if "eval_loss" in e)
    first_bad = next(e["eval_loss"] for e in runs.read_events(bad["run_id"]) if "eval_loss" in e)
    assert first_bad > first_good
    # Optuna's own storage agrees (it survives the process: a fresh load reads it from SQLite).
    study = optuna.load_study(study_name=data["id"], storage=f"sqlite:///{search.folder(data['id']) / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    assert math.isclose(study.best_value, good["eval_loss"], abs_tol=1e-4)
    assert data["best"]["number"] == 0 and jobs.active_run() is None  # the slot is free again
    shown = run_cli("search", "--show", data["id"])
    assert "pruned" in shown.stdout and f"search --use {data['id']}" in shown.stdout
    # "Use this recipe": the full run starts with the best trial's settings, scored when it ends.
    used = run_cli("search", "--use", data["id"])
    assert used.returncode == 0, used.stderr
    full = next(r for r in runs.list_runs() if r["name"].endswith("-trial-0-full"))
    cfg = runs.load_run_config(full["id"])
    assert cfg.training.learning_rate == 1e-3 and cfg.eval.run_after_training is True
    assert run_cli("stop", full["id"]).returncode == 0
    deadline = time.time() + 600
    while runs.read_status(full["id"]).get("state") in runs.ACTIVE_STATES and time.time() < deadline:
        time.sleep(2)
    assert runs.read_status(full["id"])["state"] in ("stopped", "completed")
