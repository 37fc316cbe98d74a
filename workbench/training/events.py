"""Training progress as data: `reduce(status, event)`, the pure fold of a run's events (one per log step,
written by workbench.callback inside the training process) into what the Train tab shows. Pure Python:
the app imports it without loading torch or transformers.
"""
from __future__ import annotations

import math

METRICS = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_s", "gpu_mem_gb", "cpu_mem_gb",
           # preference (DPO) runs: mean reward margin chosen - rejected, the two rewards, the share of pairs where
           # the chosen answer's reward is higher; eval_* on the held-out pairs
           "reward_margin", "reward_chosen", "reward_rejected", "preference_accuracy", "eval_reward_margin",
           "eval_preference_accuracy")


# -- the pure fold ------------------------------------------------------------------------------

def _number(value):
    """A float, or None for anything that is not a number (strings, None, bools)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def reduce(status: dict, event: dict) -> dict:
    """Fold one event into a progress dict and return a new dict (the input is not changed).

    Log events (no "type", or type "log") carry step and metrics; "state" events carry state/reason.
    Anything else, or an event without a usable step, is counted in `ignored` and otherwise skipped,
    so a half-written or future event type never breaks the view. A NaN/inf loss is recorded in
    `nonfinite` (with its step) instead of being plotted.
    """
    out = dict(status)
    kind = event.get("type", "log") if isinstance(event, dict) else None
    if kind == "state":
        for key in ("state", "reason"):
            if key in event:
                out[key] = event[key]
        return out
    step = event.get("step") if kind == "log" else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        out["ignored"] = out.get("ignored", 0) + 1
        return out
    out["step"] = max(step, out.get("step", 0) or 0)
    for key in ("epoch", "elapsed"):
        if _number(event.get(key)) is not None:
            out[key] = _number(event[key])
    for key in METRICS:
        value = _number(event.get(key))
        if value is None:
            continue
        if not math.isfinite(value):
            if key in ("loss", "eval_loss"):
                out["nonfinite"] = f"{key} became {value} at step {step}"
            continue
        out[key] = value
        if key == "eval_loss" and value < out.get("best_eval_loss", math.inf):
            out["best_eval_loss"] = value
    for key in ("gpu_mem_gb_ranks", "cpu_mem_gb_ranks"):  # several processes: each one's memory, rank order
        ranks = event.get(key)
        if isinstance(ranks, list) and ranks and all(_number(v) is not None for v in ranks):
            out[key] = [_number(v) for v in ranks]
    if "loss" in event:
        out["points"] = out.get("points", 0) + 1
    out["eta_s"] = _eta(out)
    return out


def _eta(progress: dict) -> float | None:
    step, total, elapsed = progress.get("step", 0), progress.get("total_steps") or 0, progress.get("elapsed")
    if not step or not total or elapsed is None or step >= total:
        return None
    return elapsed / step * (total - step)


def fold(events: list[dict], status: dict | None = None) -> dict:
    """Progress of a run: its status.json (state, total_steps, reason) with all its events folded in."""
    progress = {k: v for k, v in (status or {}).items() if k in ("state", "reason", "total_steps", "step")}
    for event in events:
        progress = reduce(progress, event)
    return progress
