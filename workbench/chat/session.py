"""Side-by-side chat: one 4-bit base model answers for both columns, the adapter chosen per row.

Both answers come from ONE batched `generate` in which peft routes each row through its own adapter
(`adapter_names=["__base__", "<run>"]`): no second copy of the base weights, and both columns advance
one token per forward pass (streamed per row by workbench.chat.streaming). On CUDA, when no run is
training and it fits, the rows run on workbench.chat.fast_generate instead: a bf16 copy of the same
(dequantized) weights, per-row LoRA, a static KV cache and CUDA-graph decode steps. This module holds the
model, loads adapters by run id, builds prompts from each column's history and applies the GPU policy.
"""
from __future__ import annotations

import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

from workbench import models, runs
from workbench.chat.streaming import PEFT_BASE, ChatError, ChatSettings, PairUpdate, stream_pair  # noqa: F401
from workbench.config import BASE_SIDE, ModelConfig
from workbench.formatting import prompt_text

BASE = BASE_SIDE
MAX_QUESTION_CHARS = 8000
MAX_PROMPT_TOKENS = 2048  # older turns are dropped beyond this, newest kept
GPU_MARGIN = 0.8  # chat may use at most this share of the GPU memory that is free right now

POLICY = ("**GPU policy — training comes first.** While a run trains on the GPU, chat is refused unless the "
          "estimated chat memory fits in the GPU memory free right now (with a 20% margin); when it does not fit, "
          "the chat model is unloaded so the training run can never run out of memory because of chat. "
          "On a CPU, chat is allowed beside training but answers are slow.")


# -- the held model ---------------------------------------------------------------------------

@dataclass
class HeldModel:
    key: tuple
    model: Any  # the 4-bit base model; a PeftModel around it once an adapter is loaded
    tokenizer: Any
    device: str
    adapters: set = field(default_factory=set)
    fast_note: str = ""  # why the fast CUDA engine is not used (empty when it is, or on a CPU)
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation at a time per model


_HELD: dict[tuple, HeldModel] = {}
_HOLD_LOCK = threading.Lock()


def _model_key(model_cfg: ModelConfig, device: str) -> tuple:
    return (model_cfg.name_or_path, model_cfg.load_in_4bit, model_cfg.quant_type, model_cfg.double_quant,
            model_cfg.compute_dtype, device)


def held_model(model_cfg: ModelConfig, device: str) -> HeldModel:
    """The cached model for this base model id and device; loads it (evicting any other) on first use."""
    key = _model_key(model_cfg, device)
    with _HOLD_LOCK:
        if key in _HELD:
            return _HELD[key]
        _release_locked()  # one base model in memory at a time: a 7B and another 7B would not both fit
        model, tokenizer, device = models.load_model(model_cfg, device)
        model.eval()
        _HELD[key] = HeldModel(key, model, tokenizer, device)
        return _HELD[key]


def release() -> int:
    """Drop every held model and give its memory back (e.g. to a training run); returns how many."""
    with _HOLD_LOCK:
        return _release_locked()


def _release_locked() -> int:
    dropped = list(_HELD)
    for k in dropped:
        held = _HELD.pop(k)
        with held.lock:  # wait for a running generation to finish first
            held.model = None
    if dropped:
        models.free_memory()
    return len(dropped)


def adapter_name(run_id: str) -> str:
    """peft adapter names become module keys, which may not contain '.'."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


def ensure_adapter(held: HeldModel, name: str, path) -> None:
    """Load an adapter folder into the held model under `name` (once); the base weights are shared."""
    from peft import PeftModel

    if name in held.adapters:
        return
    if isinstance(held.model, PeftModel):
        held.model.load_adapter(str(path), adapter_name=name)
    else:
        held.model = PeftModel.from_pretrained(held.model, str(path), adapter_name=name)
    held.model.eval()
    held.adapters.add(name)


# -- runs, sides and prompts ------------------------------------------------------------------

def side_label(side: str) -> str:
    return "Base model (adapter off)" if side == BASE else f"Fine-tuned: {side}"


def chat_runs() -> list[dict]:
    """Runs that have a trained adapter, newest first (what the Chat tab offers)."""
    out = []
    for run in runs.list_runs():
        try:
            if runs.adapter_path(run["id"]) is not None:
                out.append(run)
        except runs.RunError:
            continue
    return out


def _side(value) -> str:
    """A column's side id as typed or picked: empty means the base model."""
    return str(value or "").strip() or BASE


