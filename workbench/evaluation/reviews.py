"""Blind A/B review votes in SQLite, and the fine-tuned model's win rate over the base model.

One file, `data_dir()/reviews.sqlite`, in WAL mode: every vote opens its own connection and writes in
its own short transaction (with a busy timeout), so several reviewers voting at once lose nothing and
votes survive restarts. A vote stores which model was on which side (the mapping hidden from the
reviewer), the question, both answers, the settings and the time. The database itself allows one vote per
reviewer, question and pair of models (a UNIQUE index), so racing clicks cannot count a judgment twice.
"""
from __future__ import annotations

import csv
import json
import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from workbench import paths, runs
from workbench.config import BASE_SIDE

BASE = BASE_SIDE
CHOICES = ("left", "right", "tie", "both_bad")
CHOICE_LABELS = {"left": "Left is better", "right": "Right is better", "tie": "Tie", "both_bad": "Both bad"}
TIE_RULE = "ties count as half a win; 'both bad' votes are listed but left out of the rate"
BUSY_TIMEOUT_MS = 30_000
COLUMNS = ("id", "created_at", "reviewer", "question", "left_side", "right_side", "left_answer", "right_answer",
           "choice", "winner", "comment", "base_model", "settings")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    reviewer TEXT NOT NULL,
    question TEXT NOT NULL,
    left_side TEXT NOT NULL,      -- 'base' or a run id: the mapping hidden from the reviewer
    right_side TEXT NOT NULL,
    left_answer TEXT NOT NULL,
    right_answer TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right', 'tie', 'both_bad')),
    comment TEXT NOT NULL DEFAULT '',
    base_model TEXT NOT NULL DEFAULT '',
    settings TEXT NOT NULL DEFAULT '{}',
    pair TEXT NOT NULL DEFAULT ''  -- the two sides in sorted order, 'a|b': which comparison this vote is for
);
CREATE INDEX IF NOT EXISTS votes_sides ON votes (left_side, right_side);
"""
SCHEMA_VERSION = 1  # PRAGMA user_version; 1 = the one-vote-per-question index is in place


class ReviewError(ValueError):
    """A vote or query was refused; the message says what to fix. `fixable`: the same vote can be cast once the
    reviewer fixes the input (a name, a shorter comment); otherwise this pair takes no vote (already voted...)."""

    def __init__(self, message: str, fixable: bool = False):
        super().__init__(message)
        self.fixable = fixable


def db_path() -> Path:
    return paths.data_dir() / "reviews.sqlite"


def connect(path: Path | None = None) -> sqlite3.Connection:
    """A fresh connection with WAL, a busy timeout and the schema in place (cheap; one per operation)."""
    path = path or db_path()
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")  # first: the WAL switch below may have to wait
        _use_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a committed vote survives an app crash
        conn.executescript(_SCHEMA)
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            _migrate(conn)
    except sqlite3.DatabaseError as e:
        conn.close()
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            raise
        raise ReviewError(f"The review store {path} is damaged ({e}); no vote can be read or cast until it is "
                          f"restored from a backup or moved aside (the app leaves the file as it is).") from None
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode (it stays so). Switching needs the database to itself, and SQLite answers
    'database is locked' at once, without its busy wait, while another connection holds it — eight reviewers' first
    votes on a new database lost a vote that way (seen in CI). So: nothing to do when it is WAL already; otherwise
    retry until the busy timeout."""
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring a database from before the one-vote rule up to date, once, under a write lock (several processes may
    open it at the same moment). Earlier duplicate votes (same reviewer, question and pair; all but the first)
    move to the table duplicate_votes, so nothing is lost and the UNIQUE index can be built."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            if "pair" not in {row[1] for row in conn.execute("PRAGMA table_info(votes)")}:
                conn.execute("ALTER TABLE votes ADD COLUMN pair TEXT NOT NULL DEFAULT ''")
            conn.execute("UPDATE votes SET pair = CASE WHEN left_side < right_side THEN left_side || '|' || right_side"
                         " ELSE right_side || '|' || left_side END WHERE pair = ''")
            conn.execute("CREATE TABLE IF NOT EXISTS duplicate_votes AS SELECT * FROM votes WHERE 0")
            later = "SELECT id FROM votes WHERE id NOT IN (SELECT MIN(id) FROM votes GROUP BY reviewer, question, pair)"
            conn.execute(f"INSERT INTO duplicate_votes SELECT * FROM votes WHERE id IN ({later})")
            conn.execute(f"DELETE FROM votes WHERE id IN ({later})")
            conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS one_vote_per_question ON votes (reviewer, question, pair)")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _pair(left_side: str, right_side: str) -> str:
    return "|".join(sorted((left_side, right_side)))


