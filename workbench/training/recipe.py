"""The training recipe: 4-bit base model + LoRA, answer-only loss, Hugging Face Trainer.

Read top to bottom: claim the slot, load config and the run's data, load the quantized model,
attach LoRA, tokenize, train (with a callback that writes events and obeys stop requests), save
the adapter, record the final state. Every failure ends as 'failed' with a reason a person can act on.
"""
from __future__ import annotations

import signal
import traceback
from pathlib import Path

from workbench import runs
from workbench.config import ConfigError, RunConfig
from workbench.safety import redact
from workbench.training import checkpoints, distributed, jobs
from workbench.training.callback import RunCallback
from workbench.training.failures import explain


def build_model(cfg: RunConfig, device: str):
    """Quantized base + LoRA. Non-quantized layers keep their bf16 dtype (no fp32 upcast)."""
    from peft import LoraConfig, get_peft_model

    from workbench.models import load_model

    model, tokenizer, device = load_model(cfg.model, device)
    from workbench.training import packing

    from workbench.training import compiled

    packed = packing.resolve(cfg, device, model)
    compiling = compiled.wanted(cfg, device, packed)
    if packed:  # per-example attention over packed rows (+ fused kernels if installed and not compiling)
        from workbench.training import attention

        attention.use_packed_attention(model)
        if device == "cuda" and not compiling:  # inductor fuses the same norm/RoPE/SwiGLU work itself
            print(f"kernels: {', '.join(packing.apply_kernels(model)) or 'none (liger-kernel not installed)'}",
                  flush=True)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()  # what prepare_model_for_kbit_training does, minus the fp32 upcast
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=list(cfg.lora.target_modules), bias=cfg.lora.bias, task_type="CAUSAL_LM")
    from transformers import set_seed

    set_seed(cfg.training.seed)  # the adapter's initial weights follow the run's seed, whatever ran before
    model = get_peft_model(model, lora)
    if _packed(cfg, device):  # the loss applies the LM head itself, in chunks (workbench.training.packing)
        from workbench.training import packing

        packing.use_chunked_loss(model)
    if compiling:
        print(f"compiled: {compiled.compile_layers(model)} transformer layers (torch.compile; the first step includes "
              f"the compile)", flush=True)
    return model, tokenizer, device


def _packed(cfg: RunConfig, device: str) -> bool:
    from workbench.training import packing

    return packing.enabled(cfg, device)


def tokenized(records: list[dict], tokenizer, cfg: RunConfig) -> list[dict]:
    """A plain list is a valid map-style dataset for the Trainer."""
    from workbench.formatting import tokenize_example

    rows = []
    for r in records:
        ex = tokenize_example(r, tokenizer, cfg.model.max_seq_length, cfg.data.template, cfg.data.system_prompt)
        if ex["answer_tokens"] > 0:
            rows.append({k: ex[k] for k in ("input_ids", "attention_mask", "labels")})
    return rows


