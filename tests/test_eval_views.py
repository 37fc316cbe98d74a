"""What the Metrics tab shows, from run folders: table, per-example order and search, win rate, export, notices.

These test the presentation only, so the metrics are written by hand through evaluate.write_results
(the numbers themselves are tested in test_scoring*.py and test_eval_run.py).
"""
from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench import paths, runs
from workbench.evaluation import evaluate
from workbench.evaluation import reviews
from workbench.config import RunConfig
from workbench.ui import metrics_tab

PREDICTIONS = [
    {"id": "a", "question": "What is OPTIMIZE?", "reference": "It compacts files.", "base_answer": "A command.",
     "tuned_answer": "It compacts small files.", "rougeL_base": 0.2, "rougeL_tuned": 0.7, "rougeL_change": 0.5},
    {"id": "b", "question": "What is VACUUM?", "reference": "It removes old files.", "base_answer": "It removes files.",
     "tuned_answer": "A vacuum cleaner.", "rougeL_base": 0.6, "rougeL_tuned": 0.1, "rougeL_change": -0.5},
    {"id": "c", "question": "How do I time travel?", "reference": "Use VERSION AS OF.", "base_answer": "Use AS OF.",
     "tuned_answer": "Use VERSION AS OF.", "rougeL_base": 0.5, "rougeL_tuned": 1.0, "rougeL_change": 0.5},
]


def scored_run(run_id="20250101-000000-view", leaked=False):
    folder = paths.runs_dir() / run_id
    folder.mkdir(parents=True)
    RunConfig().save(folder / "config.yaml")
    runs.write_status(run_id, state="completed")
    base = {"perplexity": 27.18, "rouge1": 0.340, "rouge2": 0.111, "rougeL": 0.188, "bleu": 0.0655}
    tuned = {"perplexity": 11.12, "rouge1": 0.388, "rouge2": 0.202, "rougeL": 0.254, "bleu": 0.0567}
    metrics = {"base": base, "tuned": tuned, "eval_examples": 3, "answer_tokens": 40, "model": "m",
               "change_pct": {k: (tuned[k] - base[k]) / base[k] * 100 for k in base},
               "leakage": {"flagged": leaked, "message": "LEAKAGE: 1 of 3 evaluation rows ..." if leaked else ""}}
    evaluate.write_results(folder, metrics, PREDICTIONS)
    return run_id


def test_summary_table_has_the_seed_layout_and_direction_of_change():
    run_id = scored_run()
    table = metrics_tab.summary_table(evaluate.read_metrics(run_id), run_id)
    assert list(table.columns) == ["Metric", "Base", "Fine-tuned", "Change %"]
    rows = {r["Metric"]: r for r in table.to_dict("records")}
    assert rows["Perplexity"]["Base"] == "27.18" and rows["Perplexity"]["Fine-tuned"] == "11.12"
    assert rows["Perplexity"]["Change %"] == "-59.1% (better)"  # lower perplexity is better
    assert rows["ROUGE-2"]["Change %"] == "+82.0% (better)"
    assert rows["BLEU"]["Change %"] == "-13.4% (worse)"
    assert rows["Blind-review win rate"]["Change %"].startswith("no votes yet")
    assert metrics_tab.summary_table(None).empty


def test_win_rate_row_reads_real_review_votes():
    run_id = scored_run()
    for n, (choice, left, right) in enumerate((("left", run_id, "base"), ("right", "base", run_id),
                                               ("left", "base", run_id))):
        reviews.record_vote("alice", f"q{n}?", left, right, "a", "b", choice)  # one vote per question
    row = metrics_tab.win_rate_row(run_id)  # 2 wins, 1 loss
    assert row[:3] == ["Blind-review win rate", "33%", "67%"] and "3 rated votes" in row[3]


def test_per_example_table_orders_regressions_first_and_searches_every_text_column():
    table = metrics_tab.examples_table(PREDICTIONS)
    assert table["Question"].tolist()[0] == "What is VACUUM?"  # the one regression
    assert table["ROUGE-L change"].tolist() == sorted(table["ROUGE-L change"].tolist())
    assert metrics_tab.examples_table(PREDICTIONS, order="Improvements first")["ROUGE-L change"].tolist()[0] == 0.5
    original = metrics_tab.examples_table(PREDICTIONS, order="Original order")
    assert original["Question"].tolist()[0] == "What is OPTIMIZE?"
    assert metrics_tab.examples_table(PREDICTIONS, "vacuum CLEANER")["Question"].tolist() == ["What is VACUUM?"]
    assert metrics_tab.examples_table(PREDICTIONS, "version as of")["Question"].tolist() == ["How do I time travel?"]
    assert metrics_tab.examples_table(PREDICTIONS, "no such text").empty


