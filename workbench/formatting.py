"""Turn an instruction record into exactly the tokens the model trains on, with the loss mask.

A record is {instruction, input, output, context}. The prompt (system + question + optional
context/input) carries no loss; only the answer tokens (and the end-of-turn token) do.
"""
from __future__ import annotations

IGNORE_INDEX = -100

INSTRUCTION_TEMPLATE = "### Instruction:\n{instruction}\n{extra}\n### Response:\n"


def user_message(record: dict) -> str:
    """The question as the user sends it: instruction, plus context and input when present."""
    parts = [str(record.get("instruction") or "").strip()]
    if str(record.get("context") or "").strip():
        parts.append("Context:\n" + str(record["context"]).strip())
    if str(record.get("input") or "").strip():
        parts.append("Input:\n" + str(record["input"]).strip())
    return "\n\n".join(p for p in parts if p)


def prompt_text(record: dict, tokenizer, template: str = "chat", system_prompt: str = "") -> str:
    """The text the model sees before the answer (what generation starts from)."""
    if template == "chat" and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": user_message(record)})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    extra = ""
    if str(record.get("context") or "").strip():
        extra += "\n### Context:\n" + str(record["context"]).strip() + "\n"
    if str(record.get("input") or "").strip():
        extra += "\n### Input:\n" + str(record["input"]).strip() + "\n"
    prefix = (system_prompt.strip() + "\n\n") if system_prompt.strip() else ""
    return prefix + INSTRUCTION_TEMPLATE.format(instruction=str(record.get("instruction") or "").strip(),
                                                extra=extra)


def answer_suffix(tokenizer, template: str = "chat") -> str:
    """What closes an answer: the chat template's end-of-turn marker or the EOS token."""
    if template == "chat" and getattr(tokenizer, "chat_template", None):
        probe = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": "ANSWER"}], tokenize=False)
        tail = probe.split("ANSWER", 1)[1]
        return tail.rstrip("\n") or (tokenizer.eos_token or "")
    return tokenizer.eos_token or ""


def tokenize_example(record: dict, tokenizer, max_length: int, template: str = "chat",
                     system_prompt: str = "") -> dict:
    """input_ids, attention_mask and labels where every prompt token is IGNORE_INDEX.

    Prompt and answer are tokenized separately and concatenated, so the boundary is exact
    whatever the tokenizer merges across it. Over-long examples keep the whole prompt when it
    fits and cut the answer; the count of answer tokens kept is returned as `answer_tokens`.
    """
    prompt = prompt_text(record, tokenizer, template, system_prompt)
    answer = str(record.get("output") or "").strip() + answer_suffix(tokenizer, template)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False) and \
            (not p_ids or p_ids[0] != tokenizer.bos_token_id):
        p_ids = [tokenizer.bos_token_id] + p_ids
    a_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(p_ids) >= max_length:  # prompt alone too long: keep its end so the question survives
        p_ids = p_ids[-(max_length // 2):]
    a_ids = a_ids[: max_length - len(p_ids)]
    ids = p_ids + a_ids
    return {
        "input_ids": ids,
        "attention_mask": [1] * len(ids),
        "labels": [IGNORE_INDEX] * len(p_ids) + a_ids,
        "prompt_tokens": len(p_ids),
        "answer_tokens": len(a_ids),
    }


def marked_view(record: dict, tokenizer, max_length: int, template: str = "chat", system_prompt: str = ""):
    """[(token_text, carries_loss)] for the Data tab's preview of exactly what the model sees."""
    ex = tokenize_example(record, tokenizer, max_length, template, system_prompt)
    return [(tokenizer.decode([tid]), label != IGNORE_INDEX) for tid, label in zip(ex["input_ids"], ex["labels"])]


# -- prompts for generation (evaluation and chat build them the same way) ------------------------

def prompt_ids(record: dict, tokenizer, max_length: int, template: str = "chat", system_prompt: str = "") -> list:
    """The exact prompt tokens training used for this record (same truncation, same BOS handling)."""
    ex = tokenize_example(record, tokenizer, max_length, template, system_prompt)
    return ex["input_ids"][:ex["prompt_tokens"]]


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS of the tokenizer plus whatever the model's generation config ends a turn with."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def left_padded(prompts: list[list[int]], pad: int, device):
    """(input_ids, attention_mask) tensors with every prompt LEFT-padded, so all end where generation starts."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    return ids, mask
