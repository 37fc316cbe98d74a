"""What a person types into a setting, and whether a whole RunConfig makes sense: text from the form or a
`--set KEY=VALUE` turned into the field's type (one line naming the setting and a value that works when it is not),
and the checks behind RunConfig.validate()."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import yaml

from workbench.config import ConfigError, RunConfig, iter_fields


def _expected_type(f: dataclasses.Field) -> type:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return type(default)


_BOOL_WORDS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def coerce(f: dataclasses.Field, value: Any, name: str = "") -> Any:
    """Convert text/number input (from a form or a CLI flag) to the field's type. Text that is not that type raises
    ConfigError with one line naming the setting and a value that works, before anything is loaded."""
    name, t = name or f.name, _expected_type(f)
    try:
        return _coerce(t, value)
    except (TypeError, ValueError, yaml.YAMLError) as e:
        what = {bool: "true or false", int: "a whole number", float: "a number", list: "a comma-separated list",
                dict: "a mapping"}.get(t, "text")
        detail = f" ({str(e).splitlines()[0][:100]})" if isinstance(e, yaml.YAMLError) else ""
        raise ConfigError([f"{name}: {str(value)[:80]!r} is not {what}{detail}; write it like "
                           f"{name}={_flag_example(f)}."]) from None


def apply_sets(cfg: RunConfig, items: list[str]) -> RunConfig:
    """`--set KEY=VALUE` overrides (the CLI's and the benchmarks'), each checked and typed like the form's input."""
    known = {name: f for name, f, _ in iter_fields(cfg)}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError([f"--set {item!r} has no '='; write KEY=VALUE, e.g. --set training.max_steps=10."])
        if key not in known:
            raise ConfigError([f"Unknown setting '{key}' in --set; see `python -m workbench config`."])
        cfg.set(key, coerce(known[key], value, key))
    return cfg


