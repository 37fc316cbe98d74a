"""The numbers that say whether fine-tuning helped: answer perplexity, ROUGE, BLEU, batched generation.

Pure scoring functions plus the two model passes (teacher-forced loss and greedy generation).
Orchestration, caching and the run folder live in workbench.evaluate; the exact settings are
documented in docs/metrics.md so the numbers compare with the seed notebook's table.
"""
from __future__ import annotations

import math

from workbench.formatting import IGNORE_INDEX, left_padded, prompt_ids, stop_token_ids, tokenize_example  # noqa: F401

METRICS = ("perplexity", "rouge1", "rouge2", "rougeL", "bleu")
LABELS = {"perplexity": "Perplexity", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "bleu": "BLEU"}
LOWER_IS_BETTER = {"perplexity"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_STEMMER = False  # rouge-score's (and HF evaluate's) default; the seed notebook's numbers use it
BLEU_SETTINGS = {"tokenize": "13a", "smooth_method": "none", "lowercase": False}  # = HF evaluate "bleu" defaults


def _noop(fraction: float, message: str) -> None:
    pass


def format_value(key: str, value) -> str:
    """A metric as shown in tables: perplexity with 2 decimals, the 0-1 scores with 4, '—' when missing."""
    if value is None:
        return "—"
    return f"{value:.2f}" if key == "perplexity" else f"{value:.4f}"


# -- text metrics -----------------------------------------------------------------------------

def rouge_per_example(predictions: list[str], references: list[str]) -> list[dict]:
    """ROUGE-1/2/L F-measure (0-1) of each prediction against its reference."""
    from rouge_score import rouge_scorer

    _same_length(predictions, references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=ROUGE_STEMMER)
    return [{k: s.fmeasure for k, s in scorer.score(ref, pred).items()}
            for pred, ref in zip(predictions, references)]


def rouge(predictions: list[str], references: list[str]) -> dict:
    """Mean ROUGE-1/2/L F-measure over examples, 0-1 scale."""
    rows = rouge_per_example(predictions, references)
    if not rows:
        return {k: 0.0 for k in ROUGE_TYPES}
    return {k: sum(r[k] for r in rows) / len(rows) for k in ROUGE_TYPES}


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (sacrebleu, 13a tokens, 4-grams, no smoothing, one reference each), 0-1 scale."""
    import sacrebleu

    _same_length(predictions, references)
    if not predictions:
        return 0.0
    return sacrebleu.corpus_bleu(predictions, [references], **BLEU_SETTINGS).score / 100.0


def text_metrics(predictions: list[str], references: list[str]) -> dict:
    return {**rouge(predictions, references), "bleu": bleu(predictions, references)}


def _same_length(predictions, references) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; score pairs.")


def relative_change(base: float | None, tuned: float | None) -> float | None:
    """(tuned - base) / base in percent; None when it cannot be computed (missing or zero base).

    sacrebleu without smoothing returns ~1e-13 rather than 0 when no 4-gram matches: treated as zero.
    """
    if base is None or tuned is None or not math.isfinite(base) or not math.isfinite(tuned) or abs(base) < 1e-9:
        return None
    return (tuned - base) / abs(base) * 100.0


# -- model passes -----------------------------------------------------------------------------

def _batches(items: list, size: int):
    for start in range(0, len(items), max(1, size)):
        yield start, items[start:start + size]


def answer_perplexity(model, tokenizer, records: list[dict], max_length: int, template: str = "chat",
                      system_prompt: str = "", batch_size: int = 8, progress=None) -> dict:
    """Perplexity of the reference answers given the prompt: exp(total answer NLL / answer tokens).

    Token-weighted over the whole split (long answers weigh more), answer tokens only: the labels
    come from formatting.tokenize_example, exactly the tokens training puts loss on.
    Returns perplexity, nll_sum, answer_tokens and each example's mean NLL (None if no answer token).
    """
    import torch

    progress = progress or _noop
    examples = [tokenize_example(r, tokenizer, max_length, template, system_prompt) for r in records]
    per_example: list[float | None] = []
    nll_sum, n_tokens = 0.0, 0
    device = next(model.parameters()).device
    for start, batch in _batches(examples, batch_size):
        width = max(len(e["input_ids"]) for e in batch)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([e["input_ids"] + [pad] * (width - len(e["input_ids"])) for e in batch], device=device)
        mask = torch.tensor([e["attention_mask"] + [0] * (width - len(e["input_ids"])) for e in batch], device=device)
        labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in batch],
                              device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, ignore_index=IGNORE_INDEX,
                                                reduction="none")  # [batch, width-1], 0 where ignored
        counts = (target != IGNORE_INDEX).sum(dim=1)
        for row_nll, count in zip(nll.sum(dim=1).tolist(), counts.tolist()):
            per_example.append(row_nll / count if count else None)
            nll_sum += row_nll
            n_tokens += count
        progress((start + len(batch)) / max(len(examples), 1), f"perplexity {start + len(batch)}/{len(examples)}")
    if n_tokens == 0:
        raise ValueError("No answer tokens to score: every reference answer is empty or cut off by "
                         "model.max_seq_length; raise max_seq_length or check the eval data.")
    return {"perplexity": math.exp(nll_sum / n_tokens), "nll_sum": nll_sum, "answer_tokens": n_tokens,
            "per_example_nll": per_example}


EVAL_BATCH = 128  # rows per batch when evaluation runs on the fast engine (length-sorted; 128 vs 64: 1.6x, H200)


def generate_batched(engine, prompts: list[list[int]], adapter: str | None, max_new_tokens: int,
                     stop_ids, batch_size: int = EVAL_BATCH, progress=None, sort: bool = True) -> list[list[int]]:
    """Greedy answers (token ids up to the first stop token) for many prompts: longest first, in batches of
    similar length, so padding and cache length stay small (sort=False keeps the given order: the
    benchmark's comparison); results in the prompts' order."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i])) if sort else list(range(len(prompts)))
    out: list[list[int] | None] = [None] * len(prompts)
    stop = set(stop_ids)
    done_count = 0
    # equal-sized batches (500 at 128 -> 4 x 125, not 3 x 128 + 116): one batch shape, one compile
    batches = -(-len(order) // max(1, batch_size))
    batch_size = -(-len(order) // max(1, batches))
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start:start + batch_size]
        batch = [prompts[i] for i in idx]
        answers: list[list[int]] = [[] for _ in idx]
        finished = [False] * len(idx)
        for step in engine.generate(batch, [adapter] * len(idx), max_new_tokens, stop_ids):
            for row, tok in enumerate(step):
                if finished[row]:
                    continue
                if tok in stop:
                    finished[row] = True
                else:
                    answers[row].append(tok)
        for i, ans in zip(idx, answers):
            out[i] = ans
        done_count += len(idx)
        if progress:
            progress(done_count / len(prompts), f"generating {done_count}/{len(prompts)}")
    return out  # type: ignore[return-value]


def _fast_answers(model, tokenizer, prompts, max_new_tokens, stop_ids, batch_size, progress) -> list[str] | None:
    """Greedy answers from workbench.chat.fast_generate on CUDA (length-sorted batches of at least
    EVAL_BATCH rows, bf16 copy of the same weights, CUDA-graph decode); None when the plain path must run
    (a CPU, a run training, too little memory, an unsupported model or adapter)."""
    from workbench.chat import fast_generate as fg

    device = next(model.parameters()).device.type
    if not prompts or not fg.enabled(device):
        return None
    adapters = fg.active_lora(model)
    if len(adapters) > 1:
        return None
    rows = min(len(prompts), max(batch_size, EVAL_BATCH))
    engine, _why = fg.engine_for(model, device, extra_bytes=fg.kv_bytes(
        model, rows, max(len(p) for p in prompts) + max_new_tokens + fg.WINDOW))
    if engine is None:
        return None
    try:
        tokens = generate_batched(engine, prompts, adapters[0] if adapters else None, max_new_tokens, stop_ids,
                                  batch_size=rows, progress=progress)
    except fg.Unsupported:
        return None
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


def generate_answers(model, tokenizer, records: list[dict], max_new_tokens: int, max_length: int,
                     template: str = "chat", system_prompt: str = "", batch_size: int = 8,
                     progress=None, no_repeat_ngram_size: int = 0) -> list[str]:
    """Greedy answers, generated in left-padded batches (new tokens only, special tokens removed).

    On CUDA the fast engine answers (see _fast_answers); on a CPU plain `generate` in batches of batch_size.
    With no_repeat_ngram_size > 0 plain `generate` applies that rule (the fast engine has no such rule)."""
    import torch
    from transformers import GenerationConfig

    progress = progress or _noop
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen_cfg = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=pad, eos_token_id=stop_token_ids(model, tokenizer),
                               no_repeat_ngram_size=int(no_repeat_ngram_size or 0))
    device = next(model.parameters()).device
    prompts = [prompt_ids(r, tokenizer, max_length, template, system_prompt) for r in records]
    if not no_repeat_ngram_size:
        fast = _fast_answers(model, tokenizer, prompts, max_new_tokens, gen_cfg.eos_token_id, batch_size, progress)
        if fast is not None:
            return fast
    answers: list[str] = []
    for start, batch in _batches(prompts, batch_size):
        ids, mask = left_padded(batch, pad, device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
        answers += [t.strip() for t in tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)]
        progress((start + len(batch)) / max(len(prompts), 1), f"generating {start + len(batch)}/{len(prompts)}")
    return answers


# -- degenerate answers -----------------------------------------------------------------------

LOOP_MIN_REPEATS = 3  # a stretch of text said this many times in a row ...
LOOP_MIN_CHARS = 24   # ... covering at least this many characters
LOOP_MAX_UNIT = 120   # longest repeated stretch looked for, in characters


def looping_span(text: str, min_repeats: int = LOOP_MIN_REPEATS, min_chars: int = LOOP_MIN_CHARS,
                 max_unit: int = LOOP_MAX_UNIT) -> tuple[str, float] | None:
    """The repeated stretch and how often it repeats back to back, when `text` loops; else None.

    A greedy small model that has degenerated says the same thing over and over: 'plan_mode.plan_mode.plan_mode…',
    'schema_schema_schema…', or one sentence again and again. That is: some stretch of 1..`max_unit` characters
    (containing a letter or digit) repeated at least `min_repeats` times in a row, the repeats together covering at
    least `min_chars` characters; the last repeat may be cut off halfway (generation stops at max_new_tokens).
    Whitespace runs count as one space. Two repeats (saying a command twice) and punctuation rules ('-----') are
    not loops. Of the 4,769 dbdemos reference answers, 8 match (placeholder digits, tables, version lists).
    """
    import numpy as np

    s = " ".join(str(text or "").split())
    codes = np.frombuffer(s.encode("utf-32-le"), dtype=np.uint32)
    best: tuple[str, float] | None = None
    best_len = 0
    for unit in range(1, min(max_unit, int(len(s) / (min_repeats - 0.5))) + 1):
        # same[j]: s[j + unit] == s[j]; a run of r such positions from j is a stretch of period `unit`, r + unit long
        same = np.concatenate(([0], (codes[unit:] == codes[:-unit]).astype(np.int8), [0]))
        edges = np.diff(same)
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        spans = ends - starts + unit
        for k in np.flatnonzero((spans >= (min_repeats - 0.5) * unit) & (spans >= min_chars) & (spans > best_len)):
            piece = s[starts[k]:starts[k] + unit]
            if any(c.isalnum() for c in piece) and spans[k] > best_len:
                best, best_len = (piece, round(int(spans[k]) / unit, 1)), int(spans[k])
    return best


def is_looping(text: str) -> bool:
    """True when an answer is degenerate repetition (see `looping_span`); shown per example as *_looping."""
    return looping_span(text) is not None


def loop_share(texts: list[str]) -> float:
    """Share (0-1) of `texts` that loop; 0.0 for no texts."""
    texts = list(texts)
    return sum(is_looping(t) for t in texts) / len(texts) if texts else 0.0
