"""Batched generation that streams each row on its own: the engine under the side-by-side chat.

`generate()` hands a streamer one token per row per step; `RowStreamer` queues those steps and
`stream_pair` turns them into per-row text as they arrive (transformers' `TextIteratorStreamer`
handles batch 1 only). `StopOnEvent` ends the generation when the Stop button sets an Event.
On CUDA the steps come from workbench.chat.fast_generate instead (bf16 copy, static cache, CUDA graphs,
per-row LoRA), through the same queue; plain `generate` stays the path on a CPU, while a run trains,
and for models the engine does not support.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

PEFT_BASE = "__base__"  # peft's name for "no adapter" in a mixed batch

from workbench.chat.sampling import RepeatPenalty  # noqa: F401 (plain generate's penalty; tests import it here)


class ChatError(ValueError):
    """Chat cannot run as asked; the message says what to change."""


@dataclass
class ChatSettings:
    system_prompt: str = ""  # empty = the run's own system prompt (what it was trained with)
    temperature: float = 0.0  # 0 = greedy (deterministic)
    top_p: float = 0.9
    max_new_tokens: int = 256
    seed: int = 42  # makes sampled answers repeatable; -1 = a new random seed each time
    # Tokens already in the prompt or the answer get their logit divided (if positive) or multiplied (if negative)
    # by this, as transformers' repetition_penalty, left padding excluded. 1.0 = off. A small model tuned for a few
    # steps (the quick demo) otherwise loops on one phrase in greedy answers ("….ALGORITHMS.ALGORITHMS…").
    repetition_penalty: float = 1.1

    def validate(self) -> list[str]:
        problems = []
        if not (isinstance(self.temperature, (int, float)) and 0 <= self.temperature <= 2):
            problems.append(f"Temperature {self.temperature} is out of range; use 0 (greedy) to 2.")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            problems.append(f"Top-p {self.top_p} must be above 0 and at most 1; 0.9 is typical.")
        if not (isinstance(self.max_new_tokens, int) and 1 <= self.max_new_tokens <= 4096):
            problems.append(f"Max new tokens {self.max_new_tokens} is out of range; use 1-4096 (256 is typical).")
        if not (isinstance(self.repetition_penalty, (int, float)) and 1 <= self.repetition_penalty <= 2):
            problems.append(f"Repetition penalty {self.repetition_penalty} is out of range; use 1 (off) to 2 "
                            f"(1.1 is typical).")
        if not isinstance(self.seed, int):
            problems.append(f"Seed {self.seed!r} must be a whole number (-1 for random).")
        return problems


@dataclass
class PairUpdate:
    """Both columns' text so far; `done` per column; timing per column once known."""
    texts: list[str]
    done: list[bool]
    tokens: list[int]
    first_token_s: list[float | None]
    tokens_per_s: list[float | None] = field(default_factory=lambda: [None, None])
    finished: bool = False
    stopped: bool = False
    note: str = ""  # the GPU/CPU policy note for this request


