"""RunConfig: the single description of a fine-tuning run.

Nested dataclasses whose fields carry plain-language help. The same object builds the UI form,
the CLI flags, the run folder's config.yaml and the training subprocess's arguments.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import yaml

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
MISTRAL_7B = "mistralai/Mistral-7B-Instruct-v0.2"
BASE_SIDE = "base"  # the side id of the base model (adapter off) in chat and reviews; any other side id is a run id


def _f(default, help: str, choices: tuple | None = None, **kw):
    """A dataclass field with help text (and optional allowed choices) in its metadata."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class ModelConfig:
    name_or_path: str = _f(
        EMBEDDED_MODEL,
        "Which base model to fine-tune. 'embedded:SmolLM2-135M-Instruct' is a tiny model shipped "
        "with the workbench that runs offline on a CPU; 'mistralai/Mistral-7B-Instruct-v0.2' is the "
        "classic 7-billion-parameter choice and needs a GPU; any Hugging Face model id or a local "
        "model folder also works.")
    load_in_4bit: bool = _f(
        True,
        "Store the frozen base model in 4 bits (QLoRA). Cuts memory about 4x versus 16-bit, so a "
        "7B model fits a 16 GB GPU; quality loss is small because only the small LoRA adapter is trained.")
    quant_type: str = _f("nf4", "4-bit number format. 'nf4' (NormalFloat) suits neural network weights best.",
                         choices=("nf4", "fp4"))
    double_quant: bool = _f(True, "Also compress the quantization constants themselves; saves ~0.4 bits per weight.")
    compute_dtype: str = _f(
        "bfloat16",
        "Precision of the arithmetic. 'bfloat16' is fast and stable on modern GPUs and CPUs; "
        "'float16' for older GPUs (T4, V100) that lack bfloat16; 'float32' is slowest but safest.",
        choices=("bfloat16", "float16", "float32"))
    max_seq_length: int = _f(
        512,
        "Longest example, in tokens, the model sees; longer ones are cut. Longer means more memory "
        "and time per step. Check the Data tab's token-length chart to pick a value that covers most answers.")


@dataclass
class DataConfig:
    source: str = _f(
        "sample",
        "Where the questions and answers come from: 'sample' (the small set shipped with the "
        "workbench), 'dbdemos' (the Databricks documentation Q&A set from a local folder), or a "
        "path to a CSV, Parquet, JSON/JSONL file or a saved Hugging Face dataset folder.")
    dbdemos_dir: str = _f("", "Folder holding the dbdemos parquet files (used when source is 'dbdemos').")
    columns: dict = _f({}, "How file columns map onto the record: e.g. {instruction: question, output: answer}. "
                           "Empty means guess from common names.")
    cleaning: list = _f(
        ["strip_numbering", "strip_quotes", "drop_generator_chatter", "drop_short_answers",
         "drop_duplicate_pairs"],
        "Cleaning steps applied before training, in order (see the Data tab for what each one changes).")
    eval_fraction: float = _f(
        0.1, "Share of questions held out for evaluation and never trained on (0.1 = 10%).")
    split_seed: int = _f(42, "Seed of the train/eval split; the same seed and data always give the same split.")
    max_train_examples: int = _f(0, "Use at most this many training examples (0 = all). Handy for a quick try.")
    max_eval_examples: int = _f(0, "Use at most this many evaluation examples (0 = all).")
    template: str = _f(
        "chat",
        "How a question/answer pair is turned into text. 'chat' uses the model's own chat template "
        "(best for instruct models); 'instruction' uses the plain '### Instruction / ### Response' layout.",
        choices=("chat", "instruction"))
    system_prompt: str = _f("", "Optional system message put before every question (chat template only).")


@dataclass
class LoraSettings:
    r: int = _f(
        16,
        "LoRA rank: how big the small trainable 'adapter' matrices are. Higher (32, 64) can learn more "
        "but uses more memory and can overfit small data; 8-16 is typical.")
    alpha: int = _f(
        32,
        "LoRA alpha: how strongly the adapter's change is applied (scale = alpha / r). "
        "A common rule is alpha = 2 x r.")
    dropout: float = _f(
        0.05, "Randomly ignores this share of the adapter's inputs while training, to reduce overfitting.")
    target_modules: list = _f(
        ["q_proj", "k_proj", "v_proj", "o_proj"],
        "Which layers get an adapter. The attention projections q/k/v/o are the classic choice; adding "
        "gate_proj/up_proj/down_proj (the MLP) trains more weights for a bit more memory.")
    bias: str = _f("none", "Whether bias terms are trained too; 'none' is standard for LoRA.",
                   choices=("none", "all", "lora_only"))


