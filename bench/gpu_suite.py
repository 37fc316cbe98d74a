"""GPU benchmarks on a Mistral-7B-shaped model with random weights (no real checkpoint reaches the GPU machine;
speed and memory do not depend on weight values).

  python bench/gpu_suite.py train      # the seed recipe through workbench.train, vs a baseline that upcasts with
                                       # peft's prepare_model_for_kbit_training (same run, same data)
  python bench/gpu_suite.py generate   # plain 4-bit generate: base, with adapter, mixed base+adapter batch
  python bench/gpu_suite.py scale      # 2+ GPUs: the seed recipe with one process per GPU vs one process
  python bench/gpu_suite.py small      # a SmolLM2-135M-shaped model: step speed with/without checkpointing, profile
  python bench/gpu_suite.py small-fresh  # the embedded-gpu recipe on that shape: packed / compiled / plain, fresh
                                         # processes (how long a recipe-search trial takes)

Prints one JSON object per measurement. Needs CUDA.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL_DIR = Path(os.environ.get("MISTRAL_SHAPE_DIR", "/tmp/mistral7b-random"))


def build_random_small() -> Path:
    """A SmolLM2-135M-shaped Llama with random weights: where the time of a small model's step goes."""
    global MODEL_DIR
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    MODEL_DIR = Path("/tmp/smollm2-shape-random")
    if not (MODEL_DIR / "config.json").is_file():
        cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                          num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, torch_dtype="bfloat16")
        torch.manual_seed(0)
        LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(MODEL_DIR)
        AutoTokenizer.from_pretrained(os.environ.get("BENCH_TOKENIZER", "embedded-tokenizer")).save_pretrained(MODEL_DIR)
    return MODEL_DIR