def resolve_sides(left: str, right: str):
    """Check the two sides and return (model_cfg, {run_id: adapter_path}, run config of the first run)."""
    left, right = _side(left), _side(right)
    if left == right == BASE:
        raise ChatError("Pick a fine-tuned run for at least one column (train one in the Train tab first).")
    if left == right:
        raise ChatError("Both columns show the same model; pick a run for one side and the base model or "
                        "another run for the other.")
    adapters, configs = {}, {}
    for side in (left, right):
        if side == BASE:
            continue
        path = runs.adapter_path(side)
        if path is None:
            state = runs.read_status(side).get("state", "unknown")
            raise ChatError(f"Run '{side}' has no trained adapter yet (state: {state}); pick a completed run "
                            f"(see `python -m workbench runs`).")
        damage = runs.folder(side).adapter_damage()
        if damage:
            raise ChatError(damage)
        adapters[side], configs[side] = path, runs.load_run_config(side)
    first = next(iter(configs.values()))
    for run_id, cfg in configs.items():
        if _model_key(cfg.model, "") != _model_key(first.model, ""):
            raise ChatError(f"Run '{run_id}' was trained on {cfg.model.name_or_path} but the other run on "
                            f"{first.model.name_or_path}; adapters can only be compared on the same base model.")
    return first.model, adapters, first


def normalize_history(history) -> list[dict]:
    """Chat messages as {role, content: str}; accepts Gradio's content-part lists too."""
    out = []
    for msg in history or []:
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            continue
        content = msg.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        elif isinstance(content, dict):
            content = content.get("text", "")
        out.append({"role": msg["role"], "content": str(content or "")})
    return out


