"""The embedded model converts once and loads in real 4-bit NF4; unavailable models explain themselves."""
import pytest

from workbench import models
from workbench.config import EMBEDDED_MODEL, ModelConfig


@pytest.mark.integration
def test_embedded_model_loads_in_4bit_nf4_and_generates():
    import torch
    from bitsandbytes.nn import Linear4bit

    model, tok, device = models.load_model(ModelConfig(), device="cpu")
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, Linear4bit)
    assert q_proj.weight.quant_type == "nf4"
    assert q_proj.weight.quant_state.nested  # double quantization
    assert model.model.norm.weight.dtype == torch.bfloat16
    ids = tok.apply_chat_template([{"role": "user", "content": "What is SQL?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert len(tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()) > 0


def test_embedded_model_is_an_ordinary_safetensors_folder():
    folder = models.embedded_model_dir()
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert models.resolve(EMBEDDED_MODEL) == str(folder)  # later loads take the plain from_pretrained path


def test_hub_id_not_available_offline_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(models.ModelNotAvailable, match="not in the local Hugging Face cache.*hf download"):
        models.resolve("mistralai/Mistral-7B-Instruct-v0.2")


def test_bad_local_folders_are_explained(tmp_path):
    with pytest.raises(models.ModelNotAvailable, match="no config.json"):
        models.resolve(str(tmp_path))
    with pytest.raises(models.ModelNotAvailable, match="does not exist"):
        models.resolve("./no/such/model")
    with pytest.raises(models.ModelNotAvailable, match="Unknown embedded model"):
        models.resolve("embedded:Nope-1B")


def test_cpu_request_for_cuda_is_explained():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(models.ModelNotAvailable, match="no CUDA|none is visible"):
        models.pick_device("cuda")


@pytest.mark.integration
def test_first_use_converts_the_gguf_once_with_progress(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_MODEL_CACHE", str(tmp_path / "models"))
    seen = []
    folder = models.embedded_model_dir(progress=lambda frac, msg: seen.append((frac, msg)))
    assert (folder / "model.safetensors").stat().st_size > 100_000_000  # dequantized bf16 weights
    assert seen[0][0] < seen[-1][0] == 1.0
    mtime = (folder / "model.safetensors").stat().st_mtime
    seen.clear()
    assert models.embedded_model_dir(progress=lambda *a: seen.append(a)) == folder
    assert seen == [] and (folder / "model.safetensors").stat().st_mtime == mtime  # not converted again
