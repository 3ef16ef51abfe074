"""Search strategies and the tuning loop of one task.

`tune_task` asks a strategy for the next few candidates, builds them (in parallel, ahead of
measurement), measures them one at a time and commits every result to the database as it
arrives, so a job killed at any point loses at most the trial in flight. A task already
in the database resumes: its measured configs count against the budget and are never
measured again. The loop stops at the trial budget, when the space is exhausted, or after
`patience` trials without a better time.

Strategies: `ExhaustiveSearch` and `RandomSearch` (baselines), and `ModelGuidedSearch`,
which ranks the unmeasured configs with a cost model, measures the top few plus an
epsilon share of random ones (exploration keeps a wrong model from starving good regions),
and retrains the model on every batch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .builder import Builder
from .database import Database
from .heuristics import KernelConfig
from .records import MeasureInput, MeasureResult, TuningRecord, TuningTask
from .runner import Runner
from .space import SearchSpace

Times = Sequence[float | None]  # measured medians in ms; None where a trial failed
Progress = Callable[[TuningTask, int, int, float | None], None]  # task, trials, budget, best ms


class SearchStrategy(Protocol):
    def propose(self, task: TuningTask, candidates: Sequence[KernelConfig], n: int) -> list[KernelConfig]:
        """Up to `n` configs of `candidates` (the unmeasured ones) to measure next."""
        ...

    def observe(self, task: TuningTask, configs: Sequence[KernelConfig], times: Times) -> None:
        """Measured times (None: failed) of configs this strategy proposed."""
        ...


class ExhaustiveSearch:
    """Every config, in the space's order."""

    def propose(self, task: TuningTask, candidates: Sequence[KernelConfig], n: int) -> list[KernelConfig]:
        return list(candidates[:n])

    def observe(self, task: TuningTask, configs: Sequence[KernelConfig], times: Times) -> None:
        pass


class RandomSearch:
    """Configs in a random order (seeded)."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def propose(self, task: TuningTask, candidates: Sequence[KernelConfig], n: int) -> list[KernelConfig]:
        return self.rng.sample(list(candidates), min(n, len(candidates)))

    def observe(self, task: TuningTask, configs: Sequence[KernelConfig], times: Times) -> None:
        pass


class ModelGuidedSearch:
    """The cost model's top picks plus an `epsilon` share of random ones; the model learns online."""

    def __init__(self, model, epsilon: float = 0.25, seed: int = 0):
        self.model, self.epsilon, self.rng = model, epsilon, random.Random(seed)

    def propose(self, task: TuningTask, candidates: Sequence[KernelConfig], n: int) -> list[KernelConfig]:
        candidates = list(candidates)
        if len(candidates) <= n:
            return candidates
        scores = self.model.predict(task, candidates)
        order = sorted(range(len(candidates)), key=lambda i: -scores[i])
        explore = int(round(self.epsilon * n)) if n > 1 else 0
        picked = order[: n - explore]
        rest = order[n - explore :]
        picked += self.rng.sample(rest, min(explore, len(rest)))
        return [candidates[i] for i in picked]

    def observe(self, task: TuningTask, configs: Sequence[KernelConfig], times: Times) -> None:
        self.model.update(task, configs, times)


@dataclass
class TuneResult:
    """What tuning one task did: its best record, and every trial of this run in order."""

    task: TuningTask
    space_size: int
    untuned: KernelConfig
    best: TuningRecord | None
    trials: list[TuningRecord] = field(default_factory=list)
    resumed: int = 0  # trials found in the database from an earlier run
    wall_s: float = 0.0
    untuned_ms: float | None = None  # the untuned config's time, from this run or an earlier one


def tune_task(
    task: TuningTask, *, space: SearchSpace, strategy: SearchStrategy, runner: Runner,
    database: Database, device: str, versions: str, budget: int, builder: Builder | None = None,
    batch: int = 8, patience: int | None = None, job: str = "", progress: Progress | None = None,
    untuned_first: bool = True,
) -> TuneResult:  # fmt: skip
    """Tune `task` until `budget` trials (earlier runs' included), the space runs out, or
    `patience` trials pass without a better time (see the module docstring). The untuned
    config is measured first unless `untuned_first` is false (evaluating a strategy alone)."""
    start = time.perf_counter()
    database.commit_task(task)
    previous = database.records(task.key, device, versions)
    done = {r.config.key() for r in previous}
    best = database.best(task.key, device, versions)
    trials: list[TuningRecord] = []
    remaining = [c for c in space.configs() if c.key() not in done]
    if previous:  # a resumed job: the model learns from what the killed one measured
        strategy.observe(task, [r.config for r in previous], [r.median_ms for r in previous])
    # the untuned choice is always measured first, so tuning never ends worse than not tuning
    default_key = space.untuned().key()
    first = [c for c in remaining if c.key() == default_key] if untuned_first else []
    since_best = 0
    count = len(previous)
    budget = min(budget, count + len(remaining))  # a space smaller than the budget: the bar ends full
    if progress:
        progress(task, count, budget, best.median_ms if best else None)
    while remaining and count < budget and (patience is None or since_best < patience):
        n = min(batch, budget - count)
        others = [c for c in remaining if c.key() != default_key] if first else remaining
        proposed = first + strategy.propose(task, others, n - len(first))
        first = []
        built = builder.build([MeasureInput(task, c) for c in proposed]) if builder else []
        build_errors = {b.config.key(): b for b in built if b.error}
        build_s = {b.config.key(): b.build_s for b in built}
        times: list[float | None] = []
        for config in proposed:
            if config.key() in build_errors:
                result = MeasureResult(config, error=f"build: {build_errors[config.key()].error}")
            else:
                result = runner.run([MeasureInput(task, config)])[0]
            count += 1
            extra = {"build_s": build_s[config.key()]} if config.key() in build_s else {}
            record = TuningRecord(
                task.key, device, versions, config, result.median_ms, result.error,
                job=job, trial=count, wall_s=result.run_s, extra=extra,
            )  # fmt: skip
            database.commit(record)  # before the next trial: a kill loses only the one in flight
            trials.append(record)
            times.append(record.median_ms)
            if record.median_ms is not None and (best is None or record.median_ms < best.median_ms):
                best, since_best = record, 0
            else:
                since_best += 1
            if progress:
                progress(task, count, budget, best.median_ms if best else None)
        strategy.observe(task, proposed, times)
        taken = {c.key() for c in proposed}
        remaining = [c for c in remaining if c.key() not in taken]
    untuned = space.untuned()
    every = {r.config.key(): r.median_ms for r in [*previous, *trials]}
    return TuneResult(
        task, len(space), untuned, best, trials, len(previous), time.perf_counter() - start,
        every.get(untuned.key()),
    )  # fmt: skip
