#!/usr/bin/env bash
# Install nb_trainer with everything its tests and demos need, into the current Python.
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# On Linux, PyPI's torch wheel is the CUDA build: with no torch installed, a bare `torch`
# requirement (ours included) pulls it and several GB of nvidia-* wheels. PyTorch publishes the
# CPU build on its own index: try that first; where it cannot be reached, fall back to PyPI.
# Set TORCH_INDEX_URL to choose another index (a CUDA one, a local mirror).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    INDEX=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
    if ! "$PY" -m pip install -q --retries 1 --timeout 15 torch --index-url "$INDEX"; then
        # where a local CPU wheel of 2.13.0 is on hand (these machines), this pin takes it
        echo "setup.sh: could not install torch from $INDEX; installing torch==2.13.0 from the configured index" >&2
        "$PY" -m pip install -q "torch==2.13.0"
    fi
fi
"$PY" -m pip install -q -e ".[test,browser,tensorboard,ray]"

# Debian's Chromium for the browser tests (never `playwright install`: it downloads a browser).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
