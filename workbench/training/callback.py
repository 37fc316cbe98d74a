"""The Trainer callback inside the training process: one event per log step into the run folder's
events.jsonl, status updates, timed saves, stop requests (agreed by all ranks), NaN/inf checks, and the
test-only fault injection (WORKBENCH_FAULT). The app never imports this module (it needs transformers).
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from workbench import runs
from workbench.config import RunConfig
from workbench.training import checkpoints, distributed
from workbench.training.events import _number
from workbench.training.failures import NonFiniteLoss

AGREE_EVERY_GPU = 4  # steps between the GPU ranks' agreement on stop / timed save (each one waits for every GPU)


# What TRL's DPOTrainer logs (preference runs), under the event names the views plot; eval_* for held-out pairs.
PREFERENCE_LOGS = {"rewards/margins": "reward_margin", "rewards/chosen": "reward_chosen",
                   "rewards/rejected": "reward_rejected", "rewards/accuracies": "preference_accuracy"}
PREFERENCE_LOGS.update({f"eval_{k}": f"eval_{v}" for k, v in PREFERENCE_LOGS.items()})


class RunCallback(TrainerCallback):
    """Writes one event per log step, saves on a timer, obeys STOP, fails on NaN/inf loss."""

    def __init__(self, run_dir: Path, cfg: RunConfig):
        self.run, self.cfg = runs.RunFolder(run_dir), cfg
        self.started = time.time()
        self.offset = _last_elapsed(self.run.read_event_log()[0])  # a resumed run's clock continues
        self.last_save = time.time()
        self.last_log = (time.time(), 0)
        self.stopped = False
        self.fault = os.environ.get("WORKBENCH_FAULT", "")  # test-only fault injection, e.g. oom_at_step:2

    def on_train_begin(self, args, state, control, **kw):
        stopping = self.run.stop_file.exists()
        self.run.write_status(state="stopping" if stopping else "running", total_steps=state.max_steps,
                              step=state.global_step, start_step=state.global_step)  # model and checkpoint loaded
        self.last_log = (time.time(), state.num_input_tokens_seen or 0)

    def on_step_begin(self, args, state, control, model=None, **kw):
        kind, _, at = self.fault.partition("_at_step:")
        if not at or state.global_step + 1 != int(at):
            return
        import torch

        if kind == "oom":  # simulated: no GPU here to exhaust; the real exception type is raised
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated fault)")
        if kind == "nan":  # a real NaN: poison one LoRA weight so the forward pass produces NaN
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))
        if kind == "crash":
            raise RuntimeError("simulated crash")

    def on_log(self, args, state, control, logs=None, **kw):
        logs = logs or {}
        if not any(k in logs for k in ("loss", "eval_loss")):
            return
        now = time.time()
        tokens = state.num_input_tokens_seen or 0
        t0, tok0 = self.last_log
        event = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "ts": now,
                 "elapsed": round(self.offset + now - self.started, 2)}
        for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
            if key in logs:
                event[key] = float(logs[key])
        for key, name in PREFERENCE_LOGS.items():
            if key in logs:
                event[name] = float(logs[key])
        if "loss" in logs:
            event["tokens_per_s"] = round((tokens - tok0) / max(now - t0, 1e-6), 1)
            self.last_log = (now, tokens)
        event.update(memory())
        if distributed.world_size() > 1:  # every rank logs at the same steps: one gather of each one's memory
            key = "gpu_mem_gb" if "gpu_mem_gb" in event else "cpu_mem_gb"
            per_rank = [round(v[0], 3) for v in distributed.gather_numbers([event[key]])]
            event[f"{key}_ranks"], event[key] = per_rank, max(per_rank)
        self.run.append_event(event)
        self.run.write_status(step=state.global_step, total_steps=state.max_steps, epoch=event["epoch"],
                              last_loss=event.get("loss"))
        for key in ("loss", "eval_loss"):
            if key in event and not math.isfinite(event[key]):
                raise NonFiniteLoss(f"{key} became {event[key]} at step {state.global_step}")

    def on_step_end(self, args, state, control, **kw):
        minutes = self.cfg.training.save_every_minutes
        timed_save = bool(minutes) and time.time() - self.last_save > minutes * 60
        # With several processes every rank must take the same decision at the same step, or one waits forever;
        # GPU ranks agree every AGREE_EVERY_GPU steps (and on the last), since each agreement waits for every GPU.
        if distributed.world_size() > 1:
            every = AGREE_EVERY_GPU if distributed.on_gpus() else 1
            if state.global_step % every and state.global_step < state.max_steps:
                return
            timed_save, stop = distributed.agree(timed_save, self.run.stop_file.exists())
        else:
            stop = self.run.stop_file.exists()
        if timed_save:
            control.should_save = True
        if stop:
            self.stopped = True
            control.should_save = True
            control.should_training_stop = True

    def on_save(self, args, state, control, **kw):
        """Called after the Trainer has written checkpoint-<step>/ completely: mark it so (rank 0 writes)."""
        self.last_save = time.time()
        checkpoint = self.run.checkpoint(state.global_step)
        if distributed.is_main() and checkpoint.is_dir():
            checkpoints.mark_complete(checkpoint)
        self.run.write_status(last_checkpoint_step=state.global_step)


def _last_elapsed(events: list[dict]) -> float:
    values = [_number(e.get("elapsed")) for e in events if isinstance(e, dict)]
    return max([v for v in values if v is not None and math.isfinite(v)], default=0.0)


def memory() -> dict:
    """Resident memory of this process, and peak GPU memory when there is a GPU."""
    import psutil
    import torch

    mem = {"cpu_mem_gb": round(psutil.Process().memory_info().rss / 2**30, 3)}
    if torch.cuda.is_available():
        mem["gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return mem
