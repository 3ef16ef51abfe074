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

A job has `budget` trials per task, or one `total_budget` for all its tasks (a model's kernels),
split before it starts by expected gain (`split_budget`): each task's predicted share of the
time of the whole (the roofline estimate of its default config, times its `launches`) times
the cost model's predicted speedup of the best config of its space over the default.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .builder import Builder, LocalBuilder, build_kernel
from .cost_model import XGBoostCostModel
from .database import DB_ENV, Database, cache_path, default_path, device_name, versions
from .features import roofline_us
from .records import BuildResult, MeasureInput, TuningTask
from .runner import LocalRunner, Runner
from .search import ExhaustiveSearch, ModelGuidedSearch, RandomSearch, TuneResult, tune_task
from .space import DeviceLimits, SearchSpace

STRATEGIES = ("model", "random", "exhaustive")
# trained on the H100 evaluation's trials (benchmarks/tune_eval.py train); tuning jobs start from it
PRETRAINED = Path(__file__).parent / "models" / "h100"


def load_cost_model(model_path: Path | None = None) -> XGBoostCostModel:
    """The cost model a job starts from: the one saved at `model_path`, else the shipped pretrained
    one, else a fresh (untrained) one."""
    path = model_path or (PRETRAINED if PRETRAINED.exists() else None)
    return XGBoostCostModel.load(path) if path else XGBoostCostModel()


def make_strategy(name: str, seed: int = 0, model_path: Path | None = None):
    """A search strategy by name; "model" starts from a saved cost model when one exists."""
    if name == "exhaustive":
        return ExhaustiveSearch()
    if name == "random":
        return RandomSearch(seed)
    if name != "model":
        raise ValueError(f"unknown strategy {name!r}; one of {', '.join(STRATEGIES)}")
    return ModelGuidedSearch(load_cost_model(model_path), seed=seed)


FLOOR_TRIALS = 4  # a task's default config and three more, however little the model expects of it


class BudgetTooSmall(ValueError):
    """A total budget too small to measure even the default config of every task."""


def check_total_budget(total: int, tasks: int) -> None:
    """Raise `BudgetTooSmall` unless `total` trials can measure the default config of `tasks` tasks."""
    if total < tasks:
        raise BudgetTooSmall(
            f"a total budget of {total} trial(s) cannot measure the default configs of {tasks} kernels: "
            f"give at least {tasks} ({FLOOR_TRIALS * tasks} for {FLOOR_TRIALS} trials each before the rest "
            "goes by expected gain)"
        )


@dataclass(frozen=True)
class GainEstimate:
    """What tuning one task is expected to buy, before anything is measured: its default config's
    predicted time (the features' roofline estimate, µs: only ratios between tasks matter), the
    cost model's predicted speedup of the best config of its space over the default (>= 1), and
    the size of that space (the most trials the task can use)."""

    default_us: float
    speedup: float
    space_size: int


def estimate_gains(
    tasks: Sequence[TuningTask], limits: DeviceLimits, model: XGBoostCostModel
) -> dict[str, GainEstimate]:
    """Each task's `GainEstimate` (by key) over its search space on a device of `limits`."""
    estimates = {}
    for task in tasks:
        space = SearchSpace(task, limits)
        default = space.untuned()
        default_us = roofline_us(task, default, model.sm_count, model.smem_limit)
        speedup = model.predicted_speedup(task, default, space.configs())
        estimates[task.key] = GainEstimate(default_us, speedup, len(space))
    return estimates


def predicted_shares(
    tasks: Sequence[TuningTask], launches: Mapping[str, int], predictions: Mapping[str, GainEstimate]
) -> dict[str, float]:
    """Each task's predicted share of the whole's time: its default time x its launches (1 where
    `launches` does not say), over the sum of those; equal shares where every time is 0."""
    times = {t.key: launches.get(t.key, 1) * predictions[t.key].default_us for t in tasks}
    whole = sum(times.values())
    return {key: time_ / whole if whole > 0 else 1 / len(times) for key, time_ in times.items()}


def split_budget(
    tasks: Sequence[TuningTask], launches: Mapping[str, int], predictions: Mapping[str, GainEstimate],
    total: int, floor: int = FLOOR_TRIALS,
) -> dict[str, int]:  # fmt: skip
    """Trials per task key, `total` in all: each task first gets `floor` (lowered to `total // len(tasks)`
    where the total cannot give every task that many), the rest goes in proportion to expected gain,
    predicted share (`predicted_shares`) x predicted speedup, by largest remainders. No task gets
    more trials than its space has configs, so the sum falls short of `total` only where every
    space is exhausted. Ties go to the earlier task: the split depends on its inputs alone. Raises
    `BudgetTooSmall` when `total` is under one trial per task."""
    check_total_budget(total, len(tasks))
    shares = predicted_shares(tasks, launches, predictions)
    order = [t.key for t in tasks]
    room = {key: predictions[key].space_size for key in order}
    each = min(floor, total // len(order)) if order else 0
    trials = {key: min(each, room[key]) for key in order}
    weights = {key: shares[key] * predictions[key].speedup for key in order}
    _share_out(trials, room, weights, total - sum(trials.values()), order)
    return trials


def _share_out(
    trials: dict[str, int], room: Mapping[str, int], weights: Mapping[str, float], left: int, order: list[str]
) -> None:
    """Add `left` trials to `trials` in proportion to `weights` (all alike where they sum to 0) by
    largest remainders (ties to the larger weight, then the earlier key), none past its `room`."""
    active = [key for key in order if trials[key] < room[key]]
    while left > 0 and active:
        whole = sum(weights[key] for key in active)
        weight = {key: weights[key] if whole > 0 else 1.0 for key in active}
        quota = {key: left * weight[key] / (whole if whole > 0 else len(active)) for key in active}
        full = [key for key in active if trials[key] + quota[key] >= room[key]]
        if full:  # these get all they can take; the others share what is left afresh
            for key in full:
                left -= room[key] - trials[key]
                trials[key] = room[key]
            active = [key for key in active if key not in full]
            continue
        base = {key: math.floor(quota[key]) for key in active}
        remainder = left - sum(base.values())
        ranked = sorted(active, key=lambda key: (base[key] - quota[key], -weight[key], order.index(key)))
        for i, key in enumerate(ranked):
            trials[key] += base[key] + (i < remainder)
        left = 0


@dataclass(frozen=True)
class BudgetSplit:
    """A total budget split across tasks (`split_budget`), with what the split was made from."""

    total: int
    tasks: tuple[TuningTask, ...]
    launches: Mapping[str, int]
    estimates: Mapping[str, GainEstimate]
    trials: Mapping[str, int]

    def table(self) -> str:
        """The split as a heading line and a markdown table: kernel, launches, share, gain, trials."""
        each = min(FLOOR_TRIALS, self.total // max(len(self.tasks), 1))
        lowered = f" (not {FLOOR_TRIALS}: the total is small)" if each < FLOOR_TRIALS else ""
        rows = [
            f"budget: {self.total} trials over {len(self.tasks)} kernels, at least {each} each{lowered}, "
            "the rest by predicted share x predicted gain",
            "| kernel | kind | launches | predicted share | predicted gain | trials |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        shares = predicted_shares(self.tasks, self.launches, self.estimates)
        for t in self.tasks:
            rows.append(
                f"| {t.name} | {t.kind} | {self.launches.get(t.key, 1)} | {shares[t.key]:.1%} | "
                f"{self.estimates[t.key].speedup:.2f}x | {self.trials[t.key]} |"
            )
        unused = self.total - sum(self.trials.values())
        if unused:
            rows.append(f"({unused} trials unused: the kernels' spaces hold no more configs)")
        return "\n".join(rows)


def plan_budget(
    tasks: Sequence[TuningTask], launches: Mapping[str, int], total: int, limits: DeviceLimits,
    model: XGBoostCostModel,
) -> BudgetSplit:  # fmt: skip
    """`total` trials split across `tasks` (`split_budget`) by `model`'s estimates (`estimate_gains`)."""
    estimates = estimate_gains(tasks, limits, model)
    trials = split_budget(tasks, launches, estimates, total)
    return BudgetSplit(total, tuple(tasks), dict(launches), estimates, trials)


class ProgressBar:
    """One stderr line per task, rewritten in place: trials done of the budget, best so far. Where
    stderr is not a terminal (a log file, CI), `\r` would make one long line of every update: a line
    of its own at each quarter of the budget instead."""

    def __init__(self, stream=None, width: int = 24):
        self.stream, self.width = stream, width  # None: sys.stderr at each write (pytest swaps it)
        self._lock = threading.Lock()
        self._open = False
        self._quarters: dict[str, int] = {}  # (not a terminal) the last quarter written, per task

    def __call__(self, task: TuningTask, trials: int, budget: int, best_ms: float | None) -> None:
        done = int(self.width * min(trials, budget) / max(budget, 1))
        best = f"{best_ms:.4g} ms" if best_ms is not None else "-"
        line = f"{task.name:<18} [{'#' * done}{'.' * (self.width - done)}] {trials}/{budget} best {best}"
        with self._lock:
            stream = self.stream or sys.stderr
            if not getattr(stream, "isatty", lambda: False)():
                quarter = 4 * min(trials, budget) // max(budget, 1)
                if quarter > self._quarters.get(task.key, 0) or trials == 1:
                    self._quarters[task.key] = quarter
                    self._write(line + "\n")
                return
            self._write("\r" + line + ("\n" if trials >= budget else ""))
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
    split: BudgetSplit | None = None  # a job with a total budget: how it was split

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
    build_fn: Callable[[MeasureInput], BuildResult] = build_kernel, total_budget: int | None = None,
    launches: Mapping[str, int] | None = None,
) -> TuneSummary:  # fmt: skip
    """Tune `tasks`, `budget` trials each, or `total_budget` trials in all.

    A total budget is split by expected gain (see the module docstring; `launches` says how many
    times the model launches each task, by key, 1 where it does not say) and the split printed
    before the first trial; the tasks expecting the most are tuned first. A task stopped short
    by `patience` leaves its unused trials unused. Trials of earlier runs count against the
    split as against `budget`, so a job resumed with the same total finishes the same split.

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
    if total_budget is not None:
        check_total_budget(total_budget, len(tasks))  # before a Ray cluster starts for nothing
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
        split = None
        if total_budget is not None:
            model = load_cost_model(model_path)
            split = plan_budget(tasks, launches or {}, total_budget, executor.limits, model)
            if progress:
                print(split.table() + "\n", file=sys.stderr)
        budgets = split.trials if split else {t.key: budget for t in tasks}

        def tune(index: int, task: TuningTask) -> TuneResult:
            worker = executor.workers[index]
            return tune_task(
                task, space=SearchSpace(task, executor.limits), strategy=searches[index],
                runner=worker.runner, builder=worker.builder, database=db, device=executor.device,
                versions=executor.versions, budget=budgets[task.key], batch=batch, patience=patience, job=job,
                progress=bar,
            )  # fmt: skip

        order = sorted(tasks, key=lambda t: -budgets[t.key])  # stable: the given order without a split
        results, stats = _run_workers(executor, order, tune, bar)
    ordered = [results[t.key] for t in tasks if t.key in results]
    summary = TuneSummary(ordered, path, executor.device, stats, split)
    if progress:
        took = time.perf_counter() - start
        new, resumed = sum(len(r.trials) for r in ordered), sum(r.resumed for r in ordered)
        earlier = f" (and {resumed} from earlier runs)" if resumed else ""
        of_total = f", {new} new trial(s){earlier} for a total budget of {total_budget}" if split else ""
        # a compile in another process (a new shell) reads the cache's database unless told otherwise
        shown = Path(path).resolve()
        read = "" if Path(path) == cache_path() else f" (compiles read them with {DB_ENV}={shown})"
        runners = f"{len(stats)} {executor.name} runner(s)"
        print(f"\ntuned {len(summary.results)} kernel(s){of_total} in {took:.1f} s on {executor.device} "
              f"({runners}); records in {path}{read}", file=sys.stderr)  # fmt: skip
    return summary
