"""The Train tab's pieces, fast, on real run folders: the Run list following runs started elsewhere, the CPU
estimate and the ETA from the measured pace, the progress line, the log tail, the grouped settings and the learning-rate
axis (split out of test_workflow.py; the browser tests in test_browser_train.py drive the same through the app)."""
from __future__ import annotations

import os
import time

import pytest

from test_workflow import fake_run
from workbench import runs
from workbench.config import preset
from workbench.training import estimate


def test_the_train_tab_run_list_follows_runs_started_elsewhere_and_picks_the_one_that_trains():
    """Found by using the app: a recipe search's trials and its 'Use this recipe' run never joined the Train tab's Run
    list until a page refresh, so the new run could not be watched or stopped there. The timer's _runs_tick now
    follows the runs folder: new and deleted runs join or leave the list, and a run that starts training is picked
    unless the run shown is itself training."""
    from workbench.training import jobs
    from workbench.ui import train_tab

    old = jobs.create_run(preset("quick-demo-cpu"))
    runs.folder(old).write_status(state="completed")
    key, pick, _table, _compare = train_tab._runs_tick(old, "")
    assert pick["choices"] == [old] and "value" not in pick  # the run shown stays shown
    assert train_tab._runs_tick(old, key) == tuple(train_tab.gr.skip() for _ in range(4))  # nothing changed
    time.sleep(1.1)  # run ids are per second
    trial = jobs.create_run(preset("quick-demo-cpu"))  # e.g. a search trial, started by the search process
    jobs._claim(trial, os.getpid())  # it holds the training slot (a live process)
    key2, pick, table, _ = train_tab._runs_tick(old, key)
    assert key2 != key and set(pick["choices"]) == {old, trial} and pick["value"] == trial
    assert {row[0] for row in table} == {old, trial}
    time.sleep(1.1)
    runs.folder(trial).write_status(state="running")
    other = jobs.create_run(preset("quick-demo-cpu"))
    _, pick, _, _ = train_tab._runs_tick(trial, key2)  # the run shown trains: it stays picked
    assert "value" not in pick and other in pick["choices"]
    runs.slot_file().unlink()


def test_a_tick_sent_before_start_picked_its_new_run_does_not_move_the_list_back():
    """Found by a CI run: right after Start the Train tab briefly showed the previous run again (a timer tick sent with
    the old selection was answered after Start had picked the new run, before it held the training slot), and a
    browser test read that run's 'completed' as the new run's. A tick now never sends the selection back unless it
    moves it to the run that trains."""
    from workbench.training import jobs
    from workbench.ui import train_tab

    old = jobs.create_run(preset("quick-demo-cpu"))
    runs.folder(old).write_status(state="completed")
    key, _, _, _ = train_tab._runs_tick(old, "")
    time.sleep(1.1)
    new = jobs.create_run(preset("quick-demo-cpu"))  # Start made it; its process has not claimed the slot yet
    key2, pick, table, _ = train_tab._runs_tick(old, key)  # the tick still carries the old selection
    assert key2 != key and set(pick["choices"]) == {old, new} and "value" not in pick
    assert {row[0] for row in table} == {old, new}



# -- 13.4 / 13.8 / 13.10 / 13.12 the Train tab ------------------------------------------------------

def test_learning_rate_axis_is_readable():
    from workbench.ui import train_tab

    events = [{"step": s, "loss": 3.0 - s / 10, "learning_rate": 0.001} for s in range(1, 6)]
    fig = train_tab.curves({"20250101-000000-quick-demo": events})
    axis = fig.layout.yaxis2
    assert axis.tickformat == ".1e" and axis.range[0] == 0 and axis.range[1] >= 0.001
    assert fig.data[0].name.startswith("quick-demo")  # a legend a person can read, not a cut timestamp