class RowStreamer:
    """A generate() streamer for a batch: puts each step's tokens (one per row) on a queue."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate() first hands over the prompt itself
            self._prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        self.queue.put(None)


def _stop_on_event(event: threading.Event):
    import torch
    from transformers import StoppingCriteria

    class StopOnEvent(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), event.is_set(), dtype=torch.bool, device=input_ids.device)

    return StopOnEvent()


def _generation_config(held, settings: ChatSettings):
    from transformers import GenerationConfig

    from workbench.formatting import stop_token_ids

    tok = held.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    sampling = dict(do_sample=True, temperature=float(settings.temperature), top_p=float(settings.top_p)) \
        if settings.temperature > 0 else dict(do_sample=False)
    return GenerationConfig(max_new_tokens=settings.max_new_tokens, num_beams=1, pad_token_id=pad,
                            eos_token_id=stop_token_ids(held.model, tok), **sampling)


def stream_pair(held, adapter_names: list[str], prompts: list[list[int]], settings: ChatSettings,
                stop_event: threading.Event | None = None) -> Iterator[PairUpdate]:
    """One batched generate for all rows, yielding the text of every row after each step.

    `held` has .model (a PeftModel when adapter_names name adapters) and .tokenizer; the caller keeps
    other generations off that model meanwhile. Rows are left-padded so all end where generation starts.
    """
    import torch

    from workbench.formatting import left_padded

    stop_event = stop_event or threading.Event()
    gen_cfg = _generation_config(held, settings)
    stop_ids = set(gen_cfg.eos_token_id)
    ids, mask = left_padded(prompts, gen_cfg.pad_token_id, next(held.model.parameters()).device)
    streamer = RowStreamer()
    errors: list[BaseException] = []
    kwargs = dict(input_ids=ids, attention_mask=mask, generation_config=gen_cfg, streamer=streamer,
                  stopping_criteria=[_stop_on_event(stop_event)])
    if any(n != PEFT_BASE for n in adapter_names):
        kwargs["adapter_names"] = adapter_names
    if settings.repetition_penalty != 1.0:
        width = max(len(p) for p in prompts)
        kwargs["logits_processor"] = [RepeatPenalty(settings.repetition_penalty, [width - len(p) for p in prompts])]

    engine = _fast_engine(held, len(prompts), max(len(p) for p in prompts) + settings.max_new_tokens)
    row_adapters = [None if n == PEFT_BASE else n for n in adapter_names]

    def fast() -> bool:
        """Stream from the fast engine; False when it cannot take this request (then plain generate)."""
        from workbench.chat.fast_generate import Unsupported

        steps = engine.generate(prompts, row_adapters, settings.max_new_tokens, stop_ids,
                                temperature=float(settings.temperature), top_p=float(settings.top_p),
                                seed=settings.seed, should_stop=stop_event.is_set,
                                repetition_penalty=float(settings.repetition_penalty))
        try:
            first = next(steps)
        except Unsupported:
            return False
        except StopIteration:
            streamer.end()
            return True
        streamer.queue.put(first)
        for step in steps:
            streamer.queue.put(step)
        streamer.end()
        return True

    def work():
        try:
            if engine is not None and fast():
                return
            if settings.seed >= 0:
                torch.manual_seed(settings.seed)
            with torch.inference_mode():
                held.model.generate(**kwargs)
        except BaseException as e:  # reported to the reader below, with a message
            errors.append(e)
            streamer.end()

    start = time.perf_counter()
    thread = threading.Thread(target=work, name="chat-generate", daemon=True)
    thread.start()
    n = len(prompts)
    tokens, done, first, last = [[] for _ in range(n)], [False] * n, [None] * n, [None] * n
    complete = False
    try:
        while True:
            step = streamer.queue.get()
            if step is None:
                complete = True
                break
            now = time.perf_counter() - start
            for row, tok in enumerate(step):
                if done[row]:
                    continue
                if tok in stop_ids:
                    done[row] = True
                    continue
                tokens[row].append(tok)
                first[row] = now if first[row] is None else first[row]
                last[row] = now
            yield _update(held.tokenizer, tokens, done, first, last, partial=True)
    finally:
        if not complete:  # the reader went away (client disconnected): end generation promptly
            stop_event.set()
        thread.join()
    if errors:
        raise ChatError(explain_failure(errors[0])) from errors[0]
    final = _update(held.tokenizer, tokens, done, first, last, partial=False)
    final.finished, final.stopped = True, stop_event.is_set() and not all(done)
    yield final


def _fast_engine(held, rows: int, tokens: int):
    """The held model's fast engine on CUDA (workbench.chat.fast_generate), or None for plain generate."""
    from workbench.chat import fast_generate

    if not fast_generate.enabled(getattr(held, "device", "")):
        held.fast_note = "(Fast generation is off: WORKBENCH_FAST_GENERATE=0.)"  # shown on CUDA only
        return None
    engine, why = fast_generate.engine_for(held.model, held.device,
                                           extra_bytes=fast_generate.kv_bytes(held.model, rows, tokens))
    held.fast_note = "" if engine is not None else f"(Fast generation is off: {why}.)"
    return engine


def _update(tokenizer, tokens, done, first, last, partial: bool) -> PairUpdate:
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    if partial:  # a multi-byte character split over two tokens shows as U+FFFD until its second half arrives
        texts = [t.rstrip("\ufffd") for t in texts]
    rates = [(len(t) - 1) / (b - a) if a is not None and b is not None and b > a else None
             for t, a, b in zip(tokens, first, last)]
    return PairUpdate(texts=[t.strip() if not partial else t.lstrip() for t in texts], done=list(done),
                      tokens=[len(t) for t in tokens], first_token_s=list(first), tokens_per_s=rates)


def explain_failure(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {str(exc)[:300]}"
    from workbench.models import is_out_of_memory

    if is_out_of_memory(exc):
        return (f"Chat ran out of GPU memory ({text}). Lower max new tokens or shorten the conversation (Clear); "
                f"training runs are never stopped for chat.")
    return f"Generation failed ({text}). Try Clear, fewer max new tokens, or another run."