def _clean(value, name: str, limit: int, required: bool = True) -> str:
    text = str(value or "").strip()
    if required and not text:
        raise ReviewError(f"The vote has no {name}; " + ("type your name in the Reviewer box." if name == "reviewer"
                                                          else "ask a question and wait for both answers first."),
                          fixable=name in ("reviewer", "comment"))
    if len(text) > limit:
        raise ReviewError(f"The {name} is {len(text)} characters long; keep it under {limit}.", fixable=True)
    return text


def record_vote(reviewer: str, question: str, left_side: str, right_side: str, left_answer: str,
                right_answer: str, choice: str, comment: str = "", base_model: str = "",
                settings: dict | None = None) -> int:
    """Store one vote in its own transaction; returns its id. A second vote by the same reviewer on the same question
    for the same two models is refused (ReviewError), however many arrive at once."""
    if choice not in CHOICES:
        raise ReviewError(f"Unknown vote '{choice}'; choose one of: {', '.join(CHOICES)}.")
    left_side, right_side = _clean(left_side, "left side", 200), _clean(right_side, "right side", 200)
    if left_side == right_side:
        raise ReviewError("Both sides are the same model; a vote needs two different models.")
    row = (runs.now_iso(), _clean(reviewer, "reviewer", 200),
           _clean(question, "question", 20_000), left_side, right_side,
           _clean(left_answer, "answer", 100_000, required=False), _clean(right_answer, "answer", 100_000,
                                                                          required=False),
           choice, _clean(comment, "comment", 5_000, required=False), str(base_model or ""),
           json.dumps(settings or {}, sort_keys=True, default=str), _pair(left_side, right_side))
    with closing(connect()) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute("INSERT INTO votes (created_at, reviewer, question, left_side, right_side, left_answer,"
                               " right_answer, choice, comment, base_model, settings, pair) "
                               "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as e:
            conn.execute("ROLLBACK")
            if "UNIQUE" not in str(e):
                raise
            first = conn.execute("SELECT id FROM votes WHERE reviewer = ? AND question = ? AND pair = ?",
                                 (row[1], row[2], row[-1])).fetchone()
            raise ReviewError(f"You already voted on this question (vote #{first['id'] if first else '?'} by "
                              f"'{row[1]}' on these two models); each reviewer votes once per question, so ask "
                              f"another question to vote again.") from None
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return int(cur.lastrowid)


def winner(vote: dict) -> str:
    """The side id that won this vote, or 'tie' / 'both_bad'."""
    return vote[f"{vote['choice']}_side"] if vote["choice"] in ("left", "right") else vote["choice"]


def votes(run_id: str | None = None) -> list[dict]:
    """All votes (oldest first), or those where `run_id` was one of the two sides."""
    if not db_path().is_file():
        return []
    with closing(connect()) as conn:
        if run_id is None:
            rows = conn.execute("SELECT * FROM votes ORDER BY id").fetchall()
        else:
            rows = conn.execute("SELECT * FROM votes WHERE left_side = ? OR right_side = ? ORDER BY id",
                                (run_id, run_id)).fetchall()
    rows = [dict(r) for r in rows]
    return [{**r, "winner": winner(r)} for r in rows]


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95% for z = 1.96); None when n is 0."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(run_id: str, against: str = BASE) -> dict:
    """How often run `run_id` beat `against` (default: the base model) in blind votes.

    win_rate = (wins + ties / 2) / (wins + losses + ties); 'both bad' votes are counted in n but not in
    the rate. None when there is no decisive or tied vote yet. ci_low/ci_high: Wilson 95% interval.
    """
    counts = {"wins": 0, "losses": 0, "ties": 0, "both_bad": 0}
    for vote in votes(run_id):
        if {vote["left_side"], vote["right_side"]} != {run_id, against}:
            continue
        result = vote["winner"]
        key = "wins" if result == run_id else "losses" if result == against else \
            "ties" if result == "tie" else "both_bad"
        counts[key] += 1
    rated = counts["wins"] + counts["losses"] + counts["ties"]
    score = counts["wins"] + counts["ties"] / 2
    interval = wilson_interval(score, rated)
    return {"run_id": run_id, "against": against, **counts, "n": rated + counts["both_bad"], "rated": rated,
            "win_rate": score / rated if rated else None,
            "ci_low": interval[0] if interval else None, "ci_high": interval[1] if interval else None,
            "method": TIE_RULE}


