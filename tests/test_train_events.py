"""Pure unit tests: the events reducer (synthetic events) and the resource estimate."""
from __future__ import annotations

import math

import pytest

from workbench.training import estimate
from workbench.config import MISTRAL_7B, preset
from workbench.training.events import fold, reduce


def log(step, **metrics):
    return {"step": step, "elapsed": step * 2.0, **metrics}


def test_reduce_folds_log_events_and_computes_eta():
    progress = fold([log(1, loss=2.0, learning_rate=1e-4), log(2, loss=1.5, grad_norm=0.7, tokens_per_s=400.0)],
                    {"state": "running", "total_steps": 10})
    assert progress["step"] == 2 and progress["loss"] == 1.5 and progress["learning_rate"] == 1e-4
    assert progress["grad_norm"] == 0.7 and progress["tokens_per_s"] == 400.0
    assert progress["points"] == 2
    assert progress["eta_s"] == pytest.approx(4.0 / 2 * 8)


def test_reduce_does_not_change_its_input():
    status = {"state": "running", "step": 0}
    out = reduce(status, log(3, loss=1.0))
    assert status == {"state": "running", "step": 0} and out["step"] == 3


def test_nan_and_inf_loss_are_flagged_not_plotted():
    progress = fold([log(1, loss=2.0), log(2, loss=float("nan")), log(3, eval_loss=float("inf"))])
    assert progress["loss"] == 2.0  # the last finite value stays
    assert "eval_loss" not in progress
    assert progress["nonfinite"] == "eval_loss became inf at step 3"
    assert math.isfinite(progress["loss"])


def test_unknown_and_malformed_events_are_counted_and_skipped():
    events = [log(1, loss=2.0), {"type": "checkpoint_uploaded", "step": 5}, {"loss": 1.0}, {"step": "7", "loss": 1},
              {"step": -1, "loss": 1.0}, {"step": True, "loss": 1.0}, "not a dict", log(2, loss="high")]
    progress = fold(events)
    assert progress["ignored"] == 6
    assert progress["step"] == 2 and progress["loss"] == 2.0  # the string loss at step 2 is not a number


def test_state_events_and_eval_best():
    progress = fold([log(4, eval_loss=1.2), log(8, eval_loss=0.9), log(12, eval_loss=1.1),
                     {"type": "state", "state": "stopped", "reason": "asked to"}])
    assert progress["eval_loss"] == 1.1 and progress["best_eval_loss"] == 0.9
    assert progress["state"] == "stopped" and progress["reason"] == "asked to"
    assert progress.get("points", 0) == 0  # eval-only events add no training-loss point


def test_memory_of_each_process_is_folded_and_shown_per_gpu():
    from workbench.ui.run_view import memory_text

    one = reduce({}, {"step": 1, "loss": 2.0, "gpu_mem_gb": 9.07})
    assert memory_text(one) == "GPU 9.1 GB"
    two = reduce({}, {"step": 4, "loss": 2.0, "gpu_mem_gb": 11.5, "gpu_mem_gb_ranks": [11.5, 10.95]})
    assert two["gpu_mem_gb_ranks"] == [11.5, 10.95] and memory_text(two) == "GPU 11.5 / 10.9 GB (2 GPUs)"
    bad = reduce({}, {"step": 4, "loss": 2.0, "cpu_mem_gb": 1.0, "cpu_mem_gb_ranks": ["x", None]})
    assert "cpu_mem_gb_ranks" not in bad and memory_text(bad) == "RAM 1.0 GB"  # a damaged list is ignored


def test_no_eta_without_total_or_when_done():
    assert fold([log(3, loss=1.0)])["eta_s"] is None
    assert fold([log(10, loss=1.0)], {"total_steps": 10})["eta_s"] is None


def test_vram_estimate_orders_settings_sensibly():
    seed = preset("seed-mistral-7b-gpu")
    base = estimate.estimate_vram_gb(seed)
    assert 6 < base < 16  # 4-bit 7B, batch 4 x 1024, checkpointing: well inside a 24 GB card
    seed.training.gradient_checkpointing = False
    assert estimate.estimate_vram_gb(seed) > base
    seed.training.gradient_checkpointing = True
    seed.training.batch_size = 8
    assert estimate.estimate_vram_gb(seed) > base
    seed.training.batch_size = 4
    seed.model.load_in_4bit = False
    assert estimate.estimate_vram_gb(seed) > base + 10  # bf16 weights alone are ~14.5 GB
    assert estimate.estimate_vram_gb(preset("quick-demo-cpu")) < 3


def test_describe_gpu_fit_and_cpu_time():
    seed = preset("seed-mistral-7b-gpu")
    assert "fits" in estimate.describe(seed, "NVIDIA H100", 80.0, None)
    assert "NOT fit" in estimate.describe(seed, "small GPU", 6.0, None)
    cpu = estimate.describe(preset("quick-demo-cpu"), None, None, 30)
    assert "CPU" in cpu and "30 steps" in cpu
    assert "impractically slow" in estimate.describe(seed, None, None, 100)


