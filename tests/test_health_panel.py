"""The panel shows one row and one fix button per cause, the other codes as evidence, and an Auto-fix button.

Unit tests drive the panel without a frontend; the last test runs a notebook in
a real kernel (nbclient) and reads the widget state a frontend would get.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import nbformat
import pytest

import nb_trainer as nbt

from conftest import mlp

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def trainer(small_digits):
    train, val = small_digits
    t = nbt.Trainer(mlp(64, 10, hidden=16), train, val, store=None, epochs=2)
    yield t
    t.close()


def _visible(panel):
    return [(text.value, button) for row, text, button in panel.warning_rows if row.layout.display is None]


def test_codes_of_one_cause_show_as_one_row_with_one_button(trainer):
    panel = trainer.panel()
    run = trainer.start(lr=1.0)
    trainer.wait()
    run.warnings.clear()
    for code, fix in (("lr_too_high", {"lr": 0.1}), ("dead_relu", {"lr": 0.1}), ("loss_plateau", {"lr": 0.1})):
        run.add_warning(nbt.HealthWarning(code, "warning", f"{code} seen", "lower the lr", fix=fix))
    panel.refresh()
    rows = _visible(panel)
    assert len(rows) == 1
    text, button = rows[0]
    assert "nbt-verdict-step_too_large" in text and "learning rate is too high" in text
    assert "nbt-evidence-dead_relu" in text and "nbt-evidence-loss_plateau" in text
    assert button.description == "Apply fix: lr=0.1" and button.layout.display is None
    assert panel.auto_fix_button.layout.display is None
    panel.apply_fix(0)
    assert trainer.runs[-1].config.lr == pytest.approx(0.1)
    trainer.wait()


def test_contradicting_fixes_show_one_button_and_say_why(trainer):
    panel = trainer.panel()
    run = trainer.start(lr=0.3)
    trainer.wait()
    run.warnings.clear()
    run.add_warning(nbt.HealthWarning("lr_too_high", "warning", "the loss rose 3x", "lower", fix={"lr": 0.03}))
    run.add_warning(nbt.HealthWarning("lr_too_low", "warning", "the weights barely move", "raise", fix={"lr": 1.0}))
    panel.refresh()
    rows = _visible(panel)
    assert len(rows) == 1
    text, button = rows[0]
    assert "lr=0.03" in button.description and "its own fix is not offered" in text and "why:" in text


def test_two_causes_get_two_rows(trainer):
    panel = trainer.panel()
    run = trainer.start()
    trainer.wait()
    run.warnings.clear()
    run.add_warning(nbt.HealthWarning("overfitting", "warning", "val rose", "regularise", fix={"weight_decay": 1e-3}))
    run.add_warning(nbt.HealthWarning("class_imbalance", "warning", "1:20", "weight the loss"))
    panel.refresh()
    rows = _visible(panel)
    assert len(rows) == 2
    assert rows[0][1].layout.display is None and rows[1][1].layout.display == "none"


def test_auto_fix_button_repairs_from_the_current_run(trainer):
    panel = trainer.panel()
    run = trainer.start(optimizer="sgd", lr=1e-5, epochs=4)
    trainer.wait()
    assert "lr_too_low" in run.codes
    panel.refresh()
    assert panel.auto_fix_button.layout.display is None
    panel.auto_fix_button.click()
    for _ in range(600):
        if not panel._auto_fixing:
            break
        time.sleep(0.1)
    assert not panel._auto_fixing
    assert len(trainer.runs) >= 2 and trainer.runs[1].note.startswith("auto-fix 2/5")
    assert "lr_too_low" not in trainer.runs[-1].codes


@pytest.mark.slow
@pytest.mark.kernel
def test_panel_in_a_real_kernel_shows_one_button_for_a_cause_with_several_codes(tmp_path, monkeypatch):
    """Adam at lr 1 on digits: lr_too_high, dead_relu and a plateau, one cause; the saved widget state has one
    visible warning row, whose button applies the merged fix."""
    from nbclient import NotebookClient
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    root = Path(__file__).resolve().parent.parent
    cells = [
        "import sys, torch\nsys.path.insert(0, %r)\ntorch.set_num_threads(1)" % str(root),
        "import nb_trainer as nbt\nfrom sklearn.datasets import load_digits\n"
        "d = load_digits()\nX = torch.tensor(d.data / 16, dtype=torch.float32)\ny = torch.tensor(d.target)\n"
        "torch.manual_seed(0)\n"
        "model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),\n"
        "                            torch.nn.ReLU(), torch.nn.Linear(128, 10))\n"
        "t = nbt.Trainer(model, (X[:1200], y[:1200]), (X[1200:], y[1200:]), store=None)\n"
        "t.panel()",
        "run = t.start(optimizer='adam', lr=1.0, epochs=8)\nt.wait()\np = t.panel()\np.refresh()\n"
        "for row, text, button in p.warning_rows:\n    row.send_state(); text.send_state(); button.send_state()\n"
        "p.auto_fix_button.send_state()\n"
        "print('codes', run.codes)\nprint('verdicts', len(run.verdicts))",
    ]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    NotebookClient(nb, kernel_name="python3", store_widget_state=True, timeout=300,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = "".join(o.get("text", "") for o in nb.cells[-1].outputs)
    codes = re.search(r"codes \[(.*)\]", out).group(1)
    assert codes.count("'") >= 4, out  # two codes or more
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]

    def with_class(cls):
        return [m["state"] for m in state.values() if cls in m["state"].get("_dom_classes", [])]
    rows = [r for r in with_class("nbt-warning-row") if r.get("layout")]
    layouts = {k: m["state"] for k, m in state.items() if m["model_name"] == "LayoutModel"}
    shown = [r for r in rows if layouts[r["layout"].replace("IPY_MODEL_", "")].get("display") != "none"]
    assert len(shown) == 1, out
    children = [state[c.replace("IPY_MODEL_", "")]["state"] for c in shown[0]["children"]]
    buttons = [b for b in children if "nbt-apply-fix" in b.get("_dom_classes", [])
               and layouts[b["layout"].replace("IPY_MODEL_", "")].get("display") != "none"]
    assert len(buttons) == 1 and buttons[0]["description"].startswith("Apply fix: lr="), buttons
    texts = [m["state"]["value"] for m in state.values() if "nbt-verdict-step_too_large" in str(m["state"].get("value"))]
    assert len(texts) == 1 and "nbt-evidence-" in texts[0]
    assert with_class("nbt-auto-fix")
