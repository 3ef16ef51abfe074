"""Tuning jobs on tasks: `tune_tasks(tasks, budget=...)`.

A job tunes each task in turn, or several at once with several workers: each worker is a
thread on this (driver) process with a runner, which measures on one GPU, and a builder. Two
executors provide them. The local one (default) runs them on this host: a `LocalRunner` per
GPU (`workers` of them) and a `LocalBuilder`'s process pool. The Ray one (`ray=True` or
`ray="ADDRESS"`, `autotune/ray_executor.py`) runs a runner actor per GPU of every node of a Ray
cluster and builds as Ray tasks. Either way the results come back to this process, which alone
writes the tuning database, one trial at a time as each is measured: the compiler reuses the
best configs with no measurement (`tilefuse.compile` looks them up), and a job started again
after a crash resumes where it stopped. Progress (trials, best so far) goes to stderr; the job
ends with a summary: a table of kernels and one of each runner's trials per second. Which
kernels a model has is the compiler's business: `tilefuse.tune` (`compiler/tuning.py`)
compiles the model and hands its tasks here; this module knows no decorator.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .builder import Builder, LocalBuilder, build_kernel
from .cost_model import XGBoostCostModel
from .database import DB_ENV, Database, default_path, device_name, versions
from .records import BuildResult, MeasureInput, TuningTask
from .runner import LocalRunner, Runner
from .search import ExhaustiveSearch, ModelGuidedSearch, RandomSearch, TuneResult, tune_task
from .space import DeviceLimits, SearchSpace

STRATEGIES = ("model", "random", "exhaustive")
# trained on the H100 evaluation's trials (benchmarks/tune_eval.py train); tuning jobs start from it
PRETRAINED = Path(__file__).parent / "models" / "h100"


def make_strategy(name: str, seed: int = 0, model_path: Path | None = None):
    """A search strategy by name; "model" starts from a saved cost model when one exists."""
    if name == "exhaustive":
        return ExhaustiveSearch()
    if name == "random":
        return RandomSearch(seed)
    if name != "model":
        raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}")
    path = model_path or (PRETRAINED if PRETRAINED.exists() else None)
    model = XGBoostCostModel.load(path) if path else XGBoostCostModel()
    return ModelGuidedSearch(model, seed=seed)


class ProgressBar:
    """One stderr line per task, rewritten in place: trials done of the budget, best so far."""

    def __init__(self, stream=None, width: int = 24):
        self.stream, self.width = stream, width  # None: sys.stderr at each write (pytest swaps it)
        self._lock = threading.Lock()
        self._open = False

    def __call__(self, task: TuningTask, trials: int, budget: int, best_ms: float | None) -> None:
        done = int(self.width * min(trials, budget) / max(budget, 1))
        best = f"{best_ms:.4g} ms" if best_ms is not None else "-"
        line = f"\r{task.name:<18} [{'#' * done}{'.' * (self.width - done)}] {trials}/{budget} best {best}"
        with self._lock:
            self._write(line + ("\n" if trials >= budget else ""))
            self._open = trials < budget

    def finish(self) -> None:
        """End a task's line that stopped short of its budget (a small space, patience)."""
        with self._lock:
            if self._open:
                self._write("\n")
            self._open = False

    def _write(self, text: str) -> None:
        stream = self.stream or sys.stderr
        stream.write(text)
        stream.flush()


@dataclass
class RunnerStats:
    """One worker's share of a job: where it measured, its trials, and the seconds its tasks took
    (builds included: the rate a user waits on)."""

    place: str
    trials: int = 0
    seconds: float = 0.0

    @property
    def per_second(self) -> float | None:
        return self.trials / self.seconds if self.seconds > 0 else None


