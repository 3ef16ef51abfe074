"""The records passed between the tuner's stages (as in TVM MetaSchedule):

    TuningTask + KernelConfig -> MeasureInput -> Builder -> BuildResult
                              -> Runner -> MeasureResult -> TuningRecord (Database)

A task is everything needed to build and time one kernel away from the model that
produced it: its Triton source, its launch grid, and the shapes and dtypes of its
arguments. Errors are a field of a result, never an exception, so one bad candidate
never stops a batch.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from .heuristics import KernelConfig


@dataclass(frozen=True)
class ArgSpec:
    """One kernel argument: a contiguous tensor of this shape and torch dtype name ("bfloat16")."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class TuningTask:
    """One kernel on one problem, as the tuner sees it.

    `key` identifies the kernel's structure, shapes and dtypes (see `task_key`); the
    database adds the device and versions. `problem` is the lowering's description
    (M, N, K, ... and its constraints `whole`/`exact`/`divisors`). `args` are the
    kernel's tensors in launch order, inputs first and then its outputs (a row kernel after a
    residual add writes two: the residual stream and the normed rows).
    """

    key: str
    name: str
    kind: str
    problem: dict
    source: str
    kernel_name: str
    args: tuple[ArgSpec, ...]
    epilogue_ops: int = 0
    # a kernel of symbolic sizes: the sizes its arguments are shaped at (symbol, value); its key
    # names their bucket (`autotune.buckets`), and a launch binds the sizes from the tensors
    sizes: tuple[tuple[str, int], ...] = ()
    # the config the compiler gives a sized task's bucket untuned (chosen at the bucket's sizes, not
    # at `sizes`): the tuner's starting point; None: the heuristic's at `problem`
    untuned: KernelConfig | None = None


@dataclass(frozen=True)
class MeasureInput:
    task: TuningTask
    config: KernelConfig


@dataclass(frozen=True)
class BuildResult:
    """A candidate compiled ahead of its measurement (Triton's on-disk cache keeps the binary)."""

    config: KernelConfig
    error: str | None = None
    build_s: float = 0.0


@dataclass(frozen=True)
class MeasureResult:
    """Times of repeated runs of one candidate, or why it has none."""

    config: KernelConfig
    times_ms: tuple[float, ...] = ()
    error: str | None = None
    run_s: float = 0.0  # wall time of the measurement, process start-up excluded

    @property
    def median_ms(self) -> float | None:
        return statistics.median(self.times_ms) if self.times_ms and self.error is None else None


@dataclass(frozen=True)
class TuningRecord:
    """One trial as the database stores it; `median_ms` is None when `error` says why."""

    task_key: str
    device: str
    versions: str
    config: KernelConfig
    median_ms: float | None
    error: str | None = None
    job: str = ""
    trial: int = 0
    wall_s: float = 0.0
    extra: dict = field(default_factory=dict)
