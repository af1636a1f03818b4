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

What a store promises under faults (tests/test_store_faults.py checks each):

- a write that fails (a full disk, a file size limit, the folder made
  unwritable, a lock held past the busy timeout) never stops training: it is
  warned about once per run (``StoreWarning``); what it did not write is
  written by the next write of that run, and a run whose *final* write failed
  is written at this process's next write to the store;
- weights that cannot be written (same faults) leave no half file behind;
  the run's final record is written all the same, without weights;
- a database that is empty, not SQLite, not a run store, or damaged raises
  :class:`StoreCorruptError` naming the file and what to do; nb_trainer never
  writes into, deletes or replaces it;
- a damaged row (invalid JSON, a value of the wrong type) makes only that run
  read in part: :attr:`RunRecord.problems` says what was wrong, and
  :func:`load_runs` warns once naming the runs;
- a weights entry that is not a plain file name inside ``weights/`` (``../x``,
  an absolute path, a link out of the folder) is never read nor deleted.

This module knows plain records only: torch is imported inside the two
functions that save and load weights.
"""
from __future__ import annotations

import contextlib
import json
import numbers
import os
import pickle
import pickletools
import socket
import sqlite3
import threading
import time
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

from .callbacks.base import Callback
from .config import FIELDS, TrainConfig, check_value
from .health.warning import HealthWarning
from .run import STATUSES, RunReading

DB_NAME = "runs.sqlite"
WEIGHTS_DIR = "weights"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 30.0       # a writer waits this long for another process's commit
LIVE_STATUSES = ("pending", "running", "paused")
UNKNOWN_STATUS = "unknown"  # what a record whose stored status is not a run status reads

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
    continued_from TEXT,            -- JSON: {"id", "number", "epoch", "step"} of the run it continued, or NULL
    final_weights  TEXT,            -- file name under weights/ of the weights it ended with (continuing)
    final_epoch    INTEGER          -- the epoch those weights are from,
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
                  owner_host, owner_boot, owner_pid, owner_start, continued_from, fingerprint, sweep)
VALUES (:id, :task, :model, :config, :initial_config, :status, :error, :stop_reason, :note, :parent,
        :best_epoch, :best_val_loss, :steps, :changes, :started_at, :ended_at, :updated_at, :weights,
        :owner_host, :owner_boot, :owner_pid, :owner_start, :continued_from, :fingerprint, :sweep)
ON CONFLICT(id) DO NOTHING
"""
_UPDATE_RUN = """
UPDATE runs SET config=:config, status=:status, error=:error, stop_reason=:stop_reason,
                best_epoch=:best_epoch, best_val_loss=:best_val_loss, steps=:steps, changes=:changes,
                ended_at=:ended_at, updated_at=:updated_at, weights=COALESCE(:weights, weights),
                final_weights=COALESCE(:final_weights, final_weights), final_epoch=:final_epoch
WHERE id=:id
"""
# columns added since the first schema: an older database gets them (NULL) when it is opened
_ADDED_COLUMNS = (("continued_from", "TEXT"), ("final_weights", "TEXT"), ("final_epoch", "INTEGER"),
                  ("fingerprint", "TEXT"), ("sweep", "TEXT"))

_PUT_EPOCH = "INSERT OR REPLACE INTO epochs (run_id, epoch, record) VALUES (?, ?, ?)"
_PUT_WARNING = "INSERT OR REPLACE INTO warnings (run_id, code, pos, record) VALUES (?, ?, ?, ?)"


class StoreWarning(UserWarning):
    """The run store could not be opened or written, or some of it could not be read."""


class StoreCorruptError(sqlite3.DatabaseError):
    """A store's database is empty, not SQLite, not a run store, or damaged.

    The message names the file and what to do. nb_trainer never writes into,
    deletes or replaces such a file.
    """

    def __init__(self, db_path, what: str):
        self.db_path = Path(db_path)
        self.what = what
        super().__init__(
            f"the run store database {str(db_path)!r} cannot be used: {what}. nb_trainer has not changed it. "
            f"To keep its runs, restore it from a backup, or try `sqlite3 {db_path} .recover` (SQLite's own "
            "recovery) and use the result; to start afresh, move the file away (a new store is then made in "
            "its folder) or pass another store= folder.")


class WeightsWriteError(OSError):
    """A run's weights file could not be written (the run's records are written all the same)."""


class CorruptWeightsError(ValueError):
    """A weights file is empty, truncated or not a PyTorch file."""


def check_store_path(value, name: str = "store") -> str:
    """``value`` as a store folder path, or ``TypeError``/``ValueError`` naming ``name``.

    Accepted: a non-empty ``str`` or ``os.PathLike`` (``None``, "keep nothing on
    disk", is the caller's to handle).
    """
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}={value!r} is not accepted: {name} must be a folder path (a str or "
                        "pathlib.Path), or None to keep nothing on disk")
    text = os.fspath(value)
    if not isinstance(text, str):
        raise TypeError(f"{name}={value!r} is not accepted: {name} must be a folder path given as text, "
                        "not bytes")
    if not text.strip():
        raise ValueError(f"{name}={value!r} is not a folder: pass a folder path (e.g. '.nb_trainer'), or None "
                         "to keep nothing on disk")
    if "\x00" in text:
        raise ValueError(f"{name}={value!r} is not a folder path: it holds a NUL character")
    return text


