"""evaluate_run on real run folders: the real embedded model in 4-bit, a real LoRA adapter, the real CLI.

The run folders are built by hand (config.yaml, data/, adapter/) so these tests need no training; the
adapter is a real peft adapter with non-zero weights, so base and fine-tuned answers really differ.
"""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import run_cli
from workbench import paths, runs
from workbench.evaluation import evaluate
from workbench.config import preset
from workbench.data.dataset import read_jsonl, write_jsonl

pytestmark = pytest.mark.integration


def sample_records():
    rows = read_jsonl(paths.SAMPLE_DATA)
    return [{"id": f"r{i}", "instruction": r["question"], "input": "", "output": r["answer"], "context": ""}
            for i, r in enumerate(rows)]


def make_adapter(dest):
    """A real LoRA adapter for the embedded model with small random (non-zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from workbench.models import resolve

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve("embedded:SmolLM2-135M-Instruct"), dtype=torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.3)  # a nudge, not noise: answers change but stay readable
    model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory):
    """Built once per test session (the browser test imports this fixture too)."""
    dest = tmp_path_factory.getbasetemp() / "eval-test-adapter"
    if not (dest / "adapter_config.json").is_file():
        make_adapter(dest)
    return dest


def build_run(adapter_dir, run_id="20250101-000000-eval", n_eval=4, leak=False, adapter=True, events=True,
              max_new_tokens=12):
    """A completed run folder as train.py leaves it (config, split, adapter, events), minus the training."""
    records = sample_records()
    train, eval_ = records[8:28], records[:n_eval]
    if leak:
        eval_ = eval_[:-1] + [dict(train[0], id="leaked")]
    cfg = preset("quick-demo-cpu")
    cfg.name = "eval-test"
    cfg.model.max_seq_length = 192
    cfg.eval.max_examples = n_eval
    cfg.eval.max_new_tokens = max_new_tokens
    cfg.eval.batch_size = 4
    folder = paths.runs_dir() / run_id
    (folder / "data").mkdir(parents=True)
    cfg.save(folder / "config.yaml")
    write_jsonl(train, folder / "data" / "train.jsonl")
    write_jsonl(eval_, folder / "data" / "eval.jsonl")
    if adapter:
        shutil.copytree(adapter_dir, folder / "adapter")
    if events:
        losses = [(1, 4.1), (2, 3.6), (3, 3.2), (4, 2.9)]
        (folder / "events.jsonl").write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in losses)
                                             + json.dumps({"step": 4, "eval_loss": 3.4}) + "\n")
    runs.write_status(run_id, state="completed" if adapter else "failed", name=cfg.name, model=cfg.model.name_or_path,
                      created_at=runs.now_iso())
    return run_id


def test_evaluate_run_writes_metrics_and_predictions_and_caches_base(adapter_dir):
    run_id = build_run(adapter_dir)
    seen = []
    metrics = evaluate.evaluate_run(run_id, progress=lambda f, m: seen.append((f, m)))
    folder = runs.run_path(run_id)
    assert json.loads((folder / "metrics.json").read_text()) == metrics
    for side in ("base", "tuned"):
        assert set(metrics[side]) == {"perplexity", "rouge1", "rouge2", "rougeL", "bleu"}
        assert metrics[side]["perplexity"] > 1
        assert all(0 <= metrics[side][k] <= 1 for k in ("rouge1", "rouge2", "rougeL", "bleu"))
    assert metrics["tuned"]["perplexity"] != metrics["base"]["perplexity"]  # the adapter was on for 'tuned'
    pct = (metrics["tuned"]["perplexity"] - metrics["base"]["perplexity"]) / metrics["base"]["perplexity"] * 100
    assert metrics["change_pct"]["perplexity"] == pytest.approx(pct)
    assert metrics["eval_examples"] == 4 and metrics["base_cached"] is False
    assert metrics["leakage"]["flagged"] is False and metrics["leakage"]["checked"] is True
    preds = read_jsonl(folder / "predictions.jsonl")
    assert [p["question"] for p in preds] == [r["instruction"] for r in read_jsonl(folder / "data" / "eval.jsonl")]
    assert {"question", "reference", "base_answer", "tuned_answer", "rougeL_base", "rougeL_tuned",
            "rougeL_change"} <= set(preds[0])
    assert any(p["base_answer"] != p["tuned_answer"] for p in preds)
    assert sum(p["rougeL_base"] for p in preds) / 4 == pytest.approx(metrics["base"]["rougeL"])
    assert seen[-1][0] == 1.0 and [f for f, _ in seen] == sorted(f for f, _ in seen)  # progress only moves forward
    assert any("base model: generating" in m for _, m in seen)
    assert runs.read_status(run_id)["eval_state"] == "completed"

    cache_files = list((paths.cache_dir() / "base_eval").glob("*.json"))
    assert len(cache_files) == 1
    again = evaluate.evaluate_run(run_id)
    assert again["base_cached"] is True and again["base"] == metrics["base"]
    assert again["tuned"] == pytest.approx(metrics["tuned"])  # greedy decoding is deterministic


def test_leakage_is_flagged_in_metrics_and_loudly_in_the_cli(adapter_dir):
    run_id = build_run(adapter_dir, leak=True)
    result = run_cli("eval", "--run", run_id, "--max-new-tokens", "8")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LEAKAGE" in result.stdout and "1 of 4 evaluation rows" in result.stdout
    assert "Perplexity" in result.stdout and "ROUGE-L" in result.stdout
    metrics = evaluate.read_metrics(run_id)
    assert metrics["leakage"]["flagged"] is True and metrics["leakage"]["leaked_ids"] == ["leaked"]
    assert metrics["settings"]["max_new_tokens"] == 8  # the CLI override was used and recorded
    assert runs.load_run_config(run_id).eval.max_new_tokens == 12  # ... without rewriting the run's config


def test_failed_evaluation_says_why_and_keeps_previous_results(adapter_dir):
    untrained = build_run(adapter_dir, run_id="20250101-000001-untrained", adapter=False)
    with pytest.raises(evaluate.EvalError, match="no trained adapter yet"):
        evaluate.evaluate_run(untrained)
    assert not (runs.run_path(untrained) / "metrics.json").exists()
    assert "no trained adapter" in runs.read_status(untrained)["eval_error"]

    run_id = build_run(adapter_dir, run_id="20250101-000002-broken")
    folder = runs.run_path(run_id)
    (folder / "metrics.json").write_text('{"previous": true}')
    (folder / "adapter" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(evaluate.EvalError, match=f"The adapter of run '{run_id}' is damaged"):  # before any model
        evaluate.evaluate_run(run_id)
    assert json.loads((folder / "metrics.json").read_text()) == {"previous": True}
    assert not (folder / "predictions.jsonl").exists()
    assert not list(folder.glob(".*.tmp*"))
    assert runs.read_status(run_id)["eval_state"] == "failed"
    # readable files that still cannot be used (a weight of the wrong shape): the failure inside the evaluation is
    # reported the same way, and the previous results stay
    from safetensors.torch import load_file, save_file

    good = load_file(str(runs.run_path(build_run(adapter_dir, run_id="20250101-000003-good")) / "adapter"
                         / "adapter_model.safetensors"))
    key = next(iter(good))
    good[key] = good[key][:, :1].contiguous()
    save_file(good, str(folder / "adapter" / "adapter_model.safetensors"))
    with pytest.raises(evaluate.EvalError, match="Evaluation failed"):
        evaluate.evaluate_run(run_id)
    assert json.loads((folder / "metrics.json").read_text()) == {"previous": True}
    assert runs.read_status(run_id)["eval_state"] == "failed"

    result = run_cli("eval", "--run", "../../etc")
    assert result.returncode == 1 and "not a valid run id" in result.stderr
    result = run_cli("eval", "--run", untrained)
    assert result.returncode == 1 and "no trained adapter yet" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("eval", "--run", run_id, "--max-new-tokens", "0")
    assert result.returncode == 1 and "eval.max_new_tokens must be at least 1" in result.stderr


def test_cli_scores_the_base_model_alone_and_reuses_the_cache(tmp_path):
    out = tmp_path / "base.json"
    args = ("eval", "--base", "--data", "sample", "--max-examples", "3", "--max-new-tokens", "8", "--device", "cpu")
    first = run_cli(*args, "--output", out)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert "tuned" not in metrics and metrics["eval_examples"] == 3 and metrics["base"]["perplexity"] > 1
    assert "Perplexity" in first.stdout and "fine-tuned" not in first.stdout
    second = run_cli(*args, "--json")
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads(second.stdout)
    assert again["base_cached"] is True and again["base"] == metrics["base"]
    bad = run_cli("eval", "--base", "--data", str(tmp_path / "missing.csv"))
    assert bad.returncode == 1 and "error:" in bad.stderr and "Traceback" not in bad.stderr
