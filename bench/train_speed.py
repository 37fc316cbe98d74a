"""Training speed on the GPU: the seed recipe vs the workbench's default CUDA path, in one process, on the same
examples in the same order (dbdemos token lengths), on a Mistral-7B-shaped model with random weights loaded
through the workbench's 4-bit path (speed and memory do not depend on weight values).

  python bench/train_speed.py [--steps 24] [--seed-steps 14] [--profile] [--variants]

- seed: batch 4 x grad-accum 4, padded to the longest example, gradient checkpointing, peft's
  `prepare_model_for_kbit_training` (fp32 upcast of the non-quantized layers), plain SDPA attention;
- workbench: `recipe.run_training` exactly as `python -m workbench train` runs it on CUDA (packing 'auto');
- in the same run, what each part pays: the packed path eager (torch.compile off) without and (when liger-kernel is
  installed) with the fused kernels — the previous default;
- with --large-gpu, the large-GPU preset (no gradient checkpointing); with --variants also its eager + kernels form.

Tokens/s are real (non-padding) tokens, the median over logged steps after the first three (warm-up). The
base model is loaded once; LoRA is attached per variant and removed after it. Writes
bench/results/train_speed.json (the issue's keys) and bench/results/train_speed_detail.json (every variant,
the per-step losses, the profile summary); copies both to $OUT when that is set. Needs CUDA.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RESULTS = ROOT / "bench" / "results"
LOGGING_STEPS = 4  # tokens/s per event is over 4 steps; the first event (steps 1-4) is warm-up
LOSS_TOLERANCE = 0.02  # relative, per step: same examples, same order, same LoRA init; dropout draws differ


def config(name: str, steps: int, seed_recipe: bool = False, large_gpu: bool = False):
    from workbench.config import preset

    import gpu_suite

    cfg = preset("seed-mistral-7b-large-gpu" if large_gpu else "seed-mistral-7b-gpu")
    cfg.name = name
    cfg.model.name_or_path = str(gpu_suite.MODEL_DIR)
    cfg.model.max_seq_length = 512
    cfg.data.source = "dbdemos"
    cfg.data.dbdemos_dir = os.environ.get("WORKBENCH_DBDEMOS_DIR", "")
    cfg.training.max_steps = steps
    cfg.training.logging_steps = LOGGING_STEPS
    cfg.training.optimizer = "adamw_torch"  # the paged optimizers use managed memory; LoRA's states are small
    cfg.training.eval_steps = 10_000
    cfg.training.save_strategy = "steps"
    cfg.training.save_steps = 10_000
    cfg.training.save_every_minutes = 0
    cfg.eval.run_after_training = False
    if seed_recipe:
        cfg.training.packing = "off"
        cfg.training.gradient_checkpointing = True
    return cfg


class BaseCache:
    """Load the 4-bit base once; hand it out pristine to every variant (LoRA removed, dtypes and attention back)."""

    def __init__(self):
        self.loaded = None
        self.peft = None

    def load_model(self, model_cfg, device="auto", progress=None):
        import torch

        from workbench import models

        if self.loaded is None:
            self.loaded = self._original(model_cfg, device, progress)
        base, tok, device = self.loaded
        if self.peft is not None:
            base = self.peft.unload()
            self.peft = None
            self.loaded = (base, tok, device)
        from workbench.training.packing import HiddenStatesHead
        if isinstance(base.lm_head, HiddenStatesHead):
            base.lm_head = base.lm_head.inner
        for layer in getattr(base.model, "layers", []):  # a compiled variant leaves its layers compiled
            layer._compiled_call_impl = None
        base.gradient_checkpointing_disable()
        try:
            base.disable_input_require_grads()
        except Exception:  # noqa: BLE001 - no hook was registered
            pass
        for p in base.parameters():
            p.requires_grad_(False)
            if p.dtype == torch.float32 and type(p).__name__ != "Params4bit":
                p.data = p.data.to(torch.bfloat16)  # undo prepare_model_for_kbit_training's upcast
        if base.config._attn_implementation != "sdpa":
            base.set_attn_implementation("sdpa")
        if hasattr(base, "peft_config"):
            del base.peft_config
        models.free_memory()
        return base, tok, device


def run_variant(cache: BaseCache, cfg, upcast: bool, kernels: bool, profile_steps: int = 0) -> dict:
    import torch

    from workbench import runs
    from workbench.training import jobs, packing, recipe

    original_build, original_kernels = recipe.build_model, packing.apply_kernels

    def build_model(c, device):
        from transformers import set_seed

        set_seed(c.training.seed)  # the same LoRA initialisation in every variant
        if upcast:
            from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

            model, tok, device = cache.load_model(c.model, device)
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
            lora = LoraConfig(r=c.lora.r, lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout,
                              target_modules=list(c.lora.target_modules), task_type="CAUSAL_LM")
            model = get_peft_model(model, lora)
        else:
            model, tok, device = original_build(c, device)
        cache.peft = model
        return model, tok, device

    recipe.build_model = build_model
    if not kernels:
        packing.apply_kernels = lambda model: []
    profiler = _profiled(profile_steps) if profile_steps else None
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    run_id = jobs.create_run(cfg)
    t0 = time.time()
    try:
        state = recipe.run_training(runs.run_path(run_id))
    finally:
        recipe.build_model, packing.apply_kernels = original_build, original_kernels
        if profiler is not None:
            try:
                profiler.finish()
            except Exception as exc:  # noqa: BLE001 - a profiler API difference must not lose the measurements
                print(json.dumps({"profile_error": f"{type(exc).__name__}: {exc}"}), flush=True)
    events = [e for e in runs.read_events(run_id) if "loss" in e]
    rates = [e["tokens_per_s"] for e in events if e.get("tokens_per_s") and e["step"] > LOGGING_STEPS]
    result = {"variant": cfg.name, "state": state, "reason": runs.read_status(run_id).get("reason", ""),
              "packing": cfg.training.packing, "gradient_checkpointing": cfg.training.gradient_checkpointing,
              "fp32_upcast": upcast, "kernels": kernels, "compile": cfg.training.compile, "steps": len(events),
              "first_step_s": _first_step_seconds(events),
              "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
              "tokens_per_s_all": [e.get("tokens_per_s") for e in events],
              "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
              "losses": [round(e["loss"], 4) for e in events], "wall_s": round(time.time() - t0, 1)}
    if profiler is not None:
        result["profile"] = profiler.summary
    print(json.dumps({k: v for k, v in result.items() if k not in ("tokens_per_s_all", "losses", "profile")}),
          flush=True)
    return result


def _first_step_seconds(events: list[dict]) -> float | None:
    """Wall seconds of the first logged window (includes the compile on a compiled variant)."""
    first = next((e for e in events if e.get("step") == LOGGING_STEPS), None)
    return first.get("elapsed") if first else None


class _profiled:
    """torch.profiler over training steps 4..4+n of the next run (the Trainer's step is wrapped to tick it)."""

    def __init__(self, steps: int):
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        from workbench.training import packing

        self.steps, self.summary = steps, {}
        self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                            schedule=schedule(wait=2, warmup=1, active=steps, repeat=1))
        self.original = packing.PackedTrainer.training_step
        self.times = []
        prof, times, original = self.prof, self.times, self.original

        def training_step(trainer, *a, **k):
            torch.cuda.synchronize()
            t = time.perf_counter()
            out = original(trainer, *a, **k)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            prof.step()
            return out

        packing.PackedTrainer.training_step = training_step
        self.prof.__enter__()

    def finish(self):
        from workbench.training import packing

        packing.PackedTrainer.training_step = self.original
        self.prof.__exit__(None, None, None)
        events = self.prof.key_averages()
        device_us = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in events)
        kernels = sum(e.count for e in events if getattr(e, "device_type", None) is not None
                      and str(e.device_type).endswith("CUDA"))
        active = self.times[3:3 + self.steps]
        self.summary = {"steps": len(active), "wall_ms_per_step": round(1000 * statistics.mean(active), 1),
                        "gpu_busy_ms_per_step": round(device_us / 1000 / max(1, self.steps), 1),
                        "cuda_kernels_per_step": round(kernels / max(1, self.steps))}
        table = events.table(sort_by="self_cuda_time_total", row_limit=25)
        cpu_table = events.table(sort_by="self_cpu_time_total", row_limit=15)
        text = f"{json.dumps(self.summary)}\n\n{table}\n\n{cpu_table}\n"
        (RESULTS / "train_speed_profile.txt").write_text(text)
        print(text[:6000], flush=True)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24, help="optimizer steps of every variant (same schedule)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler over 3 steps of the default path")
    parser.add_argument("--variants", action="store_true", help="also the large-GPU preset with and without kernels")
    parser.add_argument("--large-gpu", action="store_true", help="also the large-GPU preset (no checkpointing)")
    parser.add_argument("--quick", action="store_true", help="only the seed recipe and the default CUDA path "
                        "(packed, liger kernels when installed, not compiled), e.g. beside the Unsloth peer")
    parser.add_argument("--peer-site", default="", help="a folder holding the Unsloth wheels installed (--target): "
                        "also measure Unsloth on the seed recipe's batches, in a fresh process (bench/unsloth_peer.py)")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    os.environ.setdefault("WORKBENCH_HOME", "/tmp/wb-speed")
    RESULTS.mkdir(parents=True, exist_ok=True)

    import gpu_suite
    from workbench import models
    from workbench.training import packing

    import transformers
    import peft
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    try:
        import bitsandbytes
        versions["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        pass
    try:
        import liger_kernel  # noqa: F401
        from importlib.metadata import version
        versions["liger_kernel"] = version("liger-kernel")
        have_kernels = True
    except Exception:  # noqa: BLE001
        have_kernels = False
    gpu = torch.cuda.get_device_name(0)
    print(json.dumps({"gpu": gpu, **versions}), flush=True)
    t = time.time()
    gpu_suite.build_random_mistral()
    print(json.dumps({"built_random_mistral_s": round(time.time() - t, 1)}), flush=True)

    cache = BaseCache()
    cache._original = models.load_model
    models.load_model = cache.load_model
    results = {}
    def eager(name, **kw):  # the packed path with torch.compile off (the previous default)
        cfg = config(name, args.steps, **kw)
        cfg.training.compile = "off"
        return cfg

    # The seed first and the fused kernels last: liger patches the model's modules in place (the compiled
    # variants run without them, as the default path does; their layers are un-compiled between variants).
    results["seed"] = run_variant(cache, config("seed", args.steps, seed_recipe=True), upcast=True, kernels=False)
    if args.quick:
        results["workbench"] = run_variant(cache, eager("workbench-default"), False, have_kernels)
    else:
        results.update(more_variants(args, cache, eager, have_kernels))
    if args.peer_site:
        results["unsloth"] = peer(args.peer_site, args.steps)
    seed, ours = results["seed"], results["workbench"]
    n = min(len(seed["losses"]), len(ours["losses"]))
    diffs = [abs(a - b) / abs(a) for a, b in zip(seed["losses"][:n], ours["losses"][:n])]
    loss_match = {"steps": n * LOGGING_STEPS, "logged_losses_compared": n, "max_rel_diff": round(max(diffs), 4) if diffs else None, "tolerance": LOSS_TOLERANCE,
                  "match": bool(diffs) and max(diffs) <= LOSS_TOLERANCE,
                  "seed_losses": seed["losses"][:n], "workbench_losses": ours["losses"][:n]}
    ratio = round(ours["tokens_per_s"] / seed["tokens_per_s"], 2) if ours["tokens_per_s"] and seed["tokens_per_s"] \
        else None
    command = "python bench/train_speed.py " + " ".join(sys.argv[1:])
    summary = {"gpu": gpu, "seed_tokens_per_s": seed["tokens_per_s"], "workbench_tokens_per_s": ours["tokens_per_s"],
               "ratio": ratio, "seed_peak_gb": seed["peak_gb"], "workbench_peak_gb": ours["peak_gb"],
               "loss_match": loss_match, "command": command.strip()}
    if "unsloth" in results:
        u = results["unsloth"]
        summary["peer_unsloth"] = {k: u.get(k) for k in ("unsloth", "state", "tokens_per_s", "peak_gb", "error")}
        if u.get("tokens_per_s") and seed["tokens_per_s"]:
            summary["peer_unsloth"]["ratio_vs_seed"] = round(u["tokens_per_s"] / seed["tokens_per_s"], 2)
    detail = {"versions": versions, "gpu": gpu, "model": "Mistral-7B shape (MistralConfig, random bf16 weights), "
              "4-bit NF4 double-quant, vocab 49152 (SmolLM2 tokenizer), seq 512, dbdemos data",
              "pack_budget_note": "tokens per forward from free VRAM (packing.token_budget)",
              "variants": results}
    (RESULTS / "train_speed.json").write_text(json.dumps(summary, indent=1) + "\n")
    (RESULTS / "train_speed_detail.json").write_text(json.dumps(detail, indent=1) + "\n")
    if os.environ.get("OUT"):
        for name in ("train_speed.json", "train_speed_detail.json", "train_speed_profile.txt"):
            if (RESULTS / name).is_file():
                shutil.copy(RESULTS / name, Path(os.environ["OUT"]) / name)
    print(json.dumps({k: v for k, v in summary.items() if k != "loss_match"} |
                     {"loss_match": {k: loss_match[k] for k in ("steps", "max_rel_diff", "match")}}), flush=True)
    for name, r in results.items():
        base = seed["tokens_per_s"] or 1
        print(f"{name:24s} {r.get('tokens_per_s') or 0:>9.1f} tok/s  {(r.get('tokens_per_s') or 0) / base:5.2f}x  "
              f"peak {r.get('peak_gb') or 0:6.2f} GB  steps {r.get('steps')}  {r['state']}", flush=True)


def more_variants(args, cache, eager, have_kernels) -> dict:
    """The packed path's variants beside the seed: eager without fused kernels, the default config as it resolves
    here, the large-GPU preset (--large-gpu / --variants), and packed + eager + liger kernels."""
    results = {}
    results["workbench_eager_no_kernels"] = run_variant(cache, eager("workbench-eager-no-kernels"), False, False)
    results["workbench"] = run_variant(cache, config("workbench", args.steps), upcast=False, kernels=False,
                                       profile_steps=3 if args.profile else 0)
    if args.variants or args.large_gpu:
        results["large_gpu"] = run_variant(cache, config("large-gpu", args.steps, large_gpu=True), False, False)
    if args.variants and have_kernels:
        results["large_gpu_eager_kernels"] = run_variant(cache, eager("large-gpu-eager-kernels", large_gpu=True),
                                                         False, True)
    if have_kernels:  # the previous default: packed, eager, liger kernels
        results["workbench_eager_kernels"] = run_variant(cache, eager("workbench-eager-kernels"), False, True)
    return results


def peer(site: str, steps: int) -> dict:
    """Unsloth on the seed recipe's batches, in a fresh process (its import patches transformers/peft)."""
    import subprocess
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="peer-")) / "unsloth.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "unsloth_peer.py"), "--steps", str(steps), "--out",
                           str(out)], env=env, cwd=ROOT, text=True, capture_output=True)
    if out.is_file():
        return json.loads(out.read_text())
    return {"variant": "unsloth", "state": "failed", "error": f"exit {done.returncode}: {done.stderr[-1500:]}"}


if __name__ == "__main__":
    main()
