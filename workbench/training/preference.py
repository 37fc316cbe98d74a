"""The preference-tuning recipe (run kind 'preference'): TRL's DPOTrainer on the 4-bit base, starting from a finished
run's LoRA adapter, with that same adapter, frozen, as the reference policy.

Read top to bottom: when the run is created, gather the pairs (blind votes on the parent, or a file), refuse too few,
split them and take the parent's model, LoRA shape, template and Q&A split (so the Metrics tab scores parent and child
on the same questions). In the training process: claim the one slot, load the base in 4 bits, load the parent's
adapter as the trainable "default" adapter; DPOTrainer then adds a frozen copy of it named "ref" and computes the
reference log-probs with that one (TRL 1.16: a PEFT model with an adapter and no ref_model). Train with the same
callback as an SFT run (events, timed saves, STOP, NaN checks), save the "default" adapter as an ordinary adapter,
score the held-out pairs, record that the reference was the parent's (a digest of its weights). Nothing here imports
torch at module level: the app creates runs through this module.
"""
from __future__ import annotations

import hashlib
import random
import traceback
from pathlib import Path

from workbench import runs
from workbench.config import ConfigError, RunConfig
from workbench.data.dataset import DataError, PreparedData, read_jsonl
from workbench.safety import redact

POLICY, REFERENCE = "default", "ref"  # the adapter names: trained, and TRL's frozen copy (the parent's weights)


# -- creating the run (no torch) --------------------------------------------------------------------

def gather_pairs(parent_run: str, pairs: str = "votes", server: bool = False) -> dict:
    """The pair report (workbench.data.preferences.pair_report) of the parent run's votes, or of a preference file
    (`server=True`: the path must lie in the data or upload folders, as for any path a request names)."""
    from workbench.data.preferences import load_preference_file
    from workbench.evaluation.preferences import pairs_from_votes

    if (pairs or "").strip() == "votes":
        return {**pairs_from_votes(parent_run), "source": "votes"}
    return {**load_preference_file(pairs, server=server), "source": "file"}


def check_parent(parent_run: str) -> runs.RunFolder:
    """The parent run's folder; refused unless it is a finished run with a saved adapter."""
    if not str(parent_run or "").strip():
        raise runs.RunError("A preference run starts from a finished run: name it (preference.parent_run, or "
                            "--parent RUN_ID; see `python -m workbench runs`).")
    parent = runs.folder(parent_run)
    if not parent.has_adapter():
        state = parent.read_status().get("state")
        raise runs.RunError(f"Run '{parent.id}' has no saved adapter (state: {state}); a preference run starts from a "
                            f"finished run's adapter. Let it finish, or pick another run.")
    return parent


def preview(parent_run: str, pairs: str = "votes", server: bool = True) -> dict:
    """What a preference run from `parent_run` would train on, for the Train tab before Start: {ok, level, message,
    report, n_pairs, n_train, n_eval, text}. Never raises for bad input: `ok` False and `message` say what to fix."""
    from workbench.data.preferences import describe, readiness

    try:
        check_parent(parent_run)
        report = gather_pairs(parent_run, pairs, server)
    except (runs.RunError, DataError, ConfigError) as e:
        return {"ok": False, "level": "refuse", "message": str(e), "report": None, "n_pairs": 0, "n_train": 0,
                "n_eval": 0, "text": str(e)}
    ready = readiness(len(report["pairs"]))
    n_eval = _eval_count(len(report["pairs"]), RunConfig().preference.eval_fraction)
    return {**ready, "report": report, "n_train": len(report["pairs"]) - n_eval, "n_eval": n_eval,
            "text": describe(report)}


def _eval_count(n: int, fraction: float) -> int:
    return min(max(2, round(n * fraction)), max(n - 1, 0))