@pytest.mark.parametrize("fmt", ["CSV", "JSON"])
def test_export_writes_metrics_and_predictions(fmt):
    run_id = scored_run()
    metrics_file, predictions_file = metrics_tab.export_files(run_id, fmt)
    if fmt == "CSV":
        table = pd.read_csv(metrics_file)
        assert table.loc[table["metric"] == "Perplexity", "fine_tuned"].item() == 11.12
        assert pd.read_csv(predictions_file)["question"].tolist() == [p["question"] for p in PREDICTIONS]
    else:
        assert json.loads(open(metrics_file).read())["tuned"]["rougeL"] == 0.254
        assert json.loads(open(predictions_file).read()) == PREDICTIONS


def test_notices_empty_state_leakage_and_failed_evaluation():
    assert "No run has metrics yet" in metrics_tab.notice_html(None, None)
    leaked = scored_run("20250101-000001-leaked", leaked=True)
    assert "LEAKAGE" in metrics_tab.notice_html(leaked, evaluate.read_metrics(leaked))
    runs.write_status(leaked, eval_error="Evaluation ran out of memory. Lower eval.batch_size")
    assert "last evaluation failed" in metrics_tab.notice_html(leaked, evaluate.read_metrics(leaked))
    with pytest.raises(ValueError, match="evaluate it first"):
        folder = paths.runs_dir() / "20250101-000002-none"
        folder.mkdir()
        RunConfig().save(folder / "config.yaml")
        metrics_tab.export_files("20250101-000002-none", "CSV")
    assert "has no metrics yet" in metrics_tab.notice_html("20250101-000002-none", None)


@pytest.mark.parametrize("damage", [b'{"base": ', b"\xff\xfe not utf-8", b"[1, 2]", b'{"tuned": {}}'])
def test_a_damaged_metrics_file_is_named_not_shown_as_never_scored(damage):
    """A truncated, non-UTF-8 or foreign metrics.json: the tab says the file is damaged and how to rewrite it (not
    'no metrics yet', not a crash); the compare view and the export skip or refuse it the same way."""
    run_id = scored_run("20250101-000003-damaged")
    (paths.runs_dir() / run_id / "metrics.json").write_bytes(damage)
    assert evaluate.read_metrics(run_id) is None
    assert "metrics.json of run 20250101-000003-damaged is damaged" in evaluate.metrics_damage(run_id)
    notice = metrics_tab.notice_html(run_id, evaluate.read_metrics(run_id))
    assert "id='metrics-damaged'" in notice and "press <b>Evaluate</b>" in notice and "no metrics yet" not in notice
    with pytest.raises(ValueError, match="is damaged.*score the run again"):
        metrics_tab.export_files(run_id, "CSV")
    assert metrics_tab.compare_table([run_id]).empty
    fine = scored_run("20250101-000004-fine")
    assert evaluate.metrics_damage(fine) == "" and evaluate.predictions_damage(fine) == ""


@pytest.mark.parametrize("damage", [b'{"question": ', b"\xff\xfe", b"[1]\n"])
def test_damaged_predictions_keep_the_scores_and_say_why_the_examples_are_missing(damage):
    run_id = scored_run("20250101-000005-badpred")
    (paths.runs_dir() / run_id / "predictions.jsonl").write_bytes(damage)
    assert evaluate.read_predictions(run_id) == []
    notice = metrics_tab.notice_html(run_id, evaluate.read_metrics(run_id))
    assert "predictions.jsonl of run 20250101-000005-badpred is damaged" in notice
    assert metrics_tab.examples_table(evaluate.read_predictions(run_id)).empty
    with pytest.raises(ValueError, match="predictions.jsonl .* is damaged"):  # no half export
        metrics_tab.export_files(run_id, "JSON")


def test_compare_table_lists_scored_runs_only():
    a, b = scored_run("20250101-000003-a"), scored_run("20250101-000004-b", leaked=True)
    folder = paths.runs_dir() / "20250101-000005-unscored"
    folder.mkdir()
    RunConfig().save(folder / "config.yaml")
    table = metrics_tab.compare_table([a, b, "20250101-000005-unscored"])
    assert table["Run"].tolist() == [a, b] and table["Leakage"].tolist() == ["no", "YES"]
    choices, default = metrics_tab.run_choices()
    assert default == b and any("scored" in label for label, _ in choices)
