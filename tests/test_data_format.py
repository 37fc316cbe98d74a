"""The formatted example exactly as the model sees it, and the answer-only loss mask, on the real embedded tokenizer."""
from __future__ import annotations

import pytest

from workbench.commands.data import marked_text
from workbench.config import EMBEDDED_MODEL
from workbench.formatting import IGNORE_INDEX, marked_view, prompt_text, tokenize_example


@pytest.fixture(scope="module")
def tok():
    from workbench.models import load_tokenizer

    return load_tokenizer(EMBEDDED_MODEL)


RECORD = {"instruction": "What does VACUUM do?", "output": "It removes unreferenced files.", "context": "",
          "input": ""}


def test_loss_mask_token_by_token_on_the_real_tokenizer(tok):
    ex = tokenize_example(RECORD, tok, 512)
    n_prompt = len(tok(prompt_text(RECORD, tok), add_special_tokens=False)["input_ids"])
    assert ex["prompt_tokens"] == n_prompt and len(ex["input_ids"]) == len(ex["labels"]) == len(ex["attention_mask"])
    for i, (token, label) in enumerate(zip(ex["input_ids"], ex["labels"])):
        if i < n_prompt:
            assert label == IGNORE_INDEX, f"prompt token {i} ({tok.decode([token])!r}) carries loss"
        else:
            assert label == token, f"answer token {i} ({tok.decode([token])!r}) has label {label}"
    assert tok.decode(ex["input_ids"][n_prompt:]) == "It removes unreferenced files.<|im_end|>"
    assert ex["input_ids"][-1] == tok.convert_tokens_to_ids("<|im_end|>")  # the end-of-turn marker is learned
    full = tok.apply_chat_template([{"role": "user", "content": RECORD["instruction"]},
                                    {"role": "assistant", "content": RECORD["output"]}], tokenize=False)
    assert tok.decode(ex["input_ids"]) == full.rstrip("\n")  # exactly the chat template's text


def test_truncation_keeps_the_prompt_and_cuts_the_answer(tok):
    n_prompt = tokenize_example(RECORD, tok, 512)["prompt_tokens"]
    short = tokenize_example(RECORD, tok, n_prompt + 3)
    assert len(short["input_ids"]) == n_prompt + 3 and short["answer_tokens"] == 3
    assert short["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt


def test_context_goes_in_the_masked_prompt_and_instruction_template(tok):
    record = dict(RECORD, context="VACUUM is a Delta Lake command.")
    for template, closing in (("chat", "<|im_end|>"), ("instruction", tok.eos_token)):
        ex = tokenize_example(record, tok, 256, template=template)
        prompt = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab == IGNORE_INDEX]
        answer = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE_INDEX]
        assert "VACUUM is a Delta Lake command." in tok.decode(prompt)
        assert tok.decode(answer) == record["output"] + closing
    assert "### Context:" in tok.decode(tokenize_example(record, tok, 256, template="instruction")["input_ids"])


def test_marked_view_and_cli_markup_mark_exactly_the_answer(tok):
    pieces = marked_view(RECORD, tok, 512)
    assert "".join(t for t, loss in pieces if loss) == "It removes unreferenced files.<|im_end|>"
    assert "<|im_start|>assistant" in "".join(t for t, loss in pieces if not loss)
    text = marked_text(pieces)
    assert text.count("[[") == 1 and text.endswith("[[It removes unreferenced files.<|im_end|>]]")
    assert marked_text([("a", False), ("b", True), ("c", False), ("d", True)]) == "a[[b]]c[[d]]"