def profile_small(steps: int) -> None:
    """The quality run's recipe (batch 4 x accum 4, gradient checkpointing, paged 8-bit AdamW) on the small
    shape, with and without gradient checkpointing, then cProfile's top functions of one run."""
    import cProfile
    import pstats

    build_random_small()
    for checkpointing in (True, False):
        train_once(upcast=False, steps=steps, small=True, checkpointing=checkpointing)
    prof = cProfile.Profile()
    prof.enable()
    train_once(upcast=False, steps=steps, small=True, checkpointing=True)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def build_random_mistral() -> Path:
    """Save a Mistral-7B-shaped model (random bf16 weights) + the embedded tokenizer's files once."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    from transformers import AutoTokenizer

    if (MODEL_DIR / "config.json").is_file():
        return MODEL_DIR
    cfg = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=49152, max_position_embeddings=32768,
                        rms_norm_eps=1e-5, rope_theta=1e6, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = MistralForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(MODEL_DIR)
    # SmolLM2's tokenizer (49,152 tokens; Mistral's has 32,000): BENCH_TOKENIZER names a folder with its files.
    tok = AutoTokenizer.from_pretrained(os.environ.get("BENCH_TOKENIZER", "embedded-tokenizer"))
    tok.save_pretrained(MODEL_DIR)
    del model
    torch.cuda.empty_cache()
    return MODEL_DIR


def train_once(upcast: bool, steps: int, small: bool = False, checkpointing: bool = True, processes: int = 1,
               packing: str = "auto") -> dict:
    import torch

    from workbench import runs
    from workbench.training import recipe as train
    from workbench.config import preset

    cfg = preset("seed-mistral-7b-gpu")
    cfg.name = "gpu-bench-upcast" if upcast else "gpu-bench"
    cfg.model.name_or_path = str(MODEL_DIR)
    cfg.model.max_seq_length = 512
    cfg.data.source = os.environ.get("BENCH_DATA", "dbdemos")
    cfg.training.max_steps = steps
    cfg.training.logging_steps = 1
    cfg.training.optimizer = "paged_adamw_8bit" if small else "adamw_torch"
    cfg.training.gradient_checkpointing = checkpointing
    cfg.training.num_processes = processes
    cfg.training.packing = packing
    cfg.data.dbdemos_dir = os.environ.get("WORKBENCH_DBDEMOS_DIR", "")
    cfg.eval.run_after_training = False
    cfg.training.eval_steps = 10_000
    run_id = train.jobs.create_run(cfg)
    original = train.build_model
    if upcast:
        def build_model(c, device):
            from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

            from workbench.models import load_model
            model, tok, device = load_model(c.model, device)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
            lora = LoraConfig(r=c.lora.r, lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout,
                              target_modules=list(c.lora.target_modules), task_type="CAUSAL_LM")
            return get_peft_model(model, lora), tok, device
        train.build_model = build_model
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    try:
        if processes > 1:  # the supervisor path: accelerate launch, one rank per GPU
            train.main(runs.run_path(run_id), resume=False)
            state = runs.read_status(run_id).get("state")
        else:
            state = train.run_training(runs.run_path(run_id))
    finally:
        train.build_model = original
    events = [e for e in runs.read_events(run_id) if "loss" in e]
    rates = [e["tokens_per_s"] for e in events[2:]]  # skip warm-up steps
    result = {"bench": "train", "model": MODEL_DIR.name, "gradient_checkpointing": checkpointing, "processes": processes, "variant": "prepare_model_for_kbit_training (fp32 upcast)" if upcast else
              "workbench recipe (bf16 kept)", "state": state, "steps": len(events),
              "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
              "peak_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
              "wall_s": round(time.time() - t0, 1), "reason": runs.read_status(run_id).get("reason", ""),
              "packing": packing, "replicas_agree": runs.read_status(run_id).get("replicas_agree"),
              "rank0_gpu_mem_gb": events[-1].get("gpu_mem_gb") if events else None,
              "losses": [round(e["loss"], 4) for e in events]}
    print(json.dumps(result), flush=True)
    import gc

    gc.collect()
    torch.cuda.empty_cache()
    return result


class GpuMemoryWatch:
    """Peak memory used on every GPU while a run trains (nvidia-smi every 0.5 s; the ranks are other processes)."""

    def __enter__(self):
        import subprocess
        import tempfile

        self.log = tempfile.NamedTemporaryFile("w+", suffix=".csv", delete=False)
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=index,memory.used", "--format=csv,noheader,nounits",
                                      "-lms", "500"], stdout=self.log, stderr=subprocess.DEVNULL)
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(10)
        peaks: dict[int, float] = {}
        for line in Path(self.log.name).read_text().splitlines():
            try:
                index, used = (int(x) for x in line.split(","))
            except ValueError:
                continue
            peaks[index] = max(peaks.get(index, 0.0), round(used / 1024, 2))
        self.peak_gb = [peaks[i] for i in sorted(peaks)]


def fresh_config(steps: int, processes: int, packing: str, preset_name: str = "seed-mistral-7b-gpu",
                 compile_mode: str = "auto"):
    from workbench.config import preset

    cfg = preset(preset_name)
    cfg.name = f"{preset_name}-{packing}-{compile_mode}-{processes}p"
    cfg.model.name_or_path = str(MODEL_DIR)
    cfg.model.max_seq_length = 512
    cfg.data.source = "dbdemos"
    cfg.data.dbdemos_dir = os.environ.get("WORKBENCH_DBDEMOS_DIR", "")
    cfg.training.max_steps = steps
    cfg.training.logging_steps = 4
    cfg.training.compile = compile_mode
    if preset_name.startswith("seed-mistral"):
        cfg.training.optimizer = "adamw_torch"  # the paged optimizers use managed memory; LoRA's states are small
    cfg.training.num_processes = processes
    cfg.training.packing = packing
    cfg.training.eval_steps = 10_000
    cfg.training.save_strategy, cfg.training.save_steps, cfg.training.save_every_minutes = "steps", 10_000, 0
    cfg.eval.run_after_training = False
    return cfg


def fresh_result(run_id: str, cfg, returncode: int, t0: float) -> dict:
    from workbench import runs

    status = runs.read_status(run_id)
    events = [e for e in runs.read_events(run_id) if "loss" in e]
    rates = [e["tokens_per_s"] for e in events if e["step"] > 4 and e.get("tokens_per_s")]  # after warm-up/compile
    result = {"processes": cfg.training.num_processes, "packing": cfg.training.packing, "compile": cfg.training.compile,
              "state": status.get("state"), "exit_code": returncode, "steps": events[-1]["step"] if events else 0,
              "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
              "tokens_per_s_all": [e.get("tokens_per_s") for e in events], "wall_s": round(time.time() - t0, 1),
              "replicas_agree": status.get("replicas_agree"), "reason": status.get("reason", ""),
              "losses": [round(e["loss"], 4) for e in events]}
    if status.get("state") != "completed":
        result["log_tail"] = runs.log_tail(run_id, 3000)
    print(json.dumps({k: v for k, v in result.items() if k not in ("log_tail",)}), flush=True)
    return result


def train_fresh_process(steps: int, processes: int, packing: str, preset_name: str = "seed-mistral-7b-gpu",
                        compile_mode: str = "auto") -> dict:
    """One run through the app's own command (`jobs.train_command`: `python -m workbench train --run ID`) in a
    fresh process, so nothing one variant patches (liger's module-level kernels, compiled layers) leaks into the
    next; with processes > 1 that command supervises `accelerate launch`, one rank per GPU."""
    import subprocess

    from workbench.training import jobs

    cfg = fresh_config(steps, processes, packing, preset_name, compile_mode)
    run_id = jobs.create_run(cfg)
    t0 = time.time()
    done = subprocess.run(jobs.train_command(run_id), capture_output=True, text=True)
    return fresh_result(run_id, cfg, done.returncode, t0)


@contextlib.contextmanager
def env_set(**values: str):
    """Environment variables set for a while (the processes started meanwhile inherit them)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def other_home(path: str):
    """Run folders under another WORKBENCH_HOME for a while (runs that train beside others: the training slot is
    per home)."""
    return env_set(WORKBENCH_HOME=path)


def small_bench(steps: int) -> None:
    """The embedded-gpu preset's recipe (all-linear r64, 16 examples a step, no checkpointing, paged 8-bit AdamW)
    on a SmolLM2-135M-shaped model, each variant a fresh process: the packed default (liger kernels when installed),
    packed + compiled, and the plain padded path. How long a recipe-search trial takes on the GPU."""
    build_random_small()
    out = {"bench": "small", "steps": steps, "variants": {}}
    for name, packing, compile_mode in (("packed (default)", "auto", "auto"), ("packed + compile", "auto", "on"),
                                        ("plain padded", "off", "off")):
        r = train_fresh_process(steps, 1, packing, preset_name="embedded-gpu", compile_mode=compile_mode)
        r["seconds_per_step"] = round(r["wall_s"] / max(1, r["steps"]), 3)
        out["variants"][name] = r
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk in ("tokens_per_s", "wall_s", "state", "losses")}
                      for k, v in out["variants"].items()}), flush=True)
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / "small_speed.json").write_text(json.dumps(out, indent=1))


