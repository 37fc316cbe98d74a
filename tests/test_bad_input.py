"""Malformed inputs: each gets a DataError naming the problem and the fix; nothing crashes; the file is untouched."""
from __future__ import annotations

import hashlib
import json
import re
import os

import pandas as pd
import pytest

import gradio as gr

from conftest import run_cli
from workbench.data import dataset as data
from workbench.config import DataConfig

GOOD = "question,answer\nWhat is Delta Lake?,A storage format with a transaction log.\n"


def _text(name, body, encoding="utf-8"):
    def make(tmp):
        p = tmp / name
        p.write_bytes(body if isinstance(body, bytes) else body.encode(encoding))
        return p
    return make


def _sparse_200mb(tmp):
    p = tmp / "huge.csv"
    with p.open("wb") as fh:
        fh.truncate(200 * 1024 * 1024)  # sparse: instant, takes no disk
    return p


def _empty_parquet(tmp):
    p = tmp / "empty.parquet"
    pd.DataFrame({"question": pd.Series([], dtype=str), "answer": pd.Series([], dtype=str)}).to_parquet(p)
    return p


def _not_a_dataset(tmp):
    (tmp / "folder").mkdir()
    (tmp / "folder" / "notes.txt").write_text("hello")
    return tmp / "folder"


def _broken_hf_dataset(tmp):
    (tmp / "ds").mkdir()
    (tmp / "ds" / "dataset_info.json").write_text("{not json")
    return tmp / "ds"


def _dbdemos_half(tmp):
    (tmp / "dbd").mkdir()
    pd.DataFrame({"id": [1], "question": ["q?"]}).to_parquet(tmp / "dbd" / "training_dataset_question.parquet")
    return tmp / "dbd"


def _dir_named_csv(tmp):
    (tmp / "looks.csv").mkdir()
    return tmp / "looks.csv"


CASES = {  # name: (make file -> path, what the message must say)
    "empty file": (_text("empty.csv", b""), r"is empty \(0 bytes\); choose a file"),
    "header only": (_text("header.csv", "question,answer\n"), r"has columns \(question, answer\) but no rows"),
    "wrong columns": (_text("wrong.csv", "foo,bar\n1,2\n"), r"No column for the questions: columns are foo, bar; map"),
    "duplicate columns": (_text("dup.csv", "question,question,answer\na?,b?,c\n"),
                          r"duplicate column names \['question'\]; rename them"),
    "binary junk as csv": (_text("junk.csv", bytes(range(256)) * 20), r"looks binary .*check that it is the right"),
    "text named parquet": (_text("fake.parquet", GOOD), r"is not a Parquet file .*re-export it"),
    "truncated parquet": (_text("cut.parquet", b"PAR1" + b"\x01\x02" * 50), r"could not be read as Parquet .*re-export"),
    "nested json": (_text("nested.jsonl", json.dumps({"question": {"text": "q?", "lang": "en"}, "answer": "an answer"})
                          + "\n"), r"Column 'question' holds nested JSON \(objects with keys text, lang\).*flatten"),
    "200 MB file": (_sparse_200mb, r"is 210 MB, over the 100 MB limit; split it .*WORKBENCH_MAX_UPLOAD_MB"),
    "parquet with no rows": (_empty_parquet, r"but no rows; add Q&A rows"),
    "folder that is not a dataset": (_not_a_dataset, r"is not a dataset: no saved Hugging Face dataset"),
    "broken saved dataset": (_broken_hf_dataset, r"looks like a saved Hugging Face dataset but could not be loaded"),
    "dbdemos folder missing answers": (_dbdemos_half, r"could not be read|dbdemos files are not in"),
    "folder named .csv": (_dir_named_csv, r"is not a dataset"),
    "missing path": (lambda tmp: tmp / "nope.csv", r"does not exist; check the path"),
    "traversal-ish path": (lambda tmp: tmp / ".." / ".." / ".." / ".." / ".." / ".." / "etc" / "passwd",
                           r"unsupported file type 'none'; use \.csv"),
    "NUL in the path": (lambda tmp: str(tmp / "a\x00b.csv"), r"contains a NUL character"),
    "empty path": (lambda tmp: "  ", r"No data source given"),
    "spreadsheet": (_text("book.xlsx", b"PK\x03\x04 zip"), r"unsupported file type '\.xlsx'; use \.csv"),
    "bad JSONL line": (_text("bad.jsonl", '{"question": "a?", "answer": "b"}\n{"question": "c?", "answer": "d"}\n{oops\n'),
                       r"line 3 is not valid JSON .*each line must be one object"),
    "JSON list of strings": (_text("strs.json", '["what?", "why?"]'), r"expected a list of objects .*found str items"),
    "JSON scalar": (_text("num.json", "42"), r"not JSON records; use a list of objects"),
    "whitespace JSON": (_text("blank.json", "  \n\n "), r"holds only whitespace"),
    "broken JSON array": (_text("arr.json", '[{"question": "a?", "answer": "b"},\n'), r"invalid JSON at line \d"),
    "JSON object without records": (_text("obj.json", '{\n "name": "x",\n "count": 2\n}'),
                                    r"single JSON object without one list of records"),
    "unclosed CSV quote": (_text("quote.csv", 'question,answer\n"unterminated,answer\nWhat?,Yes\n'),
                           r"could not be parsed as CSV .*check quoting"),
    "ragged CSV rows": (_text("ragged.csv", "question,answer\na?,b,c,d,e\nf?,g\n"),
                        r"could not be parsed as CSV .*same number of fields"),
    "not UTF-8 nor cp1252": (_text("bytes.csv", b"question,answer\nwhat\x81?,answer \x8d here\n"),
                             r"is not UTF-8 text .*save it as UTF-8"),
    "all answers empty": (_text("noans.csv", "question,answer\nwhat?,\nwhy?,\n"),
                          r"Every row has an empty question or answer .*check the column mapping"),
}


