"""The magics in a real IPython shell (IPython.testing.globalipapp), no kernel, no frontend."""
from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.testing import globalipapp
from IPython.utils.capture import capture_output

import nb_trainer as nbt

from conftest import Slow, mlp

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MAGICS = ("nbtrain", "nbstop", "nbruns", "nbstatus")


@pytest.fixture(scope="module")
def shell():
    """The one global test shell (start_ipython runs once per process; get_ipython is then the real one)."""
    globalipapp.start_ipython()
    return globalipapp.get_ipython()


@pytest.fixture
def ip(shell, small_digits, tmp_path, monkeypatch):
    """The shell with nb_trainer loaded and tiny data in its namespace; cwd is a temp folder (the store)."""
    monkeypatch.chdir(tmp_path)
    # a terminal shell formats text/plain only; a notebook kernel asks for HTML too
    monkeypatch.setattr(shell.display_formatter, "active_types", ["text/plain", "text/html"])
    (x, y), (xv, yv) = small_digits
    shell.user_ns.update(model=mlp(64, 10, hidden=16), train=(x, y), val=(xv, yv),
                         slow=Slow(mlp(64, 10, hidden=16), 0.005), not_a_trainer=42)
    shell.run_line_magic("load_ext", "nb_trainer")
    made = []
    yield shell, made
    for t in made:
        t.close()
    for name in ("t", "t2", "model", "train", "val", "slow", "not_a_trainer"):
        shell.user_ns.pop(name, None)
    shell.run_line_magic("unload_ext", "nb_trainer")


def nbtrain(shell, made, line):
    t = shell.run_line_magic("nbtrain", line)
    made.append(t)
    return t


def test_load_ext_registers_the_magics(ip):
    shell, _ = ip
    for name in MAGICS:
        assert shell.find_line_magic(name) is not None, name
    # the docstring is the %nbtrain? help, and it lists every TrainConfig field as an option
    doc = shell.find_line_magic("nbtrain").__doc__
    for name in nbt.FIELDS:
        assert f"--{name}" in doc, name
    assert "--no-start" in doc and "--task" in doc


def test_assignment_form_returns_a_trainer_with_the_option_as_default(ip):
    shell, made = ip
    with capture_output():
        result = shell.run_cell("t = %nbtrain model train val --lr 0.01 --optimizer sgd --no-start")
    assert result.success, result.error_in_exec
    t = shell.user_ns["t"]
    made.append(t)
    assert isinstance(t, nbt.Trainer)
    assert t.defaults.lr == pytest.approx(0.01) and t.defaults.optimizer == "sgd"
    assert t.runs == [] and not t.running          # --no-start
    assert t.model is shell.user_ns["model"]
    assert t.panel().controls["lr"].value == pytest.approx(0.01)   # the panel shows the default
    assert t.task == "classification"


def test_nbtrain_starts_a_run_with_the_options(ip):
    shell, made = ip
    with capture_output():
        t = nbtrain(shell, made, "model train val --lr 3e-3 --epochs 2 --batch_size 32 --weight_decay 1e-4")
    run = t.wait(timeout=30)
    assert run is not None and run.status == "finished"
    cfg = run.config
    assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.weight_decay) == (pytest.approx(3e-3), 2, 32,
                                                                        pytest.approx(1e-4))
    assert len(run.epochs) == 2 and "val_accuracy" in run.epochs[-1]


def test_expressions_and_no_val(ip):
    shell, made = ip
    with capture_output():
        t = nbtrain(shell, made, "model (train[0][:64],train[1][:64]) --epochs 1 --batch_size 16 --store none")
    run = t.wait(timeout=30)
    assert t.val_data is None and t.store is None
    assert run.status == "finished" and run.step == 4          # 64 examples / 16 per batch
    assert "train_loss" in run.epochs[-1] and "val_loss" not in run.epochs[-1]


