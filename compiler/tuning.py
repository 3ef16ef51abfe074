"""`tilefuse.tune(fn, example_inputs, budget=...)` and `tilefuse tune TARGET`: tune a model's kernels.

The compiler's side of a tuning job. Compile `fn` once with tilefuse and its default configs, run
it, and collect the tasks of the kernels it ran (each registered by codegen under its key) with
how many times each is launched in one call; time that compiled model (the "before"); hand the
tasks to the tuner (`autotune/job.py`, which tunes tasks and knows no decorator), with one
budget per kernel or a total split by expected gain; then compile again, reading the tuning
database the job wrote, and time that (the "after").

The selection candidates join the job in that last compile: on a GPU, each fused group's tuned
kernel is measured against its library paths (cuBLAS and PyTorch ops, the split path; under
backend "auto" the CUDA C++ kernel) when its program is written (`group_selection.py`), and the
choice goes into the same tuning database, keyed by the tuned configuration, so the user's later
compiles read it instead of measuring. The summary lists those choices beside the trials
(`ModelTuneSummary.selection`); without a GPU nothing is measured and it says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields

import torch

from ..autotune.job import TuneSummary, check_strategy, tune_tasks  # xgboost too: whoever imports this tunes
from ..autotune.records import TuningTask
from ..autotune.tasks import TUNED_ENV, NotTunedAtSize, registered_task, task_at_sizes
from . import runtime
from .api import compile as tilefuse_compile
from .group_selection import KERNEL
from .runtime import _warn_no_cuda_once
from .selection import ROUNDS

log = logging.getLogger("tilefuse")
Timer = Callable[[Callable[[], object]], float]  # ms that `run()`, one call of the compiled model, takes
WARMUP_CALLS = ROUNDS + 1  # the first compiles and chooses program or PyTorch (selection.py)


@dataclass
class ModelKernels:
    """What one compile of a model ran: the compiled model, the tasks of its kernels in order of first
    launch, and how many times one call launches each (by task key)."""

    compiled: Callable
    tasks: list[TuningTask]
    launches: dict[str, int]


@contextlib.contextmanager
def _model_call() -> Iterator[None]:
    """How the job calls the model: inference (as it is tuned), without the interpreter's noise."""
    # on CPU the kernels run in Triton's interpreter, whose numpy warns on the inf/NaN of random
    # inputs: noise on the job's terminal (the measuring process ignores them too)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # the job measures kernels itself: how this one call runs without CUDA is not the user's concern
        warnings.filterwarnings("ignore", message="tilefuse: no CUDA device")
        yield
    _warn_no_cuda_once.cache_clear()  # a compile after the job still warns once


@contextlib.contextmanager
def _default_configs() -> Iterator[None]:
    """Compiles that ignore the tuning database: "before" is the default configs even when an
    earlier job tuned this model."""
    previous = os.environ.get(TUNED_ENV)
    os.environ[TUNED_ENV] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ[TUNED_ENV]
        else:
            os.environ[TUNED_ENV] = previous


def compile_kernels(
    fn: Callable, example_inputs: Sequence[torch.Tensor], sizes: Sequence[int] | None = None
) -> ModelKernels:
    """Compile `fn` with tilefuse and run it once on `example_inputs` (see `ModelKernels`). A task's
    launches are its key's occurrences in the compiled graphs' reports: one per fused group.

    With `sizes`, `fn` is compiled with dynamic sizes (`dynamic=True`, unless an example input
    marks its own dynamic dims with `torch._dynamo.mark_dynamic`), and each kernel of symbolic sizes
    becomes one task per size, every size symbol of the kernel bound to it (`task_at_sizes`: the
    task of that size's bucket, measured at that size)."""
    torch._dynamo.reset()
    compiled = _compile(fn, example_inputs, sizes)
    with _model_call():
        compiled(*example_inputs)
    launches = Counter(
        g["task_key"] for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]
        if g.get("task_key")
    )  # fmt: skip
    by_key: dict[str, TuningTask] = {}
    counts: dict[str, int] = {}
    for key, n in launches.items():  # a Counter keeps the order keys first came in
        sized, first_size = [], {}
        kernel = registered_task(key)
        for size in sizes or ():
            try:
                task = task_at_sizes(key, size)
            except NotTunedAtSize as e:
                log.warning(
                    "tilefuse: tune: %s not tuned at size %d: %s", kernel.name if kernel else key, size, e
                )
                continue
            if task is not None and task.key in first_size:  # two sizes of one bucket: the first is measured
                log.warning(
                    "tilefuse: tune: %s not tuned at size %d: size %d of the same size bucket is",
                    kernel.name if kernel else key, size, first_size[task.key],
                )  # fmt: skip
                continue
            if task is not None:
                first_size[task.key] = size
                sized.append(task)
        for task in sized or [kernel]:
            if task is not None and not _symbolic_shapes(task):
                by_key.setdefault(task.key, task)
                counts[task.key] = counts.get(task.key, 0) + n
    return ModelKernels(compiled, list(by_key.values()), counts)


