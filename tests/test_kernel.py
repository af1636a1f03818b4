"""Notebooks executed in a real Jupyter kernel (nbclient), widget state read back as a frontend sees it.

nbclient keeps only messages whose parent is the cell it is running, so every
notebook here ends its steps with a cell that waits for the run and for the
panel's last frame. Widget state is read from what nbclient stores
(``nb.metadata.widgets``); models are found by their ``nbt-…`` DOM classes and
an ``Image``'s bytes are in the model's ``buffers`` list, not in its state.
"""
from __future__ import annotations

import base64
import copy
import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
DEMOS = ROOT / "demo_notebooks"
NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
WIDGET_MIME = "application/vnd.jupyter.widget-state+json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = [pytest.mark.kernel, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


# -- running a notebook -------------------------------------------------------------
@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """Keep the kernel away from the user's IPython profile and Jupyter runtime folder."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("MPLBACKEND", raising=False)   # the kernel's own default (inline), as users have it
    return tmp_path


class Executed:
    """A notebook after execution: the notebook, widget-state snapshots after chosen cells, cell timings."""

    def __init__(self, nb, snapshots, seconds):
        self.nb = nb
        self.snapshots = snapshots          # {cell index: nb.metadata.widgets as stored after that cell}
        self.seconds = seconds              # {cell index: wall seconds seen by the client, send to reply}

    def text(self, index: int) -> str:
        """Everything cell ``index`` showed, as text (stream text, text/plain and text/html)."""
        parts = []
        for out in self.nb.cells[index].outputs:
            if out.output_type == "stream":
                parts.append(out.text)
            elif "data" in out:
                parts.extend(str(out.data.get(k, "")) for k in ("text/plain", "text/html"))
        return "\n".join(parts)

    def json_line(self, index: int) -> dict:
        """The JSON object the cell printed (its last line of stdout)."""
        lines = [ln for ln in self.text(index).splitlines() if ln.startswith("{")]
        assert lines, f"cell {index} printed no JSON: {self.text(index)!r}"
        return json.loads(lines[-1])


def execute(path: Path, workdir: Path, snapshot_after=(), timeout: int = 300) -> Executed:
    """Execute ``path`` in a fresh python3 kernel whose cwd is ``workdir``."""
    nb = nbformat.read(str(path), as_version=4)
    snapshots, started, seconds = {}, {}, {}
    client = NotebookClient(nb, kernel_name="python3", store_widget_state=True, timeout=timeout,
                            resources={"metadata": {"path": str(workdir)}})

    def before(cell, cell_index):
        started[cell_index] = time.perf_counter()

    def after(cell, cell_index, execute_reply):
        seconds[cell_index] = time.perf_counter() - started[cell_index]
        if cell_index in snapshot_after:
            client.set_widgets_metadata()   # what execute() stores at the end, as of now
            snapshots[cell_index] = copy.deepcopy(nb.metadata.get("widgets"))

    client.on_cell_execute = before
    client.on_cell_executed = after
    client.execute()
    return Executed(nb, snapshots, seconds)


# -- reading widget state ---------------------------------------------------------------
def models(widgets) -> dict:
    """``{model id: {"state": ..., "buffers": [...]}}`` from a notebook's (or snapshot's) widgets metadata."""
    if "widgets" in widgets:  # a notebook's metadata
        widgets = widgets["widgets"]
    return widgets[WIDGET_MIME]["state"]


def by_class(state: dict, dom_class: str) -> list[dict]:
    return [m for m in state.values() if dom_class in m["state"].get("_dom_classes", [])]


def one(state: dict, dom_class: str) -> dict:
    found = by_class(state, dom_class)
    assert len(found) == 1, f"{len(found)} widgets with class {dom_class!r}"
    return found[0]


def image_bytes(model: dict) -> bytes:
    """The ``value`` of an Image model: its bytes travel in the sibling ``buffers`` list."""
    for buf in model.get("buffers", []):
        if buf["path"] == ["value"]:
            assert buf["encoding"] == "base64"
            return base64.b64decode(buf["data"])
    return b""


def run_rows(state: dict) -> list[str]:
    """The runs table's rows (newest first), each as its cells' text."""
    html = one(state, "nbt-runs-table")["state"]["value"]
    rows = re.findall(r"<tr class='nbt-run-row'>(.*?)</tr>", html)
    return [" | ".join(re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row))
            for row in rows]


def dropdown_value(model: dict) -> str:
    s = model["state"]
    return s["_options_labels"][s["index"]]


# -- the demo notebooks --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_regression.ipynb", "04_your_model.ipynb"])
def test_demo_notebooks_are_stored_without_outputs(name):
    nb = nbformat.read(str(DEMOS / name), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]
    assert "widgets" not in nb.metadata


# Appended to the executed copy of a demo: the demo's last cells return as soon as the run ends,
# and the panel's last frame, drawn a moment later, would reach the kernel's iopub between cells,
# where nbclient drops it. Wait for the panel to settle, then send the shown widgets' state again
# while this cell runs (what a frontend asking for the state would get).
SETTLE_CELL = """\
import time as _time
_p = t.panel()
_last, _since = _p.frames, _time.monotonic()
_deadline = _since + 30
while _time.monotonic() < _deadline:
    _time.sleep(0.1)
    if _p.frames != _last:
        _last, _since = _p.frames, _time.monotonic()
    elif _p.plot.value and _time.monotonic() - _since >= 1.0:
        break
