"""Generation speed on CUDA: plain 4-bit `generate` vs the workbench's fast path, in one run (issue 15).

  python bench/generate_speed.py

A Mistral-7B-shaped model with random weights (no real checkpoint reaches the GPU machine; speed does not
depend on weight values), loaded through the workbench's 4-bit path (`models.load_model`, NF4), with a
random LoRA adapter (r16/a32 on q/k/v/o) as the "tuned" run. Measured through the code the app runs:

(a) side-by-side chat: `chat.streaming.stream_pair` with the base and tuned columns streaming at once
    (greedy, 128 new tokens): new tokens/s per column (tokens / time to the column's last token) and time
    to first token; plain = WORKBENCH_FAST_GENERATE=0 (peft's mixed base+adapter batch on the 4-bit model);
(b) evaluation: `evaluation.scoring.generate_answers` for 500 dbdemos questions (BENCH_DBDEMOS, else the
    shipped sample questions cycled), base then tuned, 128 new tokens, eval batch size 8 as configured.
    The fast path runs all 500 x 2; the plain path runs 16 x 2 and is scaled to 500 (it is ~linear in the
    number of batches; running it fully would take several minutes of the lease).
BENCH_CHAT_ONLY=1: only (a), then the engine alone and (a) again with the Chat tab's repetition penalty (1.1); about
a minute and a half on an H200, writes no results file.

Then the levers one by one (printed, one JSON object each): CUDA graphs off, no LoRA in the batch (the
bound for a merged copy), each default lever off (LoRA products as reductions, LoRA A folded into the base GEMM,
fused cache writes + additive mask, the Triton decode attention, the graphed chat prefill), decoding from the 4-bit weights (NF4 kernel), the layer math not compiled,
unsorted eval batches, eval batches of 64/256.
Writes bench/results/generate_speed.json (the headline keys) and prints everything else.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

NEW_TOKENS = 128
EVAL_QUESTIONS = 500
PLAIN_EVAL_SAMPLE = 16
COMMAND = "python bench/generate_speed.py"


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def questions(n: int) -> list[dict]:
    folder = os.environ.get("BENCH_DBDEMOS", "")
    rows = []
    if folder and Path(folder).is_dir():
        from workbench.data.loading import load_dbdemos

        df = load_dbdemos(folder)
        seen = set()
        for q, a in zip(df["question"], df["answer"]):
            q = str(q).strip().strip('"')
            if q not in seen:
                seen.add(q)
                rows.append({"instruction": q, "input": "", "context": "", "output": str(a)})
    if not rows:
        from workbench import paths

        for line in paths.SAMPLE_DATA.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                rows.append({"instruction": r["question"], "input": "", "context": "", "output": r["answer"]})
    return [dict(rows[i % len(rows)], id=f"q{i}") for i in range(n)]


def set_fast(on: bool) -> None:
    os.environ["WORKBENCH_FAST_GENERATE"] = "cuda" if on else "0"


def chat_once(held, prompt, settings) -> dict:
    from workbench.chat.streaming import stream_pair

    t0 = time.perf_counter()
    last, seen = [None, None], [0, 0]
    final = None
    for update in stream_pair(held, ["__base__", "tuned"], [prompt, prompt], settings, threading.Event()):
        now = time.perf_counter() - t0
        for col in range(2):
            if update.tokens[col] > seen[col]:
                last[col], seen[col] = now, update.tokens[col]
        final = update
    rates = [n / t for n, t in zip(final.tokens, last)]
    return {"tokens": final.tokens, "per_column_tokens_per_s": [round(r, 1) for r in rates],
            "first_token_s": [round(x, 3) for x in final.first_token_s], "wall_s": round(time.perf_counter() - t0, 3)}


def engine_rate(engine, prompt, adapters, steps=NEW_TOKENS, repeats=3) -> float:
    """New tokens per second per row, engine.generate alone (no streaming consumer)."""
    import torch

    rates = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        t = time.perf_counter()
        n = sum(1 for _ in engine.generate([prompt] * len(adapters), adapters, steps, stop_ids=()))
        torch.cuda.synchronize()
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates[1:])  # the first includes capture (and compile)


def same_answers(model, tok, engine, check_prompt, new=32) -> None:
    """Greedy tokens of the base and tuned rows, plain mixed-batch generate vs the engine (first divergence
    and the plain path's top-2 logit gap there: random weights give flat logits, so near-ties are common)."""
    import torch

    fast_rows = list(engine.generate([check_prompt] * 2, [None, "tuned"], new, stop_ids=()))
    ids = torch.tensor([check_prompt] * 2, device="cuda")
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             min_new_tokens=new, do_sample=False, adapter_names=["__base__", "tuned"],
                             pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True)
    for row, name in enumerate(("base", "tuned")):
        plain_toks = out.sequences[row, len(check_prompt):].tolist()
        fast_toks = [s[row] for s in fast_rows]
        div = next((i for i, (a, b) in enumerate(zip(plain_toks, fast_toks)) if a != b), None)
        gap = None
        if div is not None:
            top = out.scores[div][row].float().topk(2).values
            gap = round(float(top[0] - top[1]), 4)
        emit(bench="same answers (Mistral shape, random weights, batch of 2)", row=name,
             equal_tokens=div if div is not None else len(plain_toks), of=len(plain_toks),
             plain_top2_gap_at_divergence=gap)