def split_pairs(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Hold out about `fraction` of the pairs (at least 2), whole questions at a time (no question on both sides),
    chosen by a seeded shuffle: the same pairs and seed always give the same split."""
    from workbench.data.loading import normalize

    questions = sorted({normalize(p["prompt"]) for p in pairs})
    random.Random(seed).shuffle(questions)
    want, held = _eval_count(len(pairs), fraction), set()
    for q in questions:
        if sum(1 for p in pairs if normalize(p["prompt"]) in held) >= want:
            break
        held.add(q)
    return ([p for p in pairs if normalize(p["prompt"]) not in held],
            [p for p in pairs if normalize(p["prompt"]) in held])


def prepare(cfg: RunConfig) -> tuple[PreparedData, list[dict], list[dict]]:
    """Called by jobs.create_run for a preference run: fills `cfg` in from the parent (model, LoRA, template) and
    returns (the parent's Q&A split + the pair report, train pairs, held-out pairs). Raises DataError (too few pairs,
    a bad file) or RunError (no such parent, no adapter) with the fix in the message."""
    from workbench.data.preferences import readiness

    parent = check_parent(cfg.preference.parent_run)
    parent_cfg = runs.load_run_config(parent.id)  # a preference run can be a parent too (tuned again from its votes)
    report = gather_pairs(parent.id, cfg.preference.pairs)
    ready = readiness(len(report["pairs"]))
    if not ready["ok"]:
        raise DataError(ready["message"] + _contradiction_note(report))
    train, held = split_pairs(report["pairs"], cfg.preference.eval_fraction, cfg.data.split_seed)
    cfg.preference.parent_run = parent.id
    parent_cfg.model.max_seq_length = cfg.model.max_seq_length  # the preset's: pairs are short, DPO runs two answers
    cfg.model = parent_cfg.model
    cfg.lora = parent_cfg.lora
    cfg.data = parent_cfg.data  # the parent's Q&A split is scored by the Metrics tab; the prompt template is its
    cfg.training.packing = "off"  # DPO pads chosen and rejected answers itself
    summary = {k: v for k, v in report.items() if k != "pairs"}
    prepared = PreparedData(read_jsonl(parent.train_data), read_jsonl(parent.eval_data),
                            {"kind": "preference", "parent_run": parent.id, "pairs_source": cfg.preference.pairs,
                             "train_pairs": len(train), "eval_pairs": len(held), "readiness": ready, "pairs": summary})
    return prepared, train, held


def _contradiction_note(report: dict) -> str:
    if not report["contradictions"]:
        return ""
    return (f" ({report['excluded']} vote(s) on {len(report['contradictions'])} question(s) contradict each other and "
            f"were left out; see `python -m workbench reviews --run RUN --pairs pairs.jsonl`.)")


# -- the training process -----------------------------------------------------------------------------

def is_preference_run(run_dir: Path) -> bool:
    try:
        return RunConfig.load(runs.RunFolder(run_dir).config).kind == "preference"
    except (ConfigError, OSError, UnicodeDecodeError):
        return False  # the SFT recipe reports a config it cannot read, as 'failed'


def adapter_digest(weights: dict) -> str:
    """sha256 over a LoRA adapter's tensors (float32, names without the adapter name), so the weights saved in a
    parent's adapter_model.safetensors and an adapter loaded under any name in a model compare equal."""
    digest = hashlib.sha256()
    for name in sorted(weights, key=_plain_name):
        digest.update(_plain_name(name).encode())
        digest.update(weights[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _plain_name(name: str) -> str:
    return name.replace(f".{POLICY}.", ".").replace(f".{REFERENCE}.", ".")


def named_adapter(model, adapter: str) -> dict:
    return {n: p for n, p in model.named_parameters() if f".{adapter}." in n and "lora_" in n}


def file_digest(adapter_dir: Path) -> str:
    from safetensors.torch import load_file

    return adapter_digest(load_file(str(Path(adapter_dir) / "adapter_model.safetensors")))


def build_trainer(cfg: RunConfig, run_dir: Path, device: str | None = None, callbacks=()):
    """(trainer, model, tokenizer): the 4-bit base with the parent's adapter as the trainable policy, and
    DPOTrainer holding a frozen copy of it as the reference."""
    from datasets import Dataset
    from peft import PeftModel
    from transformers import set_seed
    from trl import DPOConfig

    from workbench.evaluation.preferences import pair_tokens
    from workbench.models import load_model
    from workbench.training.recipe import one_gpu_per_process, training_arguments

    run = runs.RunFolder(run_dir)
    model, tokenizer, device = load_model(cfg.model, device or cfg.training.device)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    set_seed(cfg.training.seed)
    parent = runs.adapter_path(cfg.preference.parent_run)
    model = PeftModel.from_pretrained(model, str(parent), adapter_name=POLICY, is_trainable=True)

    def dataset(path):
        return Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"],
                                   **pair_tokens(p, tokenizer, cfg)} for p in read_jsonl(path)])

    base = training_arguments(cfg, run_dir, device)  # the SFT run's schedule, checkpoints and logging, as DPOConfig
    settings = {k: getattr(base, k) for k in _init_fields(base)}
    settings.update(beta=cfg.preference.beta, max_length=None,  # pairs are cut to max_seq_length by pair_tokens
                    precompute_ref_log_probs=False,  # the reference runs beside the policy: resume needs no cache
                    gradient_checkpointing=False)  # set on the model above, as the SFT recipe does
    args = one_gpu_per_process(DPOConfig(**settings))
    held = dataset(run.pairs_eval)
    trainer = _tokenized_trainer_class()(model=model, args=args, train_dataset=dataset(run.pairs_train),
                                         eval_dataset=held if len(held) else None, processing_class=tokenizer,
                                         callbacks=list(callbacks))
    if REFERENCE not in model.peft_config:  # TRL changed how it keeps the reference: refuse to train against the base
        raise RuntimeError("DPOTrainer did not create the frozen reference adapter; the reference would be the bare "
                           "base model, not the parent run. Check the installed trl version (1.16 expected).")
    return trainer, model, tokenizer