# -- who owns a run: this process, identified so that a reused pid is not mistaken for it ----------

def _read(path: str) -> Optional[str]:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _proc_stat(pid: int) -> Optional[tuple[str, str]]:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, or None."""
    text = _read(f"/proc/{int(pid)}/stat")
    if not text or ")" not in text:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after the last ")"
    fields = text[text.rindex(")") + 2:].split()
    if len(fields) < 20:
        return None
    return fields[0], fields[19]        # field 3 (state) and field 22 (starttime)


_BOOT_ID = (_read("/proc/sys/kernel/random/boot_id") or "").strip() or None


def _owner() -> dict:
    stat = _proc_stat(os.getpid())
    return {"owner_host": socket.gethostname(), "owner_boot": _BOOT_ID,
            "owner_pid": os.getpid(), "owner_start": stat[1] if stat else None}


def owner_alive(host: Optional[str], boot: Optional[str], pid: Optional[int],
                start: Optional[str]) -> Optional[bool]:
    """Is the process that wrote a run still running? None: cannot tell (another machine)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
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
    except OverflowError:               # not a pid any process can have
        return False
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


def _stored_id(run) -> Optional[str]:
    if run is None:
        return None
    return getattr(run, "store_id", None) or getattr(run, "id", None)


def _error_text(error: Optional[BaseException]) -> Optional[str]:
    if error is None:
        return None
    return f"{type(error).__name__}: {error}"