def load_mapped(path):
    return data.apply_mapping(data.load_table(path))


def fingerprint(p):
    p = str(p)
    if "\x00" in p or not os.path.isfile(p):
        return None
    st = os.stat(p)
    with open(p, "rb") as fh:
        head = fh.read(1 << 20)
    return st.st_mtime_ns, st.st_size, hashlib.sha256(head).hexdigest()


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_malformed_input_gets_a_clear_message_and_is_left_alone(tmp_path, case):
    make, message = CASES[case]
    path = make(tmp_path)
    before = fingerprint(path)
    with pytest.raises(data.DataError, match=message) as err:
        load_mapped(path)
    assert len(str(err.value)) < 600 and "Traceback" not in str(err.value)
    assert fingerprint(path) == before


def test_size_limit_is_configurable_and_never_reads_the_big_file(tmp_path, monkeypatch):
    big = _sparse_200mb(tmp_path)
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "500")
    with pytest.raises(data.DataError, match="looks binary"):  # past the size check; only the head was read
        data.load_table(big)
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "lots")
    with pytest.raises(data.DataError, match="WORKBENCH_MAX_UPLOAD_MB='lots' is not a number"):
        data.load_table(big)


def test_latin1_csv_is_decoded_and_says_so(tmp_path):
    p = _text("latin.csv", "question,answer\nQu'est-ce qu'un café?,Un résumé long de la réponse.\n", "latin-1")(tmp_path)
    raw = data.load_table(p)
    assert raw.attrs["encoding"] == "cp1252"
    assert data.apply_mapping(raw).loc[0, "instruction"] == "Qu'est-ce qu'un café?"


def test_mixed_types_none_and_nan_cells_become_text_or_are_skipped(tmp_path):
    rows = [{"question": "What is 6 x 7?", "answer": 42}, {"question": "Is Delta ACID?", "answer": True},
            {"question": "Which formats?", "answer": ["delta", "parquet"]}, {"question": None, "answer": "orphan"},
            {"question": "Unanswered?", "answer": None}, {"question": 3.5, "answer": "a number as a question"}]
    p = tmp_path / "mixed.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    t = load_mapped(p)
    assert t["output"].tolist() == ["42", "True", '["delta", "parquet"]', "a number as a question"]
    assert t.attrs["empty_rows_dropped"] == 2
    csv = _text("nan.csv", "question,answer\nWhat?,NaN\nNA,n/a\nHow?,Like this.\n")(tmp_path)
    assert load_mapped(csv)["instruction"].tolist() == ["How?"]


def test_wrapped_json_object_with_one_list_of_records_loads(tmp_path):
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"version": 1, "data": [{"prompt": "What is MLflow?", "response": "An ML lifecycle tool."}]},
                            indent=2), encoding="utf-8")
    assert load_mapped(p).loc[0, "output"] == "An ML lifecycle tool."


def test_prepare_dataset_says_when_cleaning_or_the_split_leaves_nothing(tmp_path):
    p = _text("tiny.csv", "question,answer\nWhat is it?,ok\n")(tmp_path)
    with pytest.raises(data.DataError, match="Cleaning removed every row; turn off some cleaning steps"):
        data.prepare_dataset(DataConfig(source=str(p)))
    with pytest.raises(data.DataError, match=r"The split left \d training and \d evaluation rows of \d; a run needs "
                       r"at least one of each: use more data, or change the share held out for evaluation "
                       r"\(data.eval_fraction, now"):
        data.prepare_dataset(DataConfig(source=str(p), cleaning=[]))


@pytest.mark.parametrize("case", ["binary junk as csv", "200 MB file", "duplicate columns", "nested json"])
def test_cli_prints_one_error_line_and_exits_1(tmp_path, case):
    path = CASES[case][0](tmp_path)
    before = fingerprint(path)
    out = run_cli("data", "inspect", path)
    assert out.returncode == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    assert fingerprint(path) == before


def test_ui_load_handler_never_raises_and_keeps_the_current_data(tmp_path):
    from workbench import paths
    from workbench.ui import data_tab

    state, *_ = data_tab._load("sample (shipped)", "", None, data_tab._empty_state())
    state, *_ = data_tab._apply_mapping(state, "question", "answer", "", "")
    for case, (make, message) in CASES.items():
        if case in ("all answers empty", "wrong columns", "nested json"):
            continue  # these load as tables; the mapping step reports them (checked below)
        folder = paths.data_dir() / case.replace(" ", "_")  # the UI opens files only inside the data folders
        folder.mkdir()
        path = make(folder)
        new_state, msg, *_ = data_tab._load("file path", str(path), None, state)
        expected = "Only files inside" if case == "traversal-ish path" else message  # '..' leads out of the folder
        assert "wb-error" in msg and "still shown" in msg and re.search(expected, msg), (case, msg)
        assert new_state["table"] is state["table"] and not new_state["pending"]
    outside = tmp_path / "outside.csv"
    outside.write_text(GOOD)
    _, msg, *_ = data_tab._load("file path", str(outside), None, state)
    assert "Only files inside" in msg and "WORKBENCH_DATA_ROOTS" in msg
    bad = CASES["wrong columns"][0](paths.data_dir())
    new_state, msg, *_ = data_tab._load("file path", str(bad), None, state)
    assert new_state["table"] is state["table"]  # the table on screen stays until a mapping applies
    with pytest.raises(gr.Error, match="No column for the questions"):
        data_tab._apply_mapping(new_state, "", "", "", "")
    _, msg, *_ = data_tab._load("upload", "", None, state)
    assert "No file uploaded yet" in msg
