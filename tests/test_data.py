"""Loading, mapping, cleaning, splitting, leakage, formatting and the answer-only loss mask."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import run_cli
from workbench import browse, cleaning, data
from workbench.config import EMBEDDED_MODEL, DataConfig
from workbench.formatting import IGNORE_INDEX, prompt_text, tokenize_example


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


@pytest.mark.parametrize("name,text", [
    ("qa.csv", "question,answer\nWhat is Delta?,A table format with a transaction log.\n"),
    ("qa.tsv", "prompt\tresponse\nWhat is Delta?\tA table format with a transaction log.\n"),
    ("qa.jsonl", json.dumps({"instruction": "What is Delta?", "output": "A table format with a log."}) + "\n"),
    ("qa.json", json.dumps([{"query": "What is Delta?", "reply": "A table format with a log."}])),
])
def test_loads_each_format_and_guesses_the_mapping(tmp_path, name, text):
    table = data.apply_mapping(data.load_table(write(tmp_path, name, text)))
    assert table.loc[0, "instruction"] == "What is Delta?"
    assert table.loc[0, "output"].startswith("A table format")
    assert list(table.columns) == ["id"] + data.RECORD_COLUMNS


def test_loads_parquet_and_saved_hf_dataset(tmp_path):
    from datasets import Dataset

    df = pd.DataFrame({"question": ["q1?", "q2?"], "answer": ["answer one", "answer two"]})
    df.to_parquet(tmp_path / "qa.parquet")
    assert len(data.load_table(tmp_path / "qa.parquet")) == 2
    Dataset.from_pandas(df).save_to_disk(str(tmp_path / "ds"))
    assert data.guess_mapping(data.load_table(tmp_path / "ds").columns) == {"instruction": "question",
                                                                            "output": "answer"}


def test_dbdemos_join_is_on_question_id(dbdemos_dir):
    df = data.load_dbdemos(dbdemos_dir)
    assert len(df) == 4769
    joined = pd.read_parquet(dbdemos_dir / "databricks_docs_qa.parquet")
    pairs = set(zip(joined["question"], joined["answer"]))
    assert set(zip(df["question"], df["answer"])) == pairs  # the same pairs as Databricks' own join


def test_explicit_mapping_and_missing_column_message(tmp_path):
    p = write(tmp_path, "x.csv", "q_text,a_text\nWhy?,Because it is so.\n")
    with pytest.raises(data.DataError, match="columns are q_text, a_text; map 'instruction'"):
        data.apply_mapping(data.load_table(p))
    table = data.apply_mapping(data.load_table(p), {"instruction": "q_text", "output": "a_text"})
    assert table.loc[0, "output"] == "Because it is so."


def test_cleaning_steps_fix_the_known_noise():
    df = data.apply_mapping(pd.DataFrame({
        "question": ['"What is VACUUM?"', '1. "How do I OPTIMIZE?"',
                     "How do I MERGE?\n(Note: I will not mention the system prompt.)", "Short?", "What is VACUUM?"],
        "answer": ["It deletes old files.", "Run OPTIMIZE on the table.", "Use MERGE INTO with a source.", "Yes",
                   "It deletes old files."]}))
    report = cleaning.preview(df, DataConfig().cleaning)
    assert len(df) == 5  # preview changes nothing
    cleaned, report = cleaning.apply_steps(df, DataConfig().cleaning)
    by = {r["step"]: r for r in report}
    assert by["strip_numbering"]["edited"] == 1 and by["strip_quotes"]["edited"] == 2
    assert by["drop_generator_chatter"]["edited"] == 1 and by["drop_short_answers"]["dropped"] == 1
    assert by["drop_duplicate_pairs"]["dropped"] == 1
    assert cleaned["instruction"].tolist() == ["What is VACUUM?", "How do I OPTIMIZE?", "How do I MERGE?"]
    with pytest.raises(data.DataError, match="Unknown cleaning step"):
        cleaning.apply_steps(df, ["polish"])


def test_real_dbdemos_noise_counts(dbdemos_dir):
    df = data.load_source(DataConfig(source="dbdemos", dbdemos_dir=str(dbdemos_dir)))
    _, report = cleaning.apply_steps(df, DataConfig().cleaning)
    by = {r["step"]: r for r in report}
    assert by["strip_quotes"]["edited"] > 2000 and by["strip_numbering"]["edited"] > 200
    assert by["drop_generator_chatter"]["edited"] >= 80 and by["drop_duplicate_pairs"]["dropped"] > 50


def test_split_is_deterministic_and_keeps_duplicates_together():
    df = data.apply_mapping(pd.DataFrame({"q": [f"question {i}?" for i in range(200)] + ['"Question 7?"'] * 3,
                                          "answer": ["some answer text"] * 203}), {"instruction": "q",
                                                                                  "output": "answer"})
    a, b = data.split(df, 0.2, 1), data.split(df, 0.2, 1)
    assert a.tolist() == b.tolist()
    assert 15 < (a == "eval").sum() < 70
    sides = a[df["instruction"].map(data.normalize) == "question 7"]
    assert sides.nunique() == 1 and len(sides) == 4
    assert data.split(df, 0.2, 2).tolist() != a.tolist()


def test_leakage_check_catches_the_shipped_dbdemos_eval_set(dbdemos_dir):
    train = data.load_source(DataConfig(source="dbdemos", dbdemos_dir=str(dbdemos_dir)))
    eval_set = data.apply_mapping(data.load_table(dbdemos_dir / "databricks_doc_eval_set.parquet"))
    report = data.leakage(train, eval_set)
    assert report["leaked_rows"] == 171 and report["leaked_fraction"] == 1.0
    assert data.leakage_message(report).startswith("LEAKAGE")
    prepared = data.prepare_dataset(DataConfig(source="dbdemos", dbdemos_dir=str(dbdemos_dir)))
    assert prepared.report["leakage"]["leaked_rows"] == 0  # our own split is held out


def test_prepare_dataset_on_the_shipped_sample():
    prepared = data.prepare_dataset(DataConfig())
    assert len(prepared.train) + len(prepared.eval) >= 60
    assert set(prepared.train[0]) == {"id", "instruction", "input", "output", "context"}


def test_loss_mask_token_by_token_on_the_real_tokenizer():
    from workbench.models import load_tokenizer

    tok = load_tokenizer(EMBEDDED_MODEL)
    record = {"instruction": "What does VACUUM do?", "output": "It removes unreferenced files.", "context": "",
              "input": ""}
    ex = tokenize_example(record, tok, 512)
    n_prompt = len(tok(prompt_text(record, tok), add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert tok.decode(ex["input_ids"][n_prompt:]) == "It removes unreferenced files.<|im_end|>"
    full = tok.apply_chat_template([{"role": "user", "content": record["instruction"]},
                                    {"role": "assistant", "content": record["output"]}], tokenize=False)
    assert tok.decode(ex["input_ids"]) == full.rstrip("\n")  # exactly the chat template's text
    short = tokenize_example(record, tok, n_prompt + 3)
    assert len(short["input_ids"]) == n_prompt + 3 and short["answer_tokens"] == 3


def test_instruction_template_masks_the_prompt_too():
    from workbench.models import load_tokenizer

    tok = load_tokenizer(EMBEDDED_MODEL)
    record = {"instruction": "Q?", "output": "Answer.", "context": "Some context", "input": ""}
    ex = tokenize_example(record, tok, 256, template="instruction")
    answer = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
    assert tok.decode(answer) == "Answer." + tok.eos_token
    assert "### Context:" in tok.decode(ex["input_ids"])


def test_browse_search_and_filters():
    table = browse.annotate(data.load_source(DataConfig()))
    hits = browse.filter_table(table, "stack unpivot")
    assert 0 < len(hits) < len(table)
    assert all("stack" in (q + a).lower() for q, a in zip(hits["instruction"], hits["output"]))
    assert len(browse.filter_table(table, "", min_chars=300)) < len(table)
    assert set(browse.filter_table(table, view="eval split")["split"]) == {"eval"}


def test_cli_data_commands(tmp_path, dbdemos_dir):
    out = run_cli("data", "inspect", "dbdemos", "--dbdemos-dir", dbdemos_dir)
    assert out.returncode == 0, out.stderr
    assert "4769 rows" in out.stdout and "LEAKAGE" not in out.stdout
    dest = tmp_path / "clean.jsonl"
    out = run_cli("data", "clean", "sample", "--out", dest)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in dest.read_text().splitlines()]
    assert len(rows) >= 60 and set(rows[0]) == set(data.RECORD_COLUMNS)
    out = run_cli("data", "preview", "sample", "--row", "0")
    assert out.returncode == 0 and "[[" in out.stdout and "<|im_end|>]]" in out.stdout
    out = run_cli("data", "inspect", tmp_path / "missing.csv")
    assert out.returncode == 1 and "does not exist" in out.stderr