def weights_name(key: str) -> str:
    """The weights file name of the run stored as ``key``: a plain file name, whatever ``key`` holds."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(key)).lstrip(".")
    return (safe or "run") + ".pt"


def _weights_file(weights_dir: Path, name) -> Optional[Path]:
    """``weights_dir / name`` when ``name`` is a plain file name that stays inside the folder, else None.

    A stored name comes from a file anyone could have written (a shared folder, a
    downloaded notebook's ``.nb_trainer/``): ``../x``, ``/etc/x``, ``a/b`` and a link
    pointing out of the folder are refused rather than read or deleted.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or "\x00" in name:
        return None
    if len(name.encode("utf-8", "surrogatepass")) > 255:     # longer than any file name can be
        return None
    if os.path.basename(name) != name or "/" in name or "\\" in name or os.path.isabs(name):
        return None
    path = weights_dir / name
    try:
        inside = path.resolve().parent == weights_dir.resolve()
    except (OSError, RuntimeError):     # a link loop
        return None
    return path if inside else None


# -- the store ------------------------------------------------------------------------------------------

class _Active:
    """What the store knows is in the database for a run it is writing."""

    __slots__ = ("key", "written", "warnings_sig")

    def __init__(self, key: Optional[str], written: int = 0, warnings_sig=None):
        self.key = key
        self.written = written              # epoch records already in the database
        self.warnings_sig = warnings_sig    # what the warnings looked like at the last write

    def copy(self) -> "_Active":
        return _Active(self.key, self.written, self.warnings_sig)


class RunStore:
    """One store folder: the run database and the weights beside it.

    A ``RunStore`` may be shared by several Trainers and threads: each thread
    gets its own SQLite connection (connections are not shared across
    threads). Use :meth:`open_or_warn` where a store that cannot be opened
    should not stop training.
    """

    def __init__(self, path):
        self.path = Path(check_store_path(path)).expanduser().resolve()
        self.db_path = self.path / DB_NAME
        self.weights_dir = self.path / WEIGHTS_DIR
        self._local = threading.local()
        self._active: dict[Any, _Active] = {}
        self._active_lock = threading.Lock()
        # runs whose final write failed, with their weights file name (or None): written at the next write
        self._unwritten: dict[Any, Optional[str]] = {}
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
                f"nb_trainer cannot keep run records in {where!r}: {type(e).__name__}: {e} "
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
        return active.key if active is not None and active.key else getattr(run, "store_id", None)

    @property
    def unwritten(self) -> list:
        """Runs whose final write failed; the next write to this store writes them."""
        with self._active_lock:
            return list(self._unwritten)

    def record_start(self, run, model_name: Optional[str] = None, fingerprint: Optional[str] = None) -> str:
        """Write the run's row (and any warnings so far). Returns the id it is stored under."""
        self._catch_up()
        return self._write(run, model_name, fingerprint=fingerprint).key

    def record_epoch(self, run) -> None:
        """Write what changed since the last write: new epochs, warnings, status. One transaction."""
        self._catch_up()
        self._write(run)

    def record_end(self, run, best_state: Optional[dict] = None, final_state: Optional[dict] = None) -> None:
        """Save the best weights (and the final ones, when they are another epoch's: a later run can
        continue from them), then write the final status. Forgets the run afterwards.

        Weights that cannot be written raise :class:`WeightsWriteError` *after*
        the final record is written; a final record that cannot be written is
        kept and written by the next write to this store.
        """
        self._catch_up()
        weights, weights_error = None, None
        try:
            # the row first: the weights file is named by the id the run is stored under
            active = self._active.get(run) or self._write(run)
            final = None
            try:
                if best_state:
                    weights = self._save_weights(active.key, best_state)
                if final_state:
                    same = weights is not None and getattr(run, "final_epoch", None) == run.best_epoch
                    final = weights if same else self._save_weights(active.key + ".final", final_state)
            except WeightsWriteError as e:
                weights_error = e
            self._write(run, weights=weights, final_weights=final)
        except (sqlite3.Error, OSError):
            with self._active_lock:
                self._unwritten[run] = weights
            raise
        with self._active_lock:
            self._active.pop(run, None)
        if weights_error is not None:
            raise weights_error

    def _catch_up(self) -> None:
        """Write the runs whose final write failed (a full disk that has since been freed)."""
        with self._active_lock:
            pending, self._unwritten = self._unwritten, {}
        try:
            while pending:
                run, weights = next(iter(pending.items()))
                self._write(run, weights=weights)
                del pending[run]
                with self._active_lock:
                    self._active.pop(run, None)
        finally:
            if pending:
                with self._active_lock:
                    self._unwritten.update(pending)

    def _write(self, run, model_name: Optional[str] = None, weights: Optional[str] = None,
               final_weights: Optional[str] = None, fingerprint: Optional[str] = None) -> _Active:
        """Write the run's row and what is new since the last write, in one transaction.

        What the store remembers having written changes only once the
        transaction has committed: a write that fails (at any point, the
        commit included) leaves it as it was, so the next write writes it all.
        """
        conn = self._conn()
        known = self._active.get(run)
        state = _Active(None) if known is None else known.copy()
        with _transaction(conn):
            if state.key is None:
                state.key = self._insert(conn, run, model_name, fingerprint)
            else:
                conn.execute(_UPDATE_RUN, self._row(run, state.key, weights=weights, final_weights=final_weights))
            self._put_new(conn, run, state)
        with self._active_lock:
            self._active[run] = state
        if state.key != run.id:
            run.store_id = state.key
        return state

    def _insert(self, conn, run, model_name, fingerprint: Optional[str] = None) -> str:
        base = run.id
        key = base
        while True:
            row = self._row(run, key)
            initial = getattr(run, "initial_config", None) or run.config
            row.update(task=run.task, model=model_name, initial_config=_dumps(initial.to_dict()),
                       note=run.note, parent=_stored_id(run.parent),
                       continued_from=_dumps(run.continued_from) if getattr(run, "continued_from", None) else None,
                       started_at=run.started_at or time.time(), weights=None, fingerprint=fingerprint,
                       sweep=getattr(run, "sweep_id", None) or None, **_owner())
            if conn.execute(_INSERT_RUN, row).rowcount == 1:
                return key
            # another kernel made a run with the same id (same second, same counter): keep both
            key = f"{base}-{uuid.uuid4().hex[:6]}"

    @staticmethod
    def _row(run, key: str, weights: Optional[str] = None, final_weights: Optional[str] = None) -> dict:
        return {
            "id": key, "config": _dumps(run.config.to_dict()),
            # at the run's end the status is set after the end hooks: its outcome is already known
            "status": getattr(run, "outcome", None) or run.status,
            "error": _error_text(run.error), "stop_reason": run.stop_reason or None,
            "best_epoch": run.best_epoch, "best_val_loss": run.best_val_loss, "steps": run.step,
            "changes": _dumps(run.changes), "ended_at": run.ended_at, "updated_at": time.time(),
            "weights": weights, "final_weights": final_weights, "final_epoch": getattr(run, "final_epoch", None),
        }

    @staticmethod
    def _put_new(conn, run, state: _Active) -> None:
        epochs = run.epochs
        n = len(epochs)
        if n > state.written:
            conn.executemany(_PUT_EPOCH, [(state.key, int(e.get("epoch", i + 1)), _dumps(e))
                                          for i, e in enumerate(epochs[state.written:n], state.written)])
            state.written = n
        sig = tuple((w.code, w.count, w.severity, w.step, w.epoch, w.message) for w in run.warnings)
        if sig != state.warnings_sig:
            conn.executemany(_PUT_WARNING, [(state.key, w.code, i, _dumps(w.to_dict()))
                                            for i, w in enumerate(run.warnings)])
            state.warnings_sig = sig

    def _save_weights(self, key: str, state: dict) -> str:
        """Write ``weights/<key>.pt`` (through a temporary file, so readers never see half a file)."""
        import torch
        name = weights_name(key)
        final = self.weights_dir / name
        tmp = self.weights_dir / f".{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        cpu = {k: v.detach().to("cpu", copy=True) if hasattr(v, "detach") else v for k, v in state.items()}
        out = None
        try:
            if not self.weights_dir.is_dir():
                if self.weights_dir.exists() or self.weights_dir.is_symlink():
                    raise NotADirectoryError(f"{str(self.weights_dir)!r} is not a folder")
                self.weights_dir.mkdir()    # deleted since the store was opened: made again
            with open(tmp, "wb") as f:
                out = _RecordingFile(f)
                torch.save(cpu, out)
            os.replace(tmp, final)
        except (OSError, RuntimeError) as e:
            # torch reports a failed write as a RuntimeError ("enforce fail at inline_container.cc"):
            # the OSError the file raised underneath (no space, file too large) says what happened
            cause = out.error if out is not None and out.error is not None else e
            with contextlib.suppress(OSError):     # the write's own error is what is reported
                tmp.unlink()
            error = WeightsWriteError(
                f"the weights could not be written to {str(final)!r}: {type(cause).__name__}: {cause}")
            error.errno = getattr(cause, "errno", None)
            raise error from e
        return name

    # -- reading -------------------------------------------------------------------------
    def runs(self) -> list["RunRecord"]:
        """Every run in this store, oldest first."""
        return _load(self.db_path, self.path)

    def delete(self, run_id: str) -> bool:
        """Remove a run's records and weights. Returns whether the run was there.

        A weights entry that does not name a file inside the store's weights
        folder (a crafted or damaged row) is left alone: only the records go,
        with a ``StoreWarning``.
        """
        conn = self._conn()
        with _transaction(conn):
            row = conn.execute("SELECT weights, final_weights FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM epochs WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM warnings WHERE run_id=?", (run_id,))
            conn.execute("DELETE FROM runs WHERE id=?", (run_id,))
        for entry in dict.fromkeys(e for e in row if e is not None):
            file = _weights_file(self.weights_dir, entry)
            if file is None:
                warnings.warn(f"run {run_id!r} was deleted from {str(self.db_path)!r}, but its weights entry "
                              f"{entry!r} does not name a file inside {str(self.weights_dir)!r}: no file was "
                              "deleted (the store is damaged or was crafted)", StoreWarning, stacklevel=2)
            else:
                file.unlink(missing_ok=True)
        return True

    def final_weights(self, run) -> Optional[dict]:
        """The final weights stored for ``run`` (a Run of this kernel), or None when there are none."""
        key = self.key_of(run) or run.id
        rows, epochs, _ = _read_rows(self.db_path, _SELECT_RUNS + " WHERE id=?", (key,))
        if not rows:
            return None
        record = RunRecord(rows[0], [None] * len(epochs.get(key, [])), [], self.path)
        return None if record.final_weights_path is None else record.final_state_dict()

    def __repr__(self) -> str:
        return f"<RunStore {str(self.path)!r}>"


class _RecordingFile:
    """A file torch.save writes through, keeping the OSError a failed write raised."""

    def __init__(self, f):
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self.f.flush()
        except OSError as e:
            self.error = e
            raise


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


_CORRUPT_CODES = (getattr(sqlite3, "SQLITE_CORRUPT", 11), getattr(sqlite3, "SQLITE_NOTADB", 26))


def _is_corruption(error: sqlite3.Error) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _CORRUPT_CODES
    text = str(error)
    return "malformed" in text or "not a database" in text


def _create_db(db_path: Path) -> None:
    """Make a new database with the schema, then put it in place only if none is there.

    Built beside its final name and hard-linked into place, so a database file
    that exists was complete when it appeared: an empty one is damage, not
    another process halfway through creating it.
    """
    tmp = db_path.with_name(f".{db_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        conn = sqlite3.connect(os.fspath(tmp), isolation_level=None)
        try:
            conn.execute("BEGIN")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode = WAL")     # kept in the file's header
        finally:
            conn.close()
        try:
            os.link(tmp, db_path)       # fails if another process put its database there first
        except FileExistsError:
            pass                        # theirs is as good as ours
        except OSError:
            # a file system without hard links: rename instead (two processes creating the
            # same store at the same instant may then each keep their own first runs)
            if not db_path.exists():
                os.replace(tmp, db_path)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            with contextlib.suppress(OSError):
                leftover.unlink()


def _open_checked(db_path: Path, deep: bool) -> sqlite3.Connection:
    """A connection to ``db_path``, once it is known to be a sound run store database.

    Raises :class:`StoreCorruptError` otherwise. Reads only. ``deep``: also run
    SQLite's ``quick_check`` over every page.
    """
    try:
        size = db_path.stat().st_size
    except FileNotFoundError:
        raise StoreCorruptError(db_path, "the file is gone") from None
    if size == 0:
        raise StoreCorruptError(db_path, "the file is empty (0 bytes): it was truncated or never finished")
    conn = None
    try:
        conn = _connect(db_path)        # reads the file's header: "file is not a database" comes here
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "runs" not in tables:
            raise StoreCorruptError(db_path, "it is an SQLite database without nb_trainer's tables (no table "
                                             "'runs'): not a run store")
        if deep:
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if verdict != "ok":
                raise StoreCorruptError(db_path, f"it is damaged (SQLite's quick_check says: {verdict})")
        return conn
    except BaseException as e:
        if conn is not None:
            conn.close()
        if isinstance(e, sqlite3.DatabaseError) and not isinstance(e, StoreCorruptError) and _is_corruption(e):
            raise StoreCorruptError(db_path, f"it is not a readable SQLite database ({e})") from None
        raise


def _init_db(db_path: Path) -> None:
    if not db_path.exists():
        _create_db(db_path)
    conn = _open_checked(db_path, deep=True)
    try:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            # switching to WAL can answer "locked" without waiting on the busy timeout when
            # another process is opening the same database: retry for as long as a writer would
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"the database could not be put in WAL mode (it is in {mode!r} mode)")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"{db_path} was written by a newer nb_trainer (schema {version}; this one knows {SCHEMA_VERSION})")
        with _transaction(conn):
            # statement by statement: executescript() would COMMIT the transaction first
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
            for name, kind in _ADDED_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
            if version != SCHEMA_VERSION:
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        conn.close()


