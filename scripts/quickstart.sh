#!/usr/bin/env bash
# Set everything up, then open the quickstart notebook in JupyterLab.
#
# Works as root (containers, CI and cloud notebooks run as root) and on a headless machine
# (no browser is opened where there is no display). Prints the direct link to the notebook.
#   PORT=8899 bash scripts/quickstart.sh        # another port (default 8888, or the next free one)
#   bash scripts/quickstart.sh --ServerApp.ip=0.0.0.0   # extra JupyterLab options pass through
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${NBT_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh    # NBT_SKIP_SETUP=1: already set up
PY=${PYTHON:-python3}

NOTEBOOK=demo_notebooks/01_quickstart.ipynb
PORT=${PORT:-$("$PY" - <<'PY'
import socket
for port in range(8888, 8988):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
PY
)}
TOKEN=${JUPYTER_TOKEN:-$("$PY" -c "import secrets; print(secrets.token_hex(24))")}

ARGS=(--ServerApp.port="$PORT" --ServerApp.port_retries=0 --IdentityProvider.token="$TOKEN")
[ "$(id -u)" -eq 0 ] && ARGS+=(--allow-root)
# a browser only where one can open: a desktop session, or macOS
if [ -z "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && [ "$(uname -s)" != "Darwin" ]; then
    ARGS+=(--no-browser)
fi

cat <<MSG

  Open the quickstart notebook:

      http://localhost:${PORT}/lab/tree/${NOTEBOOK}?token=${TOKEN}

  (on another machine, forward the port first: ssh -L ${PORT}:localhost:${PORT} this-host)
  Stop JupyterLab with Control-C.

MSG
exec "$PY" -m jupyterlab "${ARGS[@]}" "$@"