def _coerce(t: type, value: Any) -> Any:
    if t is bool:
        if isinstance(value, str):
            if value.strip().lower() not in _BOOL_WORDS:
                raise ValueError(value)
            return _BOOL_WORDS[value.strip().lower()]
        return bool(value)
    if t is list:
        if isinstance(value, str):
            return [v.strip() for v in value.replace(";", ",").split(",") if v.strip()]
        return list(value)
    if t is dict:
        if isinstance(value, str):
            parsed = yaml.safe_load(value) if value.strip() else {}
            if not isinstance(parsed, dict):
                raise ValueError(value)
            return parsed or {}
        return dict(value)
    if t is int:
        if isinstance(value, str):
            number = float(value) if value.strip().lower() not in ("nan", "inf", "-inf") else 0.5
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if t is float:
        return float(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else value
    return value if value is not None else ""


def _flag_example(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, dict):
        return "'{instruction: question, output: answer}'"
    if isinstance(default, list):
        return ",".join(map(str, default)) or "a,b"
    return str(default).lower() if isinstance(default, bool) else str(default)


def validate(cfg: RunConfig) -> list[str]:
    errors: list[str] = []
    for name, f, value in iter_fields(cfg):
        t = _expected_type(f)
        ok = isinstance(value, t) or (t is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok or (t is int and isinstance(value, bool)):
            errors.append(f"{name} must be a {t.__name__} (got {value!r}); e.g. {name}: {_example(f)}.")
            continue
        if t is float and (math.isnan(value) or math.isinf(value)):
            errors.append(f"{name} must be a finite number (got {value}).")
    if errors:  # range checks below assume the types are right
        return errors
    for name, f, value in iter_fields(cfg):
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            errors.append(f"{name} is '{value}'; choose one of: {', '.join(choices)}.")
    m, d, lo, tr, ev = cfg.model, cfg.data, cfg.lora, cfg.training, cfg.eval
    checks = [
        (bool(m.name_or_path.strip()), "model.name_or_path is empty; use 'embedded:SmolLM2-135M-Instruct' or a model id."),
        (16 <= m.max_seq_length <= 32768, f"model.max_seq_length {m.max_seq_length} is out of range; use 256-4096 (512 is a good start)."),
        (1 <= lo.r <= 1024, f"lora.r {lo.r} is out of range; use 8, 16 or 32."),
        (lo.alpha > 0, f"lora.alpha {lo.alpha} must be positive; a common choice is 2 x r = {2 * max(lo.r, 1)}."),
        (0 <= lo.dropout < 1, f"lora.dropout {lo.dropout} must be between 0 and 1 (exclusive); 0.05 is typical."),
        (bool(lo.target_modules), "lora.target_modules is empty; use q_proj, k_proj, v_proj, o_proj."),
        (tr.epochs > 0 or tr.max_steps > 0, "training.epochs must be above 0 (or set training.max_steps)."),
        (tr.max_steps >= 0, "training.max_steps cannot be negative; use 0 to run all epochs."),
        (1 <= tr.batch_size <= 1024, f"training.batch_size {tr.batch_size} is out of range; try 1-8 and raise grad_accum instead."),
        (1 <= tr.grad_accum <= 1024, f"training.grad_accum {tr.grad_accum} is out of range; 1-16 is typical."),
        (0 < tr.learning_rate <= 0.1, f"training.learning_rate {tr.learning_rate} is out of range; 2e-4 is the usual QLoRA value."),
        (0 <= tr.warmup_ratio < 1, f"training.warmup_ratio {tr.warmup_ratio} must be between 0 and 1; 0.03 is typical."),
        (tr.logging_steps >= 1, "training.logging_steps must be at least 1."),
        (tr.eval_steps >= 0, "training.eval_steps cannot be negative; 0 means once per epoch."),
        (tr.save_strategy != "steps" or tr.save_steps > 0, "training.save_steps must be above 0 when save_strategy is 'steps'."),
        (tr.save_every_minutes >= 0, "training.save_every_minutes cannot be negative; 0 turns it off."),
        (0 <= tr.seed < 2**32, f"training.seed {tr.seed} is out of range; use a whole number from 0 to 4294967295 "
                               f"(42 is the default)."),
        (0 <= d.split_seed < 2**32, f"data.split_seed {d.split_seed} is out of range; use a whole number from 0 to "
                                    f"4294967295 (42 is the default)."),
        (0 <= tr.num_processes <= 64, f"training.num_processes {tr.num_processes} is out of range; 1 = one process, "
                                      f"0 = one per GPU."),
        (0 < d.eval_fraction < 0.9, f"data.eval_fraction {d.eval_fraction} must be between 0 and 0.9; 0.1 keeps 10% aside."),
        (d.max_train_examples >= 0 and d.max_eval_examples >= 0, "data.max_*_examples cannot be negative; 0 means all."),
        (ev.max_new_tokens >= 1, "eval.max_new_tokens must be at least 1; 128 is a good start."),
        (ev.no_repeat_ngram_size >= 0, "eval.no_repeat_ngram_size must be 0 (off) or a phrase length such as 3."),
        (ev.batch_size >= 1, "eval.batch_size must be at least 1."),
    ]
    errors += [msg for ok, msg in checks if not ok]
    fields_ = ("instruction", "input", "output", "context")
    bad = {k: v for k, v in d.columns.items() if k not in fields_ or not isinstance(v, (str, int, type(None)))}
    if bad:
        errors.append(f"data.columns {bad} is not a mapping of record fields ({', '.join(fields_)}) to column names; "
                      f"write it like {{instruction: question, output: answer}}.")
    pr = cfg.preference
    if cfg.kind == "preference":  # the parent run is checked when the run is created (a preset names none)
        errors += [msg for ok, msg in [
            (bool(pr.pairs.strip()), "preference.pairs is empty; use 'votes' or the path of a preference file."),
            (0 < pr.beta <= 10, f"preference.beta {pr.beta} is out of range; 0.1 is the usual value."),
            (0 < pr.eval_fraction < 0.9, f"preference.eval_fraction {pr.eval_fraction} must be between 0 and 0.9; "
                                         f"0.25 holds a quarter of the pairs out."),
            (tr.num_processes == 1, "A preference run trains in one process; set training.num_processes to 1."),
        ] if not ok]
    if tr.optimizer in ("paged_adamw_8bit", "adamw_8bit") and tr.device == "cpu":
        errors.append(f"training.optimizer {tr.optimizer} needs a CUDA GPU; use adamw_torch on CPU.")
    return errors


def _example(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
