"""Preference pairs from blind review votes: every vote that prefers one side becomes {prompt, chosen, rejected}.

A vote "left is better" / "right is better" says which of two answers to the same question a reviewer preferred;
that is exactly a DPO training pair. Ties and "both bad" votes say nothing about which answer is better and are
counted, not used. Votes are reported, never averaged:

- **duplicates**: the same question (normalized), the same two sides and the same winner from several votes (several
  reviewers agreeing). Each distinct (prompt, chosen, rejected) text is trained on once; agreeing votes on identical
  texts collapse to one pair (its `votes` field counts them).
- **contradictions**: the same question and the same two sides, but some votes prefer one side and some the other.
  The reviewers disagree, so no side is "chosen": every vote of such a group is left out of training and listed.

`MIN_PAIRS` is the one place the "too few pairs" floor lives (the CLI, the training job and the UI all ask
`readiness()`).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from workbench import runs
from workbench.data.loading import normalize
from workbench.evaluation import reviews

# Below 8 pairs a preference run is refused: the held-out share (a quarter, at least 2 pairs) must leave at least 6
# to train on, and with 2 held-out pairs the preference accuracy can only read 0%, 50% or 100%. Even at 8 it is a
# demonstration, not evidence: below RECOMMENDED_PAIRS the run is allowed but the message says the result is noisy.
MIN_PAIRS = 8
RECOMMENDED_PAIRS = 50
PAIR_FIELDS = ("id", "prompt", "chosen", "rejected", "reviewer", "chosen_side", "rejected_side", "created_at",
               "vote_id", "votes", "source")
RULE = ("ties and 'both bad' votes are not pairs; agreeing votes on identical answers count once; contradictory "
        "votes (same question and sides, opposite preferences) are left out of training and listed")


class PreferenceError(ValueError):
    """Preference data cannot be used as asked; the message says what to do."""


def vote_pair(vote: dict) -> dict | None:
    """The pair one vote makes, or None for a tie / 'both bad' vote."""
    if vote.get("choice") not in ("left", "right"):
        return None
    win, lose = ("left", "right") if vote["choice"] == "left" else ("right", "left")
    return {"prompt": vote["question"], "chosen": vote[f"{win}_answer"], "rejected": vote[f"{lose}_answer"],
            "reviewer": vote["reviewer"], "chosen_side": vote[f"{win}_side"], "rejected_side": vote[f"{lose}_side"],
            "created_at": vote["created_at"], "vote_id": vote["id"], "votes": 1, "source": "votes"}


def pair_report(candidates: list[dict], skipped: dict | None = None) -> dict:
    """Apply the duplicate/contradiction rule (module docstring) to candidate pairs (from votes or a file).

    Returns {pairs, duplicates, contradictions, identical, excluded, skipped, n_candidates, rule}:
    `pairs` is what trains (ids p0, p1, … in the order of the first vote), `duplicates` and `contradictions` are
    lists of groups {prompt, sides, votes: [{vote_id, reviewer, chosen_side}], …}, `identical` counts pairs dropped
    because their chosen and rejected answers are the same text, `excluded` how many candidates the
    contradictions removed."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    identical = 0
    for order, pair in enumerate(candidates):
        pair = {**pair, "_order": order}
        if normalize(pair["chosen"]) == normalize(pair["rejected"]):
            identical += 1  # nothing to learn: both answers say the same
            continue
        sides = tuple(sorted((pair.get("chosen_side") or "", pair.get("rejected_side") or "")))
        key = (normalize(pair["prompt"]), sides) if any(sides) else \
            (normalize(pair["prompt"]), tuple(sorted((normalize(pair["chosen"]), normalize(pair["rejected"])))))
        groups[key].append(pair)
    pairs, duplicates, contradictions, excluded = [], [], [], 0
    for (_, sides), members in groups.items():
        winners = {_winner(p) for p in members}
        summary = {"prompt": members[0]["prompt"], "sides": list(sides) if members[0].get("chosen_side") else [],
                   "votes": [{"vote_id": p.get("vote_id"), "reviewer": p.get("reviewer", ""),
                                       "chosen_side": p.get("chosen_side", ""), "chosen": p["chosen"][:200]}
                                      for p in members]}
        if len(winners) > 1:
            contradictions.append(summary)
            excluded += len(members)
            continue
        if len(members) > 1:
            duplicates.append(summary)
        distinct: dict[tuple, dict] = {}
        for p in members:
            text = (normalize(p["prompt"]), normalize(p["chosen"]), normalize(p["rejected"]))
            if text in distinct:
                distinct[text]["votes"] = distinct[text].get("votes", 1) + 1
            else:
                distinct[text] = dict(p)
        pairs.extend(distinct.values())
    pairs.sort(key=lambda p: p["_order"])
    pairs = [{"id": f"p{i}", **{k: v for k, v in p.items() if k not in ("id", "_order")}} for i, p in enumerate(pairs)]
    return {"pairs": pairs, "duplicates": duplicates, "contradictions": contradictions, "identical": identical,
            "excluded": excluded, "skipped": dict(skipped or {}), "n_candidates": len(candidates), "rule": RULE}


