"""Where callers get the fast engine (workbench.chat.fast_generate): built once per model on first use, only when the
policy allows it (CUDA, no run training elsewhere, enough free GPU memory), and dropped when a run starts."""
from __future__ import annotations

import os
import threading

from workbench import runs
from workbench.chat import nf4_gemv
from workbench.chat.fast_layers import Unsupported, _core, dense_bytes

MEMORY_MARGIN = 0.8  # the engine may take at most this share of the GPU memory free right now
_ATTR = "_workbench_fast_engine"


def enabled(device: str) -> bool:
    """The fast path is the default on CUDA; WORKBENCH_FAST_GENERATE=0 turns it off, =all also uses it on a
    CPU (no graphs there: for tests and experiments, plain generate is the CPU default)."""
    mode = os.environ.get("WORKBENCH_FAST_GENERATE", "cuda")
    return mode != "0" and (device == "cuda" or mode == "all")


def training_elsewhere() -> str | None:
    """A run training in another process (this one's own run, e.g. eval after training, does not count)."""
    slot = runs.slot_holder()
    return slot["run_id"] if slot and slot.get("pid") != os.getpid() else None


_BUILD_LOCK = threading.Lock()


def cached_engine(model):
    return getattr(_core(model), _ATTR, None)


def drop_engine(model) -> bool:
    """Forget the engine built for this model (its dense copy, caches and graphs go with it)."""
    core = _core(model)
    if getattr(core, _ATTR, None) is None:
        return False
    setattr(core, _ATTR, None)
    from workbench import models

    models.free_memory()
    return True


def engine_for(model, device: str, extra_bytes: int = 0, force: bool = False):
    """The model's engine (built on first use), or None and why the plain path is used instead.

    Built only on CUDA (unless `force`), with no run training elsewhere (training comes first), and when its
    dense copy plus `extra_bytes` fit in MEMORY_MARGIN of the GPU memory free now."""
    if not force and not enabled(device):
        return None, "fast path off (CPU, or WORKBENCH_FAST_GENERATE=0)"
    core = _core(model)
    busy = training_elsewhere() if device == "cuda" else None
    if busy:
        drop_engine(model)
        return None, f"run '{busy}' is training: plain 4-bit generation (no bf16 copy while training)"
    with _BUILD_LOCK:
        engine = getattr(core, _ATTR, None)
        if engine is not None:
            return engine, ""
        if getattr(core, _ATTR + "_unsupported", None):
            return None, core.__dict__[_ATTR + "_unsupported"]
        try:
            dense = dense_bytes(model)
            need = dense + extra_bytes + (int(dense * 0.3) if nf4_gemv.enabled(device) else 0)  # + fused 4-bit copies
        except AttributeError as e:
            return None, f"fast path unsupported for this model ({e})"
        if device == "cuda":
            import torch

            free = torch.cuda.mem_get_info()[0]
            if need > free * MEMORY_MARGIN:
                return None, (f"fast path needs ~{need / 2**30:.1f} GB but {free / 2**30:.1f} GB are free: "
                              f"plain 4-bit generation")
        from workbench.chat.fast_generate import FastEngine

        try:
            engine = FastEngine(model)
        except (Unsupported, AttributeError) as e:  # a layer layout the engine does not know: plain generate
            core.__dict__[_ATTR + "_unsupported"] = f"fast path unsupported: {e}"
            return None, core.__dict__[_ATTR + "_unsupported"]
        setattr(core, _ATTR, engine)
        return engine, ""


def active_lora(model) -> tuple[str, ...]:
    """The adapters a plain forward of this model would apply right now (none inside disable_adapter)."""
    for mod in _core(model).modules():
        if hasattr(mod, "lora_A") and hasattr(mod, "disable_adapters"):
            if mod.disable_adapters or getattr(mod, "merged", False):
                return ()
            return tuple(a for a in mod.active_adapters if a in mod.lora_A)
    return ()