def prompt_ids(tokenizer, history, question: str, system_prompt: str = "", template: str = "chat",
               max_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
    """Token ids of the conversation so far plus the new question, the model's chat template applied."""
    history = normalize_history(history)
    while True:
        ids = tokenizer(_prompt_text(tokenizer, history, question, system_prompt, template),
                        add_special_tokens=False)["input_ids"]
        if len(ids) <= max_tokens or len(history) < 2:
            return ids[-max_tokens:]
        history = history[2:]  # drop the oldest exchange


def _prompt_text(tokenizer, history, question, system_prompt, template) -> str:
    if template == "chat" and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt.strip() else []
        messages += history + [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # plain instruction layout (the run was trained with it): earlier turns written out the same way
    text, eos = "", tokenizer.eos_token or ""
    for user, reply in zip(history[::2], history[1::2]):
        text += prompt_text({"instruction": user["content"]}, tokenizer, "instruction",
                            system_prompt if not text else "") + reply["content"] + eos + "\n"
    return text + prompt_text({"instruction": question}, tokenizer, "instruction", system_prompt if not text else "")


# -- GPU policy -------------------------------------------------------------------------------

def chat_memory_gb(model_cfg: ModelConfig, settings: ChatSettings, weights_loaded: bool) -> float:
    """Weights (unless already loaded) + KV cache for 2 rows + logits + workspace, an upper bound."""
    billions, hidden, layers = models.model_shape(model_cfg.name_or_path)
    weights = 0.0 if weights_loaded else billions * (0.55 if model_cfg.load_in_4bit else 2.0)
    tokens = MAX_PROMPT_TOKENS + settings.max_new_tokens
    kv_cache = 2 * layers * hidden * 2 * tokens * 2 / 1e9  # k and v, bf16, 2 rows (no GQA discount)
    logits = 2 * models.vocab_size(model_cfg.name_or_path) * 4 / 1e9  # fp32 logits of the last position, 2 rows
    return round(weights + kv_cache + logits + 0.5, 2)


def gpu_decision(device: str, training_run: str | None, need_gb: float, free_gb: float | None) -> tuple[bool, str]:
    """The policy as a pure function: (allowed, message shown to the user)."""
    if device != "cuda":
        if training_run:
            return True, (f"Run '{training_run}' is training on this machine's CPU too: chat shares the CPU, so "
                          f"answers come slowly (and training slows a little).")
        return True, "Running on the CPU: answers stream slowly (fine for the small embedded model, very slow for 7B)."
    if not training_run:
        return True, ""
    if free_gb is not None and need_gb <= free_gb * GPU_MARGIN:
        return True, (f"Run '{training_run}' is training; chat fits beside it (needs ~{need_gb:.1f} GB, "
                      f"{free_gb:.1f} GB free).")
    free = f"only {free_gb:.1f} GB are free" if free_gb is not None else "free memory is unknown"
    return False, (f"Run '{training_run}' is training on the GPU and chat needs ~{need_gb:.1f} GB but {free}; chat "
                   f"is paused so the training run cannot run out of memory. Try again when the run ends (Train "
                   f"tab), or lower max new tokens.")


def _free_gpu_gb() -> float:
    import torch

    return torch.cuda.mem_get_info()[0] / 2**30


def _drop_fast_engines() -> None:
    from workbench.chat import fast_generate

    with _HOLD_LOCK:
        held = list(_HELD.values())
    for h in held:
        with h.lock:
            if h.model is not None:
                fast_generate.drop_engine(h.model)


def check_gpu_policy(model_cfg: ModelConfig, device: str, settings: ChatSettings) -> str:
    """Apply the policy now; returns the note to show, or raises ChatError (and unloads chat) when refused."""
    training_run = runs.training_run()
    if device == "cuda" and training_run:
        _drop_fast_engines()  # training comes first: the bf16 inference copy goes before memory is measured
    free_gb = _free_gpu_gb() if device == "cuda" and training_run else None
    loaded = _model_key(model_cfg, device) in _HELD
    allowed, note = gpu_decision(device, training_run, chat_memory_gb(model_cfg, settings, loaded), free_gb)
    if not allowed:
        release()  # give the GPU memory held by chat back to the training run
        raise ChatError(note)
    return note


def input_problem(question: str, settings: ChatSettings) -> str:
    """What is wrong with a request's own input (the question, the settings), for the user to fix; '' when nothing."""
    question = str(question or "").strip()
    if not question:
        return "Type a question first."
    if len(question) > MAX_QUESTION_CHARS:
        return f"The question is {len(question)} characters long; keep it under {MAX_QUESTION_CHARS}."
    return " ".join(settings.validate())


def chat_pair(left: str, right: str, question: str, histories=(None, None), settings: ChatSettings | None = None,
              stop_event: threading.Event | None = None, device: str = "auto") -> Iterator[PairUpdate]:
    """Stream the answers of two sides ("base" or a run id) to `question`, each with its own history.

    The first update (empty texts) comes before the model loads and carries the policy note; then one
    update per generated token; the last one has `finished` set. Errors the user can fix raise ChatError.
    """
    settings = settings or ChatSettings()
    question = str(question or "").strip()
    problem = input_problem(question, settings)
    if problem:
        raise ChatError(problem)
    left, right = _side(left), _side(right)
    model_cfg, adapters, run_cfg = resolve_sides(left, right)
    try:
        device = models.pick_device(device)
        note = check_gpu_policy(model_cfg, device, settings)
        yield PairUpdate(texts=["", ""], done=[False, False], tokens=[0, 0], first_token_s=[None, None], note=note)
        held = held_model(model_cfg, device)
    except ChatError:
        raise
    except models.ModelNotAvailable as e:
        raise ChatError(str(e)) from None
    except (OSError, ValueError, RuntimeError) as e:  # a broken model folder, a bad 4-bit setting, out of memory
        raise ChatError(f"The base model {model_cfg.name_or_path} could not be loaded ({type(e).__name__}: "
                        f"{str(e)[:300]}); check the run's model settings, or free memory and ask again.") from e
    system = settings.system_prompt if settings.system_prompt.strip() else run_cfg.data.system_prompt
    prompts = [prompt_ids(held.tokenizer, h, question, system, run_cfg.data.template) for h in histories]
    with held.lock:
        if held.model is None:
            raise ChatError("The chat model was unloaded a moment ago (GPU policy); ask again.")
        for run_id, path in adapters.items():
            try:
                ensure_adapter(held, adapter_name(run_id), path)
            except (OSError, ValueError, RuntimeError, KeyError, TypeError) as e:
                raise ChatError(f"The adapter of run '{run_id}' could not be loaded ({type(e).__name__}: "
                                f"{str(e)[:300]}); its adapter/ folder may be incomplete — retrain the run.") from e
        names = [PEFT_BASE if side == BASE else adapter_name(side) for side in (left, right)]
        for update in stream_pair(held, names, prompts, settings, stop_event):
            # on CUDA, say why the fast path is off (a run training, too little free memory...)
            update.note = " ".join(x for x in (note, held.fast_note if held.device == "cuda" else "") if x)
            yield update


def settings_dict(settings: ChatSettings) -> dict:
    return asdict(settings)


def policy_status() -> str:
    """The policy's verdict right now, for the Chat tab's status line (never raises)."""
    try:
        device, training_run = models.pick_device("auto"), runs.training_run()
        if device != "cuda":
            return gpu_decision(device, training_run, 0.0, None)[1]
        if not training_run:
            return "GPU is free: chat runs at full speed."
        return f"{gpu_decision(device, training_run, 0.0, _free_gpu_gb())[1]} (exact check when you ask)"
    except Exception as e:  # the status line must not break the tab
        return f"Could not check the device ({type(e).__name__}); chat will check again when you ask."