def levers(engine, prompt, lever: dict) -> None:
    """The engine alone, 128 tokens: graphs, LoRA rows, rows, graphs off."""
    lever["graphs + per-row LoRA, 2 rows (default)"] = engine_rate(engine, prompt, [None, "tuned"])
    lever["graphs, 2 rows without LoRA (bound for a merged copy)"] = engine_rate(engine, prompt, [None, None])
    lever["graphs, 1 row base only"] = engine_rate(engine, prompt, [None])
    engine.use_graphs = False
    try:
        lever["no CUDA graphs (eager static cache), 2 rows + LoRA"] = engine_rate(engine, prompt, [None, "tuned"],
                                                                                 repeats=1)
    finally:
        engine.use_graphs = True
    import gpu_suite
    from workbench.chat import fast_generate as fg

    variants = [(env, "0", f"{what} ({env}=0), 2 rows + LoRA") for env, what in (  # each default lever off
        ("WORKBENCH_FAST_REDUCE", "LoRA products as matmuls, not reductions"),
        ("WORKBENCH_FAST_FOLD", "LoRA A apart, not folded into the base GEMM"),
        ("WORKBENCH_FAST_FUSE", "separate cache writes and a boolean mask"),
        ("WORKBENCH_FAST_ATTN", "SDPA (cuDNN) decode attention, not the Triton kernel"),
        ("WORKBENCH_FAST_PREFILL_GRAPH", "eager chat prefill, not a CUDA graph"))]
    if not engine.nf4:  # the NF4 decode kernel (off by default: workbench/chat/nf4_gemv.py) in the whole engine
        variants.append(("WORKBENCH_FAST_NF4", "1", "decode from the 4-bit weights (NF4 kernel on), 2 rows + LoRA"))
    for env, value, label in variants:
        with gpu_suite.env_set(**{env: value}):
            other = fg.FastEngine(engine.model_ref())
            lever[label] = engine_rate(other, prompt, [None, "tuned"])
            del other
    emit(bench="lever", engine_decodes_from="4-bit weights (NF4 kernel)" if engine.nf4 else "dense bf16 copy")
    for name, rate in lever.items():
        emit(bench="lever", variant=name, tokens_per_s_per_row=round(rate, 1))


def bench_model():
    """The Mistral-7B-shaped random model in 4-bit with the random r16 q/k/v/o adapter "tuned", ready to generate."""
    import torch
    from peft import LoraConfig, get_peft_model

    import gpu_suite
    from workbench.config import ModelConfig
    from workbench.models import load_model

    t = time.time()
    gpu_suite.build_random_mistral()
    model, tok, _ = load_model(ModelConfig(name_or_path=str(gpu_suite.MODEL_DIR)), "cuda")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"], task_type="CAUSAL_LM"),
                           adapter_name="tuned")
    torch.manual_seed(0)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.01)
    model.eval()
    emit(step="model ready", seconds=round(time.time() - t, 1),
         mem_gb=round(torch.cuda.memory_allocated() / 2**30, 2))
    return model, tok


