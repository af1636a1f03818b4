"""The run store under faults and crafted input: nothing lost, nothing let in.

Real faults only: a plain file where a folder should be (which stops root too),
``RLIMIT_FSIZE`` in a child process (a full disk, as the kernel reports it:
EFBIG), real processes writing one store at once, databases and weights files
damaged byte by byte, rows edited with sqlite3 as a crafted store would be.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch

import nb_trainer as nbt
from nb_trainer.config import TrainConfig
from nb_trainer.export import _safe, config_snippet, epochs_csv
from nb_trainer.health.warning import HealthWarning
from nb_trainer.magics import _records_table
from nb_trainer.run import STATUSES, Run
from nb_trainer.store import (DB_NAME, WEIGHTS_DIR, CorruptWeightsError, RunStore, StoreCorruptError,
                              StoreWarning, load_runs, load_weights)

REPO = Path(__file__).resolve().parents[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _store_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]


def _fabricated(run_id: str, epochs: int = 3) -> Run:
    run = Run(TrainConfig(optimizer="adamw", lr=3e-3, epochs=epochs), task="classification",
              note="first run", run_id=run_id)
    run.status, run.started_at = "running", time.time()
    run.warnings.append(HealthWarning("overfitting", "warning", "val loss up", "raise weight_decay",
                                      fix={"weight_decay": 1e-3}, step=4, epoch=2))
    return run


def _write_run(store: RunStore, run: Run, weights: bool = True) -> None:
    store.record_start(run, "MLP")
    for i in range(1, run.config.epochs + 1):
        run.epochs.append({"epoch": i, "train_loss": 1.0 / i, "val_loss": 1.5 / i, "lr": run.config.lr,
                           "seconds": 0.01})
        run.step += 4
        store.record_epoch(run)
    run.changes.append({"step": 5, "epoch": 2, "changes": {"lr": 1e-3}})
    run.best_epoch, run.best_val_loss = run.config.epochs, 1.5 / run.config.epochs
    run.status = run.outcome = "finished"
    run.ended_at = time.time()
    store.record_end(run, {"w": torch.arange(4.0)} if weights else None)


# -- 1. a weights write that fails -------------------------------------------------------------------

def test_weights_folder_replaced_by_a_file_keeps_the_final_record(tmp_path, small_digits, make_mlp):
    """The issue's repro: the run's row must not stay 'running', and the run must not fail."""
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    first = t.start(epochs=1)
    t.wait()
    shutil.rmtree(tmp_path / "s" / WEIGHTS_DIR)
    (tmp_path / "s" / WEIGHTS_DIR).write_text("a file where the weights folder was")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = t.start(epochs=2, lr=0.01)
        t.wait()
    assert second.status == "finished" and second.error is None
    [message] = _store_warnings(caught)                        # once, saying which file and why
    assert f"{second.id}.pt" in message and "not a folder" in message
    assert "records are written" in message
    records = {r.id: r for r in nbt.load_runs(tmp_path / "s")}
    assert [records[r.id].status for r in (first, second)] == ["finished", "finished"]
    assert records[second.id].epochs == second.epochs and records[second.id].weights_path is None
    with pytest.raises(FileNotFoundError, match=r"no saved weights \(status 'finished'\)"):
        load_weights(tmp_path / "s", second.id)
    assert (tmp_path / "s" / WEIGHTS_DIR).read_text() == "a file where the weights folder was"
    assert not [p for p in (tmp_path / "s").rglob("*") if p.name.endswith(".tmp")]


def test_a_deleted_weights_folder_is_made_again(tmp_path, small_digits, make_mlp):
    (x, y), val = small_digits
    t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=tmp_path / "s", diagnostics=False)
    shutil.rmtree(tmp_path / "s" / WEIGHTS_DIR)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        run = t.start(epochs=1)
        t.wait()
    [rec] = nbt.load_runs(tmp_path / "s")
    assert run.status == rec.status == "finished" and rec.weights_path.is_file()


# A training process whose file size limit (RLIMIT_FSIZE) plays a full disk: a write past the limit
# fails with EFBIG, as one past the end of a full disk fails with ENOSPC (Python ignores SIGXFSZ).
FULL_DISK = textwrap.dedent("""
    import json, os, resource, sys, warnings
    import torch
    from torch import nn
    torch.set_num_threads(1)
    import nb_trainer as nbt
    from nb_trainer.store import StoreWarning

    store, mode = sys.argv[1], sys.argv[2]

    def limit(nbytes):
        soft = resource.RLIM_INFINITY if nbytes is None else nbytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, resource.RLIM_INFINITY))

    class Big(nn.Module):
        '''A small net whose weights file is about 4 MB (a large buffer).'''
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
            self.register_buffer("table", torch.zeros(1 << 20))
        def forward(self, x):
            return self.net(x)

    class Fault:
        '''After the store's own epoch-end write (it was added first): set the limit for what follows.'''
        def __init__(self, at):
            self.at = at
        def __getattr__(self, name):
            return lambda *a, **k: None
        def on_epoch_end(self, run, engine, record):
            if record["epoch"] in self.at:
                limit(self.at[record["epoch"]])

    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    t = nbt.Trainer(Big(), (x[:96], y[:96]), (x[96:], y[96:]), store=store, diagnostics=False)
    assert t.store is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if mode == "weights":       # the database fits under the limit; a 4 MB weights file does not
            limit(1 << 20)
            runs = [t.start(epochs=3, batch_size=32)]
            t.wait()
        elif mode == "full":        # nothing can be written during run 1; the space is back for run 2
            limit(0)
            runs = [t.start(epochs=3, batch_size=32)]
            t.wait()
            limit(None)
            runs.append(t.start(epochs=2, batch_size=32, lr=0.01))
            t.wait()
        elif mode == "midrun":      # the disk fills after epoch 1 is written and frees after epoch 3
            t.callbacks.append(Fault({1: 0, 3: None}))
            runs = [t.start(epochs=5, batch_size=32)]
            t.wait()
    limit(None)
    print(json.dumps({
        "runs": [{"id": getattr(r, "store_id", None) or r.id, "status": r.status,
                  "error": None if r.error is None else repr(r.error), "epochs": r.epochs} for r in runs],
        "warnings": [str(w.message) for w in caught if issubclass(w.category, StoreWarning)],
    }))
