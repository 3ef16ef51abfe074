"""Misbehaving measure and build functions for the runner and builder tests.

They run in spawned child processes, which import them by module name: the tests
put this folder on `sys.path` (a spawned child gets the parent's `sys.path`) and
import this file as the top-level module `runner_fakes`. Each dispatches on the
candidate's `MODE` parameter; a good candidate reports its process id as its
time, so a test can tell which process measured it. A candidate without `MODE`
is real: it is measured or built as the tuner would.
"""

from __future__ import annotations

import os
import time

from tilefuse.autotune.builder import build_kernel
from tilefuse.autotune.records import BuildResult, MeasureInput, MeasureResult
from tilefuse.autotune.runner import measure_kernel

OK, RAISE, EXIT, HANG, ENV = range(5)


def _misbehave(mode: int) -> None:
    if mode == RAISE:
        raise ValueError("a bad candidate")
    if mode == EXIT:
        os._exit(3)
    if mode == HANG:
        time.sleep(600)


def fake_measure(inp: MeasureInput) -> MeasureResult:
    """Measure per `MODE`; `ENV` reports the child's CUDA_VISIBLE_DEVICES as its error text."""
    if "MODE" not in inp.config.params:
        return measure_kernel(inp, repeats=2)
    mode = inp.config.params["MODE"]
    _misbehave(mode)
    if mode == ENV:
        return MeasureResult(
            inp.config, error=f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')}"
        )
    return MeasureResult(inp.config, times_ms=(float(os.getpid()),))


def fake_build(inp: MeasureInput) -> BuildResult:
    """Build per `MODE`; a good candidate's `build_s` is the worker's process id."""
    if "MODE" not in inp.config.params:
        return build_kernel(inp)
    _misbehave(inp.config.params["MODE"])
    return BuildResult(inp.config, build_s=float(os.getpid()))