# -- records read back: every stored value is checked, so one damaged row cannot stop the others ---------

def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n - 1] + "…"


def _text(value: Any, what: str, problems: list, default: Optional[str] = None) -> Optional[str]:
    if value is None:
        return default
    if isinstance(value, str):
        return value
    problems.append(f"{what} is not text ({type(value).__name__} {_short(value)})")
    return default


def _number(value: Any, what: str, problems: list, integer: bool = False):
    if value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok:
        problems.append(f"{what}={_short(value)} is not {'an integer' if integer else 'a number'}")
        return None
    return int(value) if integer else float(value)


def _json(text: Any, what: str, problems: list, kind: type = dict):
    """``text`` parsed as JSON of ``kind``, or None (with the reason in ``problems``)."""
    if text is None:
        return None
    if not isinstance(text, (str, bytes)):
        problems.append(f"{what} is not JSON text ({type(text).__name__} {_short(text)})")
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:      # JSONDecodeError and UnicodeDecodeError are ValueErrors
        problems.append(f"{what} is not valid JSON ({type(e).__name__}: {str(e)[:80]})")
        return None
    if not isinstance(value, kind):
        problems.append(f"{what} is not a JSON {'object' if kind is dict else 'list'} "
                        f"(it is {type(value).__name__} {_short(value)})")
        return None
    return value


