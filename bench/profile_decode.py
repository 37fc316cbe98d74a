"""Where the fast engine's decode step spends its time on CUDA, variant by variant (issue 15).

  python bench/profile_decode.py
  BENCH_VARIANTS="WORKBENCH_FAST_FUSE=0;WORKBENCH_FAST_FOLD=0,WORKBENCH_FAST_REDUCE=0;" python bench/profile_decode.py

The Mistral-7B-shaped random model in 4-bit with the random r16 q/k/v/o adapter of bench/generate_speed.py, 2 rows
(base + tuned: the Chat tab's batch). First the decode attention alone per SDPA backend; then for each variant
(settings NAME=VALUE joined by ',' that the engine reads when it is built; variants separated by ';'; empty = the
defaults; a fresh engine each):
- ms per decode step: 200 replays of the captured step (attention window 256), timed with CUDA events;
- new tokens/s per row, `engine.generate` alone, 128 new tokens (median of 3 after a warm-up);
- chat through `stream_pair` as the Chat tab runs it: tokens/s per column and time to first token, and the prefill
  alone (`engine._start`, the eager pass over the prompt and the first token);
- the kernels of one step (torch.profiler over 20 graph replays): count and microseconds per step by kernel name;
- the first token's parts: stream_pair's set-up, the engine's `_start`, the rest until the first update.
Prints one JSON object per line; with $OUT set, also writes $OUT/profile_decode.json.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gpu_suite  # noqa: E402
from generate_speed import NEW_TOKENS, bench_model, chat_once, emit, engine_rate, questions  # noqa: E402

WINDOW = 256
REPLAYS = 200


def _env(variant: str) -> dict:
    return dict(kv.split("=", 1) for kv in variant.split(",") if kv.strip())


def _replay_ms(graph) -> float:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(10):
        graph.replay()
    torch.cuda.synchronize()
    start.record()
    for _ in range(REPLAYS):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / REPLAYS


def _kernels(graph, steps: int = 20) -> list[dict]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            graph.replay()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        us = getattr(ev, "self_device_time_total", None)
        if us is None:
            us = getattr(ev, "self_cuda_time_total", 0)
        if us:
            rows.append({"kernel": ev.key[:90], "per_step": round(ev.count / steps, 2),
                         "us_per_step": round(us / steps, 1)})
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows


def first_token_parts(held, prompt) -> dict:
    """Where a chat request's first-token time goes: stream_pair's set-up before the engine starts, the engine's
    `_start` (prefill launched and the first token picked; not synchronized), and the rest until the first update."""
    import threading

    from workbench.chat import fast_generate as fg
    from workbench.chat.streaming import ChatSettings, stream_pair

    marks = {}
    original = fg.FastEngine._start

    def timed(self, *a, **k):
        marks["start_in"] = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            marks["start_out"] = time.perf_counter()

    fg.FastEngine._start = timed
    try:
        parts = []
        for _ in range(3):
            t0 = time.perf_counter()
            updates = stream_pair(held, ["__base__", "tuned"], [prompt, prompt],
                                  ChatSettings(max_new_tokens=16, temperature=0.0, repetition_penalty=1.0),
                                  threading.Event())
            next(updates)
            first = time.perf_counter()
            for _ in updates:
                pass
            parts.append({"before_start_s": round(marks["start_in"] - t0, 4),
                          "start_s": round(marks["start_out"] - marks["start_in"], 4),
                          "first_update_s": round(first - t0, 4)})
        return {"first_token_parts": parts}
    finally:
        fg.FastEngine._start = original


def attention_backends(rows=2, kv_heads=8, group=4, head_dim=128, window=WINDOW) -> dict:
    """The decode step's attention alone (one layer's shapes, additive mask), per SDPA backend and the workbench's
    Triton decode kernel, in a CUDA graph."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(rows, kv_heads, group, head_dim, dtype=torch.bfloat16, device="cuda")
    k, v = (torch.randn(rows, kv_heads, window, head_dim, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    mask = torch.zeros(rows, 1, 1, window, dtype=torch.bfloat16, device="cuda")
    mask[:, :, :, window // 2:] = float("-inf")
    out = {}
    for name in ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH"):
        try:
            with sdpa_kernel(getattr(SDPBackend, name)):
                F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    for _ in range(32):
                        F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            out[name] = round(_replay_ms(graph) * 1000 / 32, 2)
        except Exception as e:  # a backend that cannot take these shapes
            out[name] = f"{type(e).__name__}: {str(e)[:120]}"
    from workbench.chat import decode_attention

    try:
        decode_attention.attention(q, k, v, mask, head_dim ** -0.5)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(32):
                decode_attention.attention(q, k, v, mask, head_dim ** -0.5)
        out["TRITON_DECODE (workbench)"] = round(_replay_ms(graph) * 1000 / 32, 2)
    except Exception as e:
        out["TRITON_DECODE (workbench)"] = f"{type(e).__name__}: {str(e)[:200]}"
    return {"attention_us_per_layer": out}


def measure(model, tok, held, prompt, variant: str) -> dict:
    import torch

    from workbench.chat import fast_generate as fg
    from workbench.chat.streaming import ChatSettings

    fg.drop_engine(model)
    with gpu_suite.env_set(**_env(variant)):
        warm = ChatSettings(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0)
        settings = ChatSettings(max_new_tokens=NEW_TOKENS, temperature=0.0, repetition_penalty=1.0)
        t = time.perf_counter()
        chat_once(held, prompt, warm)  # builds the engine, compiles, captures
        build_s = time.perf_counter() - t
        chats = [chat_once(held, prompt, settings) for _ in range(3)]
        engine = fg.cached_engine(model)
        rate = engine_rate(engine, prompt, [None, "tuned"])
        prefill = []
        for _ in range(5):
            torch.cuda.synchronize()
            t = time.perf_counter()
            engine._start([prompt, prompt], ("tuned",), [-1, 0], 256, 0.0, 1.0, None)
            torch.cuda.synchronize()
            prefill.append(time.perf_counter() - t)
        parts = first_token_parts(held, prompt)
        st = next(s for s in engine._states.values() if s.rows == 2 and s.slots is not None)
        graph, _ = st.graphs[WINDOW]
        step_ms = _replay_ms(graph)
        kernels = _kernels(graph)
        row = {"variant": variant or "default", "compiled": engine.compiled, "reduce": engine.reduce,
               "build_compile_capture_s": round(build_s, 1), "step_ms": round(step_ms, 3),
               "engine_tokens_per_s_per_row": round(rate, 1),
               "chat_tokens_per_s_per_column": statistics.median(min(c["per_column_tokens_per_s"]) for c in chats),
               "chat_first_token_s": statistics.median(max(c["first_token_s"]) for c in chats),
               "prefill_s": round(statistics.median(prefill), 4),
               "kernels_per_step": round(sum(k["per_step"] for k in kernels), 1),
               "kernel_us_per_step": round(sum(k["us_per_step"] for k in kernels), 1), **parts,
               "top_kernels": kernels[:25]}
        return row


def main() -> None:
    import torch

    from workbench.chat import session

    assert torch.cuda.is_available(), "needs a CUDA GPU"
    os.environ.setdefault("WORKBENCH_HOME", "/tmp/wb-gpu")
    emit(gpu=torch.cuda.get_device_name(0), torch=torch.__version__)
    model, tok = bench_model()
    held = session.HeldModel(key=("bench",), model=model, tokenizer=tok, device="cuda")
    held.adapters.add("tuned")
    prompt = session.prompt_ids(tok, [], questions(1)[0]["instruction"])
    emit(prompt_tokens=len(prompt))
    results = [attention_backends()]
    emit(**results[0])
    for variant in os.environ.get("BENCH_VARIANTS", "WORKBENCH_FAST_ATTN=0;").split(";"):
        try:
            row = measure(model, tok, held, prompt, variant.strip())
        except Exception as e:  # reported; the next variant still runs
            row = {"variant": variant, "error": f"{type(e).__name__}: {str(e)[:400]}"}
        emit(**row)
        results.append(row)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "profile_decode.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
