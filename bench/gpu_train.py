"""GPU benchmark (not a test): the seed recipe on a Mistral-7B-shaped model, through workbench.train.

    python bench/gpu_train.py                 # 24 steps, batch 4 x accumulation 4, seq <= 512
    python bench/gpu_train.py --steps 40 --seq 1024
    python bench/gpu_train.py --tiny          # a 2-layer model: checks the script end to end on a CPU

No real checkpoint can reach the GPU machine, so the model is built from `MistralConfig` with random
weights (speed and memory do not depend on weight values), saved to a local folder, then loaded in
4-bit NF4 by the same `models.load_model` path a real Mistral-7B takes. The tokenizer is byte-level
(one token per byte, built here, nothing downloaded), so most Q&A examples fill the sequence length;
pass --tokenizer DIR to use a real tokenizer folder instead.
Prints one JSON object: tokens/s (median over steps after warm-up), peak GPU memory, the estimate.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MISTRAL_7B_SHAPE = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
                        rope_theta=1e6)
TINY_SHAPE = dict(MISTRAL_7B_SHAPE, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} "
                 "[/INST]{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}")


def byte_tokenizer():
    """A byte-level tokenizer with Mistral's special tokens and an [INST] chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  pad_token="</s>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model_folder(folder: Path, shape: dict, tokenizer_dir: str | None) -> Path:
    """Save a randomly initialised Mistral of `shape` (bf16) and a tokenizer into `folder`, once."""
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    if (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file():
        return folder
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = MistralConfig(**shape, dtype="bfloat16")
    with torch.device(device):
        model = MistralForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    tok = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else byte_tokenizer()
    tok.save_pretrained(folder)
    return folder


def bench_config(model_dir: Path, args):
    """The seed recipe (bs 4, accumulation 4, gradient checkpointing, SDPA, 8-bit paged AdamW on a GPU)."""
    from workbench.config import preset

    cfg = preset("seed-mistral-7b-gpu")
    cfg.name = "gpu-train-bench"
    cfg.model.name_or_path = str(model_dir)
    cfg.model.max_seq_length = args.seq
    cfg.data.source = args.data
    cfg.training.max_steps = args.steps
    cfg.training.logging_steps = 1
    cfg.training.eval_steps = 10 * args.steps  # no evaluation inside the measured steps
    cfg.training.save_strategy = "steps"
    cfg.training.save_steps = 10 * args.steps  # nor checkpoints (the final adapter is still saved)
    cfg.training.save_every_minutes = 0
    cfg.eval.run_after_training = False
    if args.tiny:
        cfg.training.device = "auto"
        cfg.training.optimizer = "adamw_torch"
    return cfg


def summarize(run_id: str, wall: float, warmup: int) -> dict:
    import torch

    from workbench import estimate, runs

    events = [e for e in runs.read_events(run_id) if "loss" in e]
    rates = [e["tokens_per_s"] for e in events[warmup:]] or [e["tokens_per_s"] for e in events]
    cfg = runs.load_run_config(run_id)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "device": gpu or "cpu", "state": runs.read_status(run_id).get("state"), "steps": len(events),
        "wall_s": round(wall, 1), "tokens_per_s_median": statistics.median(rates) if rates else None,
        "tokens_per_s_steps": rates,
        "first_loss": events[0]["loss"] if events else None, "last_loss": events[-1]["loss"] if events else None,
        "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        "peak_gpu_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if gpu else None,
        "peak_cpu_rss_gb": max((e.get("cpu_mem_gb", 0) for e in events), default=None),
        "estimate_gb": estimate.estimate_vram_gb(cfg),
        "recipe": {"batch_size": cfg.training.batch_size, "grad_accum": cfg.training.grad_accum,
                   "max_seq_length": cfg.model.max_seq_length, "gradient_checkpointing":
                   cfg.training.gradient_checkpointing, "optimizer": cfg.training.optimizer, "attn": "sdpa"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps to run (default 24)")
    parser.add_argument("--seq", type=int, default=512, help="max_seq_length (default 512)")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the tokens/s median")
    parser.add_argument("--data", default="sample", help="data source: sample (shipped), dbdemos, or a file")
    parser.add_argument("--model-dir", default=os.environ.get("MISTRAL_SHAPE_DIR", ""),
                        help="where the random model is saved (default: a temp folder)")
    parser.add_argument("--tokenizer", default=None, help="a tokenizer folder to use instead of the byte one")
    parser.add_argument("--tiny", action="store_true", help="2 small layers instead of the 7B shape (a CPU check)")
    args = parser.parse_args()

    os.environ.setdefault("WORKBENCH_HOME", tempfile.mkdtemp(prefix="wb-gpu-train-"))
    shape = TINY_SHAPE if args.tiny else MISTRAL_7B_SHAPE
    folder = Path(args.model_dir or tempfile.mkdtemp(prefix="mistral-shape-"))
    t0 = time.time()
    build_model_folder(folder, shape, args.tokenizer)
    print(json.dumps({"model_folder": str(folder), "build_s": round(time.time() - t0, 1)}), flush=True)

    from workbench import runs, train

    run_id = runs.create_run(bench_config(folder, args))
    t0 = time.time()
    rc = train.main(runs.run_path(run_id), resume=False)  # the same entry point as `workbench train --run-dir`
    result = summarize(run_id, time.time() - t0, args.warmup)
    result["rc"] = rc
    if rc != 0:
        result["reason"] = runs.read_status(run_id).get("reason")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