""")


def _full_disk(tmp_path: Path, mode: str) -> dict:
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "s"), mode], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr                # the process (a kernel) never dies
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_disk_full_at_run_end_loses_only_the_weights_file(tmp_path):
    out = _full_disk(tmp_path, "weights")
    [run] = out["runs"]
    assert run["status"] == "finished" and run["error"] is None
    [message] = out["warnings"]
    assert "weights could not be written" in message and "File too large" in message
    [rec] = load_runs(tmp_path / "s")
    assert rec.status == "finished" and rec.epochs == run["epochs"] and rec.weights_path is None
    assert list((tmp_path / "s" / WEIGHTS_DIR).iterdir()) == []      # no half file, no .tmp


@pytest.mark.slow
def test_a_full_disk_never_stops_training_and_the_run_is_written_once_there_is_room(tmp_path):
    out = _full_disk(tmp_path, "full")
    first, second = out["runs"]
    assert first["status"] == second["status"] == "finished"
    assert first["error"] is None and second["error"] is None and len(first["epochs"]) == 3
    [message] = out["warnings"]                       # once for run 1, however many of its writes failed
    assert first["id"] in message and ("full" in message or "disk I/O" in message)
    records = {r.id: r for r in load_runs(tmp_path / "s")}
    assert set(records) == {first["id"], second["id"]}
    assert records[first["id"]].status == "finished" and records[first["id"]].epochs == first["epochs"]
    assert records[second["id"]].epochs == second["epochs"]
    assert records[first["id"]].weights_path is None and records[second["id"]].weights_path.is_file()


@pytest.mark.slow
def test_epochs_whose_writes_failed_mid_run_are_written_by_the_next_write(tmp_path):
    out = _full_disk(tmp_path, "midrun")
    [run] = out["runs"]
    assert run["status"] == "finished" and run["error"] is None
    assert len(out["warnings"]) == 1
    [rec] = load_runs(tmp_path / "s")
    assert [e["epoch"] for e in rec.epochs] == [1, 2, 3, 4, 5]
    assert rec.epochs == run["epochs"] and rec.status == "finished" and rec.weights_path.is_file()


# -- four writers and a reader -----------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import json, os, sys, time
    from nb_trainer.config import TrainConfig
    from nb_trainer.run import Run
    from nb_trainer.store import RunStore

    store_path, runs, epochs, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    store = RunStore(store_path)                    # all four race to create the store
    open(f"{go}.{os.getpid()}.ready", "w").close()
    while not os.path.exists(go):
        time.sleep(0.002)
    written = []
    for i in range(runs):
        run = Run(TrainConfig(lr=0.001 * (i + 1), epochs=epochs), task="regression", note=f"pid {os.getpid()}")
        run.status, run.started_at = "running", time.time()
        store.record_start(run, "Fake")
        for e in range(1, epochs + 1):
            run.epochs.append({"epoch": e, "train_loss": 1.0 / e, "pid": os.getpid()})
            run.step += 3
            store.record_epoch(run)
        run.status = run.outcome = "finished"
        run.ended_at = time.time()
        store.record_end(run, None)
        written.append({"id": getattr(run, "store_id", None) or run.id, "epochs": run.epochs})
    print(json.dumps(written))
""")