def _options(values: dict, what: str, problems: list) -> dict:
    """The items of ``values`` that are training options with a value this version accepts."""
    kept = {}
    for name, value in values.items():
        if name not in FIELDS:
            problems.append(f"{what} names {_short(name)}, which is not a training option (left out)")
            continue
        try:
            kept[name] = check_value(name, value)
        except ValueError:
            problems.append(f"{what}: {name}={_short(value)} is not accepted by this version (left out)")
    return kept


def _config_from(text: Any, what: str, problems: list) -> Optional[TrainConfig]:
    values = _json(text, what, problems)
    if values is None:
        if text is None:
            problems.append(f"{what} is missing")
        return None
    # keys this version does not know come from other versions (new options): left out quietly
    known = {k: v for k, v in values.items() if k in FIELDS}
    try:
        return TrainConfig.from_dict(known)
    except (ValueError, TypeError):
        # written by a version with other ranges, or edited: keep every value this one accepts
        return TrainConfig.from_dict(_options(known, what, problems))


def _changes_from(text: Any, problems: list) -> list:
    items = _json(text, "changes", problems, list) or []
    changes = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("changes"), dict):
            problems.append(f"changes[{i}] is not a live change ({_short(item)}; left out)")
            continue
        changes.append({"step": _number(item.get("step"), f"changes[{i}].step", problems, integer=True),
                        "epoch": _number(item.get("epoch"), f"changes[{i}].epoch", problems, integer=True),
                        "changes": _options(item["changes"], f"changes[{i}]", problems)})
    return changes


_PLAIN_VALUES = {int, float, type(None)}     # what an epoch record holds (bool is not among them)


def _epoch_from(epoch: Any, text: Any, problems: list) -> Optional[dict]:
    if isinstance(text, str):
        # the sound case, read fast (a store holds one such record per epoch of every run)
        try:
            record = json.loads(text)
        except (ValueError, RecursionError):
            record = None
        if type(record) is dict and type(record.get("epoch")) is int and \
                set(map(type, record.values())) <= _PLAIN_VALUES:
            return record
    what = f"the record of epoch {_short(epoch, 20)}"
    record = _json(text, what, problems)
    if record is None:
        return None
    clean = {}
    for key, value in record.items():
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            clean[key] = value
        else:
            problems.append(f"{what}: {_short(key, 30)}={_short(value)} is not a number (left out)")
    if not (isinstance(clean.get("epoch"), int)):
        if isinstance(epoch, int):
            clean["epoch"] = epoch
        else:
            problems.append(f"{what} has no epoch number (left out)")
            return None
    return clean