@dataclass
class TrainingConfig:
    epochs: float = _f(3.0, "Passes over the training data. 3 is the classic recipe; more risks memorising.")
    max_steps: int = _f(0, "Stop after this many optimizer steps (0 = run all epochs). Overrides epochs.")
    batch_size: int = _f(4, "Examples processed together per step on the device. Lower it if you run out of memory.")
    grad_accum: int = _f(
        4,
        "Gradient accumulation: add up this many small batches before each update. "
        "Effective batch = batch size x accumulation (4 x 4 = 16) without the memory of a big batch.")
    learning_rate: float = _f(
        2e-4, "How big each update step is. 2e-4 is the usual QLoRA value; too high makes the loss jump or go NaN.")
    lr_scheduler: str = _f("cosine", "How the learning rate changes over the run.",
                           choices=("cosine", "linear", "constant", "constant_with_warmup"))
    warmup_ratio: float = _f(0.03, "Share of the run spent slowly ramping the learning rate up from zero.")
    weight_decay: float = _f(0.0, "Pulls weights gently towards zero to reduce overfitting; 0 is common for LoRA.")
    max_grad_norm: float = _f(1.0, "Clips very large updates, protecting against loss spikes.")
    gradient_checkpointing: bool = _f(
        True, "Recompute activations instead of storing them: ~30% slower, much less memory. Keep on for 7B models.")
    packing: str = _f(
        "auto",
        "Padding-free packing: each step's examples laid end to end in one row, each attending only to itself, "
        "no padding tokens computed; same examples, order and loss as padded batches, several times faster on a "
        "GPU. 'auto' packs on CUDA and keeps padded batches on a CPU; 'on' packs anywhere; 'off' never.",
        choices=("auto", "on", "off"))
    compile: str = _f(
        "auto",
        "Compile each transformer layer with torch.compile (fused kernels, fewer launches): faster steps after a "
        "one-time compile of about a minute. 'auto' compiles on CUDA with packing when the liger-kernel package "
        "(which fuses the same work) is not installed; 'on' compiles wherever packing is used; 'off' never.",
        choices=("auto", "on", "off"))
    optimizer: str = _f("adamw_torch", "Optimizer. 'paged_adamw_8bit' saves GPU memory (needs CUDA).",
                        choices=("adamw_torch", "paged_adamw_8bit", "adamw_8bit", "sgd"))
    logging_steps: int = _f(10, "Record loss, learning rate and speed every this many steps.")
    eval_steps: int = _f(0, "Score the evaluation split every this many steps (0 = once per epoch).")
    save_strategy: str = _f("epoch", "When to save a checkpoint you can resume from.", choices=("epoch", "steps"))
    save_steps: int = _f(0, "With save strategy 'steps': save every this many steps.")
    save_every_minutes: float = _f(30.0, "Also save a checkpoint at least this often, so a crash loses little (0 = off).")
    seed: int = _f(42, "Random seed for the adapter's starting weights and data order.")
    device: str = _f("auto", "Where to train: 'auto' picks the GPU when there is one.", choices=("auto", "cuda", "cpu"))
    num_processes: int = _f(
        1, "Training processes, one per GPU: 1 = a single process; 0 = one per visible GPU; 2 or more = that many "
        "(through accelerate, gradients averaged across them; batch size is per process). On a CPU, several "
        "processes only test the multi-process path: they share the same cores.")


@dataclass
class EvalSettings:
    run_after_training: bool = _f(True, "Score base vs fine-tuned on the held-out split when training ends.")
    max_new_tokens: int = _f(128, "Longest generated answer when scoring ROUGE/BLEU.")
    max_examples: int = _f(50, "Score at most this many held-out questions (0 = all). Generation is the slow part.")
    batch_size: int = _f(8, "Questions generated together while scoring.")
    no_repeat_ngram_size: int = _f(0, "When above 0, greedy scoring never repeats a phrase of this many tokens "
                                      "(the same rule for base and fine-tuned; 0 = plain greedy). Small models "
                                      "otherwise loop ('table_name.table_name…') and the scores measure the loop.")


@dataclass
class PreferenceSettings:
    parent_run: str = _f(
        "", "Preference runs only: the finished run whose LoRA adapter training starts from. The same adapter, "
            "frozen, is the reference the preference run is measured against (not the bare base model).")
    pairs: str = _f(
        "votes",
        "Preference runs only: where the (prompt, chosen answer, rejected answer) pairs come from. 'votes' = every "
        "blind review vote on the parent run that prefers one side (ties, 'both bad' and contradictory votes are "
        "left out); or a JSONL/CSV/JSON/Parquet file with prompt, chosen and rejected columns.")
    beta: float = _f(
        0.1, "DPO beta: how far the run may move from the parent. Higher keeps it closer to the parent; 0.1 is the "
             "usual value.")
    eval_fraction: float = _f(
        0.25, "Share of the pairs held out to measure preference accuracy (how often the run prefers the chosen "
              "answer), never trained on.")


