"""scripts/quickstart.sh as a newcomer meets it: as root, on a headless machine, a link that opens the notebook."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_starts_jupyterlab_and_prints_a_link_that_opens_the_notebook(tmp_path):
    env = {**os.environ, "NBT_SKIP_SETUP": "1", "DISPLAY": "", "WAYLAND_DISPLAY": "",
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_DATA_DIR": str(tmp_path / "data"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "IPYTHONDIR": str(tmp_path / "ipython")}
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "quickstart.sh"), "--ServerApp.ip=127.0.0.1"], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines: list[str] = []
    try:
        link = None
        deadline = time.monotonic() + 60
        while link is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"(http://localhost:\d+/lab/tree/demo_notebooks/01_quickstart\.ipynb\?token=\w+)", line)
            link = m.group(1) if m else None
        assert link, "".join(lines)
        # the link is the notebook's (not the Launcher's): the server has that notebook under that path
        api = link.replace("/lab/tree/", "/api/contents/").replace("localhost", "127.0.0.1")
        for _ in range(240):
            try:
                with urllib.request.urlopen(api, timeout=2) as r:
                    assert r.status == 200 and b'"01_quickstart.ipynb"' in r.read()
                    break
            except OSError:
                time.sleep(0.25)
        else:
            raise AssertionError("the printed link did not answer: " + "".join(lines))
        with urllib.request.urlopen(link.replace("localhost", "127.0.0.1"), timeout=5) as r:
            assert r.status == 200
        assert proc.poll() is None, "JupyterLab exited: " + "".join(lines)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    text = "".join(lines) + (proc.stdout.read() or "")
    assert "Running as root is not recommended" not in text, text[-2000:]
    assert "No web browser found" not in text and "could not locate runnable browser" not in text