def test_step_target_and_inputs_options_reach_the_trainer(ip):
    import torch
    shell, made = ip
    (x, y) = shell.user_ns["train"]
    shell.user_ns["rows"] = {"pixels": x, "digit": y}
    shell.user_ns["my_step"] = lambda m, b: torch.nn.functional.cross_entropy(m(b["pixels"]), b["digit"])
    with capture_output():
        t = nbtrain(shell, made, "model rows --step my_step --epochs 1 --no-panel --store none")
        t2 = nbtrain(shell, made, "model rows --target digit --epochs 1 --no-panel --no-start --store none")
        t3 = nbtrain(shell, made, "model train --inputs 1 --no-panel --no-start --store none")
    assert t.wait(timeout=30).status == "finished" and t.loss_from == "step"
    assert t2.layout.target_key == "digit" and t2.task == "classification"
    assert t3.layout.n_inputs == 1
    for name in ("rows", "my_step"):
        shell.user_ns.pop(name)


@pytest.mark.parametrize("line, words", [
    ("nosuchmodel train val --no-start", ["nosuchmodel", "MODEL", "not a name"]),
    ("model nosuchdata val --no-start", ["nosuchdata", "TRAIN"]),
    ("model train val --lr -1 --no-start", ["lr", "-1", "> 0"]),
    ("model train val --lr fast --no-start", ["lr", "'fast'", "a number"]),
    ("model train val --optimizer foo --no-start", ["optimizer", "'foo'", "'sgd'", "'adam'", "'rmsprop'"]),
    ("model train val --batch_size 0 --no-start", ["batch_size", "0", ">= 1"]),
    ("model train val --epochs 2.5 --no-start", ["epochs", "an integer"]),
    ("model train val --epochs 1e30 --no-start", ["epochs", "<= 100000"]),
    ("model train val --epochs inf --no-start", ["epochs", "an integer"]),
    ("model train val --weight_decay 1e300 --no-start", ["weight_decay", "<= 100", "cannot train"]),
    ("model train val --task clustering --no-start", ["clustering", "classification", "regression"]),
    ("model train val --bogus 1 --no-start", ["bogus"]),
    ("", ["model", "train"]),
])
def test_bad_input_raises_usage_error_saying_what_is_accepted(ip, line, words):
    shell, made = ip
    n_before = len(nbt.session.all_trainers())
    with capture_output(), pytest.raises(UsageError) as info:
        made.append(shell.run_line_magic("nbtrain", line))
    message = str(info.value)
    for w in words:
        assert w in message, (w, message)
    assert len(nbt.session.all_trainers()) <= n_before   # nothing half-built was kept running


def test_not_a_module_is_a_usage_error(ip):
    shell, _ = ip
    with capture_output(), pytest.raises(UsageError, match="nn.Module"):
        shell.run_line_magic("nbtrain", "not_a_trainer train val --no-start")


def test_nbstop_stops_the_named_trainer_and_every_trainer(ip):
    shell, made = ip
    with capture_output():
        t = nbtrain(shell, made, "slow train val --epochs 50 --batch_size 32 --store none")
        shell.user_ns["t"] = t
        t2 = nbtrain(shell, made, "model train val --epochs 1000 --batch_size 8 --store none")
    assert t.running and t2.running
    shell.run_line_magic("nbstop", "t")
    assert not t.running and t.current.status == "stopped"
    assert t2.running
    shell.run_line_magic("nbstop", "")
    assert not t2.running and t2.current.status == "stopped"
    with pytest.raises(UsageError, match="not an nb_trainer Trainer"):
        shell.run_line_magic("nbstop", "not_a_trainer")


