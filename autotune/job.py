"""Tuning jobs on tasks: `tune_tasks(tasks, budget=...)`.

A job tunes each task in turn (or, with `workers > 1`, several at once, one GPU of the host per
worker). Every trial goes to the tuning database as it is measured, so the compiler reuses the
best configs with no measurement (`tilefuse.compile` looks them up), and a job started again
after a crash resumes where it stopped. Progress (trials, best so far) goes to stderr; the job
ends with a summary table. Which kernels a model has is the compiler's business:
`tilefuse.tune` (`compiler/tuning.py`) compiles the model and hands its tasks here; this module
knows no decorator.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .builder import LocalBuilder
from .cost_model import XGBoostCostModel
from .database import DB_ENV, Database, default_path, device_name, versions
from .records import TuningTask
from .runner import LocalRunner
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
class TuneSummary:
    results: list[TuneResult]
    database: Path
    device: str

    def table(self) -> str:
        """The job's summary as a markdown table."""
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
        return "\n".join(rows)


STOP_TIMEOUT_S = 30.0  # for the workers to see an interrupt and close the database


def _stop_workers(threads: Sequence[threading.Thread], parts: Sequence, bar: ProgressBar | None) -> None:
    """After Ctrl-C: kill the measuring and building processes, so that the trial in flight ends
    with `Interrupted` (recorded nowhere) rather than as a crash, and wait for the workers to
    leave their database. A second Ctrl-C meanwhile is ignored: it would cut this short."""
    main = threading.current_thread() is threading.main_thread()  # only it may set a handler
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for part in parts:
            part.interrupt()
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


def tune_tasks(
    tasks: Sequence[TuningTask], budget: int = 64, *, strategy: str = "model", workers: int = 1,
    database: str | Path | None = None, timeout_s: float = 60.0, batch: int = 8,
    patience: int | None = None, model_path: Path | None = None, progress: bool = True,
) -> TuneSummary:  # fmt: skip
    """Tune `tasks`, `budget` trials each.

    Results go to the tuning database (`database`, default `$TILEFUSE_TUNING_DB` or the
    cache folder), which later compiles read; a `database` given here becomes this
    process's `$TILEFUSE_TUNING_DB`, so the compiles that follow read it too. `workers` > 1
    tunes that many kernels at once, each measured on its own GPU of this host.
    """
    check_strategy(strategy)
    if database:
        os.environ[DB_ENV] = str(database)
    path = default_path()
    device, limits, job = device_name(), DeviceLimits.current(), uuid.uuid4().hex[:8]
    gpus = torch.cuda.device_count()
    workers = max(1, min(workers, len(tasks), gpus or 1))
    bar = ProgressBar() if progress else None
    pending: queue.Queue[TuningTask] = queue.Queue()
    for task in tasks:
        pending.put(task)
    results: dict[str, TuneResult] = {}
    errors: list[BaseException] = []
    # made here, not in the threads, so that an interrupt can reach every one of them
    runners = [LocalRunner(timeout_s=timeout_s, device_index=i if gpus > 1 else None) for i in range(workers)]
    builders = [LocalBuilder() for _ in range(workers)]

    def work(index: int) -> None:
        runner, builder = runners[index], builders[index]
        search = make_strategy(strategy, seed=index, model_path=model_path)
        try:
            with Database(path) as db, builder, runner:
                while True:
                    try:
                        task = pending.get_nowait()
                    except queue.Empty:
                        return
                    results[task.key] = tune_task(
                        task, space=SearchSpace(task, limits), strategy=search, runner=runner,
                        builder=builder, database=db, device=device, versions=versions(), budget=budget,
                        batch=batch, patience=patience, job=job, progress=bar,
                    )  # fmt: skip
                    if bar:
                        bar.finish()
        except BaseException as e:  # reported after the other workers finish
            errors.append(e)

    start = time.perf_counter()
    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
    for t in threads:
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:
        _stop_workers(threads, [*runners, *builders], bar)
        raise
    if errors:
        raise errors[0]
    summary = TuneSummary([results[t.key] for t in tasks if t.key in results], path, device)
    if progress:
        took = time.perf_counter() - start
        print(f"\ntuned {len(summary.results)} kernel(s) in {took:.1f} s on {device}; records in {path}",
              file=sys.stderr)  # fmt: skip
    return summary