def describe(result: dict) -> str:
    """One line for people: 'run X vs base: 7 votes — 4 wins, 1 loss, 1 tie, 1 both bad; win rate 75% (…)'."""
    other = "the base model" if result["against"] == BASE else result["against"]
    head = f"{result['run_id']} vs {other}: {result['n']} vote{'s' if result['n'] != 1 else ''}"
    if not result["n"]:
        return head + " yet (use blind review in the Chat tab)."
    counts = (f"{result['wins']} win{'s' * (result['wins'] != 1)}, {result['losses']} "
              f"loss{'es' * (result['losses'] != 1)}, {result['ties']} tie{'s' * (result['ties'] != 1)}, "
              f"{result['both_bad']} both bad")
    if result["win_rate"] is None:
        return f"{head} — {counts}; no rate yet (only 'both bad' votes)."
    return (f"{head} — {counts}; win rate {result['win_rate']:.0%} (95% CI {result['ci_low']:.0%}–"
            f"{result['ci_high']:.0%}; {TIE_RULE}).")


def export_csv(path: str | Path, run_id: str | None = None) -> int:
    """Write votes (all, or those involving `run_id`) to a CSV file; returns how many rows."""
    rows = votes(run_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def reviewed_runs() -> list[str]:
    """Run ids that appear in any vote."""
    if not db_path().is_file():
        return []
    with closing(connect()) as conn:
        rows = conn.execute("SELECT left_side AS s FROM votes UNION SELECT right_side FROM votes").fetchall()
    return sorted(r["s"] for r in rows if r["s"] != BASE)


# -- the blind-review round: coin flip, the pending vote, the reveal (the Chat tab only shows it) -------

def blind_sides(run_id: str, other: str = BASE) -> tuple[str, str]:
    """(left, right) for one blind question: which side the fine-tuned run takes is a fresh fair coin flip."""
    import secrets

    return (other, run_id) if secrets.randbelow(2) else (run_id, other)


def pending_vote(question: str, sides: tuple[str, str], run_id: str, answers: tuple[str, str],
                 settings: dict | None = None) -> dict:
    """The answered pair awaiting a vote, with its hidden mapping (kept on the server, never shown before the vote)."""
    left, right = sides
    return {"question": question, "left_side": left, "right_side": right, "run_id": run_id,
            "other": left if right == run_id else right, "left_answer": answers[0], "right_answer": answers[1],
            "settings": dict(settings or {}), "voted": False}


def cast_vote(pending: dict | None, reviewer: str, choice: str, comment: str = "", base_model: str = "") -> dict:
    """Record the vote on a pending pair, once. Returns the pending pair marked voted, with `vote_id`.

    Raises ReviewError (a plain message for the reviewer) when there is nothing to vote on, when this pair was
    voted on already, or when the store refuses the vote (e.g. the same reviewer and question twice)."""
    if not pending:
        raise ReviewError("Nothing to vote on: tick 'Blind A/B review', ask a question and wait for both answers.")
    if pending.get("voted"):
        raise ReviewError("You already voted on this question; ask another one to vote again.")
    try:
        vote_id = record_vote(reviewer, pending["question"], pending["left_side"], pending["right_side"],
                              pending["left_answer"], pending["right_answer"], choice, comment,
                              base_model=base_model, settings=pending.get("settings"))
    except sqlite3.IntegrityError:
        raise ReviewError("You already voted on this question; ask another one to vote again.") from None
    return {**pending, "voted": True, "vote_id": vote_id, "choice": choice}


def reveal(voted: dict, label=lambda side: side) -> str:
    """After the vote: what was chosen and which model was on which side (`label` names a side for people)."""
    return (f"Vote #{voted['vote_id']} recorded: **{CHOICE_LABELS[voted['choice']]}**. Revealed: left was "
            f"**{label(voted['left_side'])}**, right was **{label(voted['right_side'])}**.")
