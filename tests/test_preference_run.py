"""A real preference (DPO) run: votes recorded through the review API on a finished parent run, TRL's DPOTrainer on
the embedded model in 4-bit on CPU, through the real `python -m workbench train` subprocess, stopped and resumed.

The parent is test_eval_run's completed run folder (a real peft adapter with non-zero weights, built once per
session). The pairs are short so a step costs seconds."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli
from test_eval_run import adapter_dir, build_run, sample_records  # noqa: F401 (adapter_dir is a fixture)
from test_train_runs import wait_for, wait_state
from workbench import runs
from workbench.evaluation import preferences, reviews

PARENT = "20250101-000000-parent"


def vote_on_parent(n: int, contradict: bool = True) -> None:
    """n blind votes on PARENT vs the base model, each preferring the short reference answer; plus one pair of
    contradictory votes (left out of training) and a tie (not a pair)."""
    for i, record in enumerate(sample_records()[:n]):
        good = " ".join(record["output"].split()[:12])
        sides = reviews.blind_sides(PARENT)
        answers = tuple(good if side == PARENT else "I am not sure, sorry." for side in sides)
        pending = reviews.pending_vote(record["instruction"], sides, PARENT, answers)
        reviews.cast_vote(pending, f"reviewer{i % 3}", "left" if sides[0] == PARENT else "right")
    if contradict:
        for reviewer, choice in (("ana", "left"), ("bo", "right")):
            reviews.record_vote(reviewer, "Is Spark lazy?", reviews.BASE, PARENT, "Yes.", "No.", choice)
    reviews.record_vote("ana", "What is a job?", reviews.BASE, PARENT, "A task.", "A run.", "tie")


def finished_parent_without_weights() -> None:
    """A completed run folder whose adapter is only its config: enough for every check made before training."""
    from workbench.config import preset

    run = runs.folder(PARENT, must_exist=False)
    (run.adapter).mkdir(parents=True)
    (run.adapter / "adapter_config.json").write_text("{}")
    preset("quick-demo-cpu").save(run.config)
    run.write_status(state="completed")


def test_too_few_pairs_are_refused_before_any_run_is_made():
    finished_parent_without_weights()
    vote_on_parent(preferences.MIN_PAIRS - 1)
    done = run_cli("train", "--preset", "preference-cpu", "--parent", PARENT)
    assert done.returncode == 1
    assert f"needs at least {preferences.MIN_PAIRS}" in done.stderr and "contradict each other" in done.stderr
    assert [r["id"] for r in runs.list_runs()] == [PARENT]
    missing = run_cli("train", "--preset", "preference-cpu", "--parent", "20990101-nope")
    assert missing.returncode == 1 and "No run '20990101-nope'" in missing.stderr
    from workbench.training import preference

    shown = preference.preview(PARENT)  # what the Train tab shows before Start
    assert not shown["ok"] and shown["level"] == "refuse" and "Contradiction" in shown["text"]


@pytest.mark.integration
def test_a_preference_run_trains_from_the_parent_stops_resumes_and_keeps_the_parent_as_reference(adapter_dir):  # noqa: F811
    from workbench.training.preference import file_digest

    build_run(adapter_dir, PARENT)
    vote_on_parent(10)
    started = run_cli("train", "--preset", "preference-cpu", "--parent", PARENT, "--background",
                      "--set", "training.max_steps=2", "--set", "training.save_steps=1", "--set", "training.batch_size=1")
    assert started.returncode == 0, started.stderr
    run_id = next(r["id"] for r in runs.list_runs() if r["id"] != PARENT)
    run = runs.folder(run_id)
    pairs_train = [json.loads(line) for line in run.pairs_train.read_text().splitlines()]
    pairs_eval = [json.loads(line) for line in run.pairs_eval.read_text().splitlines()]
    assert len(pairs_train) + len(pairs_eval) == 10 and len(pairs_eval) >= 2  # the contradiction and the tie: out
    assert not {p["prompt"] for p in pairs_train} & {p["prompt"] for p in pairs_eval}
    assert run.train_data.read_text() == runs.folder(PARENT).train_data.read_text()  # scored on the parent's split

    # a stop asked for at once: the run still takes its first step, saves it and ends 'stopped' (no race with the end)
    assert run_cli("stop", run_id).returncode == 0
    stopped = wait_state(run_id, {"stopped", "completed", "failed"}, timeout=300)
    assert stopped["state"] == "stopped" and stopped["last_checkpoint_step"] == 1, (stopped, runs.log_tail(run_id))
    assert run_cli("resume", run_id).returncode == 0
    status = wait_state(run_id, {"completed", "failed"}, timeout=300)
    assert status["state"] == "completed", (status, runs.log_tail(run_id))

    parent_digest = file_digest(runs.folder(PARENT).adapter)
    assert status["kind"] == "preference" and status["parent_run"] == PARENT
    assert status["parent_digest"] == parent_digest == status["reference_digest"] and status["reference_is_parent"]
    assert run.has_adapter() and not (run.adapter / "ref").exists()  # an ordinary adapter: the policy only
    assert file_digest(run.adapter) != parent_digest  # it learned something
    assert sorted(json.loads((run.adapter / "adapter_config.json").read_text())["target_modules"]) == \
        sorted(json.loads((runs.folder(PARENT).adapter / "adapter_config.json").read_text())["target_modules"])

    events = [e for e in runs.read_events(run_id) if "loss" in e]
    assert [e["step"] for e in events] == [1, 2]  # resumed from the checkpoint: no gap, no duplicate
    assert all({"reward_margin", "reward_chosen", "reward_rejected", "preference_accuracy"} <= set(e) for e in events)
    assert any("eval_reward_margin" in e for e in runs.read_events(run_id))  # the held-out pairs, scored by TRL

    # Held-out preference accuracy, scored in the training process with TRL's reference adapter ...
    trained = preferences.read_preference_metrics(run_id)
    assert trained["pairs"] == len(pairs_eval) and 0 <= trained["accuracy"] <= 1 and trained["parent_run"] == PARENT
    # ... and again from disk, with the parent run's own adapter file loaded as the reference: the same log-probs up
    # to bf16 CPU arithmetic (two processes differ by ~0.5%, the base model's too). The exact proof that TRL's
    # reference was the parent is the weight digest above.
    again = preferences.preference_accuracy(run_id)
    for mine, theirs in zip(again["per_pair"], trained["per_pair"]):
        for key in ("reference_logps", "policy_logps"):
            assert mine[key] == pytest.approx(theirs[key], rel=0.02), (mine, theirs)
    assert again["pairs"] == trained["pairs"] and runs.folder(run_id).preference_metrics.is_file()
    assert preferences.parent_of(run_id) == PARENT
    assert preferences.parent_win_rate(run_id)["n"] == 0  # child vs parent: no blind votes yet
