"""The fast generation engine (workbench.chat.fast_generate) computes what plain `generate` computes.

CPU tests run the engine's logic without CUDA graphs (WORKBENCH_FAST_GENERATE=all or the engine directly)
on the real embedded model in 4-bit: in float32 compute its greedy tokens must equal plain `generate`'s
exactly (prefill masks, positions, static cache, length-sorted batches, per-row LoRA slots); in bf16 (the
default compute dtype) they must be equal or part only at a near-tie of the plain model's logits, which
arithmetic order explains. `gpu` tests run the CUDA-only parts (graph capture and replay, pinned
one-step-behind token reads) on the device machine.
"""
from __future__ import annotations

import threading

import pytest

from test_chat_support import QUESTION
from workbench.chat import fast_engines
from workbench.chat import fast_generate as fg
from workbench.chat.streaming import PEFT_BASE, ChatSettings, stream_pair
from workbench.config import ModelConfig

QUESTIONS = [QUESTION, "How do I OPTIMIZE a Delta table?", "Explain Z-ordering briefly.",
             "What is Unity Catalog?", "Write a PySpark snippet that reads a CSV file into a DataFrame."]
pytestmark = pytest.mark.integration


def _load(dtype: str):
    from workbench.models import load_model

    model, tok, _ = load_model(ModelConfig(compute_dtype=dtype), "cpu")
    model.eval()
    if dtype == "float32":
        # On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights at the first forward and multiplies in
        # bf16 whatever the compute dtype: keep its float32 dequantize + matmul path so both sides are float32.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    return model, tok


@pytest.fixture(scope="module")
def fp32():
    return _load("float32")


@pytest.fixture(scope="module")
def bf16():
    return _load("bfloat16")


def _prompt(tok, question: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _plain(model, tok, prompts, new, adapter_names=None, scores=False):
    """Plain transformers generate on a left-padded batch (the workbench's own padding helper)."""
    import torch

    from workbench.formatting import left_padded

    ids, mask = left_padded(prompts, tok.pad_token_id, "cpu")
    kw = {"adapter_names": adapter_names} if adapter_names else {}
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=tok.pad_token_id, output_scores=True,
                             return_dict_in_generate=True, **kw)
    rows = [out.sequences[r, ids.shape[1]:].tolist() for r in range(len(prompts))]
    return (rows, out.scores) if scores else rows


def _fast(engine, prompts, new, adapters=None, repetition_penalty=1.0):
    steps = list(engine.generate(prompts, adapters or [None] * len(prompts), new, stop_ids=(),
                                 repetition_penalty=repetition_penalty))
    return [[s[r] for s in steps] for r in range(len(prompts))]


def test_float32_greedy_tokens_equal_plain_generate_batched_and_alone(fp32):
    model, tok = fp32
    engine = fg.FastEngine(model)
    assert not engine.use_graphs  # CPU: the same math, no graphs
    prompts = [_prompt(tok, q) for q in QUESTIONS[:3]]
    assert len({len(p) for p in prompts}) > 1  # left padding is exercised
    assert _fast(engine, prompts, 12) == _plain(model, tok, prompts, 12)
    assert _fast(engine, prompts[2:], 12) == _plain(model, tok, prompts[2:], 12)


def test_an_mlp_patched_by_liger_kernel_still_runs_on_the_engine(fp32):
    """Found on the H200: after a training run in the same process (bench/quality_run.py, a run's own scoring),
    liger-kernel's patch had replaced the MLP class with one that has no act_fn, and building the engine failed the
    whole evaluation with AttributeError. The engine now takes silu (the checked activation) where act_fn is absent;
    the tokens equal plain generate's through the same patched modules."""
    import torch
    import torch.nn.functional as F

    class SwiGLUWithoutActFn(torch.nn.Module):  # how liger-kernel's LigerSwiGLUMLP looks to the engine
        def __init__(self, mlp):
            super().__init__()
            self.gate_proj, self.up_proj, self.down_proj = mlp.gate_proj, mlp.up_proj, mlp.down_proj

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    model, tok = fp32
    layers = fg._core(model).model.layers
    original = [layer.mlp for layer in layers]
    try:
        for layer in layers:
            layer.mlp = SwiGLUWithoutActFn(layer.mlp)
        engine = fg.FastEngine(model)
        prompts = [_prompt(tok, q) for q in QUESTIONS[:2]]
        assert _fast(engine, prompts, 8) == _plain(model, tok, prompts, 8)
    finally:
        for layer, mlp in zip(layers, original):
            layer.mlp = mlp