READER = textwrap.dedent("""
    import json, os, sys, warnings
    warnings.simplefilter("error")                  # a torn read would show as a damaged record
    import nb_trainer as nbt

    store_path, go, done = sys.argv[1], sys.argv[2], sys.argv[3]
    while not os.path.exists(go):
        pass
    seen, snapshots = {}, 0
    while True:
        last = os.path.exists(done)
        for r in nbt.load_runs(store_path):
            n = len(r.epochs)
            assert [e["epoch"] for e in r.epochs] == list(range(1, n + 1)), (r.id, r.epochs)
            assert n >= seen.get(r.id, 0), (r.id, n, seen[r.id])      # what was read stays read
            seen[r.id] = n
        snapshots += 1
        if last:
            break
    print(json.dumps({"snapshots": snapshots, "seen": seen}))
""")


@pytest.mark.slow
def test_four_processes_write_one_store_while_a_fifth_reads(tmp_path):
    store, go, done = tmp_path / "s", tmp_path / "go", tmp_path / "done"
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "reader.py").write_text(READER)
    runs, epochs = 3, 40
    writers = [subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(store), str(runs), str(epochs),
                                 str(go)], cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    reader = subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), str(store), str(go), str(done)],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("go.*.ready"))) < 4:
            for p in writers:
                assert p.poll() is None, p.communicate()[1]
            assert time.monotonic() < deadline, "the writers did not open the store in 120 s"
            time.sleep(0.01)
        go.write_text("go")
        written = []
        for p in writers:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err                   # "database is locked" would end up here
            written.extend(json.loads(out))
        done.write_text("done")
        out, err = reader.communicate(timeout=300)
        assert reader.returncode == 0, err
    finally:
        for p in writers + [reader]:
            if p.poll() is None:
                p.kill()
                p.wait()
    read = json.loads(out)
    assert read["snapshots"] >= 2
    records = {r.id: r for r in load_runs(store)}
    assert len(written) == 4 * runs and len(records) == 4 * runs          # no run lost, none merged
    for w in written:
        rec = records[w["id"]]
        assert rec.status == "finished" and rec.epochs == w["epochs"] and len(rec.epochs) == epochs
        assert read["seen"][w["id"]] == epochs                            # the reader's last look saw it all
    with sqlite3.connect(store / DB_NAME) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- 3. a crafted store cannot reach files outside it -------------------------------------------------

