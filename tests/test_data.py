"""Loading, column mapping, cleaning steps, the split and the leakage check on real files (pandas/pyarrow/datasets)."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.data import browse
from workbench.data import cleaning
from workbench.data import dataset as data
from workbench.config import DataConfig

PAIRS = [{"question": f"How do I use feature {i} in Databricks?",
          "answer": f"Feature {i} is enabled in the workspace settings; then call it from SQL or PySpark."}
         for i in range(40)]


def write_all_formats(tmp_path, rows, names=("question", "answer")) -> list:
    from datasets import Dataset

    df = pd.DataFrame(rows).rename(columns=dict(zip(("question", "answer"), names)))
    files = [tmp_path / "qa.csv", tmp_path / "qa.tsv", tmp_path / "qa.parquet", tmp_path / "qa.json",
             tmp_path / "qa.jsonl"]
    df.to_csv(files[0], index=False)
    df.to_csv(files[1], index=False, sep="\t")
    df.to_parquet(files[2])
    files[3].write_text(json.dumps(df.to_dict("records")), encoding="utf-8")
    df.to_json(files[4], orient="records", lines=True)
    Dataset.from_pandas(df).save_to_disk(str(tmp_path / "hf_dataset"))
    return files + [tmp_path / "hf_dataset"]


def test_every_format_loads_to_the_same_records(tmp_path):
    tables = [data.apply_mapping(data.load_table(f)) for f in write_all_formats(tmp_path, PAIRS)]
    expected = [p["question"] for p in PAIRS]
    for t in tables:
        assert t["instruction"].tolist() == expected
        assert t["output"].tolist() == [p["answer"] for p in PAIRS]
        assert list(t.columns) == ["id"] + data.RECORD_COLUMNS


@pytest.mark.parametrize("names, expected", [
    (("question", "answer"), {"instruction": "question", "output": "answer"}),
    (("prompt", "response"), {"instruction": "prompt", "output": "response"}),
    (("instruction", "output"), {"instruction": "instruction", "output": "output"}),
    (("request", "expected_response"), {"instruction": "request", "output": "expected_response"}),
    (("Query", "Reply"), {"instruction": "Query", "output": "Reply"}),
])
def test_mapping_guesses_common_column_names(names, expected):
    assert data.guess_mapping(list(names) + ["unrelated"]) == expected


def test_mapping_guess_for_the_dbdemos_eval_set_includes_context():
    cols = ["tag", "expected_retrieved_context", "request", "request_id", "expected_response"]
    assert data.guess_mapping(cols) == {"instruction": "request", "output": "expected_response",
                                        "context": "expected_retrieved_context"}


def test_explicit_mapping_and_missing_column_message(tmp_path):
    f = tmp_path / "odd.csv"
    pd.DataFrame({"ask": ["What is Delta?"], "say": ["A table format with a transaction log."]}).to_csv(f, index=False)
    raw = data.load_table(f)
    with pytest.raises(data.DataError, match=r"No column for the questions: columns are ask, say; map 'instruction'"):
        data.apply_mapping(raw)
    t = data.apply_mapping(raw, {"instruction": "ask", "output": "say"})
    assert t.loc[0, "instruction"] == "What is Delta?"
    with pytest.raises(data.DataError, match=r"Column 'nope' not found; columns are ask, say"):
        data.apply_mapping(raw, {"instruction": "nope", "output": "say"})


def test_dbdemos_join_is_on_question_id_not_id(dbdemos_dir):
    df = data.load_dbdemos(dbdemos_dir)
    assert len(df) == 4769
    q = pd.read_parquet(dbdemos_dir / "training_dataset_question.parquet")
    a = pd.read_parquet(dbdemos_dir / "training_dataset_answer.parquet")
    assert len(q.merge(a, on="id")) < 4700  # the wrong join loses rows (and pairs the wrong answers)
    joined = pd.read_parquet(dbdemos_dir / "databricks_docs_qa.parquet")  # the reference join shipped with them
    ours = dict(zip(df["source_id"], df["answer"]))
    assert all(ours[i] == ans for i, ans in zip(joined["id"], joined["answer"]))


def table(pairs):
    return data.apply_mapping(pd.DataFrame(pairs, columns=["question", "answer"]))


def test_each_cleaning_step_reports_counts_and_before_after():
    long = "A long enough answer about Delta tables and their log."
    df = table([
        ['"What is Delta Lake?"', long],
        ["1. How do I vacuum a table?", long],
        ["What is a catalog?\n(Note: I will not mention the system prompt.)", long],
        ["What is Photon?\nPhoton is a vectorized engine written in C++.", long],
        ["What is DBFS?", "A file API."],
        ["What is Delta Lake?", long],
        ["What is Delta Lake?", long + " More."],
    ])
    cleaned, report = cleaning.apply_steps(df, ["strip_numbering", "strip_quotes", "drop_generator_chatter",
                                                "drop_short_answers", "drop_duplicate_pairs",
                                                "drop_duplicate_questions"])
    by = {r["step"]: r for r in report}
    assert by["strip_numbering"]["edited"] == 1
    assert by["strip_numbering"]["examples"][0]["after"] == "How do I vacuum a table?"
    assert by["strip_quotes"]["edited"] == 1 and by["strip_quotes"]["examples"][0]["after"] == "What is Delta Lake?"
    assert by["drop_generator_chatter"]["edited"] == 2
    assert {e["after"] for e in by["drop_generator_chatter"]["examples"]} == {"What is a catalog?", "What is Photon?"}
    assert by["drop_short_answers"]["dropped"] == 1
    assert by["drop_duplicate_pairs"]["dropped"] == 1
    assert by["drop_duplicate_questions"]["dropped"] == 1
    assert cleaned["instruction"].tolist() == ["What is Delta Lake?", "How do I vacuum a table?", "What is a catalog?",
                                               "What is Photon?"]


def test_preview_does_not_change_the_table_and_matches_apply(dbdemos_dir):
    df = data.apply_mapping(data.load_dbdemos(dbdemos_dir))
    before = df.copy()
    steps = list(DataConfig().cleaning)
    preview = cleaning.preview(df, steps)
    pd.testing.assert_frame_equal(df, before)
    _, applied = cleaning.apply_steps(df, steps)
    assert [(r["edited"], r["dropped"]) for r in preview] == [(r["edited"], r["dropped"]) for r in applied]
    counts = {r["step"]: r for r in preview}
    assert counts["strip_quotes"]["edited"] > 2000  # about half the questions are quoted (PROVENANCE.md)
    assert counts["drop_generator_chatter"]["edited"] == 85  # the 85 multi-line questions
    assert counts["drop_duplicate_pairs"]["dropped"] > 50
    with pytest.raises(data.DataError, match="Unknown cleaning step"):
        cleaning.apply_steps(df, ["strip_quotes", "remove_everything"])


def test_split_is_deterministic_and_keeps_duplicate_questions_together():
    rows = [[f"Question number {i}?", f"Answer {i} is long enough to keep."] for i in range(300)]
    rows += [[f'"question NUMBER {i}?"', f"Another answer {i} that is long enough."] for i in range(0, 300, 7)]
    df = table(rows)
    a, b = data.split(df, 0.2, 7), data.split(df, 0.2, 7)
    assert a.tolist() == b.tolist()
    assert 30 < (a == "eval").sum() < 90
    sides_by_question = pd.DataFrame({"q": df["instruction"].map(data.normalize), "side": a}).groupby("q")["side"]
    assert (sides_by_question.nunique() == 1).all()
    assert data.split(df, 0.2, 8).tolist() != a.tolist()  # the seed matters


def test_rows_sharing_an_answer_stay_together_so_the_split_cannot_leak(dbdemos_dir):
    shared = "Run VACUUM to remove files that are no longer referenced by the table."
    rows = [[f"Question {i} about something?", f"Unique answer number {i} with enough text."] for i in range(200)]
    rows += [[f"How do I clean up old files, variant {i}?", shared] for i in range(12)]
    df = table(rows)
    for seed in range(5):
        sides = data.split(df, 0.3, seed)
        assert sides.iloc[200:].nunique() == 1  # twelve different questions, one answer: one side
    dbd = data.apply_mapping(data.load_dbdemos(dbdemos_dir))  # 106 repeated answers, no cleaning at all
    sides = data.split(dbd, 0.1, 42)
    assert data.leakage(dbd[sides == "train"], dbd[sides == "eval"])["leaked_rows"] == 0


def test_prepare_dataset_contract_and_caps(dbdemos_dir):
    cfg = DataConfig(source="dbdemos", dbdemos_dir=str(dbdemos_dir), max_train_examples=50, max_eval_examples=10)
    p1, p2 = data.prepare_dataset(cfg), data.prepare_dataset(cfg)
    assert p1.train == p2.train and p1.eval == p2.eval
    assert len(p1.train) == 50 and len(p1.eval) == 10
    assert set(p1.train[0]) == {"id", "instruction", "input", "output", "context"}
    assert p1.report["rows_loaded"] == 4769 and p1.report["leakage"]["leaked_rows"] == 0
    assert [s["step"] for s in p1.report["cleaning"]] == list(cfg.cleaning)
    assert not {r["id"] for r in p1.train} & {r["id"] for r in p1.eval}


def test_sample_source_prepares():
    p = data.prepare_dataset(DataConfig())
    assert len(p.train) + len(p.eval) == p.report["rows_after_cleaning"] == 78
    assert p.eval and p.report["leakage"]["leaked_rows"] == 0


def test_leakage_check_catches_the_shipped_eval_set(dbdemos_dir):
    train = data.apply_mapping(data.load_dbdemos(dbdemos_dir))
    eval_set = data.apply_mapping(data.load_table(dbdemos_dir / "databricks_doc_eval_set.parquet"))
    report = data.leakage(train, eval_set)
    assert report["eval_rows"] == 171 and report["leaked_rows"] == 171 and report["answer_overlap"] == 171
    assert data.leakage_message(report).startswith("LEAKAGE: 171 of 171 evaluation rows (100%)")


def test_leakage_sees_through_quotes_numbering_and_case():
    train = table([['"1. What is Unity Catalog?"', "The governance layer for data and AI on Databricks."]])
    eval_ = table([["what is unity catalog", "Something else entirely, written differently."],
                   ["What is a lakehouse?", "An architecture that joins lakes and warehouses."]])
    r = data.leakage(train, eval_)
    assert (r["question_overlap"], r["answer_overlap"], r["leaked_rows"]) == (1, 0, 1)
    assert "No leakage" in data.leakage_message(data.leakage(eval_.iloc[1:], train))


def test_browse_search_filters_and_stats(dbdemos_dir):
    t = browse.annotate(data.apply_mapping(data.load_dbdemos(dbdemos_dir)))
    hits = browse.filter_table(t, "Unity CATALOG")
    assert 0 < len(hits) < len(t)
    text = (hits["instruction"] + hits["output"] + hits["context"]).str.lower()
    assert text.str.contains("unity").all() and text.str.contains("catalog").all()
    short = browse.filter_table(t, "", 0, 100)
    assert len(short) and (short["a_chars"] <= 100).all()
    assert browse.filter_table(t, view="duplicates")["duplicate"].all()
    assert set(browse.filter_table(t, view="eval split")["split"]) == {"eval"}
    assert browse.filter_table(t, view="flagged by cleaning")["flagged"].all()
    stats = browse.char_stats(t)
    assert stats["rows"] == 4769 and stats["answer_chars"]["max"] > 20000