@dataclass
class TuneSummary:
    results: list[TuneResult]
    database: Path
    device: str
    runners: list[RunnerStats] = field(default_factory=list)

    def table(self) -> str:
        """The job's summary as markdown: a table of kernels, then one of runners (`throughput`)."""
        rows = [
            "| kernel | kind | space | trials (resumed) | default ms | best ms | speedup | best config |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in self.results:
            default = r.untuned_ms
            best = r.best.median_ms if r.best else None
            speedup = f"{default / best:.2f}x" if default and best else "-"
            rows.append(
                f"| {r.task.name} | {r.task.kind} | {r.space_size} | {len(r.trials)} ({r.resumed}) | "
                f"{_ms(default)} | {_ms(best)} | {speedup} | {r.best.config.key() if r.best else '-'} |"
            )
        return "\n".join(rows) + ("\n\n" + self.throughput() if self.runners else "")

    def throughput(self) -> str:
        """Each runner's trials of this job per second, as a markdown table."""
        rows = [
            f"| runner ({self.device}) | trials | seconds | trials/s |",
            "| --- | ---: | ---: | ---: |",
        ]
        for r in self.runners:
            rate = f"{r.per_second:.3g}" if r.per_second is not None else "-"
            rows.append(f"| {r.place} | {r.trials} | {r.seconds:.1f} | {rate} |")
        return "\n".join(rows)


@dataclass
class Worker:
    """What one worker thread tunes with: a runner (one GPU), a builder, and where it measures."""

    place: str
    runner: Runner
    builder: Builder


def _call_each(parts: Sequence[object], method: str) -> None:
    # fakes (a synthetic runner, a null builder) have nothing to interrupt or close
    for part in parts:
        call = getattr(part, method, None)
        if call is not None:
            call()


class LocalExecutor:
    """Workers on this host: each a runner from `make_runner` (by default a `LocalRunner`, whose child
    process is pinned to one GPU) and a `LocalBuilder`, at most one worker per GPU."""

    name = "local"

    def __init__(
        self, workers: int | None, tasks: int, make_runner: Callable[..., Runner],
        build_fn: Callable[[MeasureInput], BuildResult] = build_kernel,
    ) -> None:  # fmt: skip
        self.device, self.versions, self.limits = device_name(), versions(), DeviceLimits.current()
        gpus = torch.cuda.device_count()
        count = max(1, min(workers or 1, tasks, gpus or 1))
        # made here, not in the threads, so that an interrupt can reach every one of them
        self.workers = [
            Worker(f"GPU {i}" if gpus else "CPU", make_runner(device_index=i if gpus > 1 else None),
                   LocalBuilder(build_fn=build_fn))
            for i in range(count)
        ]  # fmt: skip
        self._parts = [part for w in self.workers for part in (w.runner, w.builder)]

    def interrupt(self) -> None:
        """Kill the measuring and building processes: the trial in flight ends with `Interrupted`."""
        _call_each(self._parts, "interrupt")

    def close(self) -> None:
        _call_each(self._parts, "close")

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


STOP_TIMEOUT_S = 30.0  # for the workers to see an interrupt and close the database


def _stop_workers(threads: Sequence[threading.Thread], executor, bar: ProgressBar | None) -> None:
    """After Ctrl-C: stop the executor's measuring and building, so that the trial in flight ends
    with `Interrupted` (recorded nowhere) rather than as a crash, and wait for the workers to
    leave the database. A second Ctrl-C meanwhile is ignored: it would cut this short."""
    main = threading.current_thread() is threading.main_thread()  # only it may set a handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        executor.interrupt()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    if bar:
        bar.finish()


def _ms(value: float | None) -> str:
    return f"{value:.4g}" if value is not None else "-"


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; one of {', '.join(STRATEGIES)}")


def _executor(ray: bool | str | None, workers: int | None, tasks: int, make_runner, build_fn):
    if not ray:
        return LocalExecutor(workers, tasks, make_runner, build_fn)
    from .ray_executor import RayExecutor  # imports Ray: only when a job asks for it

    return RayExecutor(ray, workers, tasks, make_runner, build_fn)


def _run_workers(
    executor,
    tasks: Sequence[TuningTask],
    tune: Callable[[int, TuningTask], TuneResult],
    bar: ProgressBar | None,
) -> tuple[dict[str, TuneResult], list[RunnerStats]]:
    """Tune `tasks` with `tune(worker_index, task)`, one thread per worker of `executor`, each taking
    the next task until none is left. Ctrl-C stops them (`_stop_workers`); the first error of a
    worker is raised once the others have finished."""
    pending: queue.Queue[TuningTask] = queue.Queue()
    for task in tasks:
        pending.put(task)
    results: dict[str, TuneResult] = {}
    stats = [RunnerStats(w.place) for w in executor.workers]
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            while True:
                try:
                    task = pending.get_nowait()
                except queue.Empty:
                    return
                result = results[task.key] = tune(index, task)
                stats[index].trials += len(result.trials)
                stats[index].seconds += result.wall_s
                if bar:
                    bar.finish()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(stats))]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        _stop_workers(threads, executor, bar)
        raise
    if errors:
        raise errors[0]
    return results, stats