@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside the store that a crafted weights entry points at: a valid state dict."""
    path = tmp_path / "victim.pt"
    torch.save({"w": torch.full((4,), 7.0)}, path)
    return path


@pytest.fixture
def two_runs(tmp_path):
    store = RunStore(tmp_path / "s")
    a, b = _fabricated("run-a"), _fabricated("run-b")
    _write_run(store, a)
    _write_run(store, b)
    store.release()
    return tmp_path / "s", a, b


def _craft(store_path: Path, sql: str, *args) -> None:
    with sqlite3.connect(store_path / DB_NAME) as conn:
        conn.execute(sql, args)
    conn.close()


@pytest.mark.parametrize("entry", ["../../victim.pt", "{victim}", "sub/../../../victim.pt", "..", "",
                                   "link.pt"])
def test_a_weights_entry_outside_the_weights_folder_is_never_read_nor_deleted(two_runs, victim, entry):
    store_path, a, b = two_runs
    if entry == "link.pt":                          # inside the folder by name, outside by where it points
        (store_path / WEIGHTS_DIR / "link.pt").symlink_to(victim)
    _craft(store_path, "UPDATE runs SET weights=? WHERE id=?", entry.format(victim=victim), a.id)
    before = _digest(victim)
    with pytest.warns(StoreWarning, match="could not be read in full"):
        rec = {r.id: r for r in load_runs(store_path)}[a.id]
    assert rec.weights_path is None and "weights" in rec.problems[0]
    with pytest.raises(ValueError, match="does not name a file inside"):
        load_weights(store_path, a.id)
    with pytest.raises(ValueError, match="does not name a file inside"):
        rec.load_into(torch.nn.Linear(2, 2))
    with pytest.warns(StoreWarning, match="no file was deleted"):
        assert RunStore(store_path).delete(a.id) is True
    assert victim.is_file() and _digest(victim) == before
    assert [r.id for r in load_runs(store_path)] == [b.id]
    assert torch.equal(load_weights(store_path, b.id)["w"], torch.arange(4.0))   # the sound run is untouched


def test_delete_still_removes_a_sound_runs_weights(two_runs):
    store_path, a, _ = two_runs
    weights = store_path / WEIGHTS_DIR / f"{a.id}.pt"
    assert weights.is_file()
    assert RunStore(store_path).delete(a.id) is True and not weights.exists()


# -- 4. the reproduce-this-run snippet never carries code ---------------------------------------------

PAYLOAD = "import os; open('PWNED', 'w').write('x')"


def _assert_only_start_calls(snippet: str) -> None:
    """The snippet parses to an import and one t.start(...) of keyword literals: comments cannot be code."""
    tree = ast.parse(snippet)
    body = [n for n in tree.body if not isinstance(n, ast.Import)]
    assert len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Call)
    call = body[0].value
    assert ast.unparse(call.func) == "t.start"
    for kw in call.keywords:
        assert kw.arg in nbt.FIELDS
        ast.literal_eval(kw.value)
    for line in snippet.splitlines():
        assert line.startswith(("#", "import nb_trainer as nbt", "t.start(")), line


CRAFTED_CHANGES = [
    {f"lr\n{PAYLOAD}\n#": 0.1},                     # a key that leaves the comment (the repro)
    {"lr": f"0.1\n{PAYLOAD}"},                      # a value that would
    {"optimizer": f"adam\n{PAYLOAD}"},
    {"optimizer": "adam\"); " + PAYLOAD + "  # "},
    {"lr\r" + PAYLOAD: 0.1, "lr\u2028" + PAYLOAD: 0.1},
]


@pytest.mark.parametrize("changes", CRAFTED_CHANGES)
def test_the_snippet_of_a_record_with_crafted_changes_runs_no_payload(tmp_path, changes):
    """export.config_snippet(record) on any object with ``changes``, as the issue found it."""
    class Record:
        config = initial_config = TrainConfig(lr=0.01)
        id = "crafted"
    record = Record()
    record.changes = [{"step": 5, "epoch": 2, "changes": {"lr": 1e-3}},
                      {"step": "1\n" + PAYLOAD, "epoch": 3, "changes": changes}]
    snippet = config_snippet(record)
    _assert_only_start_calls(snippet)
    recorder = _Recorder()
    exec(compile(snippet, "<snippet>", "exec"), {"t": recorder})
    assert recorder.calls == [((TrainConfig(),), {"lr": 0.01})]
    assert not (tmp_path / "PWNED").exists()
    assert snippet.splitlines()[2] == "# changed live at step 5 (epoch 2): t.change(lr=0.001)"
    assert snippet.splitlines()[-1].startswith("# ") and "left out" in snippet.splitlines()[-1]


@pytest.mark.parametrize("changes", CRAFTED_CHANGES)
def test_a_crafted_live_change_in_a_store_is_left_out_on_reading(two_runs, tmp_path, changes):
    store_path, a, _ = two_runs
    stored = [{"step": 5, "epoch": 2, "changes": {"lr": 1e-3}}, {"step": 9, "epoch": 3, "changes": changes}]
    _craft(store_path, "UPDATE runs SET changes=? WHERE id=?", json.dumps(stored), a.id)
    with pytest.warns(StoreWarning):
        rec = {r.id: r for r in load_runs(store_path)}[a.id]
    # what was kept is only what a field accepts, and so is the snippet
    assert rec.changes[0] == {"step": 5, "epoch": 2, "changes": {"lr": 1e-3}}
    assert rec.changes[1]["changes"] == {}
    snippet = config_snippet(rec)
    _assert_only_start_calls(snippet)
    assert "# changed live at step 5 (epoch 2): t.change(lr=0.001)" in snippet.splitlines()


class _Recorder:
    def __init__(self):
        self.calls = []

    def start(self, *args, **kwargs):
        self.calls.append((args, kwargs))


@pytest.mark.parametrize("run_id", ["..", ".", "../../outside", "/abs/path", "a/../../b", "", "\x00", "ünï"])
def test_tensorboard_folder_names_stay_inside_the_log_folder(tmp_path, run_id):
    name = _safe(run_id)
    assert name and name not in (".", "..") and not name.startswith(".")
    assert os.sep not in name and "/" not in name and "\x00" not in name
    assert (tmp_path / name).resolve().parent == tmp_path.resolve()


def test_write_tensorboard_of_a_crafted_run_id_writes_inside_logdir(tmp_path):
    pytest.importorskip("tensorboard")
    from nb_trainer.export import write_tensorboard
    run = _fabricated("..")
    run.epochs.append({"epoch": 1, "train_loss": 0.5})
    [folder] = write_tensorboard(run, tmp_path / "tb")
    assert Path(folder).resolve().parent == (tmp_path / "tb").resolve()


# -- 5. damaged rows, damaged databases ----------------------------------------------------------------

def test_an_epoch_record_that_is_not_json_damages_only_its_run(two_runs):
    store_path, a, b = two_runs
    _craft(store_path, "UPDATE epochs SET record='{\"epoch\": 2, \"train_loss\": ' WHERE run_id=? AND epoch=2",
           a.id)
    with pytest.warns(StoreWarning, match=f"{a.id}: the record of epoch 2 is not valid JSON"):
        records = {r.id: r for r in load_runs(store_path)}
    assert [e["epoch"] for e in records[a.id].epochs] == [1, 3]            # what could be read is read
    assert records[a.id].damaged and not records[b.id].damaged
    assert records[b.id].epochs == b.epochs


@pytest.mark.parametrize("config", ['[1, 2]', '"adam"', '42', 'null', '{"lr": ', 'not json at all'])
def test_a_config_that_is_not_a_json_object_damages_only_its_run(two_runs, config):
    store_path, a, b = two_runs
    _craft(store_path, "UPDATE runs SET config=? WHERE id=?", config, a.id)
    with pytest.warns(StoreWarning, match=a.id):
        records = {r.id: r for r in load_runs(store_path)}
    assert records[a.id].config == TrainConfig() and records[a.id].initial_config == a.initial_config
    assert any(p.startswith("config") for p in records[a.id].problems)
    assert records[b.id].config == b.config and not records[b.id].problems


def _corrupt(kind: str, data: bytes) -> bytes:
    if kind == "empty":
        return b""
    if kind == "random":
        return os.urandom(len(data))
    if kind == "header":
        return os.urandom(100) + data[100:]
    if kind == "truncated":
        return data[:len(data) // 2]
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["empty", "random", "header", "truncated", "foreign"])
def test_a_damaged_database_is_named_explained_and_never_changed(tmp_path, small_digits, make_mlp, kind):
    store_path = tmp_path / "s"
    store = RunStore(store_path)
    for i in range(20):
        _write_run(store, _fabricated(f"run-{i}"), weights=False)
    store.release()
    db = store_path / DB_NAME
    if kind == "foreign":                           # another program's SQLite file by that name
        db.unlink()
        with sqlite3.connect(db) as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
            conn.execute("INSERT INTO notes VALUES ('mine')")
        conn.close()
    else:
        db.write_bytes(_corrupt(kind, db.read_bytes()))
    before = _digest(db)
    with pytest.raises(StoreCorruptError) as info:
        load_runs(store_path)
    message = str(info.value)
    assert str(db) in message and "has not changed it" in message and "move the file away" in message
    assert ".recover" in message
    assert "no such table" not in message or "not a complete run store" in message
    # a Trainer pointed at it warns, trains without a store, and leaves the file as it was
    (x, y), val = small_digits
    with pytest.warns(StoreWarning, match="cannot be used"):
        t = nbt.Trainer(make_mlp(64, 10), (x, y), val, store=store_path, diagnostics=False)
    assert t.store is None
    t.start(epochs=1)
    assert t.wait().status == "finished"
    assert db.is_file() and _digest(db) == before


def test_a_database_with_a_damaged_page_reads_what_it_can_and_says_so(tmp_path):
    store = RunStore(tmp_path / "s")
    for i in range(30):
        _write_run(store, _fabricated(f"run-{i}"), weights=False)
    store.release()
    db = tmp_path / "s" / DB_NAME
    with sqlite3.connect(db) as conn:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        # the root page of the runs table's primary-key index: not read by a full scan of the runs
        index_root = conn.execute("SELECT rootpage FROM sqlite_master WHERE type='index' AND tbl_name='runs'"
                                  ).fetchone()[0]
    conn.close()
    data = bytearray(db.read_bytes())
    data[(index_root - 1) * page:index_root * page] = os.urandom(page)
    db.write_bytes(bytes(data))
    before = _digest(db)
    with pytest.warns(StoreWarning, match="is damaged") as caught:
        records = load_runs(tmp_path / "s")
    assert len(records) == 30
    assert any(".recover" in str(w.message) for w in caught)
    with pytest.warns(StoreWarning, match="cannot be used"):
        assert RunStore.open_or_warn(tmp_path / "s") is None        # never written into
    assert _digest(db) == before


# -- a crafted row, column by column -------------------------------------------------------------------

TEXT_COLUMNS = ("id", "task", "model", "config", "initial_config", "status", "error", "stop_reason", "note",
                "parent", "changes", "weights", "owner_host", "owner_boot", "owner_start")
NUMBER_COLUMNS = ("best_epoch", "best_val_loss", "steps", "started_at", "ended_at", "updated_at", "owner_pid")
CRAFTED = {
    "markup": "</td><script>alert(1)</script>'; DROP TABLE runs; --",
    "code": f"x\n{PAYLOAD}\n#",
    "traversal": "../../victim.pt",
    "blob": b"\x00\xff\x80 not text",
    "number": 12345,
    "deep_json": "[" * 50_000 + "]" * 50_000,
    "json_list": "[1, 2, 3]",
    "json_object": '{"lr": "import os", "epochs": -1, "optimizer": {"x": 1}}',
}


def _is_damage(column: str, payload: str) -> bool:
    """Whether ``payload`` in ``column`` is damage (text is fine where any text is: a note, an error)."""
    if payload == "blob":
        return True
    if column in NUMBER_COLUMNS:
        return payload != "number"
    if column in ("config", "initial_config", "changes", "status"):
        return True
    if column == "weights":                         # a plain file name, even an odd one, stays inside
        return payload in ("markup", "traversal", "deep_json")     # deep_json: longer than a file name
    return False


def _read_safely(store_path: Path, victim: Path, crafted_id) -> list:
    """Everything a user does with stored runs, none of which may raise or reach outside the store."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        records = load_runs(store_path)
    assert len(records) == 2
    html_table = _records_table(records)
    assert "<script>" not in html_table
    for r in records:
        assert r.status in STATUSES + ("unknown",)
        assert isinstance(r.id, str) and isinstance(r.note, str) and isinstance(r.stop_reason, str)
        assert isinstance(r.config, TrainConfig) and isinstance(r.initial_config, TrainConfig)
        repr(r)
        json.dumps(r.to_record())
        epochs_csv(r)
        _assert_only_start_calls(config_snippet(r))
        r.elapsed, r.done, r.last, r.codes
        try:
            r.state_dict()
        except (FileNotFoundError, KeyError, ValueError, pickle.UnpicklingError) as e:
            assert "victim" not in str(e) or "does not name a file inside" in str(e)
    return records


