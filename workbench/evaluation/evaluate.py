"""Score base vs fine-tuned on a run's held-out split and write metrics.json + predictions.jsonl.

One 4-bit copy of the base weights is loaded; the base model is scored with the LoRA adapter
disabled and the fine-tuned one with it enabled. Base results are cached (keyed by model, eval
split content and generation settings) so they are computed once. Nothing is written as final
unless the whole evaluation succeeded.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

from workbench import models, paths, runs
from workbench.evaluation import scoring
from workbench.evaluation.results import (  # noqa: F401 (evaluate's public names for the views and the CLI)
    metrics_damage, predictions_damage, read_metrics, read_predictions, write_results)
from workbench.config import RunConfig

CACHE_VERSION = 1  # bump when scoring changes so old cached base results are not reused
# Share of the progress bar per phase (generation is the slow part).
PHASES = {"load": (0.0, 0.08), "base_ppl": (0.08, 0.13), "base_gen": (0.13, 0.52),
          "tuned_ppl": (0.52, 0.57), "tuned_gen": (0.57, 0.97)}


class EvalError(RuntimeError):
    """The evaluation cannot run or failed; the message says why and what to do."""


def print_progress(fraction: float, message: str) -> None:
    """A plain progress callback for logs (the training process passes it: train.log shows the phases)."""
    print(f"[eval {fraction:4.0%}] {message}", flush=True)


def _phase(progress, name: str, label: str):
    lo, hi = PHASES[name]
    if progress is None:
        return None
    return lambda f, msg: progress(lo + (hi - lo) * f, f"{label}: {msg}")


# -- progress in the run folder (what the Metrics and Train tabs show while a run is scored) --------

_PHASE_LABELS = {"load": "loading the model", "base_ppl": "base model, perplexity",
                 "base_gen": "base model, generating answers", "tuned_ppl": "fine-tuned model, perplexity",
                 "tuned_gen": "fine-tuned model, generating answers"}


def _phase_of(fraction: float) -> str:
    return next((name for name, (lo, hi) in PHASES.items() if fraction < hi), "tuned_gen")


class ProgressRecord:
    """A progress callback that also writes {fraction, phase, done, total, message} to the run folder's
    eval_progress.json (at most every `every_s` seconds, and always at a phase change), so any tab, any
    browser and the CLI can show 'Scoring… n/N questions' while evaluation runs in another process."""

    def __init__(self, run_dir: Path, total: int, forward=None, every_s: float = 1.0):
        self.path, self.total, self.forward, self.every_s = runs.RunFolder(run_dir).eval_progress, total, forward, every_s
        self._last, self._phase = 0.0, None

    def __call__(self, fraction: float, message: str) -> None:
        if self.forward:
            self.forward(fraction, message)
        phase = _phase_of(fraction)
        now = time.time()
        if phase == self._phase and now - self._last < self.every_s and fraction < 1.0:
            return
        self._last, self._phase = now, phase
        lo, hi = PHASES[phase]
        within = min(max((fraction - lo) / (hi - lo), 0.0), 1.0) if fraction < 1.0 else 1.0
        done = self.total if fraction >= 1.0 else (round(within * self.total) if phase != "load" else 0)
        paths.atomic_write(self.path, json.dumps({
            "fraction": round(min(fraction, 1.0), 4), "phase": phase, "phase_label": _PHASE_LABELS[phase],
            "done": done, "total": self.total, "message": str(message)[:200], "updated_at": runs.now_iso()}))


def read_progress(run_id: str) -> dict | None:
    """The scoring progress of a run being evaluated now, or None (not being scored, or no record)."""
    try:
        run_dir = runs.run_path(run_id)
    except runs.RunError:
        return None
    if runs.read_status(run_id).get("eval_state") != "running" or not _lock_held(run_dir):
        return None
    try:
        return json.loads(runs.RunFolder(run_dir).eval_progress.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):  # missing or half-written: "starting"
        return {"fraction": 0.0, "phase": "load", "phase_label": _PHASE_LABELS["load"], "done": 0, "total": 0,
                "message": "starting"}


def progress_text(progress: dict) -> str:
    """'Scoring… 8/16 questions (base model, generating answers) · 31% of all scoring': the count is the phase's,
    the share is of the whole scoring (both models, both passes)."""
    total = progress.get("total") or 0
    count = f" {progress.get('done', 0)}/{total} questions" if total else ""
    return f"Scoring…{count} ({progress.get('phase_label', '')}) · {progress.get('fraction', 0):.0%} of all scoring"


def _lock_held(run_dir: Path) -> bool:
    """True while some process evaluates this run (it holds .eval.lock; the kernel drops it if that process dies)."""
    try:
        with paths.file_lock(runs.RunFolder(run_dir).eval_lock, wait=False):
            return False
    except BlockingIOError:
        return True


# -- the rule: when a run may be scored (the app and the CLI obey the same one) ---------------------

def refusal(run_id: str) -> str | None:
    """Why `run_id` cannot be scored right now, or None when it can.

    Refused while a training run is active (scoring would compete with it for the same GPU or CPU cores) and
    while this run is being scored already. The training process scoring its own run at the end is allowed:
    by then its state is 'completed'.
    """
    busy = runs.training_run()
    if busy and runs.read_status(busy).get("state") in runs.ACTIVE_STATES:
        return (f"Run '{busy}' is training now; scoring would compete with it for the "
                f"{'GPU' if _has_gpu() else 'CPU cores'}. Wait until it finishes (it is scored automatically at the "
                f"end when eval.run_after_training is on), or stop it first.")
    try:
        run_dir = runs.run_path(run_id)
    except runs.RunError as e:
        return str(e)
    if _lock_held(run_dir):
        progress = read_progress(run_id)
        where = f" ({progress_text(progress)})" if progress else ""
        return f"Run '{run_id}' is being scored now{where}; its results appear here when it finishes."
    return None


def _has_gpu() -> bool:
    from workbench.models import detected_gpu

    return detected_gpu()[0] is not None


# -- inputs -----------------------------------------------------------------------------------

def eval_records(run_dir: Path, cfg: RunConfig) -> list[dict]:
    """The run's held-out split (data/eval.jsonl), capped at eval.max_examples."""
    path = runs.RunFolder(run_dir).eval_data
    if not path.is_file():
        raise EvalError(f"{path} is missing: this run has no held-out split. Start a new run (the split is "
                        f"written when the run is created).")
    return _cap(_run_jsonl(path), cfg.eval.max_examples, path)


