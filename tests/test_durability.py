"""Durability across processes: a kernel killed mid-run, two kernels writing one store.

These start real Python processes (each imports torch: a few seconds).
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nb_trainer.store import DB_NAME, load_runs, load_weights

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

# A training process: a small model slowed to about 0.2 s an epoch, so it can be killed mid-run.
TRAIN = textwrap.dedent("""
    import json, sys, time
    import torch
    from torch import nn
    torch.set_num_threads(1)
    import nb_trainer as nbt

    store, runs, epochs, delay, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        def forward(self, x):
            if self.training and delay:
                time.sleep(delay)
            return self.net(x)

    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    torch.manual_seed(0)
    t = nbt.Trainer(Slow(), (x[:192], y[:192]), (x[192:], y[192:]), store=store, diagnostics=False)
    assert t.store is not None
    if go != "-":                       # start together with the other process
        import os
        open(f"{go}.{os.getpid()}.ready", "w").close()
        while not os.path.exists(go):
            time.sleep(0.005)
    out = []
    for i in range(runs):
        run = t.start(epochs=epochs, lr=0.01 * (i + 1), batch_size=32)
        t.wait()
        out.append({"id": run.id, "store_id": getattr(run, "store_id", run.id), "status": run.status,
                    "epochs": run.epochs})
    print(json.dumps(out))
""")

# A fresh process that reads the store back.
READ = textwrap.dedent("""
    import json, sys
    import nb_trainer as nbt
    print(json.dumps([{"id": r.id, "status": r.status, "stored_status": r.stored_status,
                       "epochs": r.epochs, "stop_reason": r.stop_reason} for r in nbt.load_runs(sys.argv[1])]))
""")


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _epochs_written(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    except sqlite3.OperationalError:     # the tables are being created
        return 0


def _integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def test_a_kernel_killed_mid_run_reads_back_interrupted_with_its_epochs(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    proc = subprocess.Popen([sys.executable, str(script), str(store), "1", "200", "0.03", "-"],
                            cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while _epochs_written(store / DB_NAME) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the training process wrote no 2 epochs in 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        # not reaped yet (a zombie): its pid still exists, and the run must still read "interrupted"
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/stat").exists() and \
                Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        [zombie_view] = load_runs(store)
        assert zombie_view.status == "interrupted"
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    reader = subprocess.run([sys.executable, "-c", READ, str(store)], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert reader.returncode == 0, reader.stderr
    [run] = json.loads(reader.stdout)
    assert run["stored_status"] == "running" and run["status"] == "interrupted"
    assert "ended during the run" in run["stop_reason"]
    n = len(run["epochs"])
    assert 2 <= n < 200
    assert [e["epoch"] for e in run["epochs"]] == list(range(1, n + 1))
    assert run["epochs"][: len(zombie_view.epochs)] == zombie_view.epochs
    assert all(isinstance(e["train_loss"], float) and "val_loss" in e for e in run["epochs"])
    assert _integrity(store / DB_NAME) == "ok"
    # no weights (they are saved at a run's end), and the error says why, not "(status 'running')"
    with pytest.raises(FileNotFoundError, match="it was interrupted") as info:
        load_weights(store, run["id"])
    assert "'running'" not in str(info.value)


def test_two_kernels_write_one_store_at_once(tmp_path):
    store = tmp_path / "store"
    script = tmp_path / "train.py"
    script.write_text(TRAIN)
    go = tmp_path / "go"
    # many short epochs: hundreds of commits from both processes, interleaved
    procs = [subprocess.Popen([sys.executable, str(script), str(store), "3", "30", "0", str(go)],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    # both open the store at once (racing to create it), then train together
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.*.ready"))) < 2:
        for p in procs:
            assert p.poll() is None, p.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.write_text("go")
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.extend(json.loads(out))

    records = {r.id: r for r in load_runs(store)}
    assert len(outs) == 6 and len(records) == 6
    assert len({o["store_id"] for o in outs}) == 6
    for o in outs:
        rec = records[o["store_id"]]
        assert o["status"] == "finished" and rec.status == "finished"
        assert rec.epochs == o["epochs"] and len(rec.epochs) == 30
    assert _integrity(store / DB_NAME) == "ok"


# -- continuing, in a new process, a run of an earlier one (the store only) ---------------------------

CONTINUE = textwrap.dedent("""
    import json, sys
    import torch
    from torch import nn
    torch.set_num_threads(1)
    import nb_trainer as nbt

    store, phase = sys.argv[1], sys.argv[2]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    torch.manual_seed(0)              # the same architecture and initial weights in both processes
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    t = nbt.Trainer(model, (x[:384], y[:384]), (x[384:], y[384:]), store=store, diagnostics=False)
    if phase == "train":
        for epochs in (2, 6):         # run #2 is the one to continue: not the store's last by accident
            run = t.start(epochs=epochs, lr=0.01, batch_size=32)
            t.wait()
        # the loss of the final weights on the training data, and the first epoch's
        print(json.dumps({"id": run.id, "final_loss": t.evaluate((x[:384], y[:384]))["loss"],
                          "first_loss": run.epochs[0]["train_loss"]}))
    else:
        record = next(r for r in nbt.load_runs(store) if r.id == sys.argv[3])
        run = t.start(from_run=record, epochs=2, lr=0.001, batch_size=32)
        t.wait()
        print(json.dumps({"status": run.status, "continued_from": run.continued_from,
                          "first_loss": run.epochs[0]["train_loss"],
                          "stored": nbt.load_runs(store)[-1].continued_from}))
""")


def test_a_run_continued_in_a_new_process_starts_at_the_stored_runs_final_loss(tmp_path):
    store = str(tmp_path / "store")
    first = subprocess.run([sys.executable, "-c", CONTINUE, store, "train"], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert first.returncode == 0, first.stderr
    parent = json.loads(first.stdout.strip().splitlines()[-1])
    second = subprocess.run([sys.executable, "-c", CONTINUE, store, "continue", parent["id"]], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert second.returncode == 0, second.stderr
    child = json.loads(second.stdout.strip().splitlines()[-1])
    assert child["status"] == "finished"
    assert child["continued_from"]["id"] == parent["id"] and child["continued_from"]["epoch"] == 6
    assert child["stored"]["id"] == parent["id"]           # the lineage is in the store too
    # it starts where the parent ended (its first epoch, at a small lr, is at the loss of the parent's final
    # weights), far below where the parent started
    assert child["first_loss"] == pytest.approx(parent["final_loss"], rel=0.15)
    assert child["first_loss"] < parent["first_loss"] / 2
