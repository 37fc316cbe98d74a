"""Run folders with real trained LoRA adapters for the chat tests (built once per session, copied per test).

Run A: a real few-step LoRA training of the embedded 4-bit model at a high learning rate, its B
matrices then scaled up so its answers clearly differ from the base model's (a CPU step costs seconds,
so the fixture trains only a few; Adam's first steps amplify float noise, so the exact adapter differs
between sessions: tests assert differences and the base path, never the tuned text itself). Run B: run A's adapter with its B matrices negated,
a second, different adapter on the same base model (for adapter-vs-adapter comparisons).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workbench import paths
from workbench.config import EMBEDDED_MODEL, RunConfig

RUN_A = "20250101-000000-chat-tuned"
RUN_B = "20250101-000001-chat-negated"
QUESTION = "What does the stack function do in Databricks SQL?"
REFERENCE_TOKENS = 24


def _records(n: int) -> list[dict]:
    rows = [json.loads(line) for line in paths.SAMPLE_DATA.read_text().splitlines() if line.strip()][:n]
    return [{"id": f"s{i}", "instruction": r["question"], "input": "", "context": "", "output": r["answer"]}
            for i, r in enumerate(rows)]


def _write_run(folder: Path, cfg: RunConfig, train: list[dict], eval_: list[dict]) -> None:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    cfg.save(folder / "config.yaml")
    for name, rows in (("train", train), ("eval", eval_)):
        (folder / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "status.json").write_text(json.dumps({"state": "completed", "name": cfg.name, "model": EMBEDDED_MODEL,
                                                    "created_at": "2025-01-01T00:00:00+00:00"}))


def plain_greedy(model, tok, question: str, max_new_tokens: int) -> str:
    """The plain model's greedy answer, prompt built straight from the chat template (batch 1, no chat module)."""
    import torch

    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def train_adapter(out_dir: Path, records: list[dict], steps: int = 2, lr: float = 4e-3, scale_b: float = 7.0) -> str:
    """A tiny real QLoRA training (embedded model in 4-bit, peft LoRA on q/k/v/o), B scaled, save_pretrained.

    Returns the plain base model's greedy answer to QUESTION (REFERENCE_TOKENS tokens), computed with
    models.load_model + generate before the adapter is attached.
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from workbench.formatting import IGNORE_INDEX, tokenize_example
    from workbench.models import load_model

    cfg = RunConfig()
    model, tok, _ = load_model(cfg.model, "cpu")
    reference = plain_greedy(model, tok, QUESTION, REFERENCE_TOKENS)
    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    examples = [tokenize_example(r, tok, 96) for r in records]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        batch = [examples[(step * 2 + i) % len(examples)] for i in range(2)]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.tensor([e["input_ids"] + [tok.pad_token_id] * (width - len(e["input_ids"])) for e in batch])
        mask = torch.tensor([e["attention_mask"] + [0] * (width - len(e["input_ids"])) for e in batch])
        labels = torch.tensor([e["labels"] + [IGNORE_INDEX] * (width - len(e["labels"])) for e in batch])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(scale_b)
    model.save_pretrained(out_dir)
    return reference


def negate_adapter(src: Path, dst: Path) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    weights = load_file(src / "adapter_model.safetensors")
    save_file({k: (-v if "lora_B" in k else v) for k, v in weights.items()}, dst / "adapter_model.safetensors")


def build_runs(root: Path) -> Path:
    records = _records(16)
    cfg = RunConfig(name="chat-tuned")
    _write_run(root / RUN_A, cfg, records[4:], records[:4])
    reference = train_adapter(root / RUN_A / "adapter", records)
    (root / "plain_base_answer.txt").write_text(reference)
    cfg_b = RunConfig(name="chat-negated")
    _write_run(root / RUN_B, cfg_b, records[4:], records[:4])
    negate_adapter(root / RUN_A / "adapter", root / RUN_B / "adapter")
    return root


_BUILT: dict[str, Path] = {}  # one build per session even when several test modules import the fixture


@pytest.fixture(scope="session")
def _built_runs(tmp_path_factory):
    if "root" not in _BUILT:
        _BUILT["root"] = build_runs(tmp_path_factory.mktemp("chat-runs"))
    return _BUILT["root"]


@pytest.fixture
def plain_base_answer(_built_runs) -> str:
    """The plain 4-bit base model's greedy answer to QUESTION (REFERENCE_TOKENS new tokens)."""
    return (_built_runs / "plain_base_answer.txt").read_text()


def copy_runs(built: Path, runs_dir: Path) -> None:
    for run_id in (RUN_A, RUN_B):
        shutil.copytree(built / run_id, runs_dir / run_id)


@pytest.fixture
def adapter_runs(_built_runs, wb_home):
    """RUN_A and RUN_B copied into this test's runs folder; returns (RUN_A, RUN_B)."""
    copy_runs(_built_runs, paths.runs_dir())
    return RUN_A, RUN_B
