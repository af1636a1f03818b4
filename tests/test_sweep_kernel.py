"""Sweeps in a real Jupyter kernel (nbclient): one started from the panel's Sweep section, and the
demo notebook 05_sweep. Each kernel starts its own local Ray, with the environment TESTING.md asks
for (loopback only, no usage statistics, HOME a folder holding an empty ray_bootstrap_config.yaml)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from test_kernel import DEMOS, NOTEBOOKS, ROOT, execute, image_bytes, models, one

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.ray,
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture
def ray_kernel_env(tmp_path, monkeypatch):
    import matplotlib
    home = tmp_path / "home"
    home.mkdir()
    (home / "ray_bootstrap_config.yaml").write_text("")
    monkeypatch.setenv("MPLCONFIGDIR", matplotlib.get_configdir())   # before HOME moves: keep the font cache
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))        # the kernel and the Ray workers import this checkout
    work = tmp_path / "work"
    work.mkdir()
    return work


def trial_rows(state: dict) -> list[list[str]]:
    html = one(state, "nbt-sweep-table")["state"]["value"]
    rows = re.findall(r"<tr class='nbt-trial-row'>(.*?)</tr>", html)
    return [[re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)] for row in rows]


def test_a_sweep_from_the_panel_streams_every_trial_into_its_table(ray_kernel_env):
    work = ray_kernel_env
    nb = nbformat.read(str(NOTEBOOKS / "sweep_panel.ipynb"), as_version=4)
    nbformat.write(nb, str(work / "sweep_panel.ipynb"))
    ex = execute(work / "sweep_panel.ipynb", work, snapshot_after=(2, 3), timeout=600)

    during = ex.json_line(2)
    assert during["status"] == "running", during
    rows = trial_rows(models(ex.snapshots[2]))
    # while the sweep trains: the table shows trials training, with their lr and epochs so far
    assert any(r[-1] == "running" for r in rows), rows
    assert sum(1 for r in rows if not r[2].startswith("0/")) >= 2, rows
    assert all(r[1].startswith("lr=") for r in rows)

    after = ex.json_line(3)
    assert after["status"] == "finished" and after["stored"] == 4, after
    rows = trial_rows(models(ex.snapshots[3]))
    assert len(rows) == 4 and all(r[2] == "10/10" and r[-1] == "finished" for r in rows), rows
    assert sum("★" in r[0] for r in rows) == 1                     # the best trial is marked
    assert "best: trial" in one(models(ex.snapshots[3]), "nbt-sweep-status")["state"]["value"]
    assert image_bytes(one(models(ex.snapshots[3]), "nbt-plot")).startswith(b"\x89PNG")
    assert ex.json_line(4) == {"shutdown": True}


def test_sweep_demo_is_stored_without_outputs():
    nb = nbformat.read(str(DEMOS / "05_sweep.ipynb"), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


def _index(nb, fragment: str) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and fragment in c.source)


def test_sweep_demo_runs_in_a_real_kernel(ray_kernel_env):
    work = ray_kernel_env
    nb = nbformat.read(str(DEMOS / "05_sweep.ipynb"), as_version=4)
    nbformat.write(nb, str(work / "05_sweep.ipynb"))
    ex = execute(work / "05_sweep.ipynb", work, timeout=600)
    nb = ex.nb
    for i, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", (i, out.get("ename"), out.get("evalue"))
            assert "Trial status" not in out.get("text", ""), "Tune printed its table into a cell"
            # Tune's notebook reporter displays an empty HTML (after clear_output) where the sweep starts
            assert "<IPython.core.display.HTML object>" not in out.get("data", {}).get("text/plain", ""), (i, out)
    done = ex.text(_index(nb, "sw.wait()"))
    assert "finished 6/6 trials ended" in done, done
    assert ex.text(_index(nb, "t.start(**sw.values_of(best))")).startswith("finished val accuracy")
    assert "6 trials stored" in ex.text(_index(nb, "nbt.load_runs()"))
    assert "finished" in ex.text(_index(nb, "%nbsweep"))
    assert (work / ".nb_trainer" / "runs.sqlite").exists()