class PadCollator:
    """Pad to the longest example in the batch; labels padded with -100 so padding carries no loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, batch):
        import torch

        from workbench.formatting import IGNORE_INDEX

        width = max(len(b["input_ids"]) for b in batch)
        def pad(key, value):
            return torch.tensor([b[key] + [value] * (width - len(b[key])) for b in batch])
        return {"input_ids": pad("input_ids", self.pad_id), "attention_mask": pad("attention_mask", 0),
                "labels": pad("labels", IGNORE_INDEX)}


def training_arguments(cfg: RunConfig, run_dir: Path, device: str):
    import torch
    from transformers import TrainingArguments

    t = cfg.training
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported() and cfg.model.compute_dtype == "bfloat16"
    eval_every = "steps" if t.eval_steps else "epoch"
    # Packed: a step's batch_size x grad_accum examples (the same ones, in the same order) go in as one packed
    # batch, cut to the GPU's token budget by the collator instead of into grad_accum padded batches.
    batch, accum = (t.batch_size * t.grad_accum, 1) if _packed(cfg, device) else (t.batch_size, t.grad_accum)
    return one_gpu_per_process(TrainingArguments(
        output_dir=str(runs.RunFolder(run_dir).checkpoints), per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch, gradient_accumulation_steps=accum,
        learning_rate=t.learning_rate, num_train_epochs=t.epochs, max_steps=t.max_steps or -1,
        # Not a slip: transformers 5 dropped `warmup_ratio`; a `warmup_steps` below 1 is read as that share of the run.
        lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm, optim=t.optimizer, logging_steps=t.logging_steps,
        eval_strategy=eval_every, eval_steps=t.eval_steps or None, save_strategy=t.save_strategy,
        # save_steps only counts with save_strategy "steps", where validation requires it above 0; the 500 is a
        # placeholder the Trainer ignores with "epoch". Three checkpoints are kept, not one: when the newest is
        # damaged (a kill mid-write, a full disk), resume falls back to an older one (workbench.training.checkpoints).
        save_steps=t.save_steps or 500, save_total_limit=3, seed=t.seed, bf16=bf16,
        fp16=device == "cuda" and not bf16 and cfg.model.compute_dtype != "float32",
        use_cpu=device == "cpu", report_to="none", remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding", dataloader_num_workers=0, disable_tqdm=False,
        ddp_backend=("gloo" if device == "cpu" else "nccl") if distributed.world_size() > 1 else None,
        ddp_find_unused_parameters=False if distributed.world_size() > 1 else None,
        # No buffer changes in training (RoPE tables, no batch norm): DDP's per-forward broadcast from rank 0 is waste.
        ddp_broadcast_buffers=False if distributed.world_size() > 1 else None))


def one_gpu_per_process(args):
    """A training process uses one GPU. On a machine with several, a single process's TrainingArguments count them
    all (`n_gpu`), and the Trainer then divides the step's answer-token count by that number, as for DataParallel —
    which it never applies to 4-bit models — so the loss and its gradient came out N times too large (seen on two
    H200s: 23.2 instead of 11.6). Several GPUs are used through training.num_processes (one process each)."""
    if args.n_gpu > 1:  # (reading n_gpu sets the devices up once; the Trainer reads the same attribute)
        args._n_gpu = 1
    return args


def run_training(run_dir: Path, resume: bool = False) -> str:
    """Train the run in `run_dir` in this process. Returns the final state."""
    from transformers import Trainer

    from workbench.data.dataset import read_jsonl

    run = runs.RunFolder(run_dir)
    run_id = run.id
    rank_of_many = distributed.inside_launch()  # one of several processes started by the supervisor
    if not rank_of_many:
        _mark_started(run)
    try:
        cfg = runs.load_run_config(run_id)
    except ConfigError as exc:
        return _config_failed(run, exc)
    _stop_on_sigterm(run)
    try:
        if resume and not rank_of_many:  # the supervisor did this for its ranks
            _set_aside_damaged_checkpoints(run)
        checkpoint = checkpoints.pick_for_resume(run)[0] if resume else None
        if checkpoint is not None:  # the curve continues from the checkpoint: no duplicated steps
            run.truncate_events(runs.checkpoint_step(checkpoint))
        elif distributed.is_main():
            run.events.unlink(missing_ok=True)
        callback = RunCallback(run_dir, cfg)
        model, tokenizer, device = build_model(cfg, cfg.training.device)
        train_ds = tokenized(read_jsonl(run.train_data), tokenizer, cfg)
        eval_ds = tokenized(read_jsonl(run.eval_data), tokenizer, cfg)
        trainer_class, collator = Trainer, PadCollator(tokenizer.pad_token_id)
        if _packed(cfg, device):
            from workbench.training import packing

            from workbench.training import compiled

            fixed = cfg.model.max_seq_length if compiled.wanted(cfg, device, True) else 0
            collator = packing.PackedCollator(packing.token_budget(model, cfg, device), fixed)
            trainer_class = packing.PackedTrainer
            print(f"packed rows: {cfg.training.batch_size * cfg.training.grad_accum} examples a step, at most "
                  f"{collator.max_tokens} tokens a forward pass", flush=True)
        trainer = trainer_class(model=model, args=training_arguments(cfg, run_dir, device), train_dataset=train_ds,
                                eval_dataset=eval_ds, data_collator=collator, callbacks=[callback])
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if callback.stopped and trainer.state.global_step < trainer.state.max_steps:
            runs.write_status(run_id, state="stopped", ended_at=runs.now_iso(),
                              reason="Stopped on request; resume continues from the saved checkpoint.")
            return "stopped"
        distributed.record_replica(run_dir, model, trainer.state.global_step)
        if distributed.is_main():
            model.save_pretrained(run.adapter)
            tokenizer.save_pretrained(run.adapter)
            cfg.save(run.adapter_run_config)
        runs.write_status(run_id, state="completed", ended_at=runs.now_iso(), step=trainer.state.global_step)
    except BaseException as exc:  # noqa: BLE001 - every failure must end as a readable 'failed' state
        with run.log.open("a") as log:
            log.write("\n" + redact("".join(traceback.format_exception(exc))))
        runs.write_status(run_id, state="failed", ended_at=runs.now_iso(), reason=redact(explain(exc, cfg)),
                          error=redact(f"{type(exc).__name__}: {str(exc)[:500]}"))
        if isinstance(exc, KeyboardInterrupt):
            raise
        return "failed"
    if not rank_of_many:  # with several processes the supervisor scores the run once they have ended
        _evaluate_after_training(run_id, cfg)
    return "completed"


def _mark_started(run: runs.RunFolder) -> None:
    """The process that owns the run (single process, or the supervisor of several) records its start, and who it
    is: pid and start time, which runs.run_alive() checks (with the training lock this process holds)."""
    stopping = run.read_status().get("state") == "stopping"  # a stop asked for while the process started
    if not stopping:
        run.stop_file.unlink(missing_ok=True)  # left over from an earlier stop of this run
    run.write_status(state="stopping" if stopping else "running", **runs.process_record(),
                     started_at=runs.now_iso(), reason="", ended_at=None, start_step=None)  # set when training begins


def _config_failed(run: runs.RunFolder, exc: ConfigError) -> str:
    """config.yaml is damaged: end as 'failed' with the YAML error as the reason (not 'running' forever)."""
    reason = (f"The run's configuration cannot be read: {exc} Fix config.yaml (compare with `python -m workbench "
              f"config --preset quick-demo-cpu`), or delete the run with `python -m workbench delete {run.id}`.")
    with run.log.open("a") as log:
        log.write(f"\n[{runs.now_iso()}] {reason}\n")
    run.write_status(state="failed", ended_at=runs.now_iso(), reason=redact(reason))
    return "failed"


def _set_aside_damaged_checkpoints(run: runs.RunFolder) -> None:
    """Before resuming: rename checkpoints newer than the newest intact one (a kill mid-write, a truncated file) so
    the Trainer neither resumes from them nor rotates them away, and say so in status.json and train.log."""
    checkpoint, notes = checkpoints.pick_for_resume(run)
    if not notes:
        return
    moved = [checkpoints.set_aside(p).name for p in run.checkpoint_dirs()
             if checkpoint is None or runs.checkpoint_step(p) > runs.checkpoint_step(checkpoint)]
    where = f"resuming from {checkpoint.name}" if checkpoint else "no intact checkpoint left; training starts at step 0"
    note = f"{'; '.join(notes)}: {where} (set aside as {', '.join(moved)})."
    with run.log.open("a") as log:
        log.write(f"\n[{runs.now_iso()}] {note}\n")
    run.write_status(resume_note=note)


def run_supervised(run_dir: Path, resume: bool, processes: int) -> str:
    """Train with several processes through accelerate; this process waits, then checks what they left."""
    from workbench.models import ModelNotAvailable, pick_device

    run = runs.RunFolder(run_dir)
    run_id = run.id
    _mark_started(run)
    try:
        cfg = runs.load_run_config(run_id)
    except ConfigError as exc:
        return _config_failed(run, exc)
    if resume:
        _set_aside_damaged_checkpoints(run)
    try:
        device = pick_device(cfg.training.device)
    except ModelNotAvailable as e:
        runs.write_status(run_id, state="failed", ended_at=runs.now_iso(), reason=str(e))
        return "failed"
    runs.write_status(run_id, processes=processes)
    _stop_on_sigterm(run)  # the ranks see the STOP file and agree to stop, save, and end
    code = distributed.supervise(run_dir, resume, processes, on_cpu=device == "cpu")
    status = runs.read_status(run_id)
    if status.get("state") in ("running", "stopping", "queued"):  # a rank died before rank 0 could say why
        runs.write_status(run_id, state="failed", ended_at=runs.now_iso(),
                          reason=f"One of the {processes} training processes ended with exit code {code} before the "
                                 f"run finished; the traceback is in train.log. Resume continues from the last "
                                 f"checkpoint.")
        return "failed"
    if status.get("state") == "completed":
        runs.write_status(run_id, replicas_agree=distributed.replicas_agree(run_dir, processes))
        _evaluate_after_training(run_id, cfg)
    return status.get("state", "failed")


def _stop_on_sigterm(run: runs.RunFolder) -> None:
    """SIGTERM asks for the same graceful stop as the STOP file: the callback saves and ends 'stopped'."""
    def request_stop(signum, frame):
        run.stop_file.write_text(f"signal {signum} at {runs.now_iso()}")

    signal.signal(signal.SIGTERM, request_stop)


def _evaluate_after_training(run_id: str, cfg: RunConfig) -> None:
    if not cfg.eval.run_after_training:
        return
    from workbench.evaluation.evaluate import evaluate_run

    try:
        evaluate_run(run_id)
    except Exception as exc:  # the run itself succeeded; record why the scoring did not
        runs.write_status(run_id, eval_error=f"Evaluation after training failed: {type(exc).__name__}: {exc}")


def main(run_dir: Path, resume: bool) -> int:
    run_id = run_dir.name
    if distributed.inside_launch():  # a rank started by run_supervised: the supervisor holds the slot
        bound = distributed.bind_to_gpu_cpus()
        if bound:
            print(bound, flush=True)
        state = run_training(run_dir, resume)
        print(f"run {run_id} rank {distributed.rank()}: {state}")
        return 0 if state in ("completed", "stopped") else 1

    def train() -> str:
        try:
            processes = distributed.processes_for(runs.load_run_config(run_id))
        except Exception:  # noqa: BLE001 - run_training reports a config it cannot read, as 'failed'
            processes = 1
        return run_supervised(run_dir, resume, processes) if processes > 1 else run_training(run_dir, resume)

    return in_the_slot(run_id, train)


def in_the_slot(run_id: str, train) -> int:
    """A training process's frame (SFT and preference runs alike): claim the one training slot for this process (or
    end the run as 'failed' with why), call `train()` -> final state, release the slot. Returns the exit code."""
    try:
        jobs.claim_slot_for_current_process(run_id)
    except jobs.JobError as e:
        runs.write_status(run_id, state="failed", reason=str(e), ended_at=runs.now_iso())
        print(f"error: {e}")
        return 1
    try:
        state = train()
    finally:
        jobs.release_slot(run_id)
    print(f"run {run_id}: {state}")
    return 0 if state in ("completed", "stopped") else 1