@pytest.mark.parametrize("payload", list(CRAFTED))
@pytest.mark.parametrize("column", TEXT_COLUMNS + NUMBER_COLUMNS)
def test_a_crafted_value_in_any_column_is_read_safely(two_runs, victim, column, payload):
    store_path, a, b = two_runs
    value = CRAFTED[payload]
    _craft(store_path, f"UPDATE runs SET {column}=? WHERE id=?", value, a.id)
    before = _digest(victim)
    records = _read_safely(store_path, victim, value)
    sound = [r for r in records if r.id == b.id]
    assert sound and not sound[0].problems and sound[0].epochs == b.epochs
    crafted = [r for r in records if r.id != b.id][0]
    assert bool(crafted.problems) == _is_damage(column, payload), crafted.problems
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        RunStore(store_path).delete(crafted.id)
    assert victim.is_file() and _digest(victim) == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        left = [r.id for r in load_runs(store_path)]
    assert left == [b.id] or (column == "id" and payload == "blob")     # a blob id cannot be named to delete()


@pytest.mark.parametrize("record", ['{"epoch": "1\\nimport os"}', '{"epoch": 1, "train_loss": "x"}', '[]',
                                    '{"epoch": 1, "val_accuracy": {"a": 1}}', '"text"', "{", "null"])
