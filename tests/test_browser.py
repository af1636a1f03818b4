"""The quickstart in a real JupyterLab, driven by headless Chromium (Debian's) through Playwright.

Open a copy of 01_quickstart.ipynb, run all its cells, press ArrowRight on the
learning-rate slider, and check that a new run appears in the runs table and
the plot's <img> changes. A screenshot of the panel is kept in
test-artifacts/panel.png (set NBT_UPDATE_SCREENSHOT=1 to also copy it to
docs/panel.png, the README's picture).

The server, its kernel, the kernel's renderer process and the browser are
all ended in teardown, whatever happens.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions"]

pytestmark = [pytest.mark.browser, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # CI installs it (scripts/setup.sh); a bare machine skips with the reason
    sync_playwright = None


def _missing() -> str:
    if sync_playwright is None:
        return "playwright is not installed (pip install playwright; never `playwright install`)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return ""


# -- processes -------------------------------------------------------------------------------
def _children() -> dict[int, list[int]]:
    """{parent pid: [child pids]} of every process, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on a free port, every Jupyter/IPython folder in a temp dir."""

    def __init__(self, base: Path):
        self.base = base
        self.root = base / "notebooks"
        self.root.mkdir()
        self.token = secrets.token_hex(16)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        dirs = {name: base / name for name in ("config", "data", "runtime", "settings", "workspaces", "ipython")}
        for d in dirs.values():
            d.mkdir()
        # no "fetch news?" toast over the notebook
        notes = dirs["settings"] / "@jupyterlab" / "apputils-extension"
        notes.mkdir(parents=True)
        (notes / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False}))
        # start the notebook's own kernel without a "Select Kernel" dialog (which otherwise opens
        # now and then on a loaded machine, even though the notebook names its kernelspec)
        tracker = dirs["settings"] / "@jupyterlab" / "notebook-extension"
        tracker.mkdir(parents=True)
        (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True}))
        self.env = {**os.environ,
                    "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
                    "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]), "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
                    "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]), "IPYTHONDIR": str(dirs["ipython"])}
        self.log = open(base / "jupyterlab.log", "w")
        self.proc = None

    def start(self, timeout: float = 60) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             f"--IdentityProvider.token={self.token}", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={self.root}"],
            env=self.env, cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited ({self.proc.returncode}): {self.log_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"JupyterLab did not answer in {timeout} s: {self.log_text()[-2000:]}")

    def log_text(self) -> str:
        self.log.flush()
        return (self.base / "jupyterlab.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the server (it shuts its kernels down), then SIGKILL whatever of its tree is left."""
        if self.proc is None:
            return
        tree = _descendants(self.proc.pid)   # kernel, renderer process: by pid, before they reparent
        if self.proc.poll() is None:
            self.proc.terminate()     # jupyter_server stops its loop and shuts its kernels down
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in tree:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()
        self.left = [p for p in tree if _alive(p)]