def _run_jsonl(path: Path) -> list[dict]:
    """A JSONL file of the run folder (the split written when the run was created), or EvalError saying it is
    damaged: scoring never goes on with part of it."""
    from workbench.data.dataset import read_jsonl

    try:
        return read_jsonl(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise EvalError(f"{paths.damaged(path, e)}; the run folder was changed by hand or cut short. Start a new "
                        f"run.") from None


def _cap(records: list[dict], limit: int, where) -> list[dict]:
    records = [r for r in records if str(r.get("instruction") or "").strip() and str(r.get("output") or "").strip()]
    if not records:
        raise EvalError(f"No evaluation rows with both a question and an answer in {where}; use more data or a "
                        f"larger data.eval_fraction.")
    return records[:limit] if limit else records


def leakage_report(run_dir: Path, records: list[dict]) -> dict:
    """Eval rows whose normalized question or answer also occurs in the run's training data."""
    import pandas as pd

    from workbench.data.dataset import leakage, leakage_message

    train_path = runs.RunFolder(run_dir).train_data
    if not train_path.is_file():
        return {"checked": False, "flagged": False,
                "message": "Leakage not checked: the run has no data/train.jsonl."}
    columns = ["id", "instruction", "output"]
    train = pd.DataFrame(_run_jsonl(train_path), columns=columns).fillna("")
    report = leakage(train, pd.DataFrame(records, columns=columns).fillna(""))
    return {**report, "checked": True, "flagged": report["leaked_rows"] > 0, "message": leakage_message(report)}


# -- the base-result cache --------------------------------------------------------------------

def base_cache_key(cfg: RunConfig, records: list[dict], device: str) -> str:
    """Hash of everything that changes the base model's results."""
    m = cfg.model
    payload = {
        "v": CACHE_VERSION, "model": m.name_or_path, "4bit": m.load_in_4bit, "quant": m.quant_type,
        "double_quant": m.double_quant, "dtype": m.compute_dtype, "max_seq_length": m.max_seq_length,
        "template": cfg.data.template, "system_prompt": cfg.data.system_prompt, "device": device,
        "max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size,
        "no_repeat_ngram_size": cfg.eval.no_repeat_ngram_size,
        "records": [[str(r.get(k) or "") for k in ("instruction", "input", "context", "output")] for r in records],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _cache_file(key: str) -> Path:
    return paths.cache_dir() / "base_eval" / f"{key}.json"


def read_cached_base(key: str) -> dict | None:
    try:
        return json.loads(_cache_file(key).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_cached_base(key: str, result: dict) -> None:
    paths.atomic_write(_cache_file(key), json.dumps(result))


# -- scoring one model ------------------------------------------------------------------------

def score_model(model, tokenizer, cfg: RunConfig, records: list[dict], ppl_progress=None, gen_progress=None) -> dict:
    """Perplexity of the references + generated answers + ROUGE/BLEU, for whatever `model` is now."""
    common = {"template": cfg.data.template, "system_prompt": cfg.data.system_prompt,
              "batch_size": cfg.eval.batch_size}
    ppl = scoring.answer_perplexity(model, tokenizer, records, cfg.model.max_seq_length, progress=ppl_progress,
                                    **common)
    answers = scoring.generate_answers(model, tokenizer, records, cfg.eval.max_new_tokens, cfg.model.max_seq_length,
                                       progress=gen_progress, no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size,
                                       **common)
    references = [str(r["output"]).strip() for r in records]
    metrics = {"perplexity": ppl["perplexity"], **scoring.text_metrics(answers, references)}
    return {"metrics": metrics, "answers": answers, "answer_tokens": ppl["answer_tokens"],
            "per_example_nll": ppl["per_example_nll"],
            "per_example_rougeL": [r["rougeL"] for r in scoring.rouge_per_example(answers, references)]}


def _score_base(model, tokenizer, cfg, records, device, progress, use_cache: bool) -> tuple[dict, bool]:
    key = base_cache_key(cfg, records, device)
    cached = read_cached_base(key) if use_cache else None
    if cached is not None:
        return cached, True
    result = score_model(model, tokenizer, cfg, records, _phase(progress, "base_ppl", "base model"),
                         _phase(progress, "base_gen", "base model"))
    write_cached_base(key, result)
    return result, False


def _load(cfg: RunConfig, device: str, progress):
    if progress:
        progress(0.01, f"loading {cfg.model.name_or_path} in {'4' if cfg.model.load_in_4bit else '16'}-bit")
    try:
        return models.load_model(cfg.model, device)
    except models.ModelNotAvailable as e:
        raise EvalError(str(e)) from None
    except Exception as e:  # a broken model folder, a bad quantization setting...
        raise EvalError(f"The base model {cfg.model.name_or_path} could not be loaded ({type(e).__name__}: "
                        f"{str(e)[:300]}); check model.name_or_path and model.load_in_4bit.") from e


def _pick_device(preference: str) -> str:
    try:
        return models.pick_device(preference)
    except models.ModelNotAvailable as e:
        raise EvalError(str(e)) from None


# -- a run: base vs tuned ----------------------------------------------------------------------

@contextmanager
def _eval_lock(run_dir: Path):
    try:
        with paths.file_lock(runs.RunFolder(run_dir).eval_lock, wait=False):
            yield
    except BlockingIOError:
        raise EvalError(f"Run '{run_dir.name}' is being evaluated already; wait for it to finish.") from None


def evaluate_run(run_id: str, progress=None, device: str | None = None, use_cache: bool = True,
                 eval_settings=None) -> dict:
    """Score base vs fine-tuned on the run's held-out split; write metrics.json and predictions.jsonl.

    `progress(fraction, message)` is called as it goes; `eval_settings` (an EvalSettings) replaces the
    run's own eval section for this evaluation (the settings used are recorded in metrics.json).
    Returns the metrics dict written. Raises EvalError (also recorded as `eval_error` in status.json)
    when it cannot finish; then the run's previous metrics, if any, are left as they were.
    """
    try:
        run_dir = runs.run_path(run_id)
    except runs.RunError as e:
        raise EvalError(str(e)) from None
    reason = refusal(run_id)
    if reason:
        raise EvalError(reason)
    with _eval_lock(run_dir):
        runs.write_status(run_id, eval_state="running", eval_error="")
        try:
            metrics = _evaluate_run(run_id, run_dir, progress, device, use_cache, eval_settings)
        except EvalError as exc:
            runs.write_status(run_id, eval_state="failed", eval_error=str(exc))
            raise
        except Exception as exc:
            with runs.RunFolder(run_dir).eval_log.open("a", encoding="utf-8") as log:
                log.write(f"\n[{runs.now_iso()}] " + "".join(traceback.format_exception(exc)))
            reason = f"{explain_failure(exc)} (the full error is in {runs.RunFolder(run_dir).eval_log})"
            runs.write_status(run_id, eval_state="failed", eval_error=reason)
            raise EvalError(reason) from exc
        except BaseException:  # Ctrl+C: not a failure of the run, but no longer running either
            runs.write_status(run_id, eval_state="interrupted")
            raise
        runs.write_status(run_id, eval_state="completed", eval_error="")
    return metrics


def explain_failure(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    if models.is_out_of_memory(exc):
        return ("Evaluation ran out of memory. Use a smaller batch or shorter answers (`python -m workbench eval "
                "--run RUN_ID --batch-size 2 --max-new-tokens 64`), or stop other GPU work (training, the Chat "
                "tab) first.")
    return f"Evaluation failed with {name}: {text[:300]}"


def _evaluate_run(run_id: str, run_dir: Path, progress, device, use_cache, eval_settings) -> dict:
    from peft import PeftModel

    started = time.time()
    cfg = runs.load_run_config(run_id)
    if eval_settings is not None:
        cfg.eval = eval_settings
    adapter = runs.adapter_path(run_id)
    if adapter is None:
        state = runs.read_status(run_id).get("state", "unknown")
        raise EvalError(f"Run '{run_id}' has no trained adapter yet (state: {state}); evaluate it after training "
                        f"completes, or resume it first.")
    damage = runs.folder(run_id).adapter_damage()
    if damage:
        raise EvalError(damage)
    records = eval_records(run_dir, cfg)
    progress = ProgressRecord(run_dir, len(records), progress)
    progress(0.0, "starting")
    leak = leakage_report(run_dir, records)
    model, tokenizer, device = _load(cfg, _pick_device(device or cfg.training.device), progress)
    model = PeftModel.from_pretrained(model, str(adapter))  # the same base weights, adapter on top
    model.eval()
    with model.disable_adapter():
        base, base_cached = _score_base(model, tokenizer, cfg, records, device, progress, use_cache)
    tuned = score_model(model, tokenizer, cfg, records, _phase(progress, "tuned_ppl", "fine-tuned"),
                        _phase(progress, "tuned_gen", "fine-tuned"))
    del model
    models.free_memory()
    metrics = build_metrics(cfg, records, base, tuned, leak, device)
    metrics.update(run_id=run_id, adapter=str(adapter), base_cached=base_cached,
                   seconds=round(time.time() - started, 1),
                   loop_share={"base": scoring.loop_share(base["answers"]),
                               "tuned": scoring.loop_share(tuned["answers"])})
    write_results(run_dir, metrics, prediction_rows(records, base, tuned))
    progress(1.0, "done")
    return metrics


def build_metrics(cfg: RunConfig, records, base: dict, tuned: dict | None, leak: dict, device: str) -> dict:
    out = {
        "created_at": runs.now_iso(), "model": cfg.model.name_or_path, "eval_examples": len(records),
        "answer_tokens": base["answer_tokens"], "device": device,
        "settings": {"max_new_tokens": cfg.eval.max_new_tokens, "batch_size": cfg.eval.batch_size,
                     "decoding": "greedy", "padding": "left", "template": cfg.data.template,
                     "max_seq_length": cfg.model.max_seq_length, "load_in_4bit": cfg.model.load_in_4bit,
                     "perplexity": "exp(sum answer-token NLL / answer tokens), answer tokens only",
                     "rouge": f"rouge-score F-measure, mean over examples, stemmer={scoring.ROUGE_STEMMER}, 0-1",
                     "bleu": "sacrebleu corpus BLEU, " + ", ".join(f"{k}={v}" for k, v in
                                                                   scoring.BLEU_SETTINGS.items()) + ", 0-1"},
        "base": base["metrics"],
        "leakage": leak,
    }
    if tuned is not None:
        out["tuned"] = tuned["metrics"]
        out["change_pct"] = {k: scoring.relative_change(base["metrics"][k], tuned["metrics"][k])
                             for k in scoring.METRICS}
    return out


def prediction_rows(records: list[dict], base: dict, tuned: dict) -> list[dict]:
    rows = []
    for i, r in enumerate(records):
        rb, rt = base["per_example_rougeL"][i], tuned["per_example_rougeL"][i]
        rows.append({"id": r.get("id", f"e{i}"), "question": r["instruction"], "reference": r["output"],
                     "base_answer": base["answers"][i], "tuned_answer": tuned["answers"][i],
                     "rougeL_base": rb, "rougeL_tuned": rt, "rougeL_change": rt - rb,
                     "nll_base": base["per_example_nll"][i], "nll_tuned": tuned["per_example_nll"][i],
                     # degenerate repetition ('plan_mode.plan_mode…'): scoring.is_looping
                     "base_looping": scoring.is_looping(base["answers"][i]),
                     "tuned_looping": scoring.is_looping(tuned["answers"][i])})
    return rows


# -- the base model alone ----------------------------------------------------------------------

def evaluate_base(cfg: RunConfig, progress=None, device: str | None = None, use_cache: bool = True) -> dict:
    """Score the base model alone on the eval split `cfg.data` produces (the split a run with it gets)."""
    from workbench.data.dataset import DataError, leakage_message, prepare_dataset

    try:
        prepared = prepare_dataset(cfg.data)
    except DataError as e:
        raise EvalError(str(e)) from None
    records = _cap(prepared.eval, cfg.eval.max_examples, f"the eval split of '{cfg.data.source}'")
    started = time.time()
    device = _pick_device(device or cfg.training.device)
    base = read_cached_base(base_cache_key(cfg, records, device)) if use_cache else None
    cached = base is not None
    if base is None:  # load the model only when there is something to compute
        model, tokenizer, device = _load(cfg, device, progress)
        model.eval()
        try:
            base, _ = _score_base(model, tokenizer, cfg, records, device, progress, use_cache=False)
        except Exception as exc:
            raise EvalError(explain_failure(exc)) from exc
        finally:
            del model
            models.free_memory()
    leak = prepared.report.get("leakage", {})
    leak = {**leak, "checked": True, "flagged": bool(leak.get("leaked_rows")), "message": leakage_message(leak)}
    metrics = build_metrics(cfg, records, base, None, leak, device)
    metrics.update(base_cached=cached, seconds=round(time.time() - started, 1), data_source=cfg.data.source)
    if progress:
        progress(1.0, "done")
    return metrics

