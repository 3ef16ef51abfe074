"""The tuning database: every trial of every task, on SQLite (as TVM MetaSchedule's Database).

A record is keyed by (task, device, versions, config): the same kernel tuned on another
GPU, or under another torch/triton/tilefuse, is another record, and measuring a config
again replaces its row. Failed trials are kept too (`median_ms` None, `error` why), so a
resumed job skips them. Tasks are stored beside their records, so a job can be resumed
and an evaluation can rebuild the kernels from the database alone.

    with Database(default_path()) as db:
        db.commit_task(task)
        db.commit(TuningRecord(task.key, device_name(), versions(), config, 0.42, trial=7))
        best = db.best(task.key, device_name(), versions())

The file is in WAL mode with synchronous=FULL: each commit is one transaction, fsynced
before `commit` returns, so a killed tuner loses at most the trial it was writing, and
several processes may read and write one file at once (writers wait up to `BUSY_TIMEOUT_S`).
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import TracebackType

from .heuristics import KernelConfig
from .records import ArgSpec, TuningRecord, TuningTask

SCHEMA_VERSION = 1  # stored as SQLite's user_version; 0 is a file this module never set up
BUSY_TIMEOUT_S = 30.0
DB_ENV = "TILEFUSE_TUNING_DB"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    task_key TEXT NOT NULL,
    device TEXT NOT NULL,
    versions TEXT NOT NULL,
    config TEXT NOT NULL,
    median_ms REAL,
    error TEXT,
    job TEXT NOT NULL,
    trial INTEGER NOT NULL,
    wall_s REAL NOT NULL,
    extra TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (task_key, device, versions, config)
);
CREATE TABLE IF NOT EXISTS tasks (
    task_key TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    problem TEXT NOT NULL,
    epilogue_ops INTEGER NOT NULL,
    source TEXT NOT NULL,
    kernel_name TEXT NOT NULL,
    args TEXT NOT NULL
);
"""

# measured choices between a kernel and another way of running its group (compiler/group_selection.py:
# the library path, the other backend), keyed like records, `detail` saying which launch (configuration,
# operand layouts, the other way). Added beside schema version 1 (created on open where missing): a file
# without it is still a version 1 file, and an older tilefuse ignores the table.
_CHOICES = """
CREATE TABLE IF NOT EXISTS choices (
    task_key TEXT NOT NULL,
    device TEXT NOT NULL,
    versions TEXT NOT NULL,
    detail TEXT NOT NULL,
    chosen TEXT NOT NULL,
    kernel_ms REAL NOT NULL,
    other_ms REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (task_key, device, versions, detail)
)
"""

# the sizes a task of a kernel of symbolic sizes is shaped at (`TuningTask.sizes`, JSON [[symbol,
# value], ...]): added beside schema version 1 like `choices`; an older tilefuse ignores the table
_TASK_SIZES = """
CREATE TABLE IF NOT EXISTS task_sizes (
    task_key TEXT PRIMARY KEY,
    sizes TEXT NOT NULL
)
"""

# a task's sizes, beside its row of `tasks`
_SIZES_COLUMN = "(SELECT sizes FROM task_sizes WHERE task_sizes.task_key = tasks.task_key)"
_RECORD_COLUMNS = "task_key, device, versions, config, median_ms, error, job, trial, wall_s, extra"
_TASK_COLUMNS = "task_key, name, kind, problem, epilogue_ops, source, kernel_name, args"


class SchemaVersionError(RuntimeError):
    """The database file was written by a newer tilefuse whose schema this one does not know."""


