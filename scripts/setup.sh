#!/usr/bin/env bash
# Install nb_trainer with everything its tests and demos need, into the current Python.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# A bare `torch` requirement with no torch installed pulls a multi-GB CUDA build;
# pin the CPU build first when no torch is present.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test,browser,tensorboard]"

# Debian's Chromium for the browser tests (never `playwright install`: it downloads a browser).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
