"""The recipe search's space (which settings, which choices, how a trial's settings apply to a RunConfig) and
its table of trials, for the search process, the CLI and the Train tab."""
from __future__ import annotations

import copy
import math

from workbench.config import RunConfig

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL_LINEAR = ATTENTION + ["gate_proj", "up_proj", "down_proj"]
TARGETS = {"attention": ATTENTION, "all-linear": ALL_LINEAR}
# Choices per setting. The starting recipe's own value is always added; epochs are dropped when max_steps is set.
DEFAULT_SPACE = {"lora.target_modules": ["attention", "all-linear"], "lora.r": [16, 64, 256],
                 "training.learning_rate": [1e-4, 2e-4, 4e-4, 8e-4], "training.epochs": [1.0, 2.0, 3.0]}
KINDS = {"lora.target_modules": str, "lora.r": int, "training.learning_rate": float, "training.epochs": float}


class SearchError(RuntimeError):
    """A search cannot be started or used as asked; the message says what to do."""


# -- the space ------------------------------------------------------------------------------------

def target_name(modules: list) -> str:
    """'attention', 'all-linear', or the comma-joined list for any other choice of layers."""
    return next((k for k, v in TARGETS.items() if list(modules) == v), ",".join(modules))


def recipe_params(cfg: RunConfig, space: dict) -> dict:
    """The values a config has for the searched settings (the starting trial)."""
    own = {"lora.target_modules": target_name(cfg.lora.target_modules), "lora.r": cfg.lora.r,
           "training.learning_rate": float(cfg.training.learning_rate), "training.epochs": float(cfg.training.epochs)}
    return {k: own[k] for k in space}


def normalize_space(base: RunConfig, space: dict | None = None, short_trials: bool = False) -> dict:
    """Choices per searched setting: the given (or default) ones plus the base recipe's own value, sorted, typed.
    Epochs are not searched when steps are fixed: by max_steps, or by short trials of a fixed number of steps."""
    given = dict(DEFAULT_SPACE if space is None else space)
    unknown = [k for k in given if k not in KINDS]
    if unknown:
        raise SearchError(f"Cannot search {', '.join(unknown)}; searchable settings are {', '.join(KINDS)}.")
    if base.training.max_steps > 0 or short_trials:  # a fixed number of steps: epochs change nothing
        given.pop("training.epochs", None)
    own = recipe_params(base, given)
    out = {}
    for name, choices in given.items():
        kind = KINDS[name]
        try:
            values = {kind(v) for v in (choices if isinstance(choices, (list, tuple)) else [choices])}
        except (TypeError, ValueError):
            raise SearchError(f"{name}: {choices!r} are not all {kind.__name__} values; write e.g. "
                              f"{name}={','.join(map(str, DEFAULT_SPACE[name]))}.") from None
        if kind is not str and any(v <= 0 or not math.isfinite(v) for v in values):
            raise SearchError(f"{name}: every choice must be a positive number (got {sorted(values)}).")
        out[name] = sorted(values | {own[name]}, key=lambda v: (str(v) if kind is str else v))
    return out


# The order in which the starting recipe's neighbours are tried: wider layer coverage first (the biggest gain
# measured), then more rank, a faster and a slower learning rate, one more and one fewer epoch, less rank, and
# fewer layers last.
NEIGHBOUR_ORDER = [("lora.target_modules", "all-linear"), ("lora.r", +1), ("training.learning_rate", +1),
                   ("training.learning_rate", -1), ("training.epochs", +1), ("training.epochs", -1), ("lora.r", -1),
                   ("lora.target_modules", "attention")]


def neighbours(space: dict, own: dict, limit: int | None = None) -> list[dict]:
    """The starting recipe's nearest variants: one setting moved one choice up or down (or to the other layer
    choice), the rest as they are, in NEIGHBOUR_ORDER; at most `limit` of them. A search tries these right after
    the starting recipe, so even a small budget looks around a good recipe before the sampler takes over."""
    out = []
    for name, move in NEIGHBOUR_ORDER:
        choices = space.get(name)
        if not choices or name not in own:
            continue
        if isinstance(move, str):
            value = move if move in choices and move != own[name] else None
        else:
            i = choices.index(own[name]) + move
            value = choices[i] if 0 <= i < len(choices) else None
        if value is not None and dict(own, **{name: value}) not in out:
            out.append(dict(own, **{name: value}))
    return out[:limit] if limit is not None else out


