"""`tilefuse.tune(fn, example_inputs, budget=...)` and `tilefuse tune TARGET`: tune a model's kernels.

The compiler's side of a tuning job: compile `fn` once with tilefuse, collect the tasks of the
kernels it ran (each registered by codegen under its key), and hand them to the tuner
(`autotune/job.py`, which tunes tasks and knows no decorator).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from ..autotune.records import TuningTask
from ..autotune.tasks import registered_task
from .api import compile as tilefuse_compile
from .runtime import _warn_no_cuda_once


def kernel_tasks(fn: Callable, example_inputs: Sequence[torch.Tensor]) -> list[TuningTask]:
    """Compile and run `fn` once with tilefuse; the tasks of the kernels it ran, in order."""
    torch._dynamo.reset()
    compiled = tilefuse_compile(fn)
    # on CPU the kernels run in Triton's interpreter, whose numpy warns on the inf/NaN of random
    # inputs: noise on the job's terminal (the measuring process ignores them too)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # the job measures kernels itself: how this one call runs without CUDA is not the user's concern
        warnings.filterwarnings("ignore", message="tilefuse: no CUDA device")
        compiled(*example_inputs)
    _warn_no_cuda_once.cache_clear()  # a compile after the job still warns once
    keys = [
        g["task_key"] for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]
        if g.get("task_key")
    ]  # fmt: skip
    tasks = [registered_task(k) for k in dict.fromkeys(keys)]
    torch._dynamo.reset()  # the next compile looks the tuned configs up
    return [t for t in tasks if t is not None]


def tune(fn: Callable, example_inputs: Sequence[torch.Tensor], budget: int = 64, **options):
    """Tune every kernel tilefuse compiles for `fn(*example_inputs)`, `budget` trials each; `options`
    as `tilefuse.autotune.job.tune_tasks` takes them (strategy, workers, database, ray, ...)."""
    from ..autotune.job import check_strategy, tune_tasks  # imports xgboost: only when a job runs
    from ..autotune.ray_executor import import_ray

    check_strategy(options.get("strategy", "model"))  # before the compile, not after it
    if options.get("ray"):
        import_ray()  # a missing Ray is said before the compile too
    return tune_tasks(kernel_tasks(fn, example_inputs), budget, **options)
