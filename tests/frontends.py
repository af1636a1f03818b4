"""JupyterLab 4 and Notebook 7 servers, and Chromium pages on them, for the browser tests.

Facts this leans on (see TESTING.md): Debian's Chromium through Playwright (never
`playwright install`), every Jupyter/IPython folder in a temp dir, the server ready when
/api/status answers, a notebook's kernel idle per the server before the first key press, and
SIGTERM to the server then SIGKILL to whatever of its process tree is left.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions"]

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # CI installs it (scripts/setup.sh); a bare machine skips with the reason
    sync_playwright = None


def missing() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
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


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A JupyterLab (``app="lab"``) or Notebook 7 (``app="notebook"``) server on a free port."""

    def __init__(self, base: Path, app: str = "lab"):
        if app not in ("lab", "notebook"):
            raise ValueError(f"app: got {app!r}; accepted: 'lab', 'notebook'")
        self.app = app
        self.base = base
        self.root = base / "notebooks"
        self.root.mkdir(parents=True)
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
        # start the notebook's own kernel without a "Select Kernel" dialog
        tracker = dirs["settings"] / "@jupyterlab" / "notebook-extension"
        tracker.mkdir(parents=True)
        (tracker / "tracker.jupyterlab-settings").write_text(json.dumps({"autoStartDefaultKernel": True}))
        self.env = {**os.environ,
                    "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
                    "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]), "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
                    "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]), "IPYTHONDIR": str(dirs["ipython"])}
        self.log = open(base / f"{app}.log", "w")
        self.proc = None
        self.left: list[int] = []

    def start(self, timeout: float = 60) -> "Server":
        module = "jupyterlab" if self.app == "lab" else "notebook"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--no-browser", "--allow-root",
             f"--IdentityProvider.token={self.token}", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={self.root}"],
            env=self.env, cwd=self.root, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.app} exited ({self.proc.returncode}): {self.log_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.app} did not answer in {timeout} s: {self.log_text()[-2000:]}")

    def notebook_url(self, name: str) -> str:
        if self.app == "lab":
            return f"{self.url}/lab/tree/{name}?token={self.token}&reset"
        return f"{self.url}/notebooks/{name}?token={self.token}"

    def api(self, path: str, method: str = "GET", body=None):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"},
                                     data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=10) as r:
            text = r.read().decode()
            return json.loads(text) if text else None

    def kernels(self) -> list[dict]:
        return self.api("/api/kernels")

    def interrupt(self, kernel_id: str) -> None:
        """What the toolbar's ■ does."""
        self.api(f"/api/kernels/{kernel_id}/interrupt", method="POST")

    def log_text(self) -> str:
        self.log.flush()
        return (self.base / f"{self.app}.log").read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM the server (it shuts its kernels down), then SIGKILL whatever of its tree is left."""
        if self.proc is None:
            return
        tree = descendants(self.proc.pid)   # kernels, renderer processes: by pid, before they reparent
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        deadline = time.monotonic() + 5
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in tree:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.log.close()
        self.left = [p for p in tree if alive(p)]


# -- driving a notebook in the page ------------------------------------------------------------
def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Notebook:
    """One open notebook in a page: run cells, read prompts, save, restart, interrupt."""

    def __init__(self, server: Server, page, name: str):
        self.server, self.page, self.name = server, page, name
        self.notes: list[str] = []

    def _accept_kernel_dialog(self) -> bool:
        dialog = self.page.locator(".jp-Dialog")
        if not dialog.count():
            return False
        text = dialog.first.inner_text()
        if "Select Kernel" not in text:
            raise AssertionError(f"an unexpected dialog opened: {text!r}")
        dialog.first.locator(".jp-mod-accept").click()
        self.notes.append("accepted a 'Select Kernel' dialog")
        return True

    def kernel_id(self) -> str:
        sessions = self.server.api("/api/sessions")
        ids = [s["kernel"]["id"] for s in sessions if s["path"].endswith(self.name)]
        assert ids, sessions
        return ids[0]

    def open(self, timeout: float = 90) -> "Notebook":
        """Open it; wait until its kernel is idle, per the page and per the server, with no dialog."""
        self.page.goto(self.server.notebook_url(self.name), timeout=60_000)
        deadline = time.monotonic() + timeout
        idle_since = None
        while time.monotonic() < deadline:
            if self._accept_kernel_dialog():
                idle_since = None
            elif (self.page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").count()
                  or self.page.locator(".jp-Notebook-ExecutionIndicator").count() == 0) and self._server_idle():
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= 1.0:
                    return self
            else:
                idle_since = None
            time.sleep(0.1)
        raise AssertionError(f"the kernel was not idle after {timeout} s")

    def _server_idle(self) -> bool:
        try:
            sessions = self.server.api("/api/sessions")
        except OSError:
            return False
        return any(s["path"].endswith(self.name) and s["kernel"]["execution_state"] == "idle" for s in sessions)

    def cells(self):
        return self.page.locator(".jp-Notebook .jp-Cell")

    def prompts(self) -> list[str]:
        return [t.strip() for t in self.page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()]

    def run_cell(self, index: int, timeout: float = 120, wait: bool = True) -> None:
        """Run cell ``index`` (Control+Enter in its editor); wait for its prompt to show a number."""
        cell = self.cells().nth(index)
        for attempt in range(3):
            self._accept_kernel_dialog()
            before = self._prompt(cell)
            cell.locator(".jp-InputArea-editor").click()
            self.page.keyboard.press("Control+Enter")
            started = False
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not started:
                p = self._prompt(cell)
                started = "*" in p or (p != before and any(ch.isdigit() for ch in p))
                time.sleep(0.1)
            if started:
                break
            self.notes.append(f"cell {index}: the run request was dropped; asked again")
        else:
            raise AssertionError(f"cell {index} did not start; prompts: {self.prompts()}")
        if wait:
            self.wait_cell(index, timeout)

    def _prompt(self, cell) -> str:
        loc = cell.locator(".jp-InputPrompt")
        return loc.inner_text().strip() if loc.count() else ""

    def wait_cell(self, index: int, timeout: float = 120) -> None:
        cell = self.cells().nth(index)
        wait_for(lambda: "*" not in self._prompt(cell) and any(ch.isdigit() for ch in self._prompt(cell)),
                 timeout, f"cell {index} to finish")

    def run_all(self, timeout: float = 180) -> None:
        for i in range(self.cells().count()):
            if "jp-CodeCell" in (self.cells().nth(i).get_attribute("class") or ""):
                self.run_cell(i, timeout)

    def output_text(self, index: int) -> str:
        return self.cells().nth(index).locator(".jp-OutputArea").inner_text()

    def save(self) -> None:
        """Save from the browser (Control+S with the notebook focused), wait for the server's copy to change."""
        path = self.server.root / self.name
        before = path.stat().st_mtime_ns
        self.page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("Control+s")
        wait_for(lambda: path.stat().st_mtime_ns != before, 20, "the notebook to be saved")
        time.sleep(0.5)

    def restart_kernel(self) -> None:
        """Restart from the Kernel menu and accept the dialog (the REST restart can leave the page stuck)."""
        old = self.kernel_id()
        self.page.locator(".lm-MenuBar-item", has_text="Kernel").first.click()
        self.page.get_by_role("menuitem", name="Restart Kernel…").first.click()
        dialog = self.page.locator(".jp-Dialog")
        dialog.wait_for(state="visible", timeout=10_000)
        dialog.locator(".jp-mod-accept").click()
        wait_for(lambda: self._server_idle(), 60, "the restarted kernel to be idle")
        time.sleep(1.0)
        assert self.kernel_id() == old      # a restart keeps the kernel id, with a new process


def launch(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
