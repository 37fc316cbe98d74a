"""The NF4 decode kernel (workbench.chat.nf4_gemv) multiplies by exactly the weights bitsandbytes dequantizes.

The kernel is off by default (measured slower than the dense copy at 2 rows on an H200: BENCHMARKS.md); these
tests keep its arithmetic right for when it is turned on (WORKBENCH_FAST_NF4=1). CPU: the packed form (q/k/v and gate/up fused, nested absmax dequantized once) of the real embedded model decodes to
the engine's dense copy bit for bit, and the engine on the 4-bit path (its CPU reference op) gives the dense path's
greedy tokens exactly. `gpu`: the Triton kernel against the dense product on real bitsandbytes weights (one-hot rows
give the decoded weights themselves, bit for bit; random rows agree up to float32 summation order), and the engine's
graphed decode on the kernel against the dense decode (run on the device machine).
"""
from __future__ import annotations

import pytest

from test_chat_support import QUESTION
from workbench.chat import fast_generate as fg
from workbench.chat import nf4_gemv
from workbench.config import ModelConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fresh_bf16():
    """The embedded model in 4-bit, never run forward (bitsandbytes' CPU repacking happens at the first forward)."""
    from workbench.models import load_model

    model, tok, _ = load_model(ModelConfig(compute_dtype="bfloat16"), "cpu")
    return model.eval(), tok


def test_packed_weights_decode_to_the_dense_copy_bit_for_bit(fresh_bf16):
    import torch

    model, _ = fresh_bf16
    for layer in (model.model.layers[0], model.model.layers[-1]):
        for group, (parent, names) in fg.GROUPS.items():
            lins = [fg._base_linear(getattr(getattr(layer, parent), n)) for n in names]
            packed = nf4_gemv.pack(lins)
            assert packed is not None and packed[3] == 64 and packed[1].dtype == torch.float32
            dense = torch.cat([fg._dense(lin, torch.bfloat16) for lin in lins])
            assert torch.equal(nf4_gemv.dequantize(*packed, torch.bfloat16), dense), group
    assert nf4_gemv.pack([torch.nn.Linear(64, 8)]) is None  # not 4-bit: the engine keeps the dense path