def test_a_crafted_epoch_record_is_read_safely(two_runs, victim, record):
    store_path, a, b = two_runs
    _craft(store_path, "UPDATE epochs SET record=? WHERE run_id=? AND epoch=1", record, a.id)
    records = _read_safely(store_path, victim, None)
    crafted = [r for r in records if r.id == a.id][0]
    assert crafted.problems
    assert all(isinstance(v, (int, float, type(None))) for e in crafted.epochs for v in e.values())


@pytest.mark.parametrize("record", [
    '{"code": "<script>", "severity": "error", "message": "m", "suggestion": "s"}',
    '{"code": "overfitting", "severity": "warning", "message": 5, "suggestion": ["s"], "fix": {"lr": "x\\ny"}}',
    '{"code": "overfitting", "severity": "warning", "message": "m", "suggestion": "s", "fix": [1], "count": "2"}',
    '{"code": "overfitting"}', '[]', "not json"])
def test_a_crafted_warning_is_read_safely(two_runs, victim, record):
    store_path, a, b = two_runs
    _craft(store_path, "UPDATE warnings SET record=? WHERE run_id=?", record, a.id)
    records = _read_safely(store_path, victim, None)
    crafted = [r for r in records if r.id == a.id][0]
    assert crafted.problems
    from nb_trainer.ui.status import warning_html
    for w in crafted.warnings:
        assert isinstance(w.message, str) and isinstance(w.suggestion, str) and isinstance(w.fix, dict)
        assert "<script>" not in warning_html(w)


