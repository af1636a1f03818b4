#!/usr/bin/env bash
# Set everything up, then open the quickstart notebook in JupyterLab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
exec "$PY" -m jupyterlab demo_notebooks/01_quickstart.ipynb "$@"