def main() -> None:
    import torch

    from workbench.chat import fast_generate as fg
    from workbench.chat import session
    from workbench.chat.streaming import ChatSettings
    from workbench.evaluation import scoring

    assert torch.cuda.is_available(), "needs a CUDA GPU"
    os.environ.setdefault("WORKBENCH_HOME", "/tmp/wb-gpu")
    gpu = torch.cuda.get_device_name(0)
    import transformers, peft, bitsandbytes  # noqa: E401
    emit(gpu=gpu, torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
         bitsandbytes=bitsandbytes.__version__)
    model, tok = bench_model()
    held = session.HeldModel(key=("bench",), model=model, tokenizer=tok, device="cuda")
    held.adapters.add("tuned")
    recs = questions(EVAL_QUESTIONS)
    prompt = session.prompt_ids(tok, [], recs[0]["instruction"])
    # repetition_penalty 1.0: the engine as measured before the Chat tab's default penalty (1.1) came in
    settings = ChatSettings(max_new_tokens=NEW_TOKENS, temperature=0.0, repetition_penalty=1.0)
    warm = ChatSettings(max_new_tokens=8, temperature=0.0, repetition_penalty=1.0)

    # -- (a) chat: plain, then fast ---------------------------------------------------------------
    set_fast(False)
    chat_once(held, prompt, warm)
    plain = chat_once(held, prompt, settings)
    emit(bench="chat", path="plain 4-bit generate, mixed base+adapter batch", **plain)
    set_fast(True)
    t = time.perf_counter()
    cold = chat_once(held, prompt, settings)  # builds the engine (dequantize) and captures the graphs
    emit(bench="chat", path="fast, first request (engine build + graph capture)", build_and_run_s=
         round(time.perf_counter() - t, 2), dense_gb=round(fg.dense_bytes(model) / 2**30, 2), **cold)
    runs_ = [chat_once(held, prompt, settings) for _ in range(3)]
    for r in runs_:
        emit(bench="chat", path="fast (warm)", **r)
    fast_rate = statistics.median(min(r["per_column_tokens_per_s"]) for r in runs_)
    first_token = statistics.median(max(r["first_token_s"]) for r in runs_)
    plain_rate = min(plain["per_column_tokens_per_s"])
    emit(bench="chat", summary=True, plain_tokens_per_s=plain_rate, fast_tokens_per_s_per_column=fast_rate,
         ratio=round(fast_rate / plain_rate, 1), first_token_s=first_token,
         peak_mem_gb=round(torch.cuda.max_memory_allocated() / 2**30, 2))

    if os.environ.get("BENCH_CHAT_ONLY") == "1":  # a short run: the chat rows, then the Chat tab's default penalty
        engine = fg.cached_engine(model)
        emit(bench="chat", engine_reduce=engine.reduce, compiled=engine.compiled)
        lever = {"graphs + per-row LoRA, 2 rows (default)": engine_rate(engine, prompt, [None, "tuned"])}
        emit(bench="lever", variant="graphs + per-row LoRA, 2 rows (default)",
             tokens_per_s_per_row=round(lever["graphs + per-row LoRA, 2 rows (default)"], 1))
        penalty = ChatSettings(max_new_tokens=NEW_TOKENS, temperature=0.0, repetition_penalty=1.1)
        rates = [chat_once(held, prompt, penalty) for _ in range(3)]
        for r in rates:
            emit(bench="chat", path="fast (warm), repetition penalty 1.1 (the Chat tab's default)", **r)
        emit(bench="chat", summary="repetition penalty 1.1", fast_tokens_per_s_per_column=statistics.median(
            min(r["per_column_tokens_per_s"]) for r in rates), without_penalty=fast_rate)
        return

    # -- same answers? greedy tokens, plain vs fast, on this random model (logits nearly flat: ties are
    # common, so the first divergence and the plain path's top-2 logit gap there are what is reported) ------
    engine = fg.cached_engine(model)
    try:
        same_answers(model, tok, engine, session.prompt_ids(tok, [], recs[1]["instruction"]))
    except Exception as e:  # reported; the speed numbers still come
        emit(bench="same answers", error=f"{type(e).__name__}: {str(e)[:300]}")

    # -- levers (engine alone, 2 rows, 128 tokens) --------------------------------------------------------
    lever = {}
    try:
        levers(engine, prompt, lever)
    except Exception as e:
        emit(bench="lever", error=f"{type(e).__name__}: {str(e)[:300]}")

    # -- (b) evaluation: 500 questions, base + tuned ----------------------------------------------
    def eval_pass(records, batch_size=8):
        torch.cuda.synchronize()
        t = time.perf_counter()
        with model.disable_adapter():
            base = scoring.generate_answers(model, tok, records, NEW_TOKENS, 512, batch_size=batch_size)
        tuned = scoring.generate_answers(model, tok, records, NEW_TOKENS, 512, batch_size=batch_size)
        torch.cuda.synchronize()
        return time.perf_counter() - t, base, tuned

    set_fast(True)
    fast_s, fb, ft = eval_pass(recs)  # first: includes compiling + capturing the eval batch shape
    emit(bench="eval", path="fast (length-sorted batches of 125), first run: compile + capture included",
         questions=len(recs), seconds=round(fast_s, 1), answers_per_minute=round(2 * len(recs) / fast_s * 60, 1),
         mean_answer_chars=round(statistics.mean(len(a) for a in fb + ft), 1))
    warm_s, _, _ = eval_pass(recs)
    emit(bench="eval", path="fast, second run (warm)", questions=len(recs), seconds=round(warm_s, 1))
    set_fast(False)
    eval_pass(recs[:2], batch_size=2)
    plain_s, pb, pt = eval_pass(recs[:PLAIN_EVAL_SAMPLE])
    plain_500 = plain_s * len(recs) / PLAIN_EVAL_SAMPLE
    emit(bench="eval", path="plain 4-bit generate, batch 8", questions=PLAIN_EVAL_SAMPLE, seconds=round(plain_s, 1),
         scaled_to_500_s=round(plain_500, 1))
    set_fast(True)
    prompts = [scoring.prompt_ids(r, tok, 512) for r in recs]
    stop = scoring.stop_token_ids(model, tok)
    for label, kw in (("sorted batches of 128 (default)", dict(batch_size=128)),
                      ("unsorted batches of 128", dict(batch_size=128, sort=False)),
                      ("sorted batches of 64", dict(batch_size=64)), ("sorted batches of 256", dict(batch_size=256))):
        torch.cuda.synchronize()
        t = time.perf_counter()
        scoring.generate_batched(engine, prompts, None, NEW_TOKENS, stop, **kw)
        torch.cuda.synchronize()
        emit(bench="eval lever (base pass only, 500 questions)", variant=label, seconds=round(time.perf_counter() - t, 1))

    result = {"gpu": gpu, "plain_tokens_per_s": plain_rate, "fast_tokens_per_s_per_column": fast_rate,
              "chat_ratio": round(fast_rate / plain_rate, 1), "first_token_s": first_token,
              "eval_500_seconds": round(fast_s, 1), "eval_ratio": round(plain_500 / fast_s, 1), "command": COMMAND}
    out = ROOT / "bench" / "results" / "generate_speed.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "generate_speed.json").write_text(json.dumps(result, indent=1) + "\n")
    emit(**result)

    # -- torch.compile of the layer math: the default engine compiles; a second one without --------------
    try:
        t = time.perf_counter()
        plain_engine = fg.FastEngine(model, compile_layers=False)
        rate = engine_rate(plain_engine, prompt, [None, "tuned"])
        emit(bench="lever", variant="graphs, layer math NOT compiled, 2 rows + LoRA", tokens_per_s_per_row=round(rate, 1),
             build_and_measure_s=round(time.perf_counter() - t, 1), default_engine_compiled=engine.compiled,
             compile_error=engine.compile_error)
        del plain_engine
    except Exception as e:  # reported, not fatal
        emit(bench="lever", variant="graphs, not compiled", error=f"{type(e).__name__}: {str(e)[:300]}")


if __name__ == "__main__":
    main()
