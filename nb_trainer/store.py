"""Run records on disk, so nothing is lost when the kernel restarts or dies.

A store is a folder (``.nb_trainer/`` by default) holding one SQLite database,
``runs.sqlite``, and a ``weights/`` folder with the best weights of each run
(``weights/<run id>.pt``, written with ``torch.save`` when the run ends and
read back with ``torch.load(..., weights_only=True)``).

What is written, and when (all on the training thread, one transaction each):

- run start: the run's row (config, note, status "running", owner process);
- every epoch end: the new epoch records, the warnings, the status, the
  config (live changes update it) and a heartbeat;
- run end: the final status, error, stop reason, and the weights file.

So a kernel killed mid-run loses at most the epoch in progress. The database
is in WAL mode with ``synchronous=NORMAL``: a commit survives the process
being killed (SIGKILL included); only a power cut can take back the last
commits. Several processes may write one store at once (two notebooks in one
folder): WAL lets readers go on while one writer commits, and a busy timeout
makes writers wait their turn rather than fail.

A run whose row still says "running" when its owner process (pid + process
start time, so a reused pid is not mistaken for it) is gone reads back as
"interrupted".

This module knows plain records only: torch is imported inside the two
functions that save and load weights.
"""
from __future__ import annotations

import json
import os
import pickle
import socket
import sqlite3
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional

from .config import FIELDS, TrainConfig
from .health.warning import HealthWarning
from .run import RunReading

