"""The packed (padding-free) training path: attention stays inside each example, the answer-only loss is the
same per example as unpacked, chunking a step to a token budget changes nothing, and a short real run on the
embedded model has the plain recipe's losses. CPU tests use the per-example reference attention; the tests marked
`gpu` check PyTorch's varlen Flash-Attention kernel against it on the device machine."""
from __future__ import annotations

import copy

import pytest
import torch

from workbench.formatting import IGNORE_INDEX
from workbench.training import attention, packing

VOCAB = 97


def tiny_model(attn: str = "sdpa", dtype=torch.float32, device: str = "cpu", seed: int = 0):
    """A 2-layer Llama with random weights and grouped-query attention (4 query heads, 2 key/value heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = LlamaForCausalLM(cfg).to(dtype=dtype, device=device).eval()
    if attn == attention.NAME:
        attention.use_packed_attention(model)
    return model


def example(length: int, prompt: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
    return {"input_ids": ids, "attention_mask": [1] * length, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]}


EXAMPLES = [example(9, 4, 1), example(14, 6, 2), example(6, 2, 3), example(11, 5, 4)]


def to(chunk: dict, device: str) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in chunk.items()}


def packed_logits(model, examples, device="cpu"):
    chunk = to(packing.PackedCollator(max_tokens=10_000)(examples)["chunks"][0], device)
    with torch.no_grad():
        out = model(**{k: chunk[k] for k in packing.MODEL_KEYS}, use_cache=False)
    bounds = chunk["cu_seq_lens_q"].tolist()
    return [out.logits[0, a:b].float().cpu() for a, b in zip(bounds[:-1], bounds[1:])]


def test_collator_packs_in_order_with_restarting_positions_and_budget_chunks():
    batch = packing.PackedCollator(max_tokens=24)(EXAMPLES)
    assert [c["cu_seq_lens_q"].tolist() for c in batch["chunks"]] == [[0, 9, 23], [0, 6, 17]]
    assert batch["input_ids"][0].tolist() == [t for ex in EXAMPLES for t in ex["input_ids"]]
    first = batch["chunks"][0]
    assert first["position_ids"][0].tolist() == list(range(9)) + list(range(14))
    assert first["max_length_q"] == 14
    # the Trainer counts answer tokens as labels[1:] != -100: the same count as the padded batches give
    assert int((batch["labels"][0, 1:] != IGNORE_INDEX).sum()) == sum(
        sum(1 for lab in ex["labels"][1:] if lab != IGNORE_INDEX) for ex in EXAMPLES)
    assert packing.split_by_budget([5, 30, 5, 5], 12) == [(0, 1), (1, 2), (2, 4)]  # a long example alone


def test_packed_attention_never_crosses_examples():
    model = tiny_model(attention.NAME)
    before = packed_logits(model, EXAMPLES)
    changed = copy.deepcopy(EXAMPLES)
    changed[1]["input_ids"] = [(t * 7 + 3) % VOCAB for t in changed[1]["input_ids"]]  # same length, new tokens
    after = packed_logits(model, changed)
    for i in (0, 2, 3):
        torch.testing.assert_close(after[i], before[i], rtol=0, atol=1e-6)
    assert (after[1] - before[1]).abs().max() > 1e-2  # the changed example itself did change

    # Control: the same packed row under one causal attention over the whole row does leak into later examples,
    # so the check above would catch attention that crossed a boundary.
    plain = tiny_model("sdpa")
    row = lambda exs: torch.tensor([[t for ex in exs for t in ex["input_ids"]]])  # noqa: E731
    with torch.no_grad():
        a = plain(input_ids=row(EXAMPLES), attention_mask=torch.ones_like(row(EXAMPLES))).logits
        b = plain(input_ids=row(changed), attention_mask=torch.ones_like(row(changed))).logits
    assert (a[0, 23:] - b[0, 23:]).abs().max() > 1e-3


def test_each_packed_example_has_its_unpacked_logits():
    packed = packed_logits(tiny_model(attention.NAME), EXAMPLES)
    plain = tiny_model("sdpa")
    for ex, got in zip(EXAMPLES, packed):
        with torch.no_grad():
            want = plain(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_answer_only_loss_per_example_equals_unpacked():
    model = tiny_model(attention.NAME)
    plain = tiny_model("sdpa")
    chunk = packing.PackedCollator(max_tokens=10_000)(EXAMPLES)["chunks"][0]
    with torch.no_grad():
        out = model(**{k: chunk[k] for k in packing.MODEL_KEYS}, logits_to_keep=chunk["loss_positions"],
                    use_cache=False)
    per_token = torch.nn.functional.cross_entropy(out.logits[0], chunk["loss_targets"], reduction="none")
    bounds = chunk["cu_seq_lens_q"].tolist()
    positions = chunk["loss_positions"]
    for i, ex in enumerate(EXAMPLES):
        mine = per_token[(positions >= bounds[i]) & (positions < bounds[i + 1])].mean()
        with torch.no_grad():
            want = plain(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss
        torch.testing.assert_close(mine, want, rtol=1e-5, atol=1e-6)
    # the whole step: token-weighted mean over all answer tokens, as the padded batches' loss is
    with torch.no_grad():
        width = max(len(ex["input_ids"]) for ex in EXAMPLES)
        pad = lambda key, v: torch.tensor([ex[key] + [v] * (width - len(ex[key])) for ex in EXAMPLES])  # noqa: E731
        want = plain(input_ids=pad("input_ids", 0), attention_mask=pad("attention_mask", 0),
                     labels=pad("labels", IGNORE_INDEX)).loss
    torch.testing.assert_close(per_token.mean(), want, rtol=1e-5, atol=1e-6)


def test_chunks_of_a_step_give_the_gradient_of_one_row():
    def grads(max_tokens):
        model = tiny_model(attention.NAME)
        model.train()
        batch = packing.PackedCollator(max_tokens)(EXAMPLES)
        total = sum(int(c["loss_targets"].numel()) for c in batch["chunks"])
        for chunk in batch["chunks"]:
            (packing.loss_sum(model, chunk) / total).backward()
        return len(batch["chunks"]), {n: p.grad.clone() for n, p in model.named_parameters()}

    one, whole = grads(10_000)
    three, split = grads(20)
    assert (one, three) == (1, 3)
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], rtol=1e-4, atol=1e-6)


def test_loss_through_the_swapped_head_in_chunks_equals_full_logits():
    """The packed path swaps the LM head for one returning hidden states and applies the head a chunk of
    positions at a time: loss and gradients are those of the full logits."""
    def loss_and_grads(swap, chunk_rows):
        model = tiny_model(attention.NAME)
        model.train()
        model.lm_head.weight.requires_grad_(False)  # frozen, as under LoRA
        if swap:
            assert packing.use_chunked_loss(model)
            assert packing.loss_head(model) is not None
        chunk = packing.PackedCollator(10_000)(EXAMPLES)["chunks"][0]
        head = packing.loss_head(model)
        if head is not None:  # chunk_rows rows of logits at a time
            out = model(**{k: chunk[k] for k in packing.MODEL_KEYS}, logits_to_keep=chunk["loss_positions"])
            loss = packing.chunked_cross_entropy(out.logits[0], head.weight, chunk["loss_targets"], chunk_rows)
        else:
            loss = packing.loss_sum(model, chunk)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, want_grads = loss_and_grads(False, None)
    got, got_grads = loss_and_grads(True, 5)  # 23 answer positions: 5 chunks
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got_grads.keys() == want_grads.keys() and len(want_grads) > 5
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6)


def test_missing_boundaries_is_an_error_not_full_row_attention():
    model = tiny_model(attention.NAME)
    with pytest.raises(attention.PackedAttentionError, match="packed"):
        model(input_ids=torch.tensor([EXAMPLES[0]["input_ids"]]))


def test_packing_is_off_on_cpu_by_default_and_follows_the_setting():
    from workbench.config import RunConfig

    cfg = RunConfig()
    assert cfg.training.packing == "auto"
    assert not packing.enabled(cfg, "cpu")
    cfg.training.packing = "on"
    assert packing.enabled(cfg, "cpu")
    cfg.training.packing = "off"
    assert not packing.enabled(cfg, "cuda")
    cfg.training.packing = "sometimes"
    assert any("training.packing" in m for m in cfg.validate())
    # 'auto' is settled once the model is loaded: never on a CPU, never for an architecture not checked
    llama = tiny_model()
    cfg.training.packing = "auto"
    assert not packing.resolve(cfg, "cpu", llama) and not packing.enabled(cfg, "cuda")
    llama.config.model_type = "gemma2"
    cfg = RunConfig()
    assert not packing.resolve(cfg, "cuda", llama) and not packing.enabled(cfg, "cuda")
    assert cfg.training.packing == "auto" and "_packing" not in cfg.to_yaml()  # the saved config keeps 'auto'


def test_compile_follows_the_setting_and_a_compiled_row_gets_one_constant_max_length():
    from workbench.config import RunConfig
    from workbench.training import compiled

    cfg = RunConfig()
    assert cfg.training.compile == "auto"
    # 'auto': on CUDA, only where liger's fused kernels are missing (they measured as fast, without a compile)
    assert compiled.wanted(cfg, "cuda", packed=True) == (not packing.kernels_installed())
    assert not compiled.wanted(cfg, "cpu", packed=True)
    assert not compiled.wanted(cfg, "cuda", packed=False)  # the padded path is never compiled
    cfg.training.compile = "on"
    assert compiled.wanted(cfg, "cpu", packed=True)
    cfg.training.compile = "off"
    assert not compiled.wanted(cfg, "cuda", packed=True)
    cfg.training.compile = "maybe"
    assert any("training.compile" in m for m in cfg.validate())
    assert len(compiled.decoder_layers(tiny_model())) == 2
    # the kernel only sizes its grid with max_length: a constant bound keeps one compiled graph for every row
    chunk = packing.PackedCollator(max_tokens=10_000, fixed_max_length=128)(EXAMPLES)["chunks"][0]
    assert chunk["max_length_q"] == chunk["max_length_k"] == 128
    assert packing.PackedCollator(max_tokens=10_000)(EXAMPLES)["chunks"][0]["max_length_q"] == 14


@pytest.mark.integration
def test_packed_run_matches_the_plain_recipe_over_the_first_steps(monkeypatch):
    """The embedded model in real 4-bit on CPU, 4 steps of 2 x 2 examples: the same examples in the same order,
    padded (packing off) and packed (on, cut into chunks of at most 300 tokens so the several-chunk step is what
    runs). LoRA dropout 0 so both see the same function; tolerance: 2% of the loss per step."""
    from workbench import runs
    from workbench.config import preset
    from workbench.training import jobs, recipe

    def losses(mode):
        cfg = preset("quick-demo-cpu")
        cfg.name = f"pack-{mode}"
        cfg.model.max_seq_length = 128
        cfg.data.max_train_examples = 16
        cfg.data.max_eval_examples = 4
        cfg.lora.dropout = 0.0
        cfg.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj"]  # fewer adapters: a quicker test
        cfg.training.max_steps = 4
        cfg.training.batch_size, cfg.training.grad_accum = 2, 2
        cfg.training.logging_steps = 1
        cfg.training.eval_steps = 4
        cfg.training.save_strategy = "epoch"
        cfg.training.save_every_minutes = 0
        cfg.training.packing = mode
        cfg.eval.run_after_training = False
        run_id = jobs.create_run(cfg)
        assert recipe.run_training(runs.run_path(run_id)) == "completed", runs.read_status(run_id)
        events = runs.read_events(run_id)
        return ([e["loss"] for e in events if "loss" in e], [e["eval_loss"] for e in events if "eval_loss" in e],
                [e.get("tokens_per_s") for e in events if "loss" in e])

    monkeypatch.setenv("WORKBENCH_PACK_TOKENS", "300")
    plain, plain_eval, _ = losses("off")
    packed, packed_eval, rates = losses("on")
    assert len(plain) == len(packed) == 4
    for a, b in zip(plain, packed):
        assert abs(a - b) <= 0.02 * abs(a), (plain, packed)
    assert abs(plain_eval[-1] - packed_eval[-1]) <= 0.02 * plain_eval[-1]
    assert all(r and r > 0 for r in rates)  # the Train tab's tokens/s comes from these events


# -- on the GPU (device machine) ---------------------------------------------------------------------

@pytest.mark.gpu
def test_varlen_kernel_matches_the_per_example_reference_forward_and_backward():
    assert attention.kernel_available("cuda"), "torch.nn.attention.varlen.varlen_attn is missing"
    torch.manual_seed(0)
    lengths = [37, 512, 1, 200, 129]
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    total = sum(lengths)
    q = torch.randn(total, 32, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(total, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(total, 8, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad_out = torch.randn(total, 32, 128, device="cuda", dtype=torch.bfloat16)
    out = attention.varlen_attention(q, k, v, cu, max(lengths), 128 ** -0.5)
    out.backward(grad_out)
    fast = [out.detach().float()] + [t.grad.float() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attention.reference_attention(q64, k64, v64, cu, 128 ** -0.5)
    ref.backward(grad_out.double())
    for got, want in zip(fast, [ref.detach(), q64.grad, k64.grad, v64.grad]):
        rel = (got.double() - want).norm() / want.norm()
        assert rel < 2e-2, rel


@pytest.mark.gpu
def test_on_the_gpu_packed_attention_never_crosses_examples():
    model = tiny_model(attention.NAME, dtype=torch.bfloat16, device="cuda")
    before = packed_logits(model, EXAMPLES, "cuda")
    changed = copy.deepcopy(EXAMPLES)
    changed[1]["input_ids"] = [(t * 7 + 3) % VOCAB for t in changed[1]["input_ids"]]
    after = packed_logits(model, changed, "cuda")
    for i in (0, 2, 3):
        torch.testing.assert_close(after[i], before[i], rtol=0, atol=1e-2)
    assert (after[1] - before[1]).abs().max() > 1e-2
    plain = tiny_model("sdpa", dtype=torch.bfloat16, device="cuda")
    for ex, got in zip(EXAMPLES, before):
        with torch.no_grad():
            want = plain(input_ids=torch.tensor([ex["input_ids"]], device="cuda")).logits[0].float().cpu()
        torch.testing.assert_close(got, want, rtol=0, atol=5e-2)


@pytest.mark.gpu
def test_compiled_layers_train_like_eager_and_compile_once_on_the_gpu(tmp_path):
    """A small Llama in real 4-bit NF4 + LoRA + gradient checkpointing on packed rows: the compiled layers
    (`training.compile`) give the eager layers' loss and LoRA gradients, for rows of different lengths, without a
    recompile per row length."""
    from peft import LoraConfig, get_peft_model
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    from workbench.training import compiled

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=512, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quant, dtype=torch.bfloat16,
                                             device_map={"": 0})
    attention.use_packed_attention(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"]))
    model.train()
    rows = [[example(40, 10, 1), example(90, 30, 2)], [example(120, 20, 3), example(7, 3, 4), example(64, 8, 5)]]

    def step(examples):
        chunk = to(packing.PackedCollator(10_000, fixed_max_length=128)(examples)["chunks"][0], "cuda")
        model.zero_grad()
        loss = packing.loss_sum(model, chunk)
        loss.backward()
        return loss.item(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}

    eager = [step(r) for r in rows]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compiled.compile_layers(model) == 3
    fast = [step(r) for r in rows + rows]
    for (want_loss, want_grads), (got_loss, got_grads) in zip(eager + eager, fast):
        assert abs(got_loss - want_loss) <= 1e-2 * abs(want_loss)
        for name, want in want_grads.items():
            rel = (got_grads[name] - want).norm() / want.norm().clamp_min(1e-12)
            assert rel < 5e-2, (name, float(rel))
    # one graph for all layers and row lengths (training forward; its backward is compiled with it)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 2, dict(torch._dynamo.utils.counters["stats"])


@pytest.mark.gpu
def test_one_process_on_a_machine_with_several_gpus_counts_one_gpu(tmp_path):
    """On two H200s a single process's loss came out 2x (23.2 vs 11.6 for the same examples): TrainingArguments
    counted both GPUs and the Trainer divided the answer-token count by 2, as for DataParallel, which it never
    applies to 4-bit models. One process now counts one GPU; several GPUs mean several processes."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs a machine with 2+ GPUs (nvidia-h200-x2)")
    from workbench.config import RunConfig
    from workbench.training import recipe

    cfg = RunConfig()
    cfg.training.device = "cuda"
    cfg.training.packing = "off"
    assert recipe.training_arguments(cfg, tmp_path, "cuda").n_gpu == 1
    cfg.training.packing = "on"
    assert recipe.training_arguments(cfg, tmp_path, "cuda").n_gpu == 1
