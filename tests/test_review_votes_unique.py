"""One vote per reviewer, question and pair of models, enforced by SQLite itself: racing processes, and a database
from before the rule (its duplicates are kept aside, not lost)."""
from __future__ import annotations

import multiprocessing
import sqlite3
from contextlib import closing

import pytest

from workbench.evaluation import reviews

RUN = "20250101-000000-tuned"
QUESTION = "How do I vacuum a Delta table?"


def _race(barrier, results, reviewer):
    barrier.wait()  # all eight vote at the same moment
    try:
        results.put(("ok", reviews.record_vote(reviewer, QUESTION, "base", RUN, "base says", "tuned says", "right")))
    except reviews.ReviewError as e:
        results.put(("refused", str(e)))


def test_eight_racing_processes_store_one_vote_and_the_rest_are_told_why():
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(barrier, results, "ann")) for _ in range(8)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    stored = [o for o in outcomes if o[0] == "ok"]
    refused = [o[1] for o in outcomes if o[0] == "refused"]
    assert len(stored) == 1 and len(refused) == 7, outcomes
    assert all(f"vote #{stored[0][1]}" in m and "ask another question" in m for m in refused), refused
    assert [v["id"] for v in reviews.votes(RUN)] == [stored[0][1]]


def test_the_rule_is_per_reviewer_question_and_pair_of_models():
    reviews.record_vote("ann", QUESTION, "base", RUN, "a", "b", "left")
    with pytest.raises(reviews.ReviewError, match="already voted on this question"):
        reviews.record_vote("ann", QUESTION, RUN, "base", "b", "a", "tie")  # same pair, sides swapped
    reviews.record_vote("bob", QUESTION, "base", RUN, "a", "b", "right")  # another reviewer
    reviews.record_vote("ann", QUESTION, "base", "other-run", "a", "c", "right")  # another comparison
    reviews.record_vote("ann", QUESTION + " (again)", "base", RUN, "a", "b", "right")  # another question
    assert len(reviews.votes()) == 4
    with closing(reviews.connect()) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO votes (created_at, reviewer, question, left_side, right_side, left_answer, "
                     "right_answer, choice, pair) VALUES ('t', 'bob', ?, 'base', ?, '', '', 'tie', ?)",
                     (QUESTION, RUN, "|".join(sorted(("base", RUN)))))  # the database refuses, not just the code


OLD_SCHEMA = """
CREATE TABLE votes (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, reviewer TEXT NOT NULL,
    question TEXT NOT NULL, left_side TEXT NOT NULL, right_side TEXT NOT NULL, left_answer TEXT NOT NULL,
    right_answer TEXT NOT NULL, choice TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '',
    base_model TEXT NOT NULL DEFAULT '', settings TEXT NOT NULL DEFAULT '{}');
"""


def test_a_database_from_before_the_rule_is_migrated_keeping_its_duplicates_aside():
    reviews.db_path().parent.mkdir(parents=True, exist_ok=True)
    with closing(sqlite3.connect(reviews.db_path())) as old:
        old.executescript(OLD_SCHEMA)
        rows = [("ann", "base", RUN, "right"), ("ann", RUN, "base", "left"), ("ann", "base", RUN, "tie"),
                ("bob", "base", RUN, "left")]
        old.executemany("INSERT INTO votes (created_at, reviewer, question, left_side, right_side, left_answer, "
                        "right_answer, choice) VALUES ('t', ?, 'q', ?, ?, 'a', 'b', ?)", rows)
        old.commit()
    kept = reviews.votes()
    assert [(v["id"], v["reviewer"], v["choice"]) for v in kept] == [(1, "ann", "right"), (4, "bob", "left")]
    with closing(reviews.connect()) as conn:
        aside = [tuple(r) for r in conn.execute("SELECT id, choice FROM duplicate_votes ORDER BY id")]
        assert aside == [(2, "left"), (3, "tie")]
        assert conn.execute("PRAGMA user_version").fetchone()[0] == reviews.SCHEMA_VERSION
    with pytest.raises(reviews.ReviewError, match="vote #1"):
        reviews.record_vote("ann", "q", "base", RUN, "a", "b", "left")
    assert reviews.record_vote("cy", "q", "base", RUN, "a", "b", "left") == 5


def test_a_new_database_busy_in_another_process_is_waited_for_not_a_lost_vote(tmp_path):
    """Seen in CI: eight first votes at once on a new database, and one process failed with 'database is locked'
    from the switch to WAL mode, which SQLite refuses at once (no busy wait) while another connection holds the
    database. A vote now waits for it like for any other write."""
    import threading

    path = tmp_path / "reviews.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")
    release = threading.Timer(1.0, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        with closing(reviews.connect(path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        release.join()
        holder.close()
