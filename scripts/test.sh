#!/usr/bin/env bash
# Set everything up, then run the whole test suite (unit, real kernel, real browser).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
# the sweep tests start Ray: keep it on loopback and without usage statistics (TESTING.md)
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