def test_repetition_penalty_is_transformers_own_rule_and_the_engine_applies_it_as_plain_generate(fp32):
    """Chat's repetition penalty: on one unpadded row it is exactly transformers' RepetitionPenaltyLogitsProcessor;
    in a left-padded batch the padding is not penalized, so each row answers as it would alone; the engine's greedy
    tokens equal plain generate's with the same rule (float32)."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from workbench.chat.streaming import RepeatPenalty

    torch.manual_seed(0)
    scores, ids = torch.randn(1, 50), torch.tensor([[3, 7, 7, 12, 40]])
    assert torch.equal(RepeatPenalty(1.3, [0])(ids, scores.clone()),
                       RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone()))
    padded = torch.tensor([[0, 0, 3, 7], [5, 6, 3, 7]])
    penalized = RepeatPenalty(1.3, [2, 0])(padded, scores.repeat(2, 1))
    assert penalized[0, 0] == scores[0, 0] and penalized[1, 5] != scores[0, 5]  # row 0's pads are not its tokens

    model, tok = fp32
    engine = fg.FastEngine(model)
    prompts = [_prompt(tok, q) for q in QUESTIONS[:3]]
    assert len({len(p) for p in prompts}) > 1
    plain = _plain_penalized(model, tok, prompts, 16, 1.3)
    assert _fast(engine, prompts, 16, repetition_penalty=1.3) == plain
    assert plain != _plain(model, tok, prompts, 16)  # the penalty changed the answers
    assert _plain_penalized(model, tok, prompts[1:2], 16, 1.3)[0] == plain[1]  # a row answers as it would alone


def _plain_penalized(model, tok, prompts, new, penalty):
    import torch

    from workbench.chat.streaming import RepeatPenalty
    from workbench.formatting import left_padded

    ids, mask = left_padded(prompts, tok.pad_token_id, "cpu")
    width = ids.shape[1]
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, pad_token_id=tok.pad_token_id,
                             logits_processor=[RepeatPenalty(penalty, [width - len(p) for p in prompts])])
    return [out[r, width:].tolist() for r in range(len(prompts))]


def test_bf16_greedy_tokens_equal_or_part_only_at_a_near_tie(bf16):
    """bf16 (the default): equal, or the first differing token is the plain model's runner-up at a near-tie."""
    model, tok = bf16
    engine = fg.FastEngine(model)
    prompts = [_prompt(tok, q) for q in QUESTIONS[:2]]
    fast = _fast(engine, prompts, 16)
    plain, scores = _plain(model, tok, prompts, 16, scores=True)
    for row, (f, p) in enumerate(zip(fast, plain)):
        first = next((i for i, (a, b) in enumerate(zip(f, p)) if a != b), None)
        if first is None:
            continue
        logits = scores[first][row].float()
        top2 = logits.topk(2)
        assert f[first] == top2.indices[1].item(), (row, first)  # the fast path took the runner-up
        assert (top2.values[0] - top2.values[1]).item() <= 0.01 * top2.values[0].abs().item() + 0.13, (row, first)


def test_bf16_with_adapters_folded_equal_peft_or_part_only_at_a_near_tie(bf16):
    """bf16 with LoRA (the default engine: A folded into the base GEMM in bf16, peft keeps it in float32): base and two
    adapters' rows against peft's mixed batch, equal or parting only at a near-tie of peft's logits."""
    model, tok = bf16
    peft_model = _two_adapters(model, 2, ["q_proj", "k_proj", "v_proj", "o_proj"], ["v_proj", "down_proj"],
                               other_alpha=8)
    try:
        engine = fg.FastEngine(peft_model)
        assert engine.fold and peft_model.base_model.model.model.layers[0].self_attn.q_proj.lora_A["tuned"].weight.dtype \
            != engine.dtype  # the fold really rounds A to the engine's dtype here
        prompts = [_prompt(tok, QUESTION)] * 3
        adapters = [None, "tuned", "other"]
        fast = _fast(engine, prompts, 16, adapters)
        plain, scores = _plain(peft_model, tok, prompts, 16, adapter_names=[PEFT_BASE, "tuned", "other"], scores=True)
        assert fast[0] != fast[1] or plain[0] != plain[1]  # the adapter changes the tuned row
        for row, (f, p) in enumerate(zip(fast, plain)):
            first = next((i for i, (a, b) in enumerate(zip(f, p)) if a != b), None)
            if first is None:
                continue
            top2 = scores[first][row].float().topk(2)
            assert f[first] == top2.indices[1].item(), (row, first)
            assert (top2.values[0] - top2.values[1]).item() <= 0.01 * top2.values[0].abs().item() + 0.13, (row, first)
    finally:
        peft_model.unload()