def test_model_shape_known_and_guessed():
    assert estimate.model_shape(MISTRAL_7B)[0] == pytest.approx(7.24)
    assert estimate.model_shape("someone/Cool-13B-chat")[0] == 13
    assert estimate.model_shape("/local/folder/without/size") == (7.0, 4096, 32)


def test_failure_reasons_name_the_fix():
    import torch

    from workbench.data.dataset import DataError
    from workbench.training.failures import NonFiniteLoss, explain
    from workbench.models import ModelNotAvailable

    cfg = preset("seed-mistral-7b-gpu")
    oom = explain(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), cfg)
    assert "ran out of memory" in oom and "batch size (now 4" in oom and "1024" in oom
    assert f"{estimate.estimate_vram_gb(cfg):.1f} GB" in oom  # the estimate it exceeded
    assert "lower learning rate" in explain(NonFiniteLoss("loss became nan at step 3"), cfg)
    assert "could not be loaded: no such folder" in explain(ModelNotAvailable("no such folder"), cfg)
    assert "training data has a problem: empty" in explain(DataError("empty"), cfg)
    assert "train.log" in explain(ValueError("odd"), cfg)


def test_cli_for_config_round_trips_through_the_cli_parser():
    import shlex

    from workbench.training import jobs
    from workbench.cli import build_parser
    from workbench.commands.train import _config_from_args

    cfg = preset("quick-demo-cpu")
    cfg.name = "my run"
    cfg.training.max_steps = 5
    cfg.training.gradient_checkpointing = True
    cfg.lora.target_modules = ["q_proj", "v_proj"]
    cfg.data.columns = {"instruction": "q", "output": "a"}
    command = jobs.cli_for_config(cfg)
    args = build_parser().parse_args(shlex.split(command)[3:])
    assert _config_from_args(args) == cfg
    # a preference run's command names its parent (and a pairs file) with their own options, not --set
    pref = preset("preference-cpu")
    pref.preference.parent_run, pref.preference.pairs = "20250101-000000-parent", "/srv/prefs.jsonl"
    pref.preference.beta = 0.2
    command = jobs.cli_for_config(pref)
    assert "--parent 20250101-000000-parent --pairs /srv/prefs.jsonl" in command and "parent_run" not in command
    assert _config_from_args(build_parser().parse_args(shlex.split(command)[3:])) == pref


def test_vocabulary_size_is_read_from_the_model_config_not_hard_coded(tmp_path):
    import json

    from workbench import models

    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"vocab_size": 151936}))
    assert models.vocab_size(str(folder)) == 151936
    big = preset("seed-mistral-7b-gpu")
    small_vocab = estimate.estimate_vram_gb(big)
    big.model.name_or_path = str(folder)  # same guessed shape (7B fallback), a 4.7x larger vocabulary
    assert estimate.estimate_vram_gb(big) > small_vocab
    assert models.vocab_size("mistralai/Mistral-7B-Instruct-v0.2") == 32000  # known, nothing on disk


def test_the_last_step_done_reads_finishing_not_measuring():
    """Found by using the app: at 'step 6/6' (the final evaluation and save) the ETA read 'measuring…' although the
    pace was known."""
    from workbench.ui.run_view import progress_html

    events = [log(s, loss=1.0) for s in range(1, 7)]
    done = progress_html({"state": "running", "step": 6, "total_steps": 6}, events)
    assert "finishing (final evaluation and save)" in done and "measuring" not in done
    early = progress_html({"state": "running", "step": 0, "total_steps": 6}, [])
    assert "measuring…" in early


def test_a_resumed_run_says_it_is_loading_until_training_begins_and_shows_no_stale_eta_or_pace():
    """Found by using the app: after Resume the progress line showed an ETA from the old pace while the model and the
    checkpoint reloaded, with no word that anything was loading; then the note outlived the first new step."""
    from workbench.ui.run_view import progress_html

    t0 = 1_700_000_000.0
    events = [dict(log(s, loss=1.0), ts=t0 + s) for s in range(1, 5)]  # the first process: steps 1-4
    started = "2023-11-14T22:14:00+00:00"  # the resumed process started after those (t0 + 40 s)
    queued = progress_html({"state": "queued", "step": 4, "total_steps": 12, "start_step": None}, events)
    loading = progress_html({"state": "running", "step": 4, "total_steps": 12, "started_at": started,
                             "start_step": None}, events)
    for html_text in (queued, loading):
        assert "Resuming from step 4: loading the model and the checkpoint" in html_text
    assert "ETA <span id='train-eta'>measuring…" in loading and "s/step" not in loading
    # training began (the callback set start_step) and took a step, not yet logged: no note, still no stale pace
    began = progress_html({"state": "running", "step": 5, "total_steps": 12, "started_at": started, "start_step": 4},
                          events)
    assert "Resuming" not in began and "measuring…" in began and "s/step" not in began
    later = progress_html({"state": "running", "step": 6, "total_steps": 12, "started_at": started, "start_step": 4},
                          events + [dict(log(6, loss=0.9), ts=t0 + 300)])
    assert "Resuming" not in later and "measuring" not in later and "s/step" in later  # logged: pace and ETA
    old = progress_html({"state": "running", "step": 4, "total_steps": 12}, events)  # a status from before this
    assert "Resuming" not in old and "measuring" not in old
