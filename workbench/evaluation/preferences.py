"""Preference pairs from blind review votes: every vote that prefers one side becomes {prompt, chosen, rejected}.

A vote "left is better" / "right is better" says which of two answers to the same question a reviewer preferred;
that is exactly a DPO training pair. Ties and "both bad" votes say nothing about which answer is better and are
counted in `skipped`, not used. Duplicated and contradictory votes are reported by the rule in
workbench.data.preferences (contradictions are left out of training and listed, never averaged).
"""
from __future__ import annotations

from workbench import runs
from workbench.data.preferences import (MIN_PAIRS, RECOMMENDED_PAIRS, RULE, PreferenceError,  # noqa: F401 (re-exported)
                                        describe, pair_report, readiness, write_pairs_jsonl)
from workbench.evaluation import reviews


def vote_pair(vote: dict) -> dict | None:
    """The pair one vote makes, or None for a tie / 'both bad' vote."""
    if vote.get("choice") not in ("left", "right"):
        return None
    win, lose = ("left", "right") if vote["choice"] == "left" else ("right", "left")
    return {"prompt": vote["question"], "chosen": vote[f"{win}_answer"], "rejected": vote[f"{lose}_answer"],
            "reviewer": vote["reviewer"], "chosen_side": vote[f"{win}_side"], "rejected_side": vote[f"{lose}_side"],
            "created_at": vote["created_at"], "vote_id": vote["id"], "votes": 1, "source": "votes"}


def pairs_from_votes(run_id: str | None = None) -> dict:
    """The preference pairs of every blind vote (or of the votes where run `run_id` was a side), with the report of
    pair_report() and `skipped` = {tie: n, both_bad: n}."""
    if run_id is not None:
        run_id = runs.validate_run_id(run_id)
    candidates, skipped = [], {"tie": 0, "both_bad": 0}
    for vote in reviews.votes(run_id):
        pair = vote_pair(vote)
        if pair is None:
            skipped[vote["choice"]] += 1
        else:
            candidates.append(pair)
    return pair_report(candidates, skipped)