def test_engine_reads_weights_bitsandbytes_repacked_for_the_cpu(bf16):
    """After a plain forward, bitsandbytes keeps CPU weights in its AVX512 layout (absmax in bf16): the engine
    unpacks a copy (the model keeps working) and gets the same matrix up to that bf16 absmax."""
    import torch

    model, tok = bf16
    lin = model.model.layers[0].self_attn.q_proj
    x = torch.randn(1, 3, lin.in_features, dtype=torch.bfloat16)
    with torch.inference_mode():
        before = lin(x)
    dense = fg._dense(lin, torch.float32)
    state = lin.weight.quant_state
    if not getattr(state, "packing_format_for_cpu", False):
        pytest.skip("this CPU has no AVX512-BF16 kernel: bitsandbytes did not repack")
    with torch.inference_mode():
        after = lin(x)
    assert torch.equal(before, after) and state.packing_format_for_cpu  # the model was not changed
    reference = (x.float() @ dense.T)
    assert (after.float() - reference).abs().max() <= 0.02 * reference.abs().max()


def _two_adapters(model, seed: int, tuned: list, other: list, other_alpha: int):
    """The model with adapters 'tuned' (r8/alpha16) and 'other' (r4) on the given layers, LoRA B randomized so each
    adapter changes its rows' answers; the caller unloads them."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=tuned,
                                                  task_type="CAUSAL_LM"), adapter_name="tuned")
    peft_model.add_adapter("other", LoraConfig(r=4, lora_alpha=other_alpha, lora_dropout=0.0, target_modules=other,
                                               task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.2)
    return peft_model.eval()


def test_per_row_lora_slots_equal_peft_mixed_batch(fp32):
    """Base and two adapters' rows in one batch (ranks 8 and 4, different target modules): the engine's slot
    gating equals peft's per-row routing."""
    model, tok = fp32
    peft_model = _two_adapters(model, 0, ["q_proj", "k_proj", "v_proj", "o_proj"],
                               ["q_proj", "v_proj", "gate_proj", "down_proj"], other_alpha=16)
    try:
        prompts = [_prompt(tok, QUESTION)] * 3
        plain = _plain(peft_model, tok, prompts, 10, adapter_names=[PEFT_BASE, "tuned", "other"])
        engine = fg.FastEngine(peft_model)
        fast = _fast(engine, prompts, 10, [None, "tuned", "other"])
        assert fast == plain
        assert fast[0] != fast[1] and fast[1] != fast[2] and fast[0] != fast[2]  # each adapter acts on its row
        # another request with other slots reuses nothing stale
        assert _fast(engine, prompts[:2], 6, ["other", None]) == [fast[2][:6], fast[0][:6]]
        assert fg.active_lora(peft_model) == ("tuned",)
        with peft_model.disable_adapter():
            assert fg.active_lora(peft_model) == ()
    finally:
        peft_model.unload()


@pytest.mark.parametrize("lever", ["WORKBENCH_FAST_REDUCE", "WORKBENCH_FAST_FOLD", "WORKBENCH_FAST_FUSE"])
def test_each_decode_lever_gives_the_same_tokens(fp32, monkeypatch, lever):
    """The decode-step levers, all on by default, each turned off with =0: the LoRA products as reductions, LoRA A folded
    into the base product (A^T under the dense weight's rows), the KV-cache write and an additive mask fused into the
    step. In float32 each gives the tokens the engine gives without it, base and two adapters of different ranks and
    targets in one batch; then a batch with fewer adapters reuses the folded rows, and one with more grows them."""
    model, tok = fp32
    peft_model = _two_adapters(model, 1, ["q_proj", "v_proj", "o_proj", "down_proj"],
                               ["k_proj", "gate_proj", "up_proj"], other_alpha=8)
    try:
        prompts = [_prompt(tok, QUESTION)] * 3
        adapters = [None, "tuned", "other"]
        monkeypatch.setenv(lever, "0")
        without = fg.FastEngine(peft_model)
        assert not (without.reduce and without.fold and without.fuse)
        expected = _fast(without, prompts, 10, adapters)
        one = _fast(without, prompts[:2], 6, adapters[:2])
        monkeypatch.delenv(lever)
        engine = fg.FastEngine(peft_model)
        assert engine.reduce == "lora" and engine.fold and engine.fuse  # the defaults
        assert _fast(engine, prompts[:2], 6, adapters[:2]) == one  # one adapter first: its A rows folded in
        assert _fast(engine, prompts, 10, adapters) == expected  # two: the buffers grow
        assert _fast(engine, prompts[:2], 6, adapters[:2]) == one  # back to one, in the grown buffers
        assert expected[0] != expected[1] and expected[1] != expected[2]  # each adapter acts on its own row
    finally:
        peft_model.unload()


