"""Chat core: prompts and histories, the GPU policy, side checks, and the `chat` command."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import run_cli
from test_chat_support import (QUESTION, RUN_A, RUN_B, _built_runs, adapter_runs,  # noqa: F401
                               plain_base_answer)
from workbench import paths, runs
from workbench.chat import session as chat
from workbench.training import jobs
from workbench.config import EMBEDDED_MODEL, RunConfig


@pytest.fixture(scope="module")
def tokenizer():
    from workbench.models import load_tokenizer

    return load_tokenizer(EMBEDDED_MODEL)


def test_prompt_applies_the_chat_template_with_each_columns_history(tokenizer):
    history = [{"role": "user", "content": [{"type": "text", "text": "What is Delta?"}]},  # Gradio's content parts
               {"role": "assistant", "content": "A table format."}]
    text = tokenizer.decode(chat.prompt_ids(tokenizer, history, "And OPTIMIZE?", "Be brief."))
    assert text == tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is Delta?"},
         {"role": "assistant", "content": "A table format."}, {"role": "user", "content": "And OPTIMIZE?"}],
        tokenize=False, add_generation_prompt=True)
    other = tokenizer.decode(chat.prompt_ids(tokenizer, [], "And OPTIMIZE?"))
    assert "What is Delta?" not in other and other.endswith("<|im_start|>assistant\n")


def test_long_history_drops_the_oldest_turns_first(tokenizer):
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"question {i} " + "word " * 30},
                    {"role": "assistant", "content": f"answer {i}"}]
    ids = chat.prompt_ids(tokenizer, history, "latest?", max_tokens=300)
    text = tokenizer.decode(ids)
    assert len(ids) <= 300 and "latest?" in text and "question 39" in text and "question 0 " not in text


def test_instruction_template_runs_get_the_instruction_layout(tokenizer):
    text = tokenizer.decode(chat.prompt_ids(tokenizer, [{"role": "user", "content": "q1"},
                                                        {"role": "assistant", "content": "a1"}], "q2",
                                            template="instruction"))
    assert text.index("### Instruction:\nq1") < text.index("a1") < text.index("### Instruction:\nq2")
    assert text.endswith("### Response:\n")


@pytest.mark.parametrize("settings,fragment", [
    (chat.ChatSettings(temperature=-1), "Temperature"), (chat.ChatSettings(top_p=0), "Top-p"),
    (chat.ChatSettings(max_new_tokens=0), "Max new tokens"), (chat.ChatSettings(max_new_tokens=5000), "1-4096")])
def test_bad_settings_are_explained(settings, fragment):
    assert any(fragment in p for p in settings.validate())
    assert chat.ChatSettings().validate() == []


def test_gpu_policy_decisions():
    ok, note = chat.gpu_decision("cuda", None, 30.0, None)
    assert ok and note == ""
    ok, note = chat.gpu_decision("cuda", "run-1", 6.0, 40.0)
    assert ok and "fits beside it" in note
    ok, note = chat.gpu_decision("cuda", "run-1", 6.0, 7.0)  # 6 > 0.8 x 7: refuse
    assert not ok and "run-1" in note and "cannot run out of memory" in note
    ok, note = chat.gpu_decision("cpu", "run-1", 99.0, None)
    assert ok and "slowly" in note
    model = RunConfig().model
    assert chat.chat_memory_gb(model, chat.ChatSettings(), weights_loaded=False) > \
        chat.chat_memory_gb(model, chat.ChatSettings(), weights_loaded=True)


def test_chat_on_cpu_beside_a_live_training_run_is_allowed_and_says_slow(adapter_runs):
    holder = subprocess.Popen([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(120)", RUN_A],
                              stdout=subprocess.PIPE, text=True)  # its command line names the run, like a trainer's
    try:
        assert holder.stdout.readline().strip() == "up"  # exec'd: /proc/<pid>/cmdline is now its own
        jobs._claim(RUN_A, holder.pid)
        assert jobs.active_run() == RUN_A
        note = chat.check_gpu_policy(RunConfig().model, "cpu", chat.ChatSettings())
        assert RUN_A in note and "slowly" in note
        assert RUN_A in chat.policy_status()
    finally:
        holder.kill()
        holder.wait()


def test_sides_are_checked_before_any_model_loads(adapter_runs):
    with pytest.raises(chat.ChatError, match="same model"):
        list(chat.chat_pair(RUN_A, RUN_A, "q"))
    with pytest.raises(chat.ChatError, match="at least one column"):
        list(chat.chat_pair("base", "", "q"))
    with pytest.raises(chat.ChatError, match="Type a question"):
        list(chat.chat_pair("base", RUN_A, "   "))
    untrained = paths.runs_dir() / "20250102-000000-untrained"
    untrained.mkdir()
    RunConfig().save(untrained / "config.yaml")
    (untrained / "status.json").write_text(json.dumps({"state": "running"}))
    with pytest.raises(chat.ChatError, match="no trained adapter yet \\(state: running\\)"):
        list(chat.chat_pair("base", untrained.name, "q"))
    other_base = paths.runs_dir() / "20250102-000001-other-base"
    shutil.copytree(paths.runs_dir() / RUN_B, other_base)
    cfg = RunConfig()
    cfg.model.name_or_path = "mistralai/Mistral-7B-Instruct-v0.2"
    cfg.save(other_base / "config.yaml")
    with pytest.raises(chat.ChatError, match="same base model"):
        list(chat.chat_pair(RUN_A, other_base.name, "q"))
    with pytest.raises(runs.RunError, match="not a valid run id"):
        list(chat.chat_pair("base", "../../etc", "q"))
    assert [r["id"] for r in chat.chat_runs()] == [other_base.name, RUN_B, RUN_A]  # only runs with an adapter


@pytest.mark.parametrize("damage", ["truncated weights", "empty config"])
def test_a_damaged_adapter_is_named_before_any_model_loads(adapter_runs, damage):
    """A run whose adapter/ files are damaged: chat and evaluation refuse it with the file's problem and what to do,
    before loading the model (a half-loaded adapter would leave LoRA layers in the shared base model)."""
    from workbench.evaluation import evaluate

    adapter = paths.runs_dir() / RUN_A / "adapter"
    if damage == "truncated weights":
        weights = adapter / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (adapter / "adapter_config.json").write_text("")
    before = dict(chat._HELD)
    with pytest.raises(chat.ChatError, match=f"The adapter of run '{RUN_A}' is damaged .*train the run again"):
        list(chat.chat_pair("base", RUN_A, "q"))
    assert chat._HELD == before  # no model was loaded or touched
    with pytest.raises(evaluate.EvalError, match=f"The adapter of run '{RUN_A}' is damaged"):
        evaluate.evaluate_run(RUN_A)
    assert runs.folder(RUN_B).adapter_damage() == ""
    from workbench.ui import metrics_tab

    button, why = metrics_tab.evaluate_button(RUN_A)  # the Metrics tab says so before Evaluate is pressed
    assert button["interactive"] is False and "is damaged" in why


@pytest.mark.parametrize("damage", [b"\xff\xfe\n", b'{"instruction": \n', b"[1, 2]\n"])
def test_a_damaged_split_file_is_named_and_never_half_used(adapter_runs, damage):
    """data/eval.jsonl or data/train.jsonl cut short, not UTF-8, or not records: evaluation refuses with the file
    named (never scores part of the split or skips the leakage check); the Chat tab only loses its examples."""
    from workbench.evaluation import evaluate
    from workbench.ui import chat_tab

    data = paths.runs_dir() / RUN_A / "data"
    (data / "eval.jsonl").write_bytes(damage)
    assert chat_tab.example_questions(RUN_A) == []
    with pytest.raises(evaluate.EvalError, match="eval.jsonl is damaged"):
        evaluate.evaluate_run(RUN_A)
    shutil.copy(paths.runs_dir() / RUN_B / "data" / "eval.jsonl", data / "eval.jsonl")
    (data / "train.jsonl").write_bytes(damage)
    with pytest.raises(evaluate.EvalError, match="train.jsonl is damaged"):
        evaluate.evaluate_run(RUN_A)


@pytest.mark.integration
def test_cli_chat_prints_both_answers(adapter_runs, plain_base_answer):
    result = run_cli("chat", "--run", RUN_A, QUESTION, "--max-new-tokens", "24", "--repetition-penalty", "1.0")
    assert result.returncode == 0, result.stderr[-3000:]
    base_head, tuned_head = "=== Base model (adapter off) ===\n", f"=== Fine-tuned: {RUN_A} ===\n"
    assert result.stdout.startswith(base_head) and tuned_head in result.stdout
    base, tuned = (part.strip() for part in result.stdout[len(base_head):].split(tuned_head))
    assert base == plain_base_answer
    assert tuned and tuned != base
    bad = run_cli("chat", "--run", "nope", "q")
    assert bad.returncode == 1 and "No run 'nope'" in bad.stderr and "Traceback" not in bad.stderr


def test_the_status_line_does_not_repeat_the_device_note_the_notice_shows():
    # Found by using the app: on a CPU "Running on the CPU: answers stream slowly…" stood twice, above and below
    # "Done (…)", once from the notice and once from the status line.
    from workbench.chat.streaming import PairUpdate
    from workbench.ui.chat_tab import status_line

    cpu = "Running on the CPU: answers stream slowly (fine for the small embedded model, very slow for 7B)."
    done = PairUpdate(texts=["a", "b"], done=[True, True], tokens=[3, 4], first_token_s=[0.5, 0.6], finished=True,
                      note=cpu)
    assert cpu not in status_line(done, False, page_note=cpu)
    assert status_line(done, False, page_note=cpu).startswith("Done (left: 3 tokens")
    other = "Run 'r1' is training on this machine's CPU too: chat shares the CPU."
    assert cpu in status_line(done, False, page_note=other)  # a note the notice does not show stays