@dataclass
class RunConfig:
    name: str = _f("", "A short name for the run, shown in the run list (optional).")
    preset: str = _f("", "The preset this configuration started from.")
    kind: str = _f(
        "sft",
        "What the run learns from. 'sft': question/answer pairs (supervised fine-tuning). 'preference': reviewers' "
        "preferences between two answers (DPO), starting from a finished run's adapter (preference.parent_run).",
        choices=("sft", "preference"))
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "The base model and how it is loaded."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Training data and its formatting."})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "The LoRA adapter."})
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata={"help": "The optimisation schedule."})
    eval: EvalSettings = field(default_factory=EvalSettings, metadata={"help": "Evaluation after training."})
    preference: PreferenceSettings = field(default_factory=PreferenceSettings,
                                           metadata={"help": "Preference tuning (DPO) from a parent run."})

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        return _build(cls, data or {}, "")

    @classmethod
    def from_yaml(cls, text: str) -> "RunConfig":
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError([f"The file is not valid YAML: {e}"]) from None
        if data is not None and not isinstance(data, dict):
            raise ConfigError(["The YAML must be a mapping of sections (model:, data:, lora:, training:, eval:)."])
        return cls.from_dict(data or {})

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        p = Path(path)
        if not p.is_file():
            raise ConfigError([f"Config file {p} does not exist; write one with `python -m workbench config "
                               f"--preset quick-demo-cpu > {p.name}`."])
        return cls.from_yaml(p.read_text(encoding="utf-8"))

    # -- flat view used by the CLI and the UI form ----------------------------------------------
    def get(self, dotted: str) -> Any:
        obj = self
        for part in dotted.split("."):
            obj = getattr(obj, part)
        return obj

    def set(self, dotted: str, value: Any) -> None:
        *parents, last = dotted.split(".")
        obj = self
        for part in parents:
            obj = getattr(obj, part)
        if last not in {f.name for f in fields(obj)}:
            raise ConfigError([f"Unknown setting '{dotted}'."])
        setattr(obj, last, value)

    def validate(self) -> list[str]:
        """Return messages that say what is wrong and how to fix it (empty list = valid)."""
        from workbench.config_checks import validate

        return validate(self)


class ConfigError(ValueError):
    def __init__(self, messages: list[str]):
        self.messages = messages
        super().__init__("; ".join(messages))


def _build(cls, data: dict, prefix: str):
    known = {f.name: f for f in fields(cls)}
    unknown = [k for k in data if k not in known]
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise ConfigError([f"Unknown setting(s) {names}; valid ones in this section: {', '.join(known)}."])
    kwargs = {}
    for name, value in data.items():
        if cls is RunConfig and name in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError([f"'{prefix}{name}' must be a section (a mapping), not {type(value).__name__}."])
            kwargs[name] = _build(_SECTIONS[name], value, f"{prefix}{name}.")
        else:
            kwargs[name] = value
    return cls(**kwargs)


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "lora": LoraSettings, "training": TrainingConfig,
             "eval": EvalSettings, "preference": PreferenceSettings}


def iter_fields(cfg: RunConfig | None = None):
    """Yield (dotted_name, dataclass_field, current_value) for every leaf setting."""
    cfg = cfg or RunConfig()
    for section in fields(RunConfig):
        value = getattr(cfg, section.name)
        if section.name in _SECTIONS:
            for f in fields(value):
                yield f"{section.name}.{f.name}", f, getattr(value, f.name)
        else:
            yield section.name, section, value


# -- presets -----------------------------------------------------------------------------------
# Shipped YAML files in workbench/presets/: each is a RunConfig file (`train --config` reads it as it stands) naming
# only what differs from the defaults. Its first comment paragraph is the description shown in lists.

PRESET_DIR = Path(__file__).resolve().parent / "presets"


class Preset(NamedTuple):
    path: Path
    description: str


def _description(path: Path) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if not text.startswith("#") or text == "#":
            break
        lines.append(text.lstrip("#").strip())
    return " ".join(lines)


PRESETS = {p.stem: Preset(p, _description(p)) for p in sorted(PRESET_DIR.glob("*.yaml"))}


def preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError([f"Unknown preset '{name}'; choose one of: {', '.join(PRESETS)}."])
    return RunConfig.load(PRESETS[name].path)