def test_cpu_estimate_is_a_range_and_eta_comes_from_the_measured_pace():
    cfg = preset("quick-demo-cpu")
    text = estimate.describe(cfg, None, None, 30)
    lo, hi = estimate.cpu_seconds_per_step(cfg)
    assert lo >= 4 and hi >= 10 and "30 steps" in text and "-" in text
    events = [{"step": 2, "loss": 3.0, "elapsed": 40.0}, {"step": 4, "loss": 2.5, "elapsed": 58.0},
              {"step": 4, "eval_loss": 2.6, "elapsed": 63.0}, {"step": 6, "loss": 2.4, "elapsed": 76.0}]
    assert estimate.measured_seconds_per_step(events) == pytest.approx(9.0)  # model loading (40 s) not counted
    assert estimate.eta_seconds(events, 6, 30) == pytest.approx(9.0 * 24)
    assert estimate.measured_seconds_per_step(events[:1]) is None
    assert estimate.planned_steps(cfg, 1000) == cfg.training.max_steps  # max_steps wins over epochs
    cfg.training.max_steps, cfg.data.max_train_examples, cfg.training.epochs = 0, 0, 1.0
    assert estimate.planned_steps(cfg, 100) == 23  # 90 training rows / batch 4, one epoch
    fake_run("20250101-000001-measured", events=events)
    measured = estimate.measured_on_this_machine(preset("quick-demo-cpu"))
    assert measured == (pytest.approx(9.0), "20250101-000001-measured")
    assert "took 9.0 s per step" in estimate.describe(preset("quick-demo-cpu"), None, None, 30, measured)
    # Found by using the app: a newer run with a bigger adapter (r64 on every layer: ~2x the step on a CPU) set the
    # estimate for an r16 run. A run with the same adapter is preferred.
    fake_run("20250101-000002-big-adapter", events=[dict(e, elapsed=e["elapsed"] * 2) for e in events])
    big = runs.load_run_config("20250101-000002-big-adapter")
    big.lora.r, big.lora.target_modules = 64, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    big.save(runs.folder("20250101-000002-big-adapter").path / "config.yaml")
    assert estimate.measured_on_this_machine(preset("quick-demo-cpu")) == (pytest.approx(9.0), "20250101-000001-measured")
    wide = preset("quick-demo-cpu")
    wide.lora.r, wide.lora.target_modules = big.lora.r, big.lora.target_modules
    assert estimate.measured_on_this_machine(wide) == (pytest.approx(18.0), "20250101-000002-big-adapter")


def test_progress_says_loading_before_the_first_step_and_buttons_follow_the_state():
    from workbench.ui import train_tab

    text = train_tab.progress_html({"state": "running"}, [])
    assert "Loading the model" in text and "0/0" not in text
    stop, resume = train_tab.buttons_for("running")
    assert stop["interactive"] and not resume["interactive"]
    stop, resume = train_tab.buttons_for("completed")
    assert not stop["interactive"] and not resume["interactive"]
    assert train_tab.buttons_for("stopped")[1]["interactive"]


def test_log_tail_hides_harmless_warnings_and_progress_bar_noise():
    from workbench.ui import train_tab

    log = ("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. Please make "
           "sure you already `pip install kernels`\n"
           "\x1b[A\r  0%|          | 0/30 [00:00<?, ?it/s]\r  3%|▎         | 1/30 [00:05<02:25,  5.0s/it]\r"
           " 10%|█         | 3/30 [00:15<02:15,  5.0s/it]\n"
           "{'loss': 3.1, 'grad_norm': 1.2, 'learning_rate': 0.001, 'epoch': 0.1}\n"
           " 13%|█▎        | 4/30 [00:20<02:10,  5.0s/it]\n 17%|█▋        | 5/30 [00:25<02:05,  5.0s/it]\n")
    shown = train_tab.clean_log(log)
    assert "kernels" not in shown and "\x1b" not in shown and "\r" not in shown
    assert shown.splitlines() == [" 10%|█         | 3/30 [00:15<02:15,  5.0s/it]",
                                  "{'loss': 3.1, 'grad_norm': 1.2, 'learning_rate': 0.001, 'epoch': 0.1}",
                                  " 17%|█▋        | 5/30 [00:25<02:05,  5.0s/it]"]
    assert len(train_tab.clean_log("\n".join(f"line {i}" for i in range(100))).splitlines()) == train_tab.LOG_LINES
    assert train_tab.clean_log("\n".join(f"line {i}" for i in range(100))).endswith("line 99")


def test_settings_are_grouped_with_plain_labels_and_presets_one_per_line():
    from workbench.ui import train_tab

    assert train_tab.label_of("model.max_seq_length") == "Longest example (tokens)"
    assert train_tab.label_of("training.batch_size") == "Batch size"
    sections = {n.split(".")[0] for n, _ in train_tab.FORM_FIELDS if "." in n}
    assert sections == {s for s, _ in train_tab.SECTIONS}
