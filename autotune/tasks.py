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
from collections.abc import Callable, Mapping
from typing import TypeVar

from .buckets import (
    bucket_key,
    bucket_label,
    concrete_shapes,
    problem_at,
    representative_sizes,
    serving_bucket,
)
from .database import Database, default_path, versions
from .heuristics import default_config
from .records import ArgSpec, TuningRecord, TuningTask

log = logging.getLogger("tilefuse")
T = TypeVar("T")
TUNED_ENV = "TILEFUSE_TUNED"  # "0": ignore the tuning database, use the default configs

_registry: dict[str, TuningTask] = {}
_lock = threading.Lock()


def task_key(kind: str, source: str, bucket: str = "") -> str:
    """A kernel's key; a kernel of symbolic sizes has one per size bucket (`autotune.buckets`)."""
    text = f"{kind}\n{source}" + (f"\n{bucket}" if bucket else "")
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def make_task(
    name: str, kind: str, problem: dict, source: str, shapes: tuple, dtypes: tuple, epilogue_ops: int = 0,
    sizes: Mapping[str, int] | None = None,
) -> TuningTask:  # fmt: skip
    """The task of one kernel; registered so a tuning job can find it by key. A kernel of symbolic
    sizes is a task per size bucket: `sizes` binds its symbols (`problem` and the arguments' shapes
    are taken at them) and the key names the bucket."""
    sizes, kernel_name, untuned = dict(sizes or {}), name, None
    if sizes:  # labelled in the kernel's order of symbols, as the report and the program name them
        symbols = list(sizes)
        key = bucket_key(symbols, sizes)
        bucket = bucket_label(symbols, key)
        # the config the compiler gives this bucket untuned: the tuner's starting point and baseline
        untuned = default_config(kind, problem_at(problem, representative_sizes(symbols, key)))
        problem, shapes = problem_at(problem, sizes), concrete_shapes(shapes, sizes)
        name = f"{name}[{bucket}]"
    else:
        bucket = ""
    args = tuple(ArgSpec(tuple(s), str(d)) for s, d in zip(shapes, dtypes))
    task = TuningTask(
        task_key(kind, source, bucket), name, kind, dict(problem), source, kernel_name, args,
        epilogue_ops, tuple(sizes.items()), untuned,
    )  # fmt: skip
    with _lock:
        _registry[task.key] = task
    return task


# a kernel of symbolic sizes, by its task's key: its kind, its size symbols, and how to make its task
# at sizes (a process's compiles add to it; a task is a few small dicts)
_sized: dict[str, tuple[str, tuple[str, ...], Callable[[Mapping[str, int]], TuningTask]]] = {}


def register_sized(
    key: str, kind: str, symbols: tuple[str, ...], make: Callable[[Mapping[str, int]], TuningTask]
) -> None:
    """Say that the task `key` is a kernel of symbolic sizes `symbols`; `make(sizes)` is its task there."""
    with _lock:
        _sized[key] = (kind, symbols, make)


class NotTunedAtSize(ValueError):
    """A size at which a kernel of symbolic sizes is not tuned (the message says why)."""


def task_at_sizes(key: str, size: int) -> TuningTask | None:
    """The task `key` (a kernel of symbolic sizes) with every size symbol bound to `size`, registered
    under its bucket's key; None for a static kernel's task. Raises NotTunedAtSize where the size's
    bucket runs another bucket's config (`buckets.serving_bucket`: a record there would not be read)
    or the kernel has no elements there."""
    with _lock:
        entry = _sized.get(key)
    if entry is None:
        return None
    kind, symbols, make = entry
    sizes = dict.fromkeys(symbols, size)
    bucket = bucket_key(symbols, sizes)
    if serving_bucket(bucket, kind) != bucket:
        serving = bucket_label(symbols, serving_bucket(bucket, kind))
        raise NotTunedAtSize(
            f"a {kind} kernel runs the config of {serving} at size {size} (its size symbols as the dump's "
            "program_dynamic_*.py reads them from the arguments)"
        )
    task = make(sizes)
    if any(d <= 0 for a in task.args for d in a.shape):
        raise NotTunedAtSize(f"the kernel has no elements at size {size}")
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