class Database:
    """A tuning database in one SQLite file, through one connection.

    Opening creates the file (and its parent folders) and the schema when missing, and
    raises `SchemaVersionError` for a file of a newer schema, before touching it. The
    connection may be shared between threads (a lock serializes its use); other
    processes open their own `Database` on the same path.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: no implicit transactions, so each commit below is exactly one
        self._conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        try:
            self._check_schema_version(self._user_version())
            self._conn.execute("PRAGMA journal_mode=WAL")
            # synchronous is per connection, not stored in the file: every opener must set it
            self._conn.execute("PRAGMA synchronous=FULL")
            self._create_schema()
            self._conn.execute(_CHOICES)
            self._conn.execute(_TASK_SIZES)
        except BaseException:
            self._conn.close()
            raise

    def _user_version(self) -> int:
        return self._conn.execute("PRAGMA user_version").fetchone()[0]

    def _check_schema_version(self, found: int) -> None:
        if found > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"tuning database {self.path} has schema version {found}, but this tilefuse knows "
                f"versions up to {SCHEMA_VERSION}: upgrade tilefuse, or point {DB_ENV} at another file"
            )

    def _create_schema(self) -> None:
        if self._user_version() == SCHEMA_VERSION:
            return
        # IMMEDIATE takes the write lock first, so two processes creating one new file
        # do not both decide it is empty; the version is re-read under the lock
        with self._transaction():
            found = self._user_version()
            self._check_schema_version(found)
            if found < SCHEMA_VERSION:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection (idempotent); the file keeps every committed record and task."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def commit_task(self, task: TuningTask) -> None:
        """Store `task` under its key, replacing an earlier task of that key, in one transaction.

        `problem` is stored as JSON: tuples in it come back as lists.
        """
        args = [[list(arg.shape), arg.dtype] for arg in task.args]
        row = (
            task.key,
            task.name,
            task.kind,
            json.dumps(task.problem),
            task.epilogue_ops,
            task.source,
            task.kernel_name,
            json.dumps(args),
        )
        with self._lock, self._transaction():
            self._conn.execute(f"INSERT OR REPLACE INTO tasks ({_TASK_COLUMNS}) VALUES ({_marks(8)})", row)
            if task.sizes:
                sizes = json.dumps([list(s) for s in task.sizes])
                self._conn.execute("INSERT OR REPLACE INTO task_sizes VALUES (?, ?)", (task.key, sizes))

    def task(self, key: str) -> TuningTask | None:
        """The task stored under `key`, or None when no task of that key was committed."""
        with self._lock:
            query = f"SELECT {_TASK_COLUMNS}, {_SIZES_COLUMN} FROM tasks WHERE task_key = ?"
            row = self._conn.execute(query, (key,)).fetchone()
        return None if row is None else _task_from_row(row)

    def tasks(self) -> list[TuningTask]:
        """Every stored task, ordered by key so that listings are reproducible."""
        with self._lock:
            query = f"SELECT {_TASK_COLUMNS}, {_SIZES_COLUMN} FROM tasks ORDER BY task_key"
            rows = self._conn.execute(query).fetchall()
        return [_task_from_row(row) for row in rows]

    def commit(self, record: TuningRecord) -> None:
        """Store one trial durably before returning; a record of the same key and config is replaced.

        The row is written by a single statement outside any open transaction, so SQLite
        commits it as one transaction: readers and a crashed writer see all of it or none.
        """
        row = (
            record.task_key,
            record.device,
            record.versions,
            record.config.key(),
            record.median_ms,
            record.error,
            record.job,
            record.trial,
            record.wall_s,
            json.dumps(record.extra),
            time.time(),
        )
        with self._lock:
            self._conn.execute(
                f"INSERT OR REPLACE INTO records ({_RECORD_COLUMNS}, created) VALUES ({_marks(11)})",
                row,
            )

    def records(self, task_key: str, device: str, versions: str) -> list[TuningRecord]:
        """Every trial of this task on this device under these versions, in trial order.

        Trials of equal number (from separate jobs) keep the order they were committed in.
        """
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE task_key = ? AND device = ? AND versions = ?"
                " ORDER BY trial, created, rowid",
                (task_key, device, versions),
            ).fetchall()
        return [_record_from_row(row) for row in rows]

    def measured_configs(self, task_key: str, device: str, versions: str) -> set[str]:
        """Keys (`KernelConfig.key()`) of every config tried for this task here, failed ones included."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT config FROM records WHERE task_key = ? AND device = ? AND versions = ?",
                (task_key, device, versions),
            ).fetchall()
        return {config for (config,) in rows}

    def best(self, task_key: str, device: str, versions: str) -> TuningRecord | None:
        """The error-free trial of lowest median time for this task here, or None when there is none."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE task_key = ? AND device = ? AND versions = ?"
                " AND error IS NULL AND median_ms IS NOT NULL ORDER BY median_ms, trial LIMIT 1",
                (task_key, device, versions),
            ).fetchone()
        return None if row is None else _record_from_row(row)

    def scopes(self, task_key: str) -> list[tuple[str, str]]:
        """The (device, versions) pairs `task_key` has records for."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT DISTINCT device, versions FROM records WHERE task_key = ?", (task_key,)
            ).fetchall()
        return [(d, v) for d, v in rows]

    def commit_choice(
        self, task_key: str, device: str, versions: str, detail: str, chosen: str, kernel_ms: float,
        other_ms: float,
    ) -> None:  # fmt: skip
        """Store one measured choice (`chosen`, and both times) durably; the same key is replaced."""
        row = (task_key, device, versions, detail, chosen, kernel_ms, other_ms, time.time())
        with self._lock:
            self._conn.execute(f"INSERT OR REPLACE INTO choices VALUES ({_marks(8)})", row)

    def choice(
        self, task_key: str, device: str, versions: str, detail: str
    ) -> tuple[str, float, float] | None:
        """(chosen, kernel ms, other ms) of a choice measured here before, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT chosen, kernel_ms, other_ms FROM choices WHERE task_key = ? AND device = ? "
                "AND versions = ? AND detail = ?",
                (task_key, device, versions, detail),
            ).fetchone()
        return None if row is None else (row[0], row[1], row[2])

    def __len__(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]


def _marks(count: int) -> str:
    return ",".join("?" * count)


def _task_from_row(row: tuple) -> TuningTask:
    key, name, kind, problem, epilogue_ops, source, kernel_name, args, sizes = row
    specs = tuple(ArgSpec(tuple(shape), dtype) for shape, dtype in json.loads(args))
    bound = tuple((str(s), int(v)) for s, v in json.loads(sizes)) if sizes else ()
    return TuningTask(key, name, kind, json.loads(problem), source, kernel_name, specs, epilogue_ops, bound)


def _record_from_row(row: tuple) -> TuningRecord:
    task_key, device, versions_, config, median_ms, error, job, trial, wall_s, extra = row
    return TuningRecord(
        task_key,
        device,
        versions_,
        KernelConfig.from_key(config),
        median_ms,
        error=error,
        job=job,
        trial=trial,
        wall_s=wall_s,
        extra=json.loads(extra),
    )


def default_path() -> Path:
    """Where the tuning database lives: `$TILEFUSE_TUNING_DB`, else `tilefuse/tuning.db` under the cache.

    The cache is `$XDG_CACHE_HOME`, or `~/.cache` when that is unset or empty.
    """
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV])
    return cache_path()


def cache_path() -> Path:
    """The tuning database a compile reads where `$TILEFUSE_TUNING_DB` is unset."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "tilefuse" / "tuning.db"


def device_name() -> str:
    """The current CUDA device's name ("NVIDIA H100 80GB HBM3"), or "cpu" without one (a key part)."""
    import torch  # here, not at the top: opening a database must not pay for importing torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


@functools.cache
def versions() -> str:
    """`torch=X,triton=Y,tilefuse=Z`: the software a timing depends on, part of a record's key.

    A package that is not installed reads "none"; tilefuse run from a checkout reads "dev".
    """
    parts = {"torch": "none", "triton": "none", "tilefuse": "dev"}
    for package, missing in parts.items():
        try:
            parts[package] = version(package)
        except PackageNotFoundError:
            parts[package] = missing
    return ",".join(f"{package}={value}" for package, value in parts.items())