def _warning_from(text: Any, problems: list) -> Optional[HealthWarning]:
    record = _json(text, "a warning record", problems)
    if record is None:
        return None
    try:
        w = HealthWarning.from_dict(record)
    except (TypeError, ValueError) as e:
        problems.append(f"a warning could not be read ({str(e)[:100]}; left out)")
        return None
    what = f"warning {w.code}"
    w.message = _text(w.message, f"{what}.message", problems, "")
    w.suggestion = _text(w.suggestion, f"{what}.suggestion", problems, "")
    w.fix = _options(w.fix, f"{what}.fix", problems) if isinstance(w.fix, dict) else {}
    w.step = _number(w.step, f"{what}.step", problems, integer=True)
    w.epoch = _number(w.epoch, f"{what}.epoch", problems, integer=True)
    w.count = max(1, _number(w.count, f"{what}.count", problems, integer=True) or 1)
    return w


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
        As stored, except a run whose process died reads "interrupted", and a
        stored status that is not a run status reads "unknown".
    error : str or None
        "TypeName: message" of a failed run.
    epochs : list of dict
    warnings : list of HealthWarning
    changes : list of dict
        Live changes: ``{"step", "epoch", "changes"}``.
    note, stop_reason, parent : str
    sweep : str or None
        The id of the sweep the run was a trial of.
    best_epoch, best_val_loss, steps, started_at, ended_at, updated_at
    weights_path : pathlib.Path or None
        The best weights (``load_into`` loads them).
    problems : list of str
        What could not be read in this run's stored records (empty for a
        sound run): each damaged value was left out or read as its default.
    """

    def __init__(self, row: sqlite3.Row, epochs: list, warnings_: list, store_path: Path,
                 problems: Optional[list] = None):
        p: list[str] = list(problems or [])
        raw_id = row["id"]
        if isinstance(raw_id, str) and raw_id:
            self.id: str = raw_id
        else:
            p.append(f"id={_short(raw_id)} is not a run id")
            self.id = str(raw_id) if raw_id is not None else f"(row {row['_rowid'] if '_rowid' in row.keys() else '?'})"
        self.task: str = _text(row["task"], "task", p, "")
        self.model: Optional[str] = _text(row["model"], "model", p)
        config = _config_from(row["config"], "config", p)
        self.config: TrainConfig = config if config is not None else TrainConfig()
        self.initial_config: TrainConfig = _config_from(row["initial_config"], "initial_config", p) or self.config
        stored = row["status"]
        self.stored_status: str = stored if isinstance(stored, str) else str(stored)
        self.error: Optional[str] = _text(row["error"], "error", p)
        self.stop_reason: str = _text(row["stop_reason"], "stop_reason", p, "")
        self.note: str = _text(row["note"], "note", p, "")
        self.parent: Optional[str] = _text(row["parent"], "parent", p)
        self.best_epoch: Optional[int] = _number(row["best_epoch"], "best_epoch", p, integer=True)
        self.best_val_loss: Optional[float] = _number(row["best_val_loss"], "best_val_loss", p)
        self.steps: int = _number(row["steps"], "steps", p, integer=True) or 0
        self.changes: list = _changes_from(row["changes"], p)
        self.started_at: Optional[float] = _number(row["started_at"], "started_at", p)
        self.ended_at: Optional[float] = _number(row["ended_at"], "ended_at", p)
        self.updated_at: Optional[float] = _number(row["updated_at"], "updated_at", p)
        self.epochs: list[dict] = epochs
        self.warnings: list[HealthWarning] = warnings_
        self.store_path = store_path
        weights = row["weights"]
        self.weights_path: Optional[Path] = None
        if weights is not None:
            self.weights_path = _weights_file(store_path / WEIGHTS_DIR, weights)
            if self.weights_path is None:
                p.append(f"weights={_short(weights)} does not name a file inside the store's weights folder "
                         "(refused: it is never read nor deleted)")
        keys = row.keys()
        self.sweep: Optional[str] = _text(row["sweep"], "sweep", p) if "sweep" in keys else None  # its sweep
        self.fingerprint: Optional[str] = _text(row["fingerprint"], "fingerprint", p) if "fingerprint" in keys else None
        lineage = _json(row["continued_from"], "continued_from", p) if "continued_from" in keys else None
        self.continued_from: Optional[dict] = lineage if isinstance(lineage, dict) and lineage else None
        self.final_epoch: Optional[int] = (_number(row["final_epoch"], "final_epoch", p, integer=True)
                                           if "final_epoch" in keys else None)
        final = row["final_weights"] if "final_weights" in keys else None
        self.final_weights_path: Optional[Path] = None
        if final is not None:
            self.final_weights_path = _weights_file(store_path / WEIGHTS_DIR, final)
            if self.final_weights_path is None:
                p.append(f"final_weights={_short(final)} does not name a file inside the store's weights folder "
                         "(refused: it is never read nor deleted)")
        host = _text(row["owner_host"], "owner_host", p)
        boot = _text(row["owner_boot"], "owner_boot", p)
        start = _text(row["owner_start"], "owner_start", p)
        pid = _number(row["owner_pid"], "owner_pid", p, integer=True)
        self.owner = {"host": host, "pid": pid}
        if self.stored_status in STATUSES:
            self.status = self.stored_status
        else:
            p.append(f"status={_short(stored)} is not a run status")
            self.status = UNKNOWN_STATUS
        if self.status in LIVE_STATUSES:
            alive = owner_alive(host, boot, pid, start)
            if alive is False:
                self.status = "interrupted"
                if not self.stop_reason:
                    self.stop_reason = (f"the process that ran it (pid {pid}) ended during the run; "
                                        f"{len(epochs)} finished epoch(s) were kept")
        self.problems: list[str] = p

    @property
    def damaged(self) -> bool:
        """Whether some of this run's stored records could not be read (see ``problems``)."""
        return bool(self.problems)

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

    def final_state_dict(self) -> dict:
        """The weights this run ended with (what ``Trainer.start(from_run=record)`` continues from)."""
        if self.final_weights_path is None:
            if self.status in ("finished", "stopped", "diverged") and self.weights_path is not None:
                raise FileNotFoundError(f"run {self.id!r} has no final weights in the store (it was stored by an "
                                        "nb_trainer that kept only the best ones); its best weights are "
                                        "record.state_dict()")
            raise FileNotFoundError(_no_weights(self).replace("saved weights", "final weights"))
        return _read_weights(self.final_weights_path, self.id)

    def to_record(self) -> dict:
        return {
            "id": self.id, "task": self.task, "config": self.config.to_dict(), "status": self.status,
            "error": self.error, "epochs": [dict(e) for e in self.epochs],
            "warnings": [w.to_dict() for w in self.warnings], "changes": list(self.changes),
            "note": self.note, "continued_from": self.continued_from, "final_epoch": self.final_epoch,
            "best_epoch": self.best_epoch, "started_at": self.started_at,
            "ended_at": self.ended_at, "steps": self.steps,
        }


