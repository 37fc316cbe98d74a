"""Blind-review votes: the win rate and its interval, concurrent writers, restarts, the `reviews` command."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from contextlib import closing

import pytest

from conftest import REPO, run_cli
from workbench.evaluation import reviews

RUN = "20250101-000000-tuned"


_asked = iter(range(10**6))


def vote(choice, left="base", right=RUN, reviewer="ann", **kw):
    """One vote on a new question (one vote per reviewer, question and pair of models is the rule)."""
    return reviews.record_vote(reviewer, f"What is Delta? ({next(_asked)})", left, right, f"{left} says",
                               f"{right} says", choice, **kw)


def test_wilson_interval_matches_the_textbook_values():
    low, high = reviews.wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)
    low, high = reviews.wilson_interval(0, 5)
    assert low == 0.0 and 0.43 < high < 0.44
    assert reviews.wilson_interval(0, 0) is None


def test_win_rate_follows_the_hidden_mapping_and_counts_ties_as_half():
    vote("right")  # tuned on the right, chosen: win
    vote("left", left=RUN, right="base")  # tuned on the left, chosen: win
    vote("left")  # base chosen: loss
    vote("tie")
    vote("both_bad", left=RUN, right="base", comment="both wrong")
    vote("left", left=RUN, right="other-run")  # adapter vs adapter: not part of RUN vs base
    vote("left", left="base", right="other-run")
    result = reviews.win_rate(RUN)
    assert {k: result[k] for k in ("wins", "losses", "ties", "both_bad", "n", "rated")} == \
        {"wins": 2, "losses": 1, "ties": 1, "both_bad": 1, "n": 5, "rated": 4}
    assert result["win_rate"] == pytest.approx(2.5 / 4)
    low, high = reviews.wilson_interval(2.5, 4)
    assert (result["ci_low"], result["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert "half" in result["method"]
    head_to_head = reviews.win_rate(RUN, against="other-run")
    assert (head_to_head["wins"], head_to_head["n"]) == (1, 1)
    assert reviews.win_rate("never-reviewed")["win_rate"] is None
    assert "5 votes" in reviews.describe(result) and "62%" in reviews.describe(result)


def test_the_metrics_tab_reads_the_win_rate():
    from workbench.ui.metrics_tab import win_rate_row

    assert "no votes yet" in win_rate_row(RUN)[3]
    vote("right")
    vote("right")
    vote("left")
    label, base, tuned, votes = win_rate_row(RUN)
    low, high = reviews.wilson_interval(2, 3)
    assert (base, tuned, votes) == ("33%", "67%", f"3 rated votes, 95% CI {low:.0%}–{high:.0%}")


@pytest.mark.parametrize("kwargs,message", [
    (dict(choice="maybe"), "Unknown vote"), (dict(choice="left", reviewer="  "), "Reviewer box"),
    (dict(choice="left", left=RUN), "same model"), (dict(choice="left", reviewer="x" * 300), "under 200")])
def test_bad_votes_are_refused_with_a_reason(kwargs, message):
    with pytest.raises(reviews.ReviewError, match=message):
        vote(**kwargs)
    assert reviews.votes() == []


WRITER = """
import sys, threading
from workbench.evaluation import reviews
proc, threads, per_thread = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def work(t):
    for i in range(per_thread):
        reviews.record_vote(f"p{proc}-t{t}", f"q{i}", "base", sys.argv[4], "a", "b", "right", comment=str(i))
workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
[w.start() for w in workers]
[w.join() for w in workers]
"""


def test_concurrent_votes_from_processes_and_threads_all_survive_a_restart():
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(p), "4", "15", RUN], cwd=REPO, env=os.environ.copy(),
                              stderr=subprocess.PIPE, text=True) for p in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    # a new process, a new connection: every one of the 3 x 4 x 15 votes is there, each exactly once
    result = run_cli("reviews", "--run", RUN, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["wins"] == 180
    rows = reviews.votes(RUN)
    assert len({(r["reviewer"], r["question"]) for r in rows}) == 180 == len(rows)
    with closing(reviews.connect()) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_cli_prints_the_win_rate_and_exports_every_vote(tmp_path):
    assert "No votes yet" in run_cli("reviews").stdout
    vote("right", comment='says "hi", then, newline\nhere')
    vote("tie", left=RUN, right="base")
    vote("left", left="base", right="other-run")
    out = run_cli("reviews", "--run", RUN, "--export", tmp_path / "votes.csv")
    assert out.returncode == 0, out.stderr
    assert f"{RUN} vs the base model: 2 votes — 1 win, 0 losses, 1 tie" in out.stdout
    assert "75%" in out.stdout and "wrote 2 votes" in out.stderr
    with open(tmp_path / "votes.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["choice"] for r in rows] == ["right", "tie"]
    assert rows[0]["left_side"] == "base" and rows[0]["winner"] == RUN and rows[0]["comment"].endswith("newline\nhere")
    everything = run_cli("reviews", "--export", tmp_path / "all.csv")
    assert "other-run vs the base model: 1 vote" in everything.stdout
    with open(tmp_path / "all.csv", newline="", encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    bad = run_cli("reviews", "--run", "../../x")
    assert bad.returncode == 1 and "not a valid run id" in bad.stderr and "Traceback" not in bad.stderr


def test_a_damaged_review_store_is_named_left_untouched_and_breaks_no_view():
    """reviews.sqlite overwritten with other bytes: reading and voting refuse with the file named (not a bare
    sqlite error), the file keeps its bytes (nothing recreated over the votes it may still hold), the Chat tally and
    the Metrics row say the results are unavailable, and the CLI exits 1 with the message."""
    from workbench.ui import chat_tab, metrics_tab

    vote("right")
    damaged = b"this is not a database " * 200
    reviews.db_path().write_bytes(damaged)
    for wal in ("-wal", "-shm"):
        reviews.db_path().with_name(reviews.db_path().name + wal).unlink(missing_ok=True)
    with pytest.raises(reviews.ReviewError, match="review store .*reviews.sqlite is damaged"):
        reviews.votes(RUN)
    with pytest.raises(reviews.ReviewError, match="is damaged"):
        vote("left")
    assert reviews.db_path().read_bytes() == damaged
    assert "Blind-review results unavailable" in chat_tab.tally_text(RUN) and "is damaged" in chat_tab.tally_text(RUN)
    assert "unavailable" in metrics_tab.win_rate_row(RUN)[3]
    out = run_cli("reviews", "--run", RUN)
    assert out.returncode == 1 and "is damaged" in out.stderr and "Traceback" not in out.stderr
