"""End to end: a short real 4-bit LoRA training of the embedded model, scored automatically when it ends.

The held-out questions are the sample set's own eval split: the same domain and answer style as the
training questions but never trained on, so a lower perplexity of their reference answers means the
adapter learned something that carries over.
"""
from __future__ import annotations

import json

import pytest

from conftest import run_cli
from workbench import runs
from workbench.evaluation import evaluate

pytestmark = pytest.mark.integration


def test_training_then_automatic_eval_lowers_held_out_perplexity():
    settings = {"training.max_steps": 16, "training.learning_rate": 1e-3, "training.batch_size": 4,
                "training.logging_steps": 4, "training.eval_steps": 100, "training.save_strategy": "steps",
                "training.save_steps": 100, "training.save_every_minutes": 0,
                "data.max_train_examples": 16, "data.max_eval_examples": 6, "model.max_seq_length": 192,
                "eval.run_after_training": True, "eval.max_new_tokens": 16, "eval.batch_size": 6}
    args = ["train", "--preset", "quick-demo-cpu"]
    for key, value in settings.items():
        args += ["--set", f"{key}={value}"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    run_id = runs.list_runs()[0]["id"]
    status = runs.read_status(run_id)
    assert status["state"] == "completed" and status.get("eval_state") == "completed", status

    metrics = evaluate.read_metrics(run_id)
    assert metrics is not None, "train.py did not call evaluate_run after training"
    assert metrics["eval_examples"] == 6 and metrics["leakage"]["flagged"] is False
    assert metrics["tuned"]["perplexity"] < metrics["base"]["perplexity"]
    assert metrics["change_pct"]["perplexity"] < 0
    held_out = [json.loads(line)["instruction"] for line in
                (runs.run_path(run_id) / "data" / "eval.jsonl").read_text().splitlines()]
    trained = {json.loads(line)["instruction"] for line in
               (runs.run_path(run_id) / "data" / "train.jsonl").read_text().splitlines()}
    assert not set(held_out) & trained
    predictions = evaluate.read_predictions(run_id)
    assert [p["question"] for p in predictions] == held_out
    assert all(p["tuned_answer"] for p in predictions)