def _compile(fn: Callable, example_inputs: Sequence[torch.Tensor], sizes: Sequence[int] | None) -> Callable:
    """`fn` compiled with tilefuse; with `sizes`, with dynamic sizes (every dim, unless an example
    input marks its own with `torch._dynamo.mark_dynamic`)."""
    marked = any(getattr(t, "_dynamo_dynamic_indices", None) for t in example_inputs)
    return tilefuse_compile(fn, dynamic=True) if sizes and not marked else tilefuse_compile(fn)


def _symbolic_shapes(task: TuningTask) -> bool:
    """A kernel of symbolic sizes not bound to any (a tuning job without `sizes`): nothing to measure."""
    return any(isinstance(d, str) for a in task.args for d in a.shape)


def kernel_tasks(
    fn: Callable, example_inputs: Sequence[torch.Tensor], sizes: Sequence[int] | None = None
) -> list[TuningTask]:
    """Compile and run `fn` once with tilefuse; the tasks of the kernels it ran, in order (with
    `sizes`: see `compile_kernels`)."""
    tasks = compile_kernels(fn, example_inputs, sizes).tasks
    torch._dynamo.reset()  # the next compile looks the tuned configs up
    return tasks


def gpu_timer(run: Callable[[], object]) -> float:
    """Milliseconds of `run()`: the median of `triton.testing.do_bench`, after the first calls."""
    import triton.testing

    for _ in range(WARMUP_CALLS):
        run()
    return float(triton.testing.do_bench(run, return_mode="median"))


def _time_model(timer: Timer | None, compiled: Callable, inputs: Sequence[torch.Tensor]) -> float | None:
    """`timer`'s milliseconds for one call of `compiled` on `inputs`; None without a timer."""
    if timer is None:
        return None
    with _model_call():
        return timer(lambda: compiled(*inputs))


@dataclass
class ModelTuneSummary(TuneSummary):
    """A tuning job's summary (`TuneSummary`) and the model's end-to-end time before and after it."""

    before_ms: float | None = None  # compiled with the default configs; None: not measured
    after_ms: float | None = None  # compiled again after the job, with its configs
    # the after-compile's measured group choices (`selection_choices`); None: not measured (no GPU)
    choices: list[dict] | None = None

    def end_to_end(self) -> str:
        """Two lines: the model's time before tuning and after ("not measured (no GPU)" without a timer)."""
        if self.before_ms is None or self.after_ms is None:
            before = after = "not measured (no GPU)"
        else:
            before, after = f"{self.before_ms:.4g} ms", f"{self.after_ms:.4g} ms"
            after += f" ({self.before_ms / self.after_ms:.2f}x)" if self.after_ms > 0 else ""
        return (
            f"model end to end, before tuning (default configs): {before}\n"
            f"model end to end, after tuning (tuned configs): {after}"
        )

    def selection(self) -> str:
        """The after-compile's choice per tuned kernel and layout: the kernel against its library
        paths, as markdown (ms per call of each candidate; "database": measured by an earlier job)."""
        title = "selection after tuning (each group's tuned kernel against its library paths):"
        if self.choices is None:
            return f"{title} not measured (no GPU)"
        if not self.choices:
            return f"{title} no group has a library path (no GEMM or attention)"
        # each candidate's time alone (its host and GPU figures, `<name>_gpu_ms`, stay in the report)
        figures = {k[: -len("_ms")] for c in self.choices for k in c if k.endswith("_ms")}
        names = sorted({n for n in figures if not n.endswith(("_gpu", "_host"))} - {KERNEL})
        rows = [
            f"{title}\n",
            f"| kernel | groups | chosen | {KERNEL} ms | {' | '.join(f'{n} ms' for n in names)} | from |",
            "| --- | ---: | --- | ---: |" + " ---: |" * len(names) + " --- |",
        ]
        for c in self.choices:
            times = [_ms(c.get(f"{n}_ms")) for n in (KERNEL, *names)]
            chosen = c["chosen"]
            if "not_measured" in c:
                chosen += f" (not measured: {c['not_measured']})"
            source = c.get("from", "this job")
            rows.append(f"| {c['task']} | {c['groups']} | {chosen} | {' | '.join(times)} | {source} |")
        return "\n".join(rows)

    def table(self) -> str:
        """The job's tables (`TuneSummary.table`), the model's time before and after, then the
        selection the after-compile measured."""
        return f"{super().table()}\n\n{self.end_to_end()}\n\n{self.selection()}"


