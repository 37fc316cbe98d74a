"""Preference pairs: votes recorded through the real review API become pairs (duplicates and contradictions reported),
preference files load with the Q&A loader's checks, and too few pairs are refused with a clear message."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli
from workbench.evaluation import preferences, reviews

RUN = "20250101-000000-parent"
OTHER = "20250101-000001-other"


def vote(reviewer, question, choice, left=reviews.BASE, right=RUN, answers=None):
    left_answer, right_answer = answers or (f"{left} says: {question}", f"{right} says: {question}")
    return reviews.record_vote(reviewer, question, left, right, left_answer, right_answer, choice)


def test_preferring_votes_become_pairs_ties_and_both_bad_do_not():
    pending = reviews.pending_vote("What is Delta Lake?", (RUN, reviews.BASE), RUN, ("tuned answer", "base answer"))
    reviews.cast_vote(pending, "ana", "left")  # the real blind-review path: the tuned run was on the left
    vote("bo", "What is Delta Lake?", "right")  # another reviewer, base on the left: also prefers the run
    vote("ana", "What is a cluster?", "left")  # prefers the base model
    vote("ana", "What is Unity Catalog?", "tie")
    vote("ana", "What is MLflow?", "both_bad")
    vote("cy", "Unrelated", "left", left=reviews.BASE, right=OTHER)  # another run's vote
    report = preferences.pairs_from_votes(RUN)
    pairs = report["pairs"]
    assert report["skipped"] == {"tie": 1, "both_bad": 1} and report["n_candidates"] == 3
    assert len(pairs) == 3 and [p["id"] for p in pairs] == ["p0", "p1", "p2"]
    first = pairs[0]
    assert (first["prompt"], first["chosen"], first["rejected"]) == ("What is Delta Lake?", "tuned answer",
                                                                     "base answer")
    assert (first["reviewer"], first["chosen_side"], first["rejected_side"]) == ("ana", RUN, reviews.BASE)
    assert first["created_at"] and first["vote_id"] and first["source"] == "votes"
    assert (pairs[2]["chosen_side"], pairs[2]["rejected_side"]) == (reviews.BASE, RUN)
    # two reviewers agreeing on the same question and sides: a duplicate, reported (their texts differ: both train)
    assert len(report["duplicates"]) == 1 and {v["reviewer"] for v in report["duplicates"][0]["votes"]} == {"ana", "bo"}
    assert report["contradictions"] == [] and len(preferences.pairs_from_votes()["pairs"]) == 4


def test_contradictory_votes_are_left_out_and_listed_identical_agreeing_votes_count_once():
    same = ("the base answer", "the tuned answer")
    vote("ana", "Q1", "right", answers=same)
    vote("bo", "q1 ", "right", answers=same)  # the same question (normalized), identical texts, same preference
    vote("ana", "Q2", "right")
    vote("bo", "Q2", "left")  # opposite preference on the same question and sides
    vote("cy", "Q2", "right")
    vote("ana", "Q3", "left", answers=("same words", "Same words."))  # nothing to learn from
    report = preferences.pairs_from_votes(RUN)
    assert [p["prompt"] for p in report["pairs"]] == ["Q1"] and report["pairs"][0]["votes"] == 2
    assert len(report["contradictions"]) == 1 and report["excluded"] == 3
    group = report["contradictions"][0]
    assert group["prompt"] == "Q2" and sorted(group["sides"]) == sorted([reviews.BASE, RUN])
    assert sorted(v["chosen_side"] for v in group["votes"]) == sorted([reviews.BASE, RUN, RUN])
    assert report["identical"] == 1
    text = preferences.describe(report)
    assert "Contradiction, left out of training: 'Q2'" in text and "Duplicate: 2 preferring votes agree" in text
    assert "needs at least 8" in text


def test_readiness_refuses_below_the_minimum_and_warns_below_the_recommended():
    low = preferences.readiness(preferences.MIN_PAIRS - 1)
    assert not low["ok"] and low["level"] == "refuse" and f"at least {preferences.MIN_PAIRS}" in low["message"]
    mid = preferences.readiness(preferences.MIN_PAIRS)
    assert mid["ok"] and mid["level"] == "warn" and "too few to trust" in mid["message"]
    assert preferences.readiness(preferences.RECOMMENDED_PAIRS)["level"] == "ok"


def test_cli_exports_pairs_as_jsonl_and_reports(tmp_path):
    for i in range(3):
        vote(f"r{i}", f"Question {i}?", "right")
    vote("r0", "Question 0?", "left", left=reviews.BASE, right=OTHER)  # another comparison
    vote("r9", "Question 1?", "left")  # contradicts r1
    out = tmp_path / "pairs.jsonl"
    done = run_cli("reviews", "--run", RUN, "--pairs", out)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Question 0?", "Question 2?"]
    assert set(rows[0]) >= {"prompt", "chosen", "rejected", "reviewer", "chosen_side", "rejected_side", "created_at"}
    assert rows[0]["chosen_side"] == RUN and rows[0]["chosen"] == f"{RUN} says: Question 0?"
    assert "wrote 2 pairs" in done.stderr and "Contradiction" in done.stderr and "needs at least 8" in done.stderr
    against = run_cli("reviews", "--run", RUN, "--against", OTHER, "--json")
    assert against.returncode == 0 and json.loads(against.stdout)["n"] == 0
    bad = run_cli("reviews", "--run", "../etc", "--pairs", out)
    assert bad.returncode == 1 and "not a valid run id" in bad.stderr


def test_win_rate_of_a_run_against_another_run_uses_blind_sides():
    for i in range(4):
        left, right = reviews.blind_sides(RUN, OTHER)
        assert {left, right} == {RUN, OTHER}
        vote("ana", f"q{i}", "left" if left == RUN else "right", left=left, right=right)  # RUN always wins
    result = reviews.win_rate(RUN, against=OTHER)
    assert (result["wins"], result["losses"], result["win_rate"]) == (4, 0, 1.0)
    assert reviews.win_rate(OTHER, against=RUN)["win_rate"] == 0.0
    assert reviews.win_rate(RUN)["n"] == 0  # the votes against the other run are not votes against the base


# -- preference files -----------------------------------------------------------------------------

from workbench.data import preferences as prefdata  # noqa: E402
from workbench.data.loading import DataError  # noqa: E402


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_preference_file_loads_with_common_column_names_guessed(tmp_path):
    import pandas as pd

    rows = [{"question": f"Q{i}?", "preferred": f"good {i}", "loser": f"bad {i}"} for i in range(9)]
    rows.append({"question": "Q0?", "preferred": "bad 0", "loser": "good 0"})  # contradicts row 0
    rows.append({"question": "Q1?", "preferred": "good 1", "loser": "bad 1"})  # duplicate of row 1
    rows.append({"question": "Q9?", "preferred": None, "loser": "x"})  # empty chosen: skipped
    report = prefdata.load_preference_file(write_rows(tmp_path / "prefs.jsonl", rows))
    assert report["columns"] == {"prompt": "question", "chosen": "preferred", "rejected": "loser"}
    assert [p["prompt"] for p in report["pairs"]] == [f"Q{i}?" for i in range(1, 9)]
    assert report["pairs"][0]["votes"] == 2 and report["pairs"][0]["source"] == "file"
    assert len(report["contradictions"]) == 1 and report["skipped"] == {"empty": 1}
    assert "1 row with an empty prompt" in prefdata.describe(report)
    # the same rows as CSV and Parquet, and chat-style cells (lists of messages) as in Anthropic HH
    pd.DataFrame(rows[:9]).to_csv(tmp_path / "p.csv", index=False)
    assert len(prefdata.load_preference_file(tmp_path / "p.csv")["pairs"]) == 9
    chat = [{"prompt": "Q?", "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "yes"}],
             "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "no"}]}]
    pd.DataFrame(chat).to_parquet(tmp_path / "p.parquet")
    pair = prefdata.load_preference_file(tmp_path / "p.parquet")["pairs"][0]
    assert (pair["chosen"], pair["rejected"]) == ("yes", "no")
    mapped = write_rows(tmp_path / "m.jsonl", [{"q": "Q?", "a": "yes", "b": "no"}])
    assert prefdata.load_preference_file(mapped, {"prompt": "q", "chosen": "a", "rejected": "b"})["pairs"]


@pytest.mark.parametrize("content, message", [
    ('{"question": "q", "answer": "a"}\n', "no column for the chosen"),
    ("", r"empty \(0 bytes\)"),
    ('{"prompt": null, "chosen": NaN, "rejected": "r"}\n', "every row has an empty prompt"),
    (b"prompt,chosen,rejected\n\xff\xfe\x00bad\n", "binary"),
    ('{"prompt": "q", "chosen": {"a": 1}, "rejected": {"b": 2}}\n', "nested JSON"),
])
def test_bad_preference_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / ("bad.csv" if isinstance(content, bytes) else "bad.jsonl")
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(DataError, match=message):
        prefdata.load_preference_file(path)


def test_a_huge_preference_file_is_refused_and_the_app_reads_only_data_folders(tmp_path, monkeypatch):
    path = write_rows(tmp_path / "big.jsonl", [{"prompt": "q" * 400, "chosen": "c", "rejected": "r"}] * 3000)
    monkeypatch.setenv("WORKBENCH_MAX_UPLOAD_MB", "1")
    with pytest.raises(DataError, match="over the 1 MB limit"):
        prefdata.load_preference_file(path)
    with pytest.raises(DataError, match="Only files inside"):
        prefdata.load_preference_file(path, server=True)  # outside the data folders: refused for the app
    with pytest.raises(DataError, match="Only files inside"):
        prefdata.load_preference_file("/etc/passwd", server=True)