def test_eval_answers_on_the_engine_equal_plain_in_the_prompts_order(fp32, monkeypatch):
    """scoring.generate_answers through the engine (length-sorted batches, bigger than asked) vs plain."""
    from workbench.evaluation import scoring

    model, tok = fp32
    records = [{"instruction": q, "input": "", "context": "", "output": "x"} for q in QUESTIONS]
    monkeypatch.setenv("WORKBENCH_FAST_GENERATE", "0")
    plain = scoring.generate_answers(model, tok, records, 10, 256, batch_size=2)
    assert fg.cached_engine(model) is None
    monkeypatch.setenv("WORKBENCH_FAST_GENERATE", "all")
    seen = []
    fast = scoring.generate_answers(model, tok, records, 10, 256, batch_size=2,
                                    progress=lambda f, m: seen.append(m))
    assert fg.cached_engine(model) is not None  # the engine answered, and is kept for the next pass
    assert fast == plain
    assert seen[-1] == f"generating {len(records)}/{len(records)}"
    fg.drop_engine(model)


def test_streaming_stop_and_per_row_prompts_on_the_engine(fp32, monkeypatch):
    """stream_pair on the engine: both rows stream step by step, each row answers its own prompt as it
    would alone, Stop ends early, sampling repeats with its seed."""
    from workbench.chat.session import HeldModel

    model, tok = fp32
    held = HeldModel(key=("t",), model=model, tokenizer=tok, device="cpu")
    prompts = [_prompt(tok, QUESTIONS[1]), _prompt(tok, QUESTIONS[3])]
    settings = ChatSettings(max_new_tokens=10)
    monkeypatch.setenv("WORKBENCH_FAST_GENERATE", "0")
    plain = list(stream_pair(held, [PEFT_BASE, PEFT_BASE], prompts, settings))
    monkeypatch.setenv("WORKBENCH_FAST_GENERATE", "all")
    fast = list(stream_pair(held, [PEFT_BASE, PEFT_BASE], prompts, settings))
    assert fg.cached_engine(model) is not None
    assert fast[-1].texts == plain[-1].texts and fast[-1].finished and not fast[-1].stopped
    assert [u.tokens for u in fast[:-1]] == [u.tokens for u in plain[:-1]]  # one update per step, same counts
    from workbench.formatting import stop_token_ids

    stops = stop_token_ids(model, tok)
    alone = _fast(fg.cached_engine(model), prompts[1:], 10,  # row 1's prompt in a batch of its own
                  repetition_penalty=settings.repetition_penalty)[0]
    alone = alone[:next((i for i, t in enumerate(alone) if t in stops), len(alone))]
    assert fast[-1].texts[1] == tok.decode(alone, skip_special_tokens=True).strip()

    stop = threading.Event()
    updates = []
    for update in stream_pair(held, [PEFT_BASE, PEFT_BASE], prompts, ChatSettings(max_new_tokens=40), stop):
        updates.append(update)
        if len(updates) == 3:
            stop.set()
    assert updates[-1].finished and updates[-1].stopped and max(updates[-1].tokens) < 40

    sampled = ChatSettings(max_new_tokens=8, temperature=0.9, top_p=0.9, seed=7)
    one = list(stream_pair(held, [PEFT_BASE, PEFT_BASE], prompts, sampled))[-1].texts
    two = list(stream_pair(held, [PEFT_BASE, PEFT_BASE], prompts, sampled))[-1].texts
    assert one == two
    fg.drop_engine(model)


def test_cpu_default_is_plain_and_training_or_memory_keeps_the_plain_path(fp32, monkeypatch):
    import torch

    model, _ = fp32
    monkeypatch.delenv("WORKBENCH_FAST_GENERATE", raising=False)
    assert fg.enabled("cuda") and not fg.enabled("cpu")  # CPU behaviour stays as it was
    monkeypatch.setenv("WORKBENCH_FAST_GENERATE", "0")
    assert not fg.enabled("cuda")
    monkeypatch.setenv("WORKBENCH_FAST_GENERATE", "all")
    engine, why = fg.engine_for(model, "cpu")
    assert engine is not None and why == ""
    # a run training elsewhere: no bf16 copy, and an existing one is dropped (training comes first)
    monkeypatch.setattr(fast_engines, "training_elsewhere", lambda: "20250101-000000-busy")
    engine, why = fg.engine_for(model, "cuda")
    assert engine is None and "20250101-000000-busy" in why and fg.cached_engine(model) is None
    # not enough free GPU memory for the dense copy: plain path, with the numbers
    monkeypatch.setattr(fast_engines, "training_elsewhere", lambda: None)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (64 * 2**20, 80 * 2**30))
    engine, why = fg.engine_for(model, "cuda")
    assert engine is None and "GB are free" in why
    assert fg.dense_bytes(model) > 100 * 2**20  # 2 bytes per decoder-layer parameter of the 135M model