def _winner(pair: dict) -> str:
    """Which side won, or for pairs without sides (a file) which answer text won."""
    return pair.get("chosen_side") or normalize(pair["chosen"])


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


def readiness(n_pairs: int) -> dict:
    """{ok, level, message}: whether `n_pairs` usable pairs are enough for a preference run (level 'refuse', 'warn'
    or 'ok'), in words the Train tab and the CLI show as they stand."""
    if n_pairs < MIN_PAIRS:
        return {"ok": False, "level": "refuse", "n_pairs": n_pairs,
                "message": f"Only {n_pairs} usable preference pair{'s' * (n_pairs != 1)}; a preference run needs at "
                           f"least {MIN_PAIRS} (a quarter is held out to measure preference accuracy, and with fewer "
                           f"the measurement can only read 0%, 50% or 100%). Collect more blind votes that prefer one "
                           f"side in the Chat tab, or load a preference file."}
    if n_pairs < RECOMMENDED_PAIRS:
        return {"ok": True, "level": "warn", "n_pairs": n_pairs,
                "message": f"{n_pairs} preference pairs: enough to run, too few to trust; below "
                           f"{RECOMMENDED_PAIRS} pairs the held-out accuracy and the win rate move a lot with each "
                           f"vote. Treat the result as a demonstration."}
    return {"ok": True, "level": "ok", "n_pairs": n_pairs, "message": f"{n_pairs} preference pairs."}


def describe(report: dict) -> str:
    """A few lines for people: how many pairs, what was skipped, duplicates and contradictions."""
    skipped = report.get("skipped") or {}
    lines = [f"{len(report['pairs'])} preference pair{'s' * (len(report['pairs']) != 1)} from "
             f"{report['n_candidates']} preferring vote{'s' * (report['n_candidates'] != 1)}"
             + (f" ({skipped.get('tie', 0)} ties and {skipped.get('both_bad', 0)} 'both bad' votes are not pairs)"
                if skipped else "") + "."]
    if report["identical"]:
        lines.append(f"{report['identical']} pair(s) dropped: the chosen and rejected answers are the same text.")
    for group in report["duplicates"]:
        lines.append(f"Duplicate: {len(group['votes'])} votes agree on {group['prompt'][:80]!r} "
                     f"(reviewers {', '.join(sorted({v['reviewer'] or '?' for v in group['votes']}))}).")
    for group in report["contradictions"]:
        winners = ", ".join(f"{v['reviewer'] or '?'} chose {v['chosen_side'] or repr(v['chosen'][:40])}"
                            for v in group["votes"])
        lines.append(f"Contradiction, left out of training: {group['prompt'][:80]!r} ({winners}).")
    lines.append(readiness(len(report["pairs"]))["message"])
    return "\n".join(lines)


def write_pairs_jsonl(pairs: list[dict], path: str | Path) -> int:
    """Write pairs as JSONL (prompt, chosen, rejected first; then reviewer, sides, time); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps({k: pair.get(k) for k in PAIR_FIELDS if k in pair}, ensure_ascii=False) + "\n")
    return len(pairs)
