"""The degenerate-answer (looping) detector and where its flag is stored: pure functions, no model."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.evaluation import evaluate, scoring

SAMPLE = Path(__file__).resolve().parent.parent / "workbench" / "sample_data" / "databricks_sql_pyspark_qa.jsonl"

# Tuned answers the old quick-demo-cpu recipe produced (issue 13 item 11), cut where max_new_tokens cut them.
OBSERVED_LOOPS = [
    "Use df.query_plan.plan_mode.plan_mode.plan_mode.plan_mode.plan_mode.plan_mode.plan_mode.plan_mode.plan",
    "Use the following: df.drop_columns('id').drop_columns('id').drop_columns('id').drop_columns('id').drop_col",
    "Write a schema with a new schema that only contains the same columns. Use the schema_schema_schema_schema_"
    "schema_schema_schema_sc",
    "Use df.drop('table_name', on='column_name').table_name.table_name.table_name.table_name.table_name",
]


@pytest.mark.parametrize("text", OBSERVED_LOOPS)
def test_observed_loops_are_flagged(text):
    assert scoring.is_looping(text)


def test_the_repeated_stretch_and_count_are_reported():
    piece, repeats = scoring.looping_span("Use df.plan_mode.plan_mode.plan_mode.plan_mode.")
    assert piece.strip(".") == "plan_mode"
    assert repeats >= 3.5


def test_a_sentence_said_three_times_loops_even_when_the_last_one_is_cut_off():
    assert scoring.is_looping("It is used to merge. It is used to merge. It is used to me")


@pytest.mark.parametrize("text", [
    "",
    "Use the stack function.",
    # a command said twice is not a loop
    "df.drop('table_name', on='column_name') drops the table. df.drop('table_name', on='column_name') is safe.",
    # near-repeats with different words are not a loop
    "MERGE INTO is used to merge a list of records into a single table. It is used to merge a list of records "
    "into a single table, which is useful when you upsert.",
    # punctuation rules and short repeats are not loops
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "=" * 60 + " done",
    "SELECT 1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    "ha ha ha",
])
def test_fluent_or_merely_repetitive_text_is_not_flagged(text):
    assert not scoring.is_looping(text)


def test_no_shipped_reference_answer_is_flagged():
    answers = [json.loads(line)["answer"] for line in SAMPLE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(answers) > 50
    assert [a for a in answers if scoring.is_looping(a)] == []


def test_whitespace_between_repeats_does_not_hide_a_loop():
    assert scoring.is_looping("SELECT *\nFROM t\n" + "UNION ALL SELECT * FROM t\n   " * 4)


def test_loop_share():
    assert scoring.loop_share([]) == 0.0
    assert scoring.loop_share(["fine answer", OBSERVED_LOOPS[0], "another fine one", OBSERVED_LOOPS[1]]) == 0.5


def test_prediction_rows_carry_a_looping_flag_per_answer():
    records = [{"id": "a", "instruction": "q1", "output": "r1"}, {"id": "b", "instruction": "q2", "output": "r2"}]
    base = {"answers": ["A fine answer.", OBSERVED_LOOPS[2]], "per_example_rougeL": [0.1, 0.2],
            "per_example_nll": [1.0, 2.0]}
    tuned = {"answers": [OBSERVED_LOOPS[0], "Another fine answer."], "per_example_rougeL": [0.3, 0.4],
             "per_example_nll": [0.5, 0.6]}
    rows = evaluate.prediction_rows(records, base, tuned)
    assert [(r["base_looping"], r["tuned_looping"]) for r in rows] == [(False, True), (True, False)]
    assert all(isinstance(r["tuned_looping"], bool) for r in rows)  # plain JSON booleans in predictions.jsonl