def _init_fields(args) -> list[str]:
    import dataclasses

    from transformers import TrainingArguments

    return [f.name for f in dataclasses.fields(TrainingArguments) if f.init and not f.name.startswith("_")]


def _tokenized_trainer_class():
    from trl import DPOTrainer

    class TokenizedDPOTrainer(DPOTrainer):
        """The pairs arrive tokenized exactly like SFT examples (evaluation.preferences.pair_tokens): same prompt,
        template, answer suffix and truncation; TRL's own tokenizing is skipped."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"])

    return TokenizedDPOTrainer


def run_preference_training(run_dir: Path, resume: bool = False) -> str:
    """Train the preference run in `run_dir` in this process (the slot already held). Returns the final state."""
    from workbench.training import checkpoints
    from workbench.training.callback import RunCallback
    from workbench.training.failures import explain
    from workbench.training.recipe import _config_failed, _mark_started, _set_aside_damaged_checkpoints, \
        _stop_on_sigterm

    run = runs.RunFolder(run_dir)
    _mark_started(run)
    try:
        cfg = runs.load_run_config(run.id)
    except ConfigError as exc:
        return _config_failed(run, exc)
    _stop_on_sigterm(run)
    try:
        if resume:
            _set_aside_damaged_checkpoints(run)
        checkpoint = checkpoints.pick_for_resume(run)[0] if resume else None
        if checkpoint is not None:
            run.truncate_events(runs.checkpoint_step(checkpoint))
        else:
            run.events.unlink(missing_ok=True)
        callback = RunCallback(run_dir, cfg)
        trainer, model, tokenizer = build_trainer(cfg, run_dir, callbacks=[callback])
        parent_digest = file_digest(runs.adapter_path(cfg.preference.parent_run))
        run.write_status(kind="preference", parent_run=cfg.preference.parent_run, parent_digest=parent_digest,
                         reference="the parent run's adapter, frozen (TRL adapter 'ref')")
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        reference_digest = adapter_digest(named_adapter(model, REFERENCE))
        run.write_status(reference_digest=reference_digest, reference_is_parent=reference_digest == parent_digest)
        if callback.stopped and trainer.state.global_step < trainer.state.max_steps:
            run.write_status(state="stopped", ended_at=runs.now_iso(),
                             reason="Stopped on request; resume continues from the saved checkpoint.")
            return "stopped"
        model.save_pretrained(run.adapter, selected_adapters=[POLICY])  # an ordinary adapter: chat and eval load it
        tokenizer.save_pretrained(run.adapter)
        cfg.save(run.adapter_run_config)
        _score_held_out(run, cfg, model, tokenizer)
        run.write_status(state="completed", ended_at=runs.now_iso(), step=trainer.state.global_step)
    except BaseException as exc:  # noqa: BLE001 - every failure must end as a readable 'failed' state
        with run.log.open("a") as log:
            log.write("\n" + redact("".join(traceback.format_exception(exc))))
        run.write_status(state="failed", ended_at=runs.now_iso(), reason=redact(explain(exc, cfg)),
                         error=redact(f"{type(exc).__name__}: {str(exc)[:500]}"))
        if isinstance(exc, KeyboardInterrupt):
            raise
        return "failed"
    if cfg.eval.run_after_training:
        from workbench.training.recipe import _evaluate_after_training

        _evaluate_after_training(run.id, cfg)
    return "completed"


def _score_held_out(run: runs.RunFolder, cfg: RunConfig, model, tokenizer) -> None:
    """Held-out preference accuracy with the model in memory (policy = the trained adapter, reference = the frozen
    parent copy): preference_metrics.json, as evaluation.preferences.preference_accuracy writes it from disk."""
    import json

    from workbench import paths
    from workbench.evaluation.preferences import held_out_accuracy, pair_tokens

    pairs = read_jsonl(run.pairs_eval)
    rows = [pair_tokens(p, tokenizer, cfg) for p in pairs]
    result = {"run_id": run.id, "parent_run": cfg.preference.parent_run, "computed_at": runs.now_iso(),
              **held_out_accuracy(model, rows, cfg.preference.beta, POLICY, REFERENCE, [p["id"] for p in pairs])}
    paths.atomic_write(run.preference_metrics, json.dumps(result, indent=1))


def main(run_dir: Path, resume: bool) -> int:
    """The training process of a preference run: the one slot, then train."""
    from workbench.training.recipe import in_the_slot

    return in_the_slot(run_dir.name, lambda: run_preference_training(run_dir, resume))
