"""Tuning tasks from compiled kernels, and the tuned configs the compiler reuses.

A task's key hashes the kernel kind and its emitted Triton source: the source spells out
the kernel's structure (its ops), its shapes and its dtypes as literals, so two kernels
share a key exactly when one tuned config fits both. The database adds the device and
the versions of torch/triton/tilefuse to the key of every record.

Every kernel the compiler builds in this process is registered (`registered_task`), so a
tuning job can compile a model once and then tune the kernels it produced.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from .database import Database, default_path, versions
from .records import ArgSpec, TuningRecord, TuningTask

log = logging.getLogger("tilefuse")
T = TypeVar("T")
TUNED_ENV = "TILEFUSE_TUNED"  # "0": ignore the tuning database, use the default configs

_registry: dict[str, TuningTask] = {}
_lock = threading.Lock()


def task_key(kind: str, source: str) -> str:
    return hashlib.sha256(f"{kind}\n{source}".encode()).hexdigest()[:24]


def make_task(
    name: str, kind: str, problem: dict, source: str, shapes: tuple, dtypes: tuple, epilogue_ops: int = 0
) -> TuningTask:
    """The task of one kernel; registered so a tuning job can find it by key."""
    args = tuple(ArgSpec(tuple(s), str(d)) for s, d in zip(shapes, dtypes))
    task = TuningTask(task_key(kind, source), name, kind, dict(problem), source, name, args, epilogue_ops)
    with _lock:
        _registry[task.key] = task
    return task


def registered_task(key: str) -> TuningTask | None:
    with _lock:
        return _registry.get(key)


_open_databases: dict[str, Database] = {}  # one connection per path for the process's lifetime


def _open(path: str) -> Database:
    with _lock:
        if path not in _open_databases:
            _open_databases[path] = Database(path)
        return _open_databases[path]


def _read(query: Callable[[Database], T], otherwise: str) -> T | None:
    """`query` on the tuning database, or None: `TILEFUSE_TUNED=0`, no database file yet, or a file
    that cannot be read (warned about: `otherwise` says what is done instead; the model never pays)."""
    if os.environ.get(TUNED_ENV, "1") == "0":
        return None
    path = default_path()
    if not path.exists():
        return None
    try:
        return query(_open(str(path)))
    except Exception as e:
        log.warning("tilefuse: tuning database %s unusable (%s); %s", path, e, otherwise)
        return None


def tuned_record(task: TuningTask, device: str) -> TuningRecord | None:
    """The best measured trial of `task` on `device` with these versions, if it was tuned."""
    return _read(lambda db: db.best(task.key, device, versions()), "default configs")


def recorded_choice(task_key: str, device: str, detail: str) -> tuple[str, float, float] | None:
    """A choice measured before for this kernel launch on `device` with these versions
    (`Database.choice`), or None: none recorded, no database, `TILEFUSE_TUNED=0`, or a bad file."""
    return _read(lambda db: db.choice(task_key, device, versions(), detail), "measuring")


def record_choice(
    task_key: str, device: str, detail: str, chosen: str, kernel_ms: float, other_ms: float
) -> None:
    """Store a measured choice (`Database.commit_choice`), so later compiles decide without measuring;
    nothing under `TILEFUSE_TUNED=0`. A database that cannot be written is warned about, not raised."""
    if os.environ.get(TUNED_ENV, "1") == "0":
        return
    path = default_path()
    try:
        _open(str(path)).commit_choice(task_key, device, versions(), detail, chosen, kernel_ms, other_ms)
    except Exception as e:
        log.warning("tilefuse: tuning database %s unusable (%s); choice not recorded", path, e)
