"""Benchmark (not a test): side-by-side chat speed, time to first token and new tokens/s per column.

    python bench/bench_chat.py                     # the embedded SmolLM2-135M in 4-bit on this CPU
    python bench/bench_chat.py --mistral-shape     # a Mistral-7B-shaped model, random weights, 4-bit, on CUDA

The chat path itself (workbench.chat: one held 4-bit model, adapters loaded by name, one batched generate
with a per-row streamer) is what is timed. The mistral-shape mode also times plain `generate` on the
base model, with an adapter active, and the mixed base+adapter batch, so the cost of peft's per-row
adapter routing shows. Prints one JSON object per measurement.
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

QUESTIONS = ["What does the stack function do in Databricks SQL?",
             "How do I flatten an array column in PySpark?",
             "What is the difference between explode and explode_outer?"]
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


def random_adapter(model_config, path: Path, r: int = 16, seed: int = 0) -> Path:
    """A LoRA adapter folder with random A and B (non-zero, so it changes outputs), shaped for `model_config`."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    hidden = model_config.hidden_size
    head_dim = getattr(model_config, "head_dim", None) or hidden // model_config.num_attention_heads
    q_out, kv_out = model_config.num_attention_heads * head_dim, model_config.num_key_value_heads * head_dim
    shapes = {"q_proj": (hidden, q_out), "k_proj": (hidden, kv_out), "v_proj": (hidden, kv_out),
              "o_proj": (q_out, hidden)}
    gen = torch.Generator().manual_seed(seed)
    weights = {}
    for layer in range(model_config.num_hidden_layers):
        for name, (fan_in, fan_out) in shapes.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            weights[f"{prefix}.lora_A.weight"] = torch.randn(r, fan_in, generator=gen) / fan_in ** 0.5
            weights[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, r, generator=gen) * 0.02
    path.mkdir(parents=True, exist_ok=True)
    LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(TARGETS), lora_dropout=0.0, task_type="CAUSAL_LM",
               inference_mode=True).save_pretrained(path)
    save_file(weights, path / "adapter_model.safetensors")
    return path


def time_pair(held, names, prompts, max_new_tokens: int) -> dict:
    """One side-by-side answer through chat.stream_pair: first token and tokens/s of each column."""
    from workbench.chat import session as chat

    t0 = time.perf_counter()
    with held.lock:
        for update in chat.stream_pair(held, names, prompts, chat.ChatSettings(max_new_tokens=max_new_tokens,
                                                                                   repetition_penalty=1.0)):
            pass
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "first_token_s": update.first_token_s, "tokens_per_s": update.tokens_per_s,
            "tokens": update.tokens}


def sequential_pair(held, adapter: str, prompt, max_new_tokens: int) -> float:
    """Baseline: the two answers one after the other with plain generate (adapter off, then on); wall seconds."""
    import torch

    ids = torch.tensor([prompt])
    kwargs = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False,
                  pad_token_id=held.tokenizer.pad_token_id or held.tokenizer.eos_token_id)
    t0 = time.perf_counter()
    with held.lock, torch.inference_mode():
        with held.model.disable_adapter():
            held.model.generate(ids, **kwargs)
        held.model.set_adapter(adapter)
        held.model.generate(ids, **kwargs)
    return time.perf_counter() - t0


def summarize(label: str, results: list[dict], extra: dict | None = None) -> dict:
    out = {"bench": label, **(extra or {})}
    for col, name in enumerate(("left", "right")):
        firsts = [r["first_token_s"][col] for r in results if r["first_token_s"][col] is not None]
        rates = [r["tokens_per_s"][col] for r in results if r["tokens_per_s"][col]]
        out[f"{name}_first_token_s"] = round(statistics.median(firsts), 3) if firsts else None
        out[f"{name}_tokens_per_s"] = round(statistics.median(rates), 1) if rates else None
        out[f"{name}_tokens"] = [r["tokens"][col] for r in results]
    return out