DB_NAME = "runs.sqlite"
WEIGHTS_DIR = "weights"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0       # a writer waits this long for another process's commit
LIVE_STATUSES = ("pending", "running", "paused")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id             TEXT PRIMARY KEY,
    task           TEXT,
    model          TEXT,
    config         TEXT NOT NULL,   -- JSON: the config now (live changes applied)
    initial_config TEXT NOT NULL,   -- JSON: the config the run started with
    status         TEXT NOT NULL,
    error          TEXT,
    stop_reason    TEXT,
    note           TEXT,
    parent         TEXT,
    best_epoch     INTEGER,
    best_val_loss  REAL,
    steps          INTEGER,
    changes        TEXT,            -- JSON list of live changes
    started_at     REAL,
    ended_at       REAL,
    updated_at     REAL,            -- heartbeat: the time of the last write
    weights        TEXT,            -- file name under weights/, or NULL
    owner_host     TEXT,
    owner_boot     TEXT,
    owner_pid      INTEGER,
    owner_start    TEXT,
    fingerprint    TEXT             -- the model's architecture and data shapes (nb_trainer.fingerprint)
);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL,
    epoch  INTEGER NOT NULL,
    record TEXT NOT NULL,           -- JSON: the epoch record as the engine made it
    PRIMARY KEY (run_id, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS warnings (
    run_id TEXT NOT NULL,
    code   TEXT NOT NULL,
    pos    INTEGER NOT NULL,        -- its place in run.warnings (the order they were first seen)
    record TEXT NOT NULL,           -- JSON: HealthWarning.to_dict()
    PRIMARY KEY (run_id, code)
) WITHOUT ROWID;
"""

_INSERT_RUN = """
INSERT INTO runs (id, task, model, config, initial_config, status, error, stop_reason, note, parent,
                  best_epoch, best_val_loss, steps, changes, started_at, ended_at, updated_at, weights,
                  owner_host, owner_boot, owner_pid, owner_start, fingerprint)
VALUES (:id, :task, :model, :config, :initial_config, :status, :error, :stop_reason, :note, :parent,
        :best_epoch, :best_val_loss, :steps, :changes, :started_at, :ended_at, :updated_at, :weights,
        :owner_host, :owner_boot, :owner_pid, :owner_start, :fingerprint)
ON CONFLICT(id) DO NOTHING
"""
_UPDATE_RUN = """
UPDATE runs SET config=:config, status=:status, error=:error, stop_reason=:stop_reason,
                best_epoch=:best_epoch, best_val_loss=:best_val_loss, steps=:steps, changes=:changes,
                ended_at=:ended_at, updated_at=:updated_at, weights=COALESCE(:weights, weights)
WHERE id=:id
"""
_PUT_EPOCH = "INSERT OR REPLACE INTO epochs (run_id, epoch, record) VALUES (?, ?, ?)"
_PUT_WARNING = "INSERT OR REPLACE INTO warnings (run_id, code, pos, record) VALUES (?, ?, ?, ?)"


class StoreWarning(UserWarning):
    """The run store could not be opened or written; training goes on without it."""


# -- who owns a run: this process, identified so that a reused pid is not mistaken for it ----------

def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _proc_stat(pid: int) -> Optional[tuple[str, str]]:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, or None."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ")"
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], fields[19]        # field 3 (state) and field 22 (starttime)


_BOOT_ID = (_read("/proc/sys/kernel/random/boot_id") or "").strip() or None


def _owner() -> dict:
    stat = _proc_stat(os.getpid())
    return {"owner_host": socket.gethostname(), "owner_boot": _BOOT_ID,
            "owner_pid": os.getpid(), "owner_start": stat[1] if stat else None}


def owner_alive(host: Optional[str], boot: Optional[str], pid: Optional[int],
                start: Optional[str]) -> Optional[bool]:
    """Is the process that wrote a run still running? None: cannot tell (another machine)."""
    if pid is None or host != socket.gethostname():
        return None
    if boot is not None and _BOOT_ID is not None and boot != _BOOT_ID:
        return False                    # the machine has rebooted since
    if pid == os.getpid():
        return True
    if start is not None and os.path.isdir("/proc"):
        stat = _proc_stat(pid)
        # gone, a zombie (killed, not yet reaped), or the pid now belongs to another process
        return stat is not None and stat[0] not in ("Z", "X", "x") and stat[1] == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- encoding -----------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON fallback for values that are numbers in disguise (numpy scalars, 0-d tensors)."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _dumps(value: Any) -> str:
    # NaN and inf stay NaN and inf (Python's json writes and reads them); floats round-trip exactly
    return json.dumps(value, default=_plain, separators=(",", ":"))


def _config_from(text: Optional[str]) -> Optional[TrainConfig]:
    if not text:
        return None
    values = {k: v for k, v in json.loads(text).items() if k in FIELDS}
    try:
        return TrainConfig.from_dict(values)
    except ValueError:
        # written by a version with other ranges: keep every value this one accepts
        config = TrainConfig()
        for k, v in values.items():
            try:
                config = config.replace(**{k: v})
            except ValueError:
                continue    # this field falls back to its default
        return config


def _stored_id(run) -> Optional[str]:
    if run is None:
        return None
    return getattr(run, "store_id", None) or getattr(run, "id", None)


def _error_text(error: Optional[BaseException]) -> Optional[str]:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"


# -- the store ------------------------------------------------------------------------------------------

class _Active:
    """What the store remembers about a run it is writing."""

    __slots__ = ("key", "written", "warnings_sig")

    def __init__(self, key: str):
        self.key = key
        self.written = 0            # epoch records already in the database
        self.warnings_sig = None    # what the warnings looked like at the last write


class RunStore:
    """One store folder: the run database and the weights beside it.

    A ``RunStore`` may be shared by several Trainers and threads: each thread
    gets its own SQLite connection (connections are not shared across
    threads). Use :meth:`open_or_warn` where a store that cannot be opened
    should not stop training.
    """

    def __init__(self, path):
        self.path = Path(path).expanduser().resolve()
        self.db_path = self.path / DB_NAME
        self.weights_dir = self.path / WEIGHTS_DIR
        self._local = threading.local()
        self._active: dict[Any, _Active] = {}
        self._active_lock = threading.Lock()
        self.last_error: Optional[BaseException] = None
        self.path.mkdir(parents=True, exist_ok=True)
        self.weights_dir.mkdir(exist_ok=True)
        _init_db(self.db_path)

    @classmethod
    def open_or_warn(cls, path) -> Optional["RunStore"]:
        """Open the store at ``path``; on failure warn (``StoreWarning``) and return None."""
        try:
            return cls(path)
        except (OSError, sqlite3.Error) as e:
            where = os.path.abspath(os.path.expanduser(os.fspath(path)))
            warnings.warn(
                f"nb_trainer cannot keep run records in {where!r}: {type(e).__name__}: {e}. "
                "Training goes on without a store, so this kernel's runs will not survive a restart. "
                "Pass store='a/writable/folder' to keep them, or store=None to silence this warning.",
                StoreWarning, stacklevel=4)
            return None

    # -- connections ---------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.db_path)
            self._local.conn = conn
        return conn

    def release(self) -> None:
        """Close this thread's connection (a run's thread calls it when the run ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    # -- writing (the engine's thread) --------------------------------------------------
    def key_of(self, run) -> Optional[str]:
        """The id ``run`` is stored under (its own id unless another process took it first)."""
        active = self._active.get(run)
        return active.key if active is not None else getattr(run, "store_id", None)

    def record_start(self, run, model_name: Optional[str] = None, fingerprint: Optional[str] = None) -> str:
        """Write the run's row (and any warnings so far). Returns the id it is stored under."""
        conn = self._conn()
        with _transaction(conn):
            active = self._active.get(run)
            if active is None:
                active = self._insert(conn, run, model_name, fingerprint)
            else:
                conn.execute(_UPDATE_RUN, self._row(run, active.key))
            self._put_new(conn, run, active)
        return active.key

    def record_epoch(self, run) -> None:
        """Write what changed since the last write: new epochs, warnings, status. One transaction."""
        conn = self._conn()
        with _transaction(conn):
            active = self._active.get(run) or self._insert(conn, run, None)
            conn.execute(_UPDATE_RUN, self._row(run, active.key))
            self._put_new(conn, run, active)

    def record_end(self, run, best_state: Optional[dict] = None) -> None:
        """Save the best weights, then write the final status. Forgets the run afterwards."""
        conn = self._conn()
        try:
            active = self._active.get(run)
            if active is None:
                with _transaction(conn):
                    active = self._insert(conn, run, None)
            weights = self._save_weights(active.key, best_state) if best_state else None
            with _transaction(conn):
                conn.execute(_UPDATE_RUN, self._row(run, active.key, weights=weights))
                self._put_new(conn, run, active)
        finally:
            with self._active_lock:
                self._active.pop(run, None)

    def _insert(self, conn, run, model_name, fingerprint: Optional[str] = None) -> _Active:
        base = run.id
        key = base
        while True:
            row = self._row(run, key)
            initial = getattr(run, "initial_config", None) or run.config
            row.update(task=run.task, model=model_name, initial_config=_dumps(initial.to_dict()),
                       note=run.note, parent=_stored_id(run.parent),
                       started_at=run.started_at or time.time(), weights=None, fingerprint=fingerprint,
                       **_owner())
            if conn.execute(_INSERT_RUN, row).rowcount == 1:
                break
            # another kernel made a run with the same id (same second, same counter): keep both
            key = f"{base}-{uuid.uuid4().hex[:6]}"
        active = _Active(key)
        with self._active_lock:
            self._active[run] = active
        if key != run.id:
            run.store_id = key
        return active

    @staticmethod
    def _row(run, key: str, weights: Optional[str] = None) -> dict:
        return {
            "id": key, "config": _dumps(run.config.to_dict()),
            # at the run's end the status is set after the end hooks: its outcome is already known
            "status": getattr(run, "outcome", None) or run.status,
            "error": _error_text(run.error), "stop_reason": run.stop_reason or None,
            "best_epoch": run.best_epoch, "best_val_loss": run.best_val_loss, "steps": run.step,
            "changes": _dumps(run.changes), "ended_at": run.ended_at, "updated_at": time.time(),
            "weights": weights,
        }

    @staticmethod
    def _put_new(conn, run, active: _Active) -> None:
        epochs = run.epochs
        n = len(epochs)
        if n > active.written:
            conn.executemany(_PUT_EPOCH, [(active.key, int(e.get("epoch", i + 1)), _dumps(e))
                                          for i, e in enumerate(epochs[active.written:n], active.written)])
            active.written = n
        sig = tuple((w.code, w.count, w.severity, w.step, w.epoch, w.message) for w in run.warnings)
        if sig != active.warnings_sig:
            conn.executemany(_PUT_WARNING, [(active.key, w.code, i, _dumps(w.to_dict()))
                                            for i, w in enumerate(run.warnings)])
            active.warnings_sig = sig

    def _save_weights(self, key: str, state: dict) -> str:
        import torch
        name = f"{key}.pt"
        final = self.weights_dir / name
        tmp = self.weights_dir / f".{name}.{os.getpid()}.tmp"
        cpu = {k: v.detach().to("cpu", copy=True) if hasattr(v, "detach") else v for k, v in state.items()}
        torch.save(cpu, tmp)
        os.replace(tmp, final)      # readers never see half a file
        return name

    # -- reading -------------------------------------------------------------------------
    def runs(self) -> list["RunRecord"]:
        """Every run in this store, oldest first."""
        return _load(self.db_path, self.path)

    def delete(self, run_id: str) -> bool:
        """Remove a run's records and weights. Returns whether the run was there."""
        conn = self._conn()
        with _transaction(conn):
            row = conn.execute("SELECT weights FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM epochs WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM warnings WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id=?", (run_id,))
        if row[0]:
            (self.weights_dir / row[0]).unlink(missing_ok=True)
        return True

    def __repr__(self) -> str:
        return f"<RunStore {str(self.path)!r}>"


def _connect(db_path: Path) -> sqlite3.Connection:
    # isolation_level=None: we open transactions ourselves (BEGIN IMMEDIATE), one per write
    conn = sqlite3.connect(os.fspath(db_path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    conn.execute("PRAGMA synchronous = NORMAL")   # in WAL mode: durable against a killed process
    return conn


class _transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on error).

    IMMEDIATE takes the write lock at the start, so two writers queue on the
    busy timeout instead of one failing when it upgrades a read lock.
    """

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, tb):
        if kind is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        return False


def _init_db(db_path: Path) -> None:
    conn = _connect(db_path)
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            # switching to WAL can answer "locked" without waiting on the busy timeout when
            # another process is creating the same database: retry for as long as a writer would
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"the database could not be put in WAL mode (it is in {mode!r} mode)")
        with _transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{db_path} was written by a newer nb_trainer (schema {version}; this one knows {SCHEMA_VERSION})")
            # statement by statement: executescript() would COMMIT the transaction first
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            # stores made before the fingerprint column: add it (older readers ignore it)
            if "fingerprint" not in {row[1] for row in conn.execute("PRAGMA table_info(runs)")}:
                conn.execute("ALTER TABLE runs ADD COLUMN fingerprint TEXT")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        conn.close()


# -- records read back -----------------------------------------------------------------------------------

class RunRecord(RunReading):
    """A run read back from a store. Reads like a :class:`~nb_trainer.Run`.

    Attributes
    ----------
    id, task, model : str
        ``model`` is the model's class name.
    config : TrainConfig
        The config at the last write (live changes applied).
    initial_config : TrainConfig
        The config the run started with.
    status : str
        As stored, except a run whose process died reads "interrupted".
    error : str or None
        "TypeName: message" of a failed run.
    epochs : list of dict
    warnings : list of HealthWarning
    changes : list of dict
        Live changes: ``{"step", "epoch", "changes"}``.
    note, stop_reason, parent : str
    best_epoch, best_val_loss, steps, started_at, ended_at, updated_at
    weights_path : pathlib.Path or None
        The best weights (``load_into`` loads them).
    """

    def __init__(self, row: sqlite3.Row, epochs: list, warnings_: list, store_path: Path):
        self.id: str = row["id"]
        self.task: str = row["task"] or ""
        self.model: Optional[str] = row["model"]
        self.config: TrainConfig = _config_from(row["config"])
        self.initial_config: TrainConfig = _config_from(row["initial_config"]) or self.config
        self.stored_status: str = row["status"]
        self.error: Optional[str] = row["error"]
        self.stop_reason: str = row["stop_reason"] or ""
        self.note: str = row["note"] or ""
        self.parent: Optional[str] = row["parent"]
        self.best_epoch: Optional[int] = row["best_epoch"]
        self.best_val_loss: Optional[float] = row["best_val_loss"]
        self.steps: int = row["steps"] or 0
        self.changes: list = json.loads(row["changes"]) if row["changes"] else []
        self.started_at: Optional[float] = row["started_at"]
        self.ended_at: Optional[float] = row["ended_at"]
        self.updated_at: Optional[float] = row["updated_at"]
        self.epochs: list[dict] = epochs
        self.warnings: list[HealthWarning] = warnings_
        self.store_path = store_path
        self.weights_path: Optional[Path] = store_path / WEIGHTS_DIR / row["weights"] if row["weights"] else None
        self.owner = {"host": row["owner_host"], "pid": row["owner_pid"]}
        self.fingerprint: Optional[str] = row["fingerprint"] if "fingerprint" in row.keys() else None
        self.status = self.stored_status
        if self.stored_status in LIVE_STATUSES:
            alive = owner_alive(row["owner_host"], row["owner_boot"], row["owner_pid"], row["owner_start"])
            if alive is False:
                self.status = "interrupted"
                if not self.stop_reason:
                    self.stop_reason = (f"the process that ran it (pid {row['owner_pid']}) ended during the run; "
                                        f"{len(epochs)} finished epoch(s) were kept")

    # Run-like reading
    @property
    def done(self) -> bool:
        return self.status not in LIVE_STATUSES

    @property
    def elapsed(self) -> float:
        if self.started_at is None:
            return 0.0
        end = self.ended_at or (self.updated_at if self.status == "interrupted" else None) or time.time()
        return end - self.started_at

    def load_into(self, model, strict: bool = True):
        """Load this run's best weights into ``model`` (an ``nn.Module``); returns the model."""
        return load_weights(self.store_path, self.id, model, strict=strict)

    def state_dict(self) -> dict:
        """This run's best weights as a state dict (tensors on the CPU)."""
        return load_weights(self.store_path, self.id)

    def to_record(self) -> dict:
        return {
            "id": self.id, "task": self.task, "config": self.config.to_dict(), "status": self.status,
            "error": self.error, "epochs": [dict(e) for e in self.epochs],
            "warnings": [w.to_dict() for w in self.warnings], "changes": list(self.changes),
            "note": self.note, "best_epoch": self.best_epoch, "started_at": self.started_at,
            "ended_at": self.ended_at, "steps": self.steps,
        }


def _load(db_path: Path, store_path: Path) -> list[RunRecord]:
    conn = _connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        # one read transaction: a consistent snapshot even while other processes write
        conn.execute("BEGIN")
        rows = conn.execute("SELECT * FROM runs ORDER BY started_at, rowid").fetchall()
        epochs: dict[str, list] = {}
        for run_id, record in conn.execute("SELECT run_id, record FROM epochs ORDER BY run_id, epoch"):
            epochs.setdefault(run_id, []).append(json.loads(record))
        warns: dict[str, list] = {}
        for run_id, record in conn.execute("SELECT run_id, record FROM warnings ORDER BY run_id, pos"):
            warns.setdefault(run_id, []).append(HealthWarning.from_dict(json.loads(record)))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return [RunRecord(r, epochs.get(r["id"], []), warns.get(r["id"], []), store_path) for r in rows]


def load_runs(path=".nb_trainer") -> list[RunRecord]:
    """Every run kept in the store at ``path`` (from this and earlier kernels), oldest first.

    A run whose kernel died mid-run reads back with status "interrupted" and
    the epochs it had finished. Raises ``FileNotFoundError`` when ``path``
    is not a store folder.
    """
    store_path = Path(path).expanduser().resolve()
    db_path = store_path / DB_NAME
    if not db_path.is_file():
        if not store_path.exists():
            raise FileNotFoundError(f"no run store at {str(store_path)!r}: the folder does not exist "
                                    "(a Trainer creates it when its first run starts)")
        raise FileNotFoundError(f"no run store at {str(store_path)!r}: the folder has no {DB_NAME}")
    return _load(db_path, store_path)


def load_weights(path, run_id: str, model=None, strict: bool = True):
    """The best weights of run ``run_id`` in the store at ``path``.

    With ``model``, load them into it and return it; without, return the
    state dict (tensors on the CPU). Files are read with
    ``torch.load(weights_only=True)``: a file holding anything but tensors
    and plain containers is refused (``pickle.UnpicklingError``), never run.
    """
    import torch
    store_path = Path(path).expanduser().resolve()
    conn = _connect(store_path / DB_NAME)
    try:
        row = conn.execute("SELECT weights, status FROM runs WHERE id=?", (run_id,)).fetchone()
    finally:
        conn.close()
    if row is None:
        raise KeyError(f"run_id={run_id!r}: no such run in the store at {str(store_path)!r}")
    if not row[0]:
        raise FileNotFoundError(
            f"run {run_id!r} has no saved weights (status {row[1]!r}): weights are saved when a run "
            "ends after at least one finished epoch")
    file = store_path / WEIGHTS_DIR / row[0]
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise pickle.UnpicklingError(
            f"refused to load {str(file)!r}: it holds objects other than tensors, and loading it "
            f"could run arbitrary code ({e})") from None
    if model is None:
        return state
    model.load_state_dict(state, strict=strict)
    return model


# -- the engine callback ----------------------------------------------------------------------------------

class StoreCallback:
    """Engine callback that writes each run of a Trainer to a :class:`RunStore`.

    A store failure (disk full, a lock held past the busy timeout) never stops
    training: it is warned about once per run (``StoreWarning``), kept in
    ``store.last_error``, and the next epoch's write catches up what was missed.
    """

    def __init__(self, store: RunStore, trainer=None):
        self.store = store
        self.trainer = trainer
        self._failed: set = set()

    def on_run_start(self, run, engine) -> None:
        model = getattr(engine, "model", None)
        self._guard(run, self.store.record_start, run, type(model).__name__ if model is not None else None,
                    getattr(self.trainer, "fingerprint", None))

    def on_log(self, run, engine, new) -> None: ...

    def on_probe(self, run, engine, probe) -> None: ...

    def on_epoch_end(self, run, engine, record) -> None:
        self._guard(run, self.store.record_epoch, run)

    def on_run_end(self, run, engine) -> None:
        try:
            self._guard(run, self.store.record_end, run, getattr(engine, "best_state", None))
        finally:
            self._failed.discard(run)
            self.store.release()

    def _guard(self, run, fn, *args) -> None:
        try:
            fn(*args)
        except (sqlite3.Error, OSError) as e:
            self.store.last_error = e
            if run not in self._failed:
                self._failed.add(run)
                warnings.warn(f"nb_trainer could not write run {run.id} to the store at "
                              f"{str(self.store.path)!r}: {type(e).__name__}: {e}. Training goes on; "
                              "the next epoch's write will retry.", StoreWarning, stacklevel=2)