def test_engine_on_the_4bit_path_gives_the_dense_paths_tokens(fresh_bf16, monkeypatch):
    """WORKBENCH_FAST_NF4=all runs the kernel's CPU reference op in the decode steps: same greedy tokens as the dense
    copy, with per-row LoRA on base and tuned rows of one batch."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = fresh_bf16
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True)
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                  target_modules=["q_proj", "v_proj", "o_proj", "gate_proj",
                                                                  "down_proj"]), adapter_name="tuned")
    try:
        with torch.no_grad():
            for name, param in peft_model.named_parameters():
                if "lora_B" in name:
                    torch.nn.init.normal_(param, std=0.2)
        peft_model.eval()
        monkeypatch.setenv("WORKBENCH_FAST_NF4", "all")
        engine = fg.FastEngine(peft_model)
        assert engine.nf4
        calls = []
        real = nf4_gemv.dequantize
        monkeypatch.setattr(nf4_gemv, "dequantize", lambda *a: calls.append(1) or real(*a))
        on_4bit = list(engine.generate([prompt, prompt], [None, "tuned"], 10, stop_ids=()))
        assert len(calls) == 9 * 4 * len(engine.layers)  # 9 decode steps x 4 groups x layers (prefill: dense)
        monkeypatch.setenv("WORKBENCH_FAST_NF4", "0")
        dense_engine = fg.FastEngine(peft_model)
        assert not dense_engine.nf4
        dense = list(dense_engine.generate([prompt, prompt], [None, "tuned"], 10, stop_ids=()))
        assert on_4bit == dense
        assert [s[0] for s in dense] != [s[1] for s in dense]  # the tuned row really differs
        # more rows than the kernel takes: the decode steps use the dense copy
        calls.clear()
        list(engine.generate([prompt] * (nf4_gemv.MAX_ROWS + 1), [None] * (nf4_gemv.MAX_ROWS + 1), 3, stop_ids=()))
        assert calls == []
    finally:
        peft_model.unload()


def test_kernel_is_off_unless_asked(monkeypatch):
    monkeypatch.delenv("WORKBENCH_FAST_NF4", raising=False)
    assert not nf4_gemv.enabled("cuda") and not nf4_gemv.enabled("cpu")
    monkeypatch.setenv("WORKBENCH_FAST_NF4", "1")
    assert not nf4_gemv.enabled("cpu")  # the CPU runs the reference op only for tests (=all)
    monkeypatch.setenv("WORKBENCH_FAST_NF4", "all")
    assert nf4_gemv.enabled("cpu")


def test_config_covers_every_shape():
    for rows in (1, 2, 8):
        for n, k in ((6144, 4096), (4096, 14336), (28672, 4096), (576, 576), (1536, 576), (100, 64)):
            bn, bk, split, warps = nf4_gemv.config(rows, n, k)
            assert bn > 0 and bk >= 64 and 1 <= split <= max(1, -(-k // bk)) and warps in (1, 2, 4, 8)


# -- CUDA only (run on the device machine) ------------------------------------------------------------

def _bnb_linears(shapes, seed=0):
    import bitsandbytes as bnb
    import torch

    torch.manual_seed(seed)
    out = []
    for n, k in shapes:
        lin = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4",
                                compress_statistics=True)
        lin.weight = bnb.nn.Params4bit(torch.randn(n, k, dtype=torch.bfloat16) * 0.05, requires_grad=False,
                                       quant_type="nf4", compress_statistics=True)
        out.append(lin.cuda())
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("shapes", [[(512, 512), (128, 512), (128, 512)], [(4096, 14336)], [(1536, 576)],
                                    [(100, 192)]])
def test_cuda_kernel_multiplies_by_bitsandbytes_own_weights(shapes):
    import torch

    lins = _bnb_linears(shapes)
    weights = nf4_gemv.pack(lins)
    nf4_gemv.register()
    dense = torch.cat([fg._dense(lin, torch.bfloat16) for lin in lins])  # bitsandbytes' CUDA dequantize
    assert torch.equal(nf4_gemv.dequantize(*weights, torch.bfloat16), dense)
    n, k = dense.shape
    g = torch.Generator(device="cuda").manual_seed(0)
    for rows in (1, 2, 3, 8):
        cols = torch.randint(0, k, (rows,), generator=g, device="cuda")
        onehot = torch.zeros(rows, k, dtype=torch.bfloat16, device="cuda")
        onehot[torch.arange(rows), cols] = 1
        assert torch.equal(nf4_gemv.linear(onehot, *weights), dense[:, cols].T)  # each decoded weight, exactly
        x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda", generator=g)
        ours = nf4_gemv.linear(x, *weights).float()
        ref = (x.float() @ dense.float().T)
        assert (ours - ref).abs().max() <= 0.01 * ref.abs().max()  # float32 sums in another order, one bf16 round
        assert torch.equal(nf4_gemv.linear(x, *weights), nf4_gemv.linear(x, *weights))  # deterministic
    bias = torch.randn(n, dtype=torch.bfloat16, device="cuda")
    assert torch.allclose(nf4_gemv.linear(x, *weights, bias).float(), ref + bias.float(), rtol=0.02, atol=0.05)


@pytest.mark.gpu
def test_cuda_engine_decodes_from_4bit_weights_like_the_dense_copy(tmp_path, monkeypatch):
    from test_fast_generate import _fast, _small_cuda_model

    import torch

    model = _small_cuda_model(tmp_path)
    monkeypatch.setenv("WORKBENCH_FAST_NF4", "1")  # off by default (it did not pay on the H200); on for this check
    engine = fg.FastEngine(model)
    assert engine.nf4 and engine.use_graphs
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(5, 4096, (n,), generator=g).tolist() for n in (9, 40)]
    adapters = [None, "run1"]
    graphed = _fast(engine, prompts, 30, adapters)
    engine.use_graphs = False
    assert _fast(engine, prompts, 30, adapters) == graphed  # graph replay = the eager kernel calls
    monkeypatch.setenv("WORKBENCH_FAST_NF4", "0")
    dense = _fast(fg.FastEngine(model), prompts, 30, adapters)
    for row in range(2):  # equal, or parted where summation order decides (random weights: flat logits)
        first = next((i for i, (a, b) in enumerate(zip(dense[row], graphed[row])) if a != b), None)
        assert first is None or first >= 3, (row, first)
