"""Perplexity and generation on the real embedded model in real 4-bit, checked against direct computations."""
from __future__ import annotations

import math

import pytest

from workbench.evaluation import scoring
from workbench.formatting import IGNORE_INDEX, answer_suffix, tokenize_example

pytestmark = pytest.mark.integration

RECORDS = [
    {"instruction": "What does OPTIMIZE do on a Delta table?",
     "output": "OPTIMIZE compacts many small files into fewer large ones, which speeds up reads."},
    {"instruction": "How do I list tables in a schema?", "output": "Run SHOW TABLES IN my_schema."},
    {"instruction": "What is Z-ordering?", "context": "Delta Lake data skipping.",
     "output": "Z-ordering co-locates related values in the same files so that queries filtering on those columns "
               "can skip most files; run OPTIMIZE my_table ZORDER BY (col) to apply it after large writes."},
]


@pytest.fixture(scope="module")
def model_and_tokenizer():
    from workbench.config import ModelConfig
    from workbench.models import load_model

    model, tokenizer, _ = load_model(ModelConfig(), "cpu")
    model.eval()
    return model, tokenizer


def direct_nll(model, tokenizer, record, max_length=256):
    """Sum of -log p(answer token | everything before it), one example, no padding, by hand."""
    import torch

    ex = tokenize_example(record, tokenizer, max_length)
    ids = torch.tensor([ex["input_ids"]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    total, count = 0.0, 0
    for pos, label in enumerate(ex["labels"]):
        if label != IGNORE_INDEX:
            total -= logp[pos - 1, label].item()
            count += 1
    return total, count


def test_answer_only_mask_covers_exactly_the_answer(model_and_tokenizer):
    _, tok = model_and_tokenizer
    ex = tokenize_example(RECORDS[0], tok, 256)
    labels = ex["labels"]
    assert labels[:ex["prompt_tokens"]] == [IGNORE_INDEX] * ex["prompt_tokens"]
    answer_ids = labels[ex["prompt_tokens"]:]
    assert IGNORE_INDEX not in answer_ids and len(answer_ids) == ex["answer_tokens"]
    assert tok.decode(answer_ids) == RECORDS[0]["output"] + answer_suffix(tok)
    assert "What does OPTIMIZE do" in tok.decode(ex["input_ids"][:ex["prompt_tokens"]])


def test_perplexity_equals_direct_token_weighted_nll(model_and_tokenizer):
    model, tok = model_and_tokenizer
    direct = [direct_nll(model, tok, r) for r in RECORDS]
    single = scoring.answer_perplexity(model, tok, RECORDS[:1], 256, batch_size=1)
    assert single["answer_tokens"] == direct[0][1]
    # same tokens, same positions; only the attention kernel path differs (mask given or not)
    assert single["perplexity"] == pytest.approx(math.exp(direct[0][0] / direct[0][1]), rel=1e-3)

    batched = scoring.answer_perplexity(model, tok, RECORDS, 256, batch_size=3)  # padded batch
    total, count = sum(d[0] for d in direct), sum(d[1] for d in direct)
    assert batched["answer_tokens"] == count == sum(tokenize_example(r, tok, 256)["answer_tokens"] for r in RECORDS)
    # bf16 compute on padded vs unpadded inputs differs in the last digits only
    assert batched["perplexity"] == pytest.approx(math.exp(total / count), rel=0.02)
    # token-weighted over the split, not a mean of per-example perplexities
    mean_of_examples = sum(math.exp(d[0] / d[1]) for d in direct) / len(direct)
    assert abs(batched["perplexity"] - mean_of_examples) / mean_of_examples > 0.03
    assert batched["per_example_nll"] == pytest.approx([d[0] / d[1] for d in direct], rel=0.02)


def test_batched_left_padded_generation_matches_unpadded(model_and_tokenizer):
    model, tok = model_and_tokenizer
    side = tok.padding_side
    batched = scoring.generate_answers(model, tok, RECORDS, max_new_tokens=8, max_length=256, batch_size=3)
    # the same prompt twice in a batch needs no padding (batches of 2: bitsandbytes' CPU path for a single
    # row is very slow)
    unpadded = [scoring.generate_answers(model, tok, [r, r], max_new_tokens=8, max_length=256, batch_size=2)[0]
                for r in RECORDS]
    assert all(a.strip() for a in batched)
    for b, a in zip(batched, unpadded):  # right padding would derail the short prompts from the first token
        assert b.split()[:3] == a.split()[:3]
    assert not any("<|im_start|>" in a or a.split()[0] in ("user", "assistant") for a in batched)  # new tokens only
    assert tok.padding_side == side


def test_generation_respects_max_new_tokens(model_and_tokenizer):
    model, tok = model_and_tokenizer
    out = scoring.generate_answers(model, tok, RECORDS[:2], max_new_tokens=3, max_length=256, batch_size=2)
    assert all(0 < len(tok(a, add_special_tokens=False)["input_ids"]) <= 4 for a in out)


def test_no_repeat_ngram_rule_reaches_generation_and_the_base_cache_key(model_and_tokenizer):
    """eval.no_repeat_ngram_size: the generated tokens never repeat a 3-token phrase, and a cached base result
    scored without the rule is never reused for a run scored with it."""
    from workbench.config import preset
    from workbench.evaluation import evaluate

    model, tokenizer = model_and_tokenizer
    answers = scoring.generate_answers(model, tokenizer, RECORDS, 40, 256, no_repeat_ngram_size=3)
    for text in answers:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
        assert text and len(grams) == len(set(grams)), text  # (checked on the decoded text, re-encoded)
    cfg, plain = preset("quick-demo-cpu"), preset("quick-demo-cpu")
    plain.eval.no_repeat_ngram_size = 0
    assert cfg.eval.no_repeat_ngram_size == 3
    assert evaluate.base_cache_key(cfg, RECORDS, "cpu") != evaluate.base_cache_key(plain, RECORDS, "cpu")