# -- 8. weights files that are not weights ---------------------------------------------------------------

@pytest.mark.parametrize("content, expected", [
    (b"", "empty \\(0 bytes\\)"),
    (os.urandom(5000), "is damaged"),
    (b"\x80\x02" + os.urandom(200), "is damaged"),
    (b"PK\x03\x04" + os.urandom(2000), "is damaged"),
    ("truncated", "is damaged or truncated"),
], ids=["empty", "random", "pickle-header", "zip-header", "truncated"])
def test_a_damaged_weights_file_is_reported_as_damaged_not_as_code(two_runs, content, expected):
    store_path, a, _ = two_runs
    file = store_path / WEIGHTS_DIR / f"{a.id}.pt"
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2] if content == "truncated" else content)
    with pytest.raises(CorruptWeightsError, match=expected) as info:
        load_weights(store_path, a.id)
    assert "arbitrary code" not in str(info.value) and str(file) in str(info.value)


def test_a_weights_file_holding_code_is_still_refused_as_such(two_runs, tmp_path):
    store_path, a, _ = two_runs
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": Evil()}, store_path / WEIGHTS_DIR / f"{a.id}.pt")   # the zip format torch writes
    with pytest.raises(pickle.UnpicklingError, match="could run arbitrary code"):
        load_weights(store_path, a.id)
    assert not marker.exists()


def test_an_interrupted_runs_missing_weights_say_it_was_interrupted(tmp_path):
    store = RunStore(tmp_path / "s")
    run = _fabricated("cut-short")
    store.record_start(run)
    run.epochs.append({"epoch": 1, "train_loss": 0.5})
    store.record_epoch(run)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])     # a process that really ended
    gone.wait()
    _craft(tmp_path / "s", "UPDATE runs SET owner_pid=?, owner_start='1' WHERE id=?", gone.pid, run.id)
    with pytest.raises(FileNotFoundError) as info:
        load_weights(tmp_path / "s", run.id)
    message = str(info.value)
    assert "interrupted" in message and "'running'" not in message and "1 finished epoch" in message


def test_a_live_runs_missing_weights_say_it_is_still_training(tmp_path):
    store = RunStore(tmp_path / "s")
    run = _fabricated("still-going")
    store.record_start(run)
    with pytest.raises(FileNotFoundError, match="still training"):
        load_weights(tmp_path / "s", run.id)