def cpu_bench(max_new_tokens: int, repeats: int) -> None:
    import torch

    from workbench.chat import session as chat
    from workbench.config import ModelConfig

    t0 = time.perf_counter()
    held = chat.held_model(ModelConfig(), "cpu")
    load_s = time.perf_counter() - t0
    chat.ensure_adapter(held, "bench", random_adapter(held.model.config, Path(tempfile.mkdtemp()) / "adapter", r=8))
    print(json.dumps({"device": "cpu", "threads": torch.get_num_threads(), "model": "embedded SmolLM2-135M (4-bit)",
                      "load_s": round(load_s, 1)}), flush=True)
    prompts = [chat.prompt_ids(held.tokenizer, [], q) for q in QUESTIONS]
    time_pair(held, ["__base__", "bench"], [prompts[0]] * 2, 4)  # warm-up
    pairs = [time_pair(held, ["__base__", "bench"], [p, p], max_new_tokens) for p in prompts[:repeats]]
    print(json.dumps(summarize("chat side by side: base | adapter, one batched generate", pairs,
                               {"max_new_tokens": max_new_tokens, "target_first_token_s": 1.0})), flush=True)
    # Same run, same prompts: both answers complete; the pair (one batched, streamed generate) vs the baseline
    # of two plain generates one after the other.
    pair_walls = [time_pair(held, ["__base__", "bench"], [p, p], max_new_tokens)["wall_s"] for p in prompts[:repeats]]
    seq_walls = [sequential_pair(held, "bench", p, max_new_tokens) for p in prompts[:repeats]]
    print(json.dumps({"bench": "both answers complete: batched pair vs two sequential generates",
                      "pair_wall_s": round(statistics.median(pair_walls), 2),
                      "sequential_wall_s": round(statistics.median(seq_walls), 2),
                      "speedup": round(statistics.median(seq_walls) / statistics.median(pair_walls), 2)}), flush=True)
    multi = chat.prompt_ids(held.tokenizer, [{"role": "user", "content": QUESTIONS[1]},
                                             {"role": "assistant", "content": "Use explode."}], QUESTIONS[2])
    mixed = time_pair(held, ["__base__", "bench"], [prompts[0], multi], max_new_tokens)
    print(json.dumps(summarize("different histories per column (left-padded batch)", [mixed])), flush=True)


# -- mistral-shape (GPU) ----------------------------------------------------------------------

def build_mistral_shape(folder: Path, layers: int, device: str) -> Path:
    """Save a Mistral-7B-shaped model with random bf16 weights and a stand-in word-level tokenizer, once."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast

    if (folder / "config.json").is_file():
        return folder
    cfg = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, rms_norm_eps=1e-5,
                        rope_theta=1e6, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        model = MistralForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 32000)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                            pad_token="<unk>").save_pretrained(folder)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def time_generate(model, batch: int, prompt_len: int, new_tokens: int, **kwargs) -> float:
    """New tokens per second per row of a plain `generate` (fixed length: min = max new tokens)."""
    import torch

    device = next(model.parameters()).device
    ids = torch.randint(3, 32000, (batch, prompt_len), device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, **kwargs)
    sync()
    return new_tokens / (time.perf_counter() - t0)


def mistral_bench(layers: int, device: str, prompt_len: int, new_tokens: int) -> None:
    import torch

    from workbench.chat import session as chat
    from workbench.config import ModelConfig

    folder = build_mistral_shape(Path(os.environ.get("MISTRAL_SHAPE_DIR", f"/tmp/mistral-shape-{layers}L")),
                                 layers, device)
    t0 = time.perf_counter()
    held = chat.held_model(ModelConfig(name_or_path=str(folder)), device)
    info = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu", "layers": layers,
            "load_4bit_s": round(time.perf_counter() - t0, 1), "prompt_tokens": prompt_len, "new_tokens": new_tokens}
    if device == "cuda":
        info["weights_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    print(json.dumps(info), flush=True)
    time_generate(held.model, 1, 16, 4)  # warm-up
    rows = {"plain generate, base, batch 1": time_generate(held.model, 1, prompt_len, new_tokens),
            "plain generate, base, batch 2": time_generate(held.model, 2, prompt_len, new_tokens)}
    chat.ensure_adapter(held, "bench", random_adapter(held.model.config, Path(tempfile.mkdtemp()) / "adapter"))
    held.model.set_adapter("bench")
    rows["generate with adapter, batch 1"] = time_generate(held.model, 1, prompt_len, new_tokens)
    rows["mixed base+adapter batch 2 (plain generate)"] = time_generate(
        held.model, 2, prompt_len, new_tokens, adapter_names=["__base__", "bench"])
    for label, rate in rows.items():
        print(json.dumps({"bench": label, "tokens_per_s_per_row": round(rate, 1)}), flush=True)
    prompt = torch.randint(3, 32000, (prompt_len,)).tolist()
    pairs = [time_pair(held, ["__base__", "bench"], [prompt, prompt], new_tokens) for _ in range(2)]
    extra = {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)} if device == "cuda" else {}
    print(json.dumps(summarize("chat.stream_pair: base | adapter, streamed", pairs, extra)), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mistral-shape", action="store_true", help="Mistral-7B-shaped random model in 4-bit.")
    parser.add_argument("--layers", type=int, default=32, help="Mistral-shape layers (32 = the real 7B shape).")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda for mistral-shape, else cpu).")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=128, help="Mistral-shape prompt length.")
    parser.add_argument("--repeats", type=int, default=3, help="CPU mode: how many questions to time.")
    args = parser.parse_args()
    if args.mistral_shape:
        mistral_bench(args.layers, args.device or "cuda", args.prompt_tokens, args.max_new_tokens)
    else:
        cpu_bench(args.max_new_tokens, min(args.repeats, len(QUESTIONS)))


if __name__ == "__main__":
    main()
