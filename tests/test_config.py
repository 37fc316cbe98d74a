"""RunConfig: presets load and validate, YAML round-trips, bad values say how to fix them."""
import pytest

from conftest import run_cli
from workbench.config import PRESETS, ConfigError, RunConfig, iter_fields, preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_is_valid_and_round_trips(name):
    cfg = preset(name)
    assert cfg.validate() == []
    assert RunConfig.from_yaml(cfg.to_yaml()) == cfg


def test_seed_recipe_matches_the_notebook():
    cfg = preset("seed-mistral-7b-gpu")
    assert "Mistral-7B" in cfg.model.name_or_path
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 32, 0.05)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert (cfg.training.learning_rate, cfg.training.epochs) == (2e-4, 3.0)
    assert (cfg.training.batch_size, cfg.training.grad_accum) == (4, 4)
    assert cfg.training.save_strategy == "epoch" and cfg.training.logging_steps == 10
    assert cfg.model.load_in_4bit and cfg.model.quant_type == "nf4" and cfg.model.double_quant


def test_every_field_has_help():
    for name, f, _ in iter_fields():
        assert len(f.metadata.get("help", "")) > 15, name


def test_validation_messages_name_the_fix():
    cfg = RunConfig()
    cfg.lora.r = 0
    cfg.training.learning_rate = 5.0
    cfg.training.lr_scheduler = "zigzag"
    msgs = cfg.validate()
    assert any("lora.r" in m and "16" in m for m in msgs)
    assert any("choose one of" in m and "cosine" in m for m in msgs) or any("learning_rate" in m for m in msgs)


def test_unknown_keys_and_bad_yaml_are_errors():
    with pytest.raises(ConfigError, match="lora.rank"):
        RunConfig.from_yaml("lora:\n  rank: 8\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml("lora: [unclosed")
    with pytest.raises(ConfigError, match="mapping"):
        RunConfig.from_yaml("- just a list")
    with pytest.raises(ConfigError, match="section"):
        RunConfig.from_yaml("lora: 3")


def test_yaml_is_loaded_safely():
    with pytest.raises(ConfigError):
        RunConfig.from_yaml("name: !!python/object/apply:os.system ['echo pwned']")


def test_cli_config_commands(tmp_path):
    out = run_cli("config", "--preset", "quick-demo-cpu")
    assert out.returncode == 0, out.stderr
    path = tmp_path / "c.yaml"
    path.write_text(out.stdout)
    assert run_cli("config", "--check", path).returncode == 0
    path.write_text(out.stdout.replace("r: 16", "r: -3"))
    bad = run_cli("config", "--check", path)
    assert bad.returncode == 1 and "lora.r" in bad.stderr
    assert run_cli("config", "--preset", "nope").returncode == 1
