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


def independent_runs(steps: int, packing: str, gpus: int) -> list[dict]:
    """One single-process run per GPU, all at the same time and unaware of each other (no DDP, no collectives),
    each pinned to its GPU and in its own WORKBENCH_HOME (the training slot is per home). If each keeps its solo
    tokens/s, what two-process training loses is communication and waiting; if each slows as much as the ranks of
    a two-process run do, it is the host (CPU, driver, launch path) the processes share."""
    import subprocess
    import tempfile

    from workbench.training import jobs

    procs = []
    for gpu in range(gpus):
        home = tempfile.mkdtemp(prefix=f"wb-independent-{gpu}-")
        with other_home(home):
            cfg = fresh_config(steps, 1, packing)
            run_id = jobs.create_run(cfg)
            procs.append((home, run_id, cfg, subprocess.Popen(
                jobs.train_command(run_id), env={**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    t0, out = time.time(), []
    for home, run_id, cfg, proc in procs:
        proc.wait()
        with other_home(home):
            out.append(fresh_result(run_id, cfg, proc.returncode, t0))
    return out


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


# Host-side levers for several ranks (predicted before measuring: they matter only if the independent runs above
# slow each other down, i.e. if the ranks compete for the host rather than wait on each other).
RANK_LEVERS = {"CPUs bound per GPU (WORKBENCH_BIND_CPUS=1)": {"WORKBENCH_BIND_CPUS": "1"},
               "8 CPU threads per rank (OMP_NUM_THREADS=8; the supervisor's default is 1)": {"OMP_NUM_THREADS": "8"}}


def rank_levers(steps: int, gpus: int, one: dict, done: dict | None = None, save=lambda out: None) -> dict:
    """The multi-process packed run again under each host-side lever, each a fresh process (levers in `done`, from an
    earlier call, are kept; `save` is called after each)."""
    out = dict(done or {})
    for name, values in RANK_LEVERS.items():
        if name in out:
            continue
        with env_set(**values):
            r = train_fresh_process(steps, gpus, "auto")
        out[name] = {k: r.get(k) for k in ("tokens_per_s", "state", "replicas_agree", "wall_s")}
        if r.get("tokens_per_s") and one.get("tokens_per_s"):
            out[name]["speedup"] = round(r["tokens_per_s"] / one["tokens_per_s"], 2)
        print(json.dumps({"bench": "scale lever", "lever": name, **out[name]}), flush=True)
        save(out)
    return out


def scale_bench(steps: int) -> None:
    """1 process vs one per GPU, each a fresh `python -m workbench train` process (the supervisor starts
    `accelerate launch` when training.num_processes > 1), on the default packed path and on the plain padded one
    (BENCH_PATHS=auto measures the packed one only). Batch size is per process, so N processes train N times the
    examples per optimizer step; tokens/s counts the real tokens of all ranks (the Trainer gathers them). On the
    packed path also one independent single-process run per GPU at the same time (`independent_runs`;
    BENCH_INDEPENDENT=0 skips it): do the processes slow each other down without any communication? Then the
    host-side levers (`RANK_LEVERS`; BENCH_LEVERS=0 skips them).

    Resumable: every finished part is saved at once to BENCH_PROGRESS (default /tmp/scale_progress.json, which
    survives between calls on a warm device machine), and a second call of the same command skips what is there, so
    the whole measurement can span two calls of the device's 10-minute limit. Writes bench/results/scale_2gpu.json."""
    import torch

    gpus = torch.cuda.device_count()
    progress = Path(os.environ.get("BENCH_PROGRESS", "/tmp/scale_progress.json"))
    result = {"gpu": torch.cuda.get_device_name(0), "gpus": gpus, "torch": torch.__version__,
              "command": "python bench/gpu_suite.py scale", "steps": steps, "paths": {}}
    if progress.is_file():
        result = json.loads(progress.read_text())
        print(json.dumps({"bench": "scale", "resumed": sorted(result["paths"])}), flush=True)

    def save() -> None:
        progress.write_text(json.dumps(result, indent=1) + "\n")

    wanted_paths = os.environ.get("BENCH_PATHS", "auto,off").split(",")
    for packing in ("auto", "off"):
        if packing not in wanted_paths:
            continue
        n_steps = steps if packing == "auto" else max(8, steps // 2)
        name = "packed (default)" if packing == "auto" else "plain padded"
        entry = result["paths"].setdefault(name, {})
        # BENCH_REPEATS rounds of (1 process, N processes), alternated: a lone run's tokens/s moved by ±10% between
        # runs of the same command in one lease, so the speedup is the ratio of the rounds' medians.
        for round_ in range(int(os.environ.get("BENCH_REPEATS", "1"))):
            for processes, key in ((1, "one_process"), (gpus, "processes")):
                key = key if round_ == 0 else f"{key}_{round_ + 1}"
                if key in entry:
                    continue
                with GpuMemoryWatch() as watch:
                    r = train_fresh_process(n_steps, processes, packing)
                r["gpu_peak_used_gb"] = watch.peak_gb  # nvidia-smi's memory.used per GPU (allocator cache included)
                entry[key] = r
                save()
        ones = [v["tokens_per_s"] for k, v in entry.items() if k.startswith("one_process") and v["tokens_per_s"]]
        manys = [v["tokens_per_s"] for k, v in entry.items() if k.startswith("processes") and v["tokens_per_s"]]
        one = {"tokens_per_s": statistics.median(ones) if ones else None}
        if ones and manys:
            entry["one_process_tokens_per_s"], entry["processes_tokens_per_s"] = ones, manys
            entry["speedup"] = round(statistics.median(manys) / statistics.median(ones), 2)
            entry["efficiency"] = round(entry["speedup"] / gpus, 2)
        if packing == "auto" and os.environ.get("BENCH_INDEPENDENT", "1") != "0" and "independent_runs" not in entry:
            alone = independent_runs(n_steps, packing, gpus)
            entry["independent_runs"] = alone
            if one["tokens_per_s"] and all(r["tokens_per_s"] for r in alone):
                # each independent run's speed as a share of the solo run: < 1 means the processes slow each other
                # down without talking to each other
                entry["independent_share_of_solo"] = [round(r["tokens_per_s"] / one["tokens_per_s"], 2) for r in alone]
            save()
        if packing == "auto" and gpus > 1 and os.environ.get("BENCH_LEVERS", "1") != "0":
            def save_levers(levers: dict) -> None:
                entry["levers"] = levers
                save()

            entry["levers"] = rank_levers(n_steps, gpus, one, entry.get("levers"), save_levers)
        save()
        print(json.dumps({"bench": "scale", "packing": packing, **{k: v for k, v in entry.items()
                                                                   if k in ("speedup", "efficiency",
                                                                            "independent_share_of_solo")}}), flush=True)
    out = Path(__file__).resolve().parent / "results" / "scale_2gpu.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if os.environ.get("OUT"):
        (Path(os.environ["OUT"]) / out.name).write_text(out.read_text())
    print(json.dumps(result), flush=True)


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
