"""The peer in bench/train_speed.py: the seed recipe's batches trained with Unsloth's model (issue 14).

Run by `python bench/train_speed.py --peer-site DIR` in a fresh process (Unsloth patches transformers and peft when
it is imported, which must not reach the workbench's own variants), with DIR first on PYTHONPATH holding the Unsloth
wheels (`pip install --target DIR --no-deps .whl_unsloth/*.whl`). Everything but the model is the seed variant's:
the same run config (batch 4 x grad-accum 4, padded to the longest, seq 512, the same dbdemos examples in the same
order, gradient checkpointing), `recipe.run_training` and its Trainer, tokens/s from the run's events. The model is
`FastLanguageModel.from_pretrained(load_in_4bit=True)` + `FastLanguageModel.get_peft_model` with the seed's LoRA
(r16/alpha32 on q/k/v/o, the seed's dropout) and Unsloth's own gradient checkpointing.

    python bench/unsloth_peer.py --steps 16 --out /tmp/unsloth.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("WORKBENCH_HOME", "/tmp/wb-speed-peer")
    result = {"variant": "unsloth", "state": "failed"}
    try:
        import unsloth  # noqa: F401 - first: it patches transformers and peft
        from unsloth import FastLanguageModel

        import torch

        import train_speed
        from workbench import models, runs
        from workbench.training import jobs, recipe

        result["unsloth"] = getattr(unsloth, "__version__", "?")
        cfg = train_speed.config("unsloth", args.steps, seed_recipe=True)

        def build_model(c, device):
            from transformers import set_seed

            set_seed(c.training.seed)
            model, _ = FastLanguageModel.from_pretrained(model_name=c.model.name_or_path,
                                                         max_seq_length=c.model.max_seq_length,
                                                         dtype=torch.bfloat16, load_in_4bit=True)
            model = FastLanguageModel.get_peft_model(model, r=c.lora.r, lora_alpha=c.lora.alpha,
                                                     lora_dropout=c.lora.dropout,
                                                     target_modules=list(c.lora.target_modules), bias="none",
                                                     use_gradient_checkpointing="unsloth",
                                                     random_state=c.training.seed)
            return model, models.load_tokenizer(c.model.name_or_path), "cuda"

        recipe.build_model = build_model
        torch.cuda.reset_peak_memory_stats()
        run_id = jobs.create_run(cfg)
        t0 = time.time()
        state = recipe.run_training(runs.run_path(run_id))
        events = [e for e in runs.read_events(run_id) if "loss" in e]
        rates = [e["tokens_per_s"] for e in events if e.get("tokens_per_s") and e["step"] > train_speed.LOGGING_STEPS]
        result.update(state=state, reason=runs.read_status(run_id).get("reason", ""), steps=len(events),
                      tokens_per_s=round(statistics.median(rates), 1) if rates else None,
                      tokens_per_s_all=[e.get("tokens_per_s") for e in events],
                      peak_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                      losses=[round(e["loss"], 4) for e in events], wall_s=round(time.time() - t0, 1))
    except Exception as exc:  # noqa: BLE001 - the reason is the result when the peer cannot run here
        import traceback

        result["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
        result["traceback"] = traceback.format_exc()[-3000:]
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("tokens_per_s_all", "losses", "traceback")}),
          flush=True)


if __name__ == "__main__":
    main()