def _store_db(path, name: str = "path") -> tuple[Path, Path]:
    """(store folder, database file) of the store at ``path``; ``FileNotFoundError`` if there is none."""
    store_path = Path(check_store_path(path, name)).expanduser().resolve()
    db_path = store_path / DB_NAME
    if not db_path.is_file():
        if not store_path.exists():
            raise FileNotFoundError(f"no run store at {str(store_path)!r}: the folder does not exist "
                                    "(a Trainer creates it when its first run starts)")
        if db_path.exists():
            raise FileNotFoundError(f"no run store at {str(store_path)!r}: {str(db_path)!r} is not a file")
        raise FileNotFoundError(f"no run store at {str(store_path)!r}: the folder has no {DB_NAME}")
    return store_path, db_path


def _read_rows(db_path: Path, sql: str, args: tuple = (), check: bool = False) -> tuple[list, dict, dict]:
    """Runs matching ``sql`` with their epoch and warning rows, in one read transaction (a snapshot).

    ``check``: also run SQLite's ``quick_check``, and warn when the pages read
    came from a damaged database.
    """
    conn = None
    try:
        conn = _open_checked(db_path, deep=False)
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN")
        rows = conn.execute(sql, args).fetchall()
        # with args (one run's id): only that run's epochs and warnings
        where = " WHERE run_id=?" if args else ""
        epochs: dict = {}
        for run_id, epoch, record in conn.execute(
                f"SELECT run_id, epoch, record FROM epochs{where} ORDER BY run_id, epoch", args):
            epochs.setdefault(run_id, []).append((epoch, record))
        warns: dict = {}
        for run_id, record in conn.execute(f"SELECT run_id, record FROM warnings{where} ORDER BY run_id, pos", args):
            warns.setdefault(run_id, []).append(record)
        verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0] if check else "ok"
        conn.execute("COMMIT")
    except StoreCorruptError:
        raise
    except sqlite3.DatabaseError as e:
        if _is_corruption(e):
            raise StoreCorruptError(db_path, f"it is damaged ({e})") from None
        if "no such table" in str(e) or "no such column" in str(e):
            raise StoreCorruptError(db_path, f"it is not a complete run store ({e})") from None
        raise
    finally:
        if conn is not None:
            conn.close()
    if verdict != "ok":
        warnings.warn(
            f"the run store database {str(db_path)!r} is damaged (SQLite's quick_check says: {verdict}); the "
            f"{len(rows)} runs read from it may lack records, and nb_trainer will not write into it. Keep a copy "
            f"of it; `sqlite3 {db_path} .recover` may get more back.", StoreWarning, stacklevel=4)
    return rows, epochs, warns


def _records(rows, epochs: dict, warns: dict, store_path: Path) -> list[RunRecord]:
    records = []
    for row in rows:
        problems: list[str] = []
        run_epochs = [e for e in (_epoch_from(n, text, problems) for n, text in epochs.get(row["id"], []))
                      if e is not None]
        run_warnings = [w for w in (_warning_from(text, problems) for text in warns.get(row["id"], []))
                        if w is not None]
        records.append(RunRecord(row, run_epochs, run_warnings, store_path, problems))
    return records


_SELECT_RUNS = "SELECT rowid AS _rowid, * FROM runs"


def _load(db_path: Path, store_path: Path) -> list[RunRecord]:
    rows, epochs, warns = _read_rows(db_path, _SELECT_RUNS + " ORDER BY started_at, rowid", check=True)
    records = _records(rows, epochs, warns, store_path)
    damaged = [r for r in records if r.problems]
    if damaged:
        shown = "; ".join(f"{r.id}: " + ", ".join(r.problems[:3]) + (" …" if len(r.problems) > 3 else "")
                          for r in damaged[:5])
        warnings.warn(
            f"{len(damaged)} of the {len(records)} runs in {str(db_path)!r} could not be read in full, and were "
            f"read in part ({shown}{'; …' if len(damaged) > 5 else ''}). Each record's .problems says what was "
            "left out; nothing was changed on disk.", StoreWarning, stacklevel=3)
    return records


def load_runs(path=".nb_trainer") -> list[RunRecord]:
    """Every run kept in the store at ``path`` (from this and earlier kernels), oldest first.

    A run whose kernel died mid-run reads back with status "interrupted" and
    the epochs it had finished. A run with damaged records is read in part
    (``record.problems`` says what was left out) with a ``StoreWarning``.
    Raises ``FileNotFoundError`` when ``path`` is not a store folder, and
    :class:`StoreCorruptError` when its database cannot be read at all.
    """
    store_path, db_path = _store_db(path)
    return _load(db_path, store_path)


def load_weights(path, run_id: str, model=None, strict: bool = True):
    """The best weights of run ``run_id`` in the store at ``path``.

    With ``model``, load them into it and return it; without, return the
    state dict (tensors on the CPU). Files are read with
    ``torch.load(weights_only=True)``: a file holding anything but tensors
    and plain containers is refused (``pickle.UnpicklingError``), never run;
    an empty, truncated or foreign file raises :class:`CorruptWeightsError`;
    a weights entry that points outside the store's weights folder raises
    ``ValueError`` and nothing is read.
    """
    store_path, db_path = _store_db(path)
    rows, epochs, _ = _read_rows(db_path, _SELECT_RUNS + " WHERE id=?", (run_id,))
    if not rows:
        raise KeyError(f"run_id={run_id!r}: no such run in the store at {str(store_path)!r}")
    row = rows[0]
    record = RunRecord(row, [None] * len(epochs.get(run_id, [])), [], store_path)
    weights_dir = store_path / WEIGHTS_DIR
    if row["weights"] is None:
        raise FileNotFoundError(_no_weights(record))
    file = _weights_file(weights_dir, row["weights"])
    if file is None:
        raise ValueError(f"run {run_id!r}: its weights entry {_short(row['weights'])} does not name a file inside "
                         f"{str(weights_dir)!r}; refused, nothing was read (the store is damaged or was crafted)")
    state = _read_weights(file, run_id)
    if model is None:
        return state
    model.load_state_dict(state, strict=strict)
    return model