def test_nbruns_and_nbstatus_show_the_runs(ip):
    shell, made = ip
    with capture_output():
        t = nbtrain(shell, made, "model train val --epochs 1 --store none")
        shell.user_ns["t"] = t
    t.wait(timeout=30)
    t.start(lr=1e-2)
    t.wait(timeout=30)
    with capture_output() as out:
        assert shell.run_line_magic("nbruns", "t") is None
    html = "".join(o.data.get("text/html", "") for o in out.outputs)
    assert html.count("nbt-run-row") == 2
    assert "lr=0.01" in html and "finished" in html
    with capture_output() as out:
        shell.run_line_magic("nbstatus", "t")
    html = "".join(o.data.get("text/html", "") for o in out.outputs)
    assert "finished" in html and "epoch 1/1" in html
    with capture_output() as out:
        shell.run_line_magic("nbstatus", "")     # every trainer: at least this one
    assert any("finished" in o.data.get("text/html", "") for o in out.outputs)


def test_nbruns_all_reads_the_store(ip, tmp_path):
    shell, made = ip
    with capture_output():
        t = nbtrain(shell, made, f"model train val --epochs 1 --store {tmp_path / 'store'}")
    t.wait(timeout=30)
    if t.store is None:
        pytest.skip("the run store (nb_trainer.store) is not available")
    with capture_output() as out:
        shell.run_line_magic("nbruns", f"--all --store {tmp_path / 'store'}")
    html = "".join(o.data.get("text/html", "") for o in out.outputs)
    assert "finished" in html and "<tr>" in html


@pytest.mark.parametrize("text, value", [("1e3", 1000), ("1000", 1000), ("2.0", 2), ("5E1", 50)])
def test_integer_options_take_what_the_python_api_takes(ip, text, value):
    shell, made = ip
    with capture_output():
        t = nbtrain(shell, made, f"model train val --epochs {text} --patience {text} --no-start --no-panel "
                                 "--store none")
    assert t.config().epochs == value and t.config().patience == value
    assert nbt.TrainConfig(epochs=float(text)).epochs == value         # the same as the API


def test_nbruns_all_shows_damaged_runs_and_refuses_a_damaged_database(ip, tmp_path):
    import sqlite3
    from nb_trainer.store import DB_NAME, StoreWarning
    shell, made = ip
    store = tmp_path / "store"
    with capture_output():
        t = nbtrain(shell, made, f"model train val --epochs 2 --store {store}")
    t.wait(timeout=30)
    with capture_output():
        t.start(epochs=1, lr=0.01)
    t.wait(timeout=30)
    damaged, sound = t.runs[0].id, t.runs[1].id
    with sqlite3.connect(store / DB_NAME) as conn:
        conn.execute("UPDATE epochs SET record='{not json' WHERE run_id=? AND epoch=1", (damaged,))
        conn.execute("UPDATE runs SET note='<script>alert(1)</script>' WHERE id=?", (damaged,))
    conn.close()
    with capture_output() as out, pytest.warns(StoreWarning, match=damaged):
        shell.run_line_magic("nbruns", f"--all --store {store}")
    html = "".join(o.data.get("text/html", "") for o in out.outputs)
    assert damaged in html and sound in html and "damaged: the record of epoch 1 is not valid JSON" in html
    assert "<script>" not in html
    (store / DB_NAME).write_bytes(b"this is not a database at all" * 100)
    with capture_output(), pytest.raises(UsageError, match=r"%nbruns --all: .*cannot be used.*move the file away"):
        shell.run_line_magic("nbruns", f"--all --store {store}")
    with capture_output(), pytest.raises(UsageError, match="no run store"):
        shell.run_line_magic("nbruns", f"--all --store {tmp_path / 'nowhere'}")


def test_unload_removes_the_magics_and_stops_training(ip):
    shell, made = ip
    with capture_output():
        t = nbtrain(shell, made, "slow train val --epochs 50 --batch_size 32 --store none")
    assert t.running
    shell.run_line_magic("unload_ext", "nb_trainer")
    t.wait(timeout=10)
    assert not t.running and t.current.status == "stopped"
    for name in MAGICS:
        assert shell.find_line_magic(name) is None, name
    with pytest.raises(UsageError):
        shell.run_line_magic("nbtrain", "model train val")
    # and it loads again
    shell.run_line_magic("load_ext", "nb_trainer")
    assert shell.find_line_magic("nbtrain") is not None