_SHOWN = ("task", "chosen", "from", "not_measured")  # with the times: what `selection()` prints


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def selection_choices(compiled: Callable) -> list[dict]:
    """The group choices a compiled model's programs made (`group_selection` in its partitions'
    reports), one row per tuned kernel and choice: identical layers share a measurement, so their
    rows differ only in the group (and in notes that name it) and are counted (`groups`) instead
    of repeated."""
    rows: dict[tuple, dict] = {}
    for report in compiled.tilefuse_reports:
        for partition in report["partitions"]:
            tasks = {g["name"]: g.get("task_key") for g in partition["groups"]}
            for choice in partition.get("group_selection", []):
                key = tasks.get(choice["group"])
                task = registered_task(key) if key else None
                row = {k: v for k, v in choice.items() if k != "group"}
                row["task"] = task.name if task is not None else (key or choice["group"])
                shown = {k: v for k, v in row.items() if k.endswith("_ms") or k in _SHOWN}
                same = json.dumps(shown, sort_keys=True, default=str)
                rows.setdefault(same, {**row, "groups": 0})["groups"] += 1
    return list(rows.values())


class TuneInWorker(RuntimeError):
    """`tune` called while a worker process imports the user's script (no `__main__` guard)."""


def _refuse_in_a_spawned_import() -> None:
    """The job's runner processes are spawned: each imports the user's main script again, and a
    `tilefuse.tune(...)` at its top level (no `if __name__ == "__main__":`) ran a whole tuning job
    inside every runner, each writing the database (a fresh-clone helper: four jobs where one was
    asked for). In such an import this says so instead, as multiprocessing itself does for a process
    started there."""
    import multiprocessing.process

    if getattr(multiprocessing.process.current_process(), "_inheriting", False):
        raise TuneInWorker(
            "tilefuse.tune was called while a tuning worker process imported your script: put the "
            'call under `if __name__ == "__main__":` (the workers are spawned and import the script again)'
        )


def tune(
    fn: Callable, example_inputs: Sequence[torch.Tensor], budget: int = 64, *,
    total_budget: int | None = None, timer: Timer | None = None, sizes: Sequence[int] | None = None,
    **options,
) -> ModelTuneSummary:  # fmt: skip
    """Tune every kernel tilefuse compiles for `fn(*example_inputs)`: `budget` trials each, or
    `total_budget` trials in all, split across the kernels by expected gain (the split is printed
    before the first trial; `tilefuse.autotune.job.split_budget`). The summary adds the model's
    end-to-end time before tuning and after, as `timer(run)` gives it in ms (default on a GPU: the
    median of `triton.testing.do_bench`; without CUDA and without a timer, not measured).
    `sizes`: compile with dynamic sizes and tune each kernel of symbolic sizes at each of them (a
    task per size, recorded under its size bucket, which later compiles read for every size of
    the bucket: `autotune.buckets`); see `compile_kernels`.
    `options` as `tilefuse.autotune.job.tune_tasks` takes them (strategy, workers, database, ray, ...).
    """
    from ..autotune.ray_executor import import_ray

    _refuse_in_a_spawned_import()
    check_strategy(options.get("strategy", "model"))  # before the compile, not after it
    if options.get("ray"):
        import_ray()  # a missing Ray is said before the compile too
    if timer is None and torch.cuda.is_available():
        timer = gpu_timer
    progress = options.get("progress", True)
    if progress:  # (a real model's compile takes a while before the first bar)
        print("tilefuse tune: compiling the model to find its kernels", file=sys.stderr, flush=True)
    with _default_configs():  # the compile that finds the kernels is the "before" too: one compile fewer
        model = compile_kernels(fn, example_inputs, sizes)
        before_ms = _time_model(timer, model.compiled, example_inputs)
    if progress and model.tasks:
        print(f"tilefuse tune: {len(model.tasks)} kernel(s) to tune", file=sys.stderr, flush=True)
    if not model.tasks:  # said, with why, rather than an empty table
        reasons = sorted(
            {f"{f['op']}: {f['reason']}" for r in model.compiled.tilefuse_reports for f in r["fallbacks"]}
        )
        why = f"; in PyTorch: {'; '.join(reasons[:4])}" if reasons else ""
        log.warning("tilefuse: tune: the model compiled to no kernel to tune%s", why)
    torch._dynamo.reset()  # the next compile looks the tuned configs up
    summary = tune_tasks(model.tasks, budget, total_budget=total_budget, launches=model.launches, **options)
    after_ms = choices = None
    if timer is not None:  # its first calls measure each group's tuned kernel against the library
        after = _compile(fn, example_inputs, sizes)
        after_ms = _time_model(timer, after, example_inputs)
        choices = selection_choices(after) if _selection_measured(example_inputs) else None
        torch._dynamo.reset()
    job = {f.name: getattr(summary, f.name) for f in fields(summary)}
    return ModelTuneSummary(**job, before_ms=before_ms, after_ms=after_ms, choices=choices)


def _selection_measured(example_inputs: Sequence[torch.Tensor]) -> bool:
    """Whether the compiled model's groups were measured against the library: on a GPU, unless
    selection is off (`TILEFUSE_SELECT=0`)."""
    devices = [t.device for t in example_inputs if isinstance(t, torch.Tensor)]
    return bool(devices) and runtime.group_selection_enabled(devices[0])