def _no_weights(record: RunRecord) -> str:
    run = f"run {record.id!r}"
    if record.status == "interrupted":
        return (f"{run} has no saved weights: it was interrupted (the process that ran it ended during the "
                f"run), and weights are saved only when a run ends. Its {len(record.epochs)} finished epoch "
                "record(s) are kept in the store")
    if record.status in LIVE_STATUSES:
        return (f"{run} has no saved weights yet: it is still training (status {record.status!r}); its best "
                "weights are saved when it ends")
    return (f"{run} has no saved weights (status {record.status!r}): weights are saved when a run ends after at "
            "least one finished epoch, if the store's weights folder can be written then (a StoreWarning says "
            "so when it cannot)")


_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD",
                 "EXT1", "EXT2", "EXT4"}


def _names_code(data: bytes) -> bool:
    """Whether ``data`` holds a well-formed pickle that calls or builds objects by name.

    Parsed with ``pickletools.genops``, which reads opcodes and runs nothing.
    The old torch format is several pickles in a row: each is read in turn.
    """
    pos = 0
    while pos < len(data):
        found, end = False, None
        try:
            for op, _, at in pickletools.genops(data[pos:]):
                found = found or op.name in _CODE_OPCODES
                if op.name == "STOP":
                    end = at + 1
                    break
        except (ValueError, EOFError, OverflowError, IndexError):  # not (or no longer) a pickle
            return False
        if end is None:
            return False
        if found:
            return True
        pos += end
    return False


def _pickle_of(file: Path) -> bytes:
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as z:
            names = [n for n in z.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
            return z.read(names[0]) if names else b""
    return file.read_bytes()


def _read_weights(file: Path, run_id: str):
    import torch
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"the weights file {str(file)!r} of run {run_id!r} is missing "
                                "(moved or deleted since the run ended)") from None
    except OSError as e:
        raise CorruptWeightsError(f"the weights file {_short(str(file))} of run {run_id!r} cannot be read: "
                                  f"{type(e).__name__}: {e.strerror}") from None
    if size == 0:
        raise CorruptWeightsError(f"the weights file {str(file)!r} of run {run_id!r} is empty (0 bytes): it was "
                                  "truncated and cannot be loaded")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            hostile = _names_code(_pickle_of(file))
        except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
            hostile = False
        if hostile:
            raise pickle.UnpicklingError(
                f"refused to load {str(file)!r}: it holds objects other than tensors, and loading it "
                f"could run arbitrary code ({str(e).strip().splitlines()[-1] if str(e).strip() else e})") from None
        raise CorruptWeightsError(f"the weights file {str(file)!r} of run {run_id!r} is damaged or not a PyTorch "
                                  "weights file; it cannot be loaded (nothing in it was run)") from None
    except Exception as e:  # the reader of a damaged file fails in many ways (EOFError, IndexError, a zip error)
        raise CorruptWeightsError(f"the weights file {str(file)!r} of run {run_id!r} is damaged or truncated; it "
                                  f"cannot be loaded ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(state, dict):
        raise CorruptWeightsError(f"the weights file {str(file)!r} of run {run_id!r} holds a "
                                  f"{type(state).__name__}, not a state dict")
    return state


# -- the engine callback ----------------------------------------------------------------------------------

class StoreCallback(Callback):
    """Engine callback that writes each run of a Trainer to a :class:`RunStore`.

    A store failure (disk full, a lock held past the busy timeout, an
    unwritable folder) never stops training: it is warned about once per run
    (``StoreWarning``), kept in ``store.last_error``, and the next write
    catches up what was missed.
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
            self._guard(run, self.store.record_end, run, getattr(engine, "best_state", None),
                        getattr(run, "final_state", None), end=True)
        finally:
            self._failed.discard(run)
            self.store.release()

    def _guard(self, run, fn, *args, end: bool = False) -> None:
        try:
            fn(*args)
        except (sqlite3.Error, OSError) as e:
            self.store.last_error = e
            if run in self._failed:
                return                      # warned about once per run; last_error keeps the latest
            self._failed.add(run)
            where = str(self.store.path)
            if isinstance(e, WeightsWriteError):
                then = "Its records are written; only the weights file is missing."
            elif end:
                then = ("Its records are kept in memory and written at this kernel's next write to the store "
                        "(the next run); if the kernel ends first, the run reads back 'interrupted'.")
            else:
                then = "Training goes on; the next epoch's write retries what was missed."
            warnings.warn(f"nb_trainer could not write run {run.id} to the store at {where!r}: "
                          f"{type(e).__name__}: {e}. {then}", StoreWarning, stacklevel=2)