def generate_bench(new_tokens: int = 128) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from workbench.config import ModelConfig
    from workbench.models import load_model

    model, tok, _ = load_model(ModelConfig(name_or_path=str(MODEL_DIR)), "cuda")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"], task_type="CAUSAL_LM"),
                           adapter_name="tuned")
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.01)
    model.eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "How do I OPTIMIZE a Delta table?"}],
                                     tokenize=False, add_generation_prompt=True)
    tok.padding_side = "left"

    def timed(batch, **kw):
        enc = tok([prompt] * batch, return_tensors="pt", padding=True).to("cuda")
        kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      pad_token_id=tok.pad_token_id)
        model.generate(**enc, **dict(kwargs, max_new_tokens=8, min_new_tokens=8), **kw)  # warm-up
        torch.cuda.synchronize()
        t = time.time()
        model.generate(**enc, **kwargs, **kw)
        torch.cuda.synchronize()
        return new_tokens / (time.time() - t)

    for round_ in (1, 2):  # twice, so the first measurement's warm-up cost shows instead of skewing one variant
        with model.disable_adapter():
            base = timed(1)
        tuned = timed(1)
        mixed = timed(2, adapter_names=["__base__", "tuned"])
        for variant, rate in (("base (adapter disabled)", base), ("with adapter", tuned),
                              ("mixed base+adapter batch of 2, per sequence", mixed)):
            print(json.dumps({"bench": "generate", "round": round_, "variant": variant,
                              "tokens_per_s": round(rate, 1)}), flush=True)


def main() -> None:
    import torch

    assert torch.cuda.is_available(), "needs a CUDA GPU"
    os.environ.setdefault("WORKBENCH_HOME", "/tmp/wb-gpu")
    print(json.dumps({"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}), flush=True)
    what = sys.argv[1] if len(sys.argv) > 1 else "train"
    steps = int(os.environ.get("BENCH_STEPS", "20"))
    if what == "small":
        return profile_small(steps)
    if what == "small-fresh":
        return small_bench(steps)
    build_random_mistral()
    if what == "scale":  # needs 2+ GPUs (nvidia-h200-x2): tokens/s of N processes vs 1, same recipe and data
        from gpu_scale import scale_bench

        return scale_bench(steps)
    if what == "train":
        # Each variant runs twice, interleaved, so warm-up and ordering effects show up instead of hiding.
        results = {True: [], False: []}
        for upcast in (True, False, True, False):
            results[upcast].append(train_once(upcast=upcast, steps=steps))
        ours = max(results[False], key=lambda r: r["tokens_per_s"] or 0)
        base = max(results[True], key=lambda r: r["tokens_per_s"] or 0)
        if ours["tokens_per_s"] and base["tokens_per_s"]:
            print(json.dumps({"bench": "train", "speedup_vs_upcast": round(ours["tokens_per_s"] /
                                                                          base["tokens_per_s"], 2)}))
    else:
        generate_bench()


if __name__ == "__main__":
    main()