_p.refresh()
for _w in (_p.plot, _p.runs_table, _p.status, _p.progress):
    _w.send_state()
print("panel frames:", _p.frames)
"""


def _copy_demo(name: str, tmp_path: Path) -> Path:
    """A copy of the demo in a fresh folder (the kernel's cwd, where its store lands), plus SETTLE_CELL."""
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(str(DEMOS / name), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(SETTLE_CELL))
    nbformat.write(nb, str(work / name))
    return work


def _code_index(nb, fragment: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and fragment in c.source)


def _check_no_stray_figures(nb) -> None:
    """The library draws with Figure + Agg, never pyplot: no cell shows a matplotlib image of its own."""
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            assert "image/png" not in out.get("data", {}), f"cell {i} shows a PNG: pyplot used somewhere?"


def _check_store(work: Path) -> None:
    try:
        import nb_trainer.store  # noqa: F401
    except ImportError:
        return  # the store is another module's job; without it there is nothing on disk to check
    assert (work / ".nb_trainer").exists(), "the run store did not land in the notebook's folder"
    assert not (ROOT / "demo_notebooks" / ".nb_trainer").exists()


@pytest.mark.slow
def test_quickstart_runs_in_a_real_kernel(kernel_env, tmp_path):
    work = _copy_demo("01_quickstart.ipynb", tmp_path)
    ex = execute(work / "01_quickstart.ipynb", work)
    nb = ex.nb
    first = ex.text(_code_index(nb, "run = t.wait()"))
    assert "'finished'" in first and "val_accuracy" in first
    tuned = ex.text(_code_index(nb, "optimizer=\"adamw\""))
    accuracy = float(re.search(r"val accuracy ([0-9.]+)", tuned).group(1))
    assert accuracy > 0.9, tuned                 # digits with an MLP: a working loop gets well above 0.9
    table = ex.text(_code_index(nb, "%nbruns"))
    assert table.count("nbt-run-row") == 2

    state = models(nb.metadata)
    assert len(by_class(state, "nbt-panel")) == 1
    rows = run_rows(state)
    assert len(rows) == 2 and all(r.endswith("finished") for r in rows), rows
    assert "lr=0.003" in rows[0] and "optimizer=adamw" in rows[0], rows[0]
    assert "finished" in one(state, "nbt-status")["state"]["value"]
    # the panel follows a run started from code: its controls show the second run's config
    assert one(state, "nbt-lr")["state"]["value"] == pytest.approx(3e-3)
    assert dropdown_value(one(state, "nbt-optimizer")) == "adamw"
    assert not one(state, "nbt-dropout")["state"]["disabled"]   # the model has nn.Dropout
    png = image_bytes(one(state, "nbt-plot"))
    assert png.startswith(PNG_MAGIC), "the plot showed no frame"
    _check_no_stray_figures(nb)
    _check_store(work)


@pytest.mark.slow
def test_regression_demo_runs_in_a_real_kernel(kernel_env, tmp_path):
    work = _copy_demo("02_regression.ipynb", tmp_path)
    ex = execute(work / "02_regression.ipynb", work)
    nb = ex.nb
    first = ex.text(_code_index(nb, "run = t.wait()"))
    assert first.startswith("finished") and "overfitting" in first, first   # the health rules saw it
    r2_first = float(re.search(r"val R² (-?[0-9.]+)", first).group(1))
    assert r2_first > 0, first                   # better than predicting the mean
    second = ex.text(_code_index(nb, "t.start(**fix)"))
    assert "weight_decay 0 → 0.001" in second and "early stopping" in second, second
    r2 = float(re.search(r"val R² of the restored best weights: (-?[0-9.]+)", second).group(1))
    assert r2 > r2_first, second                 # the fix recovered the overfitted val R²
    assert ex.text(_code_index(nb, "%nbruns")).count("nbt-run-row") == 2

    state = models(nb.metadata)
    rows = run_rows(state)
    assert len(rows) == 2 and rows[0].endswith("stopped") and rows[1].endswith("finished"), rows
    assert "weight_decay=0.001" in rows[0] and "patience=3" in rows[0], rows[0]
    assert one(state, "nbt-dropout")["state"]["disabled"]        # no nn.Dropout in this model
    assert "no nn.Dropout" in one(state, "nbt-dropout")["state"]["tooltip"]
    assert image_bytes(one(state, "nbt-plot")).startswith(PNG_MAGIC)
    _check_no_stray_figures(nb)
    _check_store(work)


@pytest.mark.slow
def test_your_model_demo_trains_a_transformer_and_a_custom_step_in_the_panel(kernel_env, tmp_path):
    pytest.importorskip("transformers")
    work = _copy_demo("04_your_model.ipynb", tmp_path)
    ex = execute(work / "04_your_model.ipynb", work)
    nb = ex.nb
    first = ex.text(_code_index(nb, "run = t.wait()"))
    assert first.startswith("finished") and "loss from: model" in first and "target 'labels'" in first, first
    accs = [float(v) for v in re.search(r"by epoch: \[([^\]]+)\]", first).group(1).split(",")]
    assert accs[-1] > 0.8, first                  # the transformer learnt the rule
    second = ex.text(_code_index(nb, "run2 = t2.start"))
    assert second.startswith("finished") and "loss from: step" in second, second
    assert float(re.search(r"val accuracy: ([0-9.]+)", second).group(1)) > 0.8, second
    state = models(nb.metadata)
    assert len(by_class(state, "nbt-panel")) == 2
    for plot in by_class(state, "nbt-plot"):
        assert image_bytes(plot).startswith(PNG_MAGIC), "a panel showed no frame"
    _check_no_stray_figures(nb)
    _check_store(work)


# -- a control change, seen from the frontend ------------------------------------------------
def test_setting_the_lr_control_starts_a_second_run_and_redraws(kernel_env, tmp_path):
    nb = nbformat.read(str(NOTEBOOKS / "lr_control.ipynb"), as_version=4)
    first_done = _code_index(nb, "'status': t.current.status")
    change = _code_index(nb, 'controls["lr"].value = 1e-2')
    ex = execute(NOTEBOOKS / "lr_control.ipynb", tmp_path, snapshot_after={first_done})

    # the kernel's own view
    assert ex.json_line(first_done) == {"runs": [1e-3], "status": "finished"}
    end = ex.json_line(len(nb.cells) - 1)
    assert end["runs"] == [1e-3, 1e-2] and end["status"] == ["finished", "finished"]

    # the frontend's view: after the first run ...
    before = models(ex.snapshots[first_done])
    assert one(before, "nbt-lr")["state"]["value"] == pytest.approx(1e-3)
    rows = run_rows(before)
    assert len(rows) == 1 and rows[0].startswith("#1") and rows[0].endswith("finished")
    png_before = image_bytes(one(before, "nbt-plot"))
    assert png_before.startswith(PNG_MAGIC), "no frame after the first run"

    # ... and after the control change: a second run with the new lr, finished, and a new picture
    after = models(ex.nb.metadata)
    assert one(after, "nbt-lr")["state"]["value"] == pytest.approx(1e-2)
    rows = run_rows(after)
    assert len(rows) == 2, rows
    assert rows[0].startswith("#2") and "lr=0.01" in rows[0] and rows[0].endswith("finished"), rows[0]
    assert "finished" in one(after, "nbt-status")["state"]["value"]
    png_after = image_bytes(one(after, "nbt-plot"))
    assert png_after.startswith(PNG_MAGIC)
    assert png_after != png_before, "the plot did not change after the second run"
    assert ex.seconds[change] < 5                # setting a control returns at once (debounced restart)


# -- the kernel stays free ----------------------------------------------------------------------
def test_trivial_cells_run_at_once_while_a_long_run_trains(kernel_env, tmp_path):
    nb = nbformat.read(str(NOTEBOOKS / "kernel_free.ipynb"), as_version=4)
    ex = execute(NOTEBOOKS / "kernel_free.ipynb", tmp_path)
    trivial = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith("x = ")]
    assert len(trivial) == 5

    # seen by the client: from sending the cell to its reply (kernel queueing included)
    client_seconds = [ex.seconds[i] for i in trivial]
    # seen by the kernel: its own timestamps of the cell (busy to reply)
    kernel_seconds = []
    for i in trivial:
        meta = ex.nb.cells[i].metadata.execution
        t0 = _iso(meta["iopub.status.busy"])
        t1 = _iso(meta["shell.execute_reply"])
        kernel_seconds.append(t1 - t0)
    end = ex.json_line(len(nb.cells) - 1)
    marks = end["marks"]
    # in-kernel perf_counter from one trivial cell to the next (one client round trip each)
    gaps = [b[0] - a[0] for a, b in zip(marks, marks[1:])]
    trivial_gaps = gaps[:3] + gaps[4:]           # gaps[3] spans the cell that sleeps 1.5 s
    print(f"\ntrivial cells while training: client {['%.3f' % s for s in client_seconds]} s, "
          f"kernel {['%.4f' % s for s in kernel_seconds]} s, cell-to-cell {['%.3f' % g for g in trivial_gaps]} s, "
          f"steps {[m[1] for m in marks]}, frames {[m[2] for m in marks]}")

    assert end["still_running"] and end["status"] == "stopped"   # the run trained through all of it
    steps = [m[1] for m in marks]
    assert steps == sorted(steps) and steps[-1] > steps[0]        # ... and made progress meanwhile
    assert max(client_seconds) < 0.5, client_seconds
    assert max(kernel_seconds) < 0.5, kernel_seconds
    assert max(trivial_gaps) < 0.5, trivial_gaps
    # the panel stayed visibly live meanwhile: new frames over the 1.5 s idle cell (one per 0.5 s)
    frames = [m[2] for m in marks]
    assert frames[0] > 0 and frames[4] > frames[3], frames


def _iso(text: str) -> float:
    from datetime import datetime
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