@pytest.fixture
def lab(tmp_path):
    missing = _missing()
    if missing:
        pytest.skip(missing)
    server = Lab(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


# -- the test ------------------------------------------------------------------------------------
def _accept_kernel_dialog(page, notes: list) -> bool:
    """Accept a "Select Kernel" dialog (its default is the notebook's python3); fail on any other dialog.

    It should not open (the notebook names its kernelspec, and autoStartDefaultKernel is on),
    but if it does, it blocks every click, so every wait here looks for it.
    """
    dialog = page.locator(".jp-Dialog")
    if not dialog.count():
        return False
    text = dialog.first.inner_text()
    if "Select Kernel" not in text:
        raise AssertionError(f"an unexpected dialog opened: {text!r}")
    dialog.first.locator(".jp-mod-accept").click()
    notes.append("accepted a 'Select Kernel' dialog")
    return True


def _open_notebook(page, url: str, notes: list, timeout: float = 90) -> None:
    """Open the notebook; wait until its kernel is idle and no dialog has opened for a second."""
    page.goto(url, timeout=60_000)
    deadline = time.monotonic() + timeout
    idle_since = None
    while time.monotonic() < deadline:
        if _accept_kernel_dialog(page, notes):
            idle_since = None
        elif page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count():
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= 1.0:
                return
        else:
            idle_since = None
        time.sleep(0.1)
    raise AssertionError(f"the kernel was not idle after {timeout} s")


def _prompts(page) -> list[str]:
    return [t.strip() for t in page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]


def _run_all(page, n_code: int, timeout: float, notes: list) -> None:
    """Run every cell from the Run menu; retry once if the first request is dropped."""
    for attempt in range(3):
        _accept_kernel_dialog(page, notes)
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator(".lm-MenuBar-item", has_text="Run").first.click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        started = False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not started:
            started = any("*" in p or any(ch.isdigit() for ch in p) for p in _prompts(page))
            if not started and _accept_kernel_dialog(page, notes):
                break      # the request went nowhere: ask again
            time.sleep(0.2)
        if started:
            break
        notes.append("Run All was dropped; asked again")
    else:
        raise AssertionError(f"Run All did not start the cells; prompts: {_prompts(page)}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _accept_kernel_dialog(page, notes):
            return _run_all(page, n_code, deadline - time.monotonic(), notes)
        prompts = _prompts(page)
        done = len(prompts) == n_code and all(any(ch.isdigit() for ch in p) for p in prompts)
        if done and page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count():
            return
        time.sleep(0.25)
    raise AssertionError(f"the notebook did not finish in {timeout} s; prompts: {_prompts(page)}")


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_quickstart_in_jupyterlab_slider_retrains_and_redraws(lab):
    import nbformat
    nb = nbformat.read(str(ROOT / "demo_notebooks" / "01_quickstart.ipynb"), as_version=4)
    assert nb.metadata.kernelspec.name == "python3"     # else a "Select Kernel" dialog opens
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    shutil.copy(ROOT / "demo_notebooks" / "01_quickstart.ipynb", lab.root / "quickstart.ipynb")
    ARTIFACTS.mkdir(exist_ok=True)
    t0 = time.monotonic()
    timings, notes = {}, []

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = None
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            _open_notebook(page, f"{lab.url}/lab/tree/quickstart.ipynb?token={lab.token}&reset", notes)
            timings["lab open, kernel idle"] = time.monotonic() - t0

            _run_all(page, n_code, timeout=150, notes=notes)
            timings["notebook ran"] = time.monotonic() - t0
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']",
                                has_text="Traceback").count() == 0
            assert page.locator(".jp-OutputArea-output", has_text="Error").count() == 0, \
                page.locator(".jp-OutputArea-output", has_text="Error").first.inner_text()

            panel = page.locator(".nbt-panel")
            panel.wait_for(state="visible", timeout=30_000)
            assert panel.count() == 1
            rows = panel.locator(".nbt-run-row")
            _wait_for(lambda: rows.count() == 2, 20, "two runs in the runs table")
            plot = panel.locator("img.nbt-plot")     # the Image widget is the <img> itself
            _wait_for(lambda: (plot.get_attribute("src") or "").startswith("blob:"), 20, "a plot frame")
            # the panel is idle (both runs ended): the picture stays as it is
            _wait_for(lambda: "finished" in rows.first.inner_text(), 30, "the second run to finish")
            time.sleep(1.0)
            src_before = plot.get_attribute("src")
            time.sleep(2.5)
            assert plot.get_attribute("src") == src_before, "the plot changed while nothing trained"
            readout = panel.locator(".nbt-lr .widget-readout")
            lr_before = float(readout.inner_text())

            handle = panel.locator(".nbt-lr .noUi-handle")
            handle.focus()
            pressed = time.monotonic()
            page.keyboard.press("ArrowRight")

            _wait_for(lambda: rows.count() == 3, 30, "a third run in the runs table")
            timings["ArrowRight to new row"] = time.monotonic() - pressed
            _wait_for(lambda: plot.get_attribute("src") != src_before, 15, "the plot to change")
            timings["ArrowRight to new frame"] = time.monotonic() - pressed
            lr_after = float(readout.inner_text())
            assert lr_after > lr_before, (lr_before, lr_after)
            newest = rows.first.inner_text()
            assert newest.startswith("#3") and "lr=" in newest, newest

            # let the new run finish and its last frame land, then keep a picture of the panel
            _wait_for(lambda: "finished" in rows.first.inner_text(), 60, "the third run to finish")
            time.sleep(1.5)
            shot = ARTIFACTS / "panel.png"
            panel.screenshot(path=str(shot))
            if os.environ.get("NBT_UPDATE_SCREENSHOT") == "1":
                shutil.copy(shot, ROOT / "docs" / "panel.png")
            assert not errors, errors
        except BaseException:
            if page is not None:
                page.screenshot(path=str(ARTIFACTS / "browser-failure.png"), full_page=True)
            (ARTIFACTS / "jupyterlab.log").write_text(lab.log_text())
            raise
        finally:
            browser.close()
    timings["total"] = time.monotonic() - t0
    print("\nbrowser timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + "; " + "; ".join(notes))