def epochs_note(base: RunConfig, space: dict | None, short_trials: bool) -> str:
    """Why epoch choices given to a search are not searched (normalize_space drops them), or ''."""
    given = DEFAULT_SPACE if space is None else space
    if "training.epochs" not in given:
        return ""
    if base.training.max_steps > 0:
        return (f"Epochs are not searched: the recipe stops after max steps ({base.training.max_steps}), so the "
                f"number of epochs changes nothing. Set max steps to 0 to search them.")
    if short_trials:
        return ("Epochs are not searched: with steps per trial, every trial trains that many steps. Set steps per "
                "trial to 0 (each trial trains its whole recipe) to search them.")
    return ""


def neighbours_tried(trials: int) -> int:
    """Neighbours of the starting recipe tried before the sampler: half of a trial budget (the rest is the
    sampler's), all of them with a budget in minutes only."""
    return max(1, trials // 2) if trials else len(NEIGHBOUR_ORDER)


def short_trial(cfg: RunConfig, steps: int) -> RunConfig:
    """A trial capped at `steps` optimizer steps (its learning-rate schedule fitted to them), evaluated every quarter
    so the pruner can stop a bad recipe after a quarter of its budget; checkpoints only at the end. 0 = unchanged."""
    if not steps:
        return cfg
    t = cfg.training
    steps = min(steps, t.max_steps) if t.max_steps else steps
    every = max(1, steps // 4)
    t.max_steps = every * max(1, round(steps / every))  # the last evaluation falls on the last step
    t.eval_steps = every
    t.save_strategy, t.save_steps = "steps", t.max_steps
    return cfg


def size(space: dict) -> int:
    return math.prod(len(v) for v in space.values())


def alpha_for(base: RunConfig, r: int) -> int:
    """LoRA alpha for rank r at the base recipe's alpha/r ratio (2 for r16/alpha32)."""
    return max(1, round(r * base.lora.alpha / max(base.lora.r, 1)))


def apply(base: RunConfig, params: dict) -> RunConfig:
    """The base config with a trial's settings: layers by name, rank (alpha keeps the base's alpha/r ratio, so the
    starting recipe's own rank gives back its own alpha), learning rate, epochs."""
    cfg = copy.deepcopy(base)
    if "lora.target_modules" in params:
        name = params["lora.target_modules"]
        cfg.lora.target_modules = list(TARGETS.get(name) or [m for m in name.split(",") if m])
    if "lora.r" in params:
        cfg.lora.r, cfg.lora.alpha = int(params["lora.r"]), alpha_for(base, int(params["lora.r"]))
    if "training.learning_rate" in params:
        cfg.training.learning_rate = float(params["training.learning_rate"])
    if "training.epochs" in params:
        cfg.training.epochs = float(params["training.epochs"])
    return cfg


# -- the table --------------------------------------------------------------------------------------

def trained_count(data: dict) -> int:
    """Trials of the budget spent: every trial but the repeats of settings already scored (nothing trained)."""
    return sum(1 for t in data.get("trials", []) if t.get("state") != "repeat")


COLUMNS = ["trial", "state", "layers", "r / alpha", "learning rate", "epochs", "eval loss", "steps", "run", "note"]


def trial_rows(data: dict) -> list[list]:
    """The trials as table rows (best first among completed, then the rest in order), for the UI and the CLI."""
    best = (data.get("best") or {}).get("number")
    lora = (data.get("base") or {}).get("lora") or {}
    ratio = (lora.get("alpha") or 2) / max(lora.get("r") or 1, 1)  # the search's alpha/r (alpha_for)
    rows = []
    for t in data.get("trials", []):
        p = t.get("params", {})
        r = p.get("lora.r")
        rows.append([f"{t['number']}{' ★' if t['number'] == best else ''}", t.get("state", ""),
                     p.get("lora.target_modules", "(as set)"), f"{r} / {max(1, round(r * ratio))}" if r else "(as set)",
                     p.get("training.learning_rate", "(as set)"), p.get("training.epochs", "(as set)"),
                     t.get("eval_loss"), f"{t.get('step', 0)}/{t.get('total_steps') or '…'}", t.get("run_id", ""),
                     t.get("reason", "")])
    return rows