def tune_tasks(
    tasks: Sequence[TuningTask], budget: int = 64, *, strategy: str = "model", workers: int | None = None,
    database: str | Path | None = None, timeout_s: float = 60.0, batch: int = 8,
    patience: int | None = None, model_path: Path | None = None, progress: bool = True,
    ray: bool | str | None = None, make_runner: Callable[..., Runner] | None = None,
    build_fn: Callable[[MeasureInput], BuildResult] = build_kernel,
) -> TuneSummary:  # fmt: skip
    """Tune `tasks`, `budget` trials each.

    Results go to the tuning database (`database`, default `$TILEFUSE_TUNING_DB` or the
    cache folder), which later compiles read; a `database` given here becomes this
    process's `$TILEFUSE_TUNING_DB`, so the compiles that follow read it too. `ray` None
    tunes on this host, `workers` kernels at once (default 1), each measured on its own GPU;
    `ray` True (a local Ray cluster) or an address tunes on a Ray cluster, one runner actor per
    GPU (at most `workers`; on a cluster without GPUs, `workers` CPU-only actors).
    `make_runner(device_index=...)` makes each worker's runner (default: a `LocalRunner`
    with `timeout_s`), `build_fn` builds a candidate; tests pass fakes.
    """
    check_strategy(strategy)
    if database:
        os.environ[DB_ENV] = str(database)
    path = default_path()
    make_runner = make_runner or functools.partial(LocalRunner, timeout_s=timeout_s)
    job = uuid.uuid4().hex[:8]
    bar = ProgressBar() if progress else None
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        executor = stack.enter_context(_executor(ray, workers, len(tasks), make_runner, build_fn))
        db = stack.enter_context(Database(path))  # one connection: the driver is the only writer
        searches = [
            make_strategy(strategy, seed=i, model_path=model_path) for i in range(len(executor.workers))
        ]

        def tune(index: int, task: TuningTask) -> TuneResult:
            worker = executor.workers[index]
            return tune_task(
                task, space=SearchSpace(task, executor.limits), strategy=searches[index],
                runner=worker.runner, builder=worker.builder, database=db, device=executor.device,
                versions=executor.versions, budget=budget, batch=batch, patience=patience, job=job,
                progress=bar,
            )  # fmt: skip

        results, stats = _run_workers(executor, tasks, tune, bar)
    summary = TuneSummary([results[t.key] for t in tasks if t.key in results], path, executor.device, stats)
    if progress:
        took = time.perf_counter() - start
        print(f"\ntuned {len(summary.results)} kernel(s) in {took:.1f} s on {executor.device} "
              f"({len(stats)} {executor.name} runner(s)); records in {path}", file=sys.stderr)  # fmt: skip
    return summary
