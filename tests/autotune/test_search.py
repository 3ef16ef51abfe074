"""The tuning loop on CPU: a synthetic-cost runner stands in for the GPU (autotune/testing.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tilefuse.autotune.cost_model import XGBoostCostModel
from tilefuse.autotune.database import Database
from tilefuse.autotune.heuristics import default_config
from tilefuse.autotune.search import ExhaustiveSearch, ModelGuidedSearch, RandomSearch, tune_task
from tilefuse.autotune.space import DeviceLimits, SearchSpace, shared_memory_bytes
from tilefuse.autotune.testing import NullBuilder, SyntheticRunner, gemm_task, synthetic_cost

DEVICE, VERSIONS = "synthetic", "test"


def _tune(task, strategy, db, budget, runner=None, **kw):
    space = SearchSpace(task)
    return tune_task(
        task, space=space, strategy=strategy, runner=runner or SyntheticRunner(), builder=NullBuilder(),
        database=db, device=DEVICE, versions=VERSIONS, budget=budget, **kw,
    )  # fmt: skip


def _optimum(task) -> float:
    return min(synthetic_cost(task, c) for c in SearchSpace(task).configs())


def test_space_is_pruned_and_legal():
    task = gemm_task(4096, 4096, 4096)
    space = SearchSpace(task)
    assert 100 < len(space) < 800  # persistent or not doubles the GEMM space
    limits = DeviceLimits()
    assert all(shared_memory_bytes(task, c) <= limits.smem_per_block for c in space.configs())
    assert all(space.why_illegal(c) is None for c in space.configs())
    assert any(c.key() == default_config("gemm", task.problem).key() for c in space.configs())
    # a tiny M does not get 256-row tiles
    small = SearchSpace(gemm_task(16, 4096, 4096))
    assert max(c.params["BLOCK_M"] for c in small.configs()) <= 32


def test_space_keeps_the_lowerings_requirements():
    task = gemm_task(512, 1024, 256)
    task.problem.update({"whole": {"BLOCK_N": 256}, "exact": {"BLOCK_N": 256}, "divisors": {"BLOCK_K": [64]}})
    configs = SearchSpace(task).configs()
    assert configs and all(c.params["BLOCK_N"] == 256 and c.params["BLOCK_K"] <= 64 for c in configs)


def test_exhaustive_finds_the_optimum_and_records_everything(tmp_path):
    task = gemm_task(1024, 512, 256)
    with Database(tmp_path / "t.db") as db:
        result = _tune(task, ExhaustiveSearch(), db, budget=10_000)
        assert len(result.trials) == result.space_size
        assert result.best.median_ms == pytest.approx(_optimum(task))
        assert len(db.records(task.key, DEVICE, VERSIONS)) == result.space_size
        # the untuned default is always the first trial
        assert result.trials[0].config.key() == default_config("gemm", task.problem).key()


@pytest.mark.parametrize("shape", [(4096, 4096, 4096), (128, 8192, 8192), (1000, 3000, 777)], ids=str)
def test_model_guided_search_finds_the_optimum_with_few_trials(tmp_path, shape):
    task = gemm_task(*shape)
    space_size = len(SearchSpace(task))
    budget = space_size // 5
    with Database(tmp_path / "t.db") as db:
        model = _tune(task, ModelGuidedSearch(XGBoostCostModel(), seed=0), db, budget)
    with Database(tmp_path / "r.db") as db:
        rand = _tune(task, RandomSearch(seed=0), db, budget)
    best = _optimum(task)
    # a fifth of the space reaches the optimum within 5% (the synthetic noise is +-2%)
    assert model.best.median_ms <= 1.05 * best
    assert model.best.median_ms <= rand.best.median_ms * 1.02


def test_failures_are_recorded_and_skipped(tmp_path):
    task = gemm_task(512, 512, 512)
    configs = SearchSpace(task).configs()
    failing = [c.key() for c in configs[::3]]
    with Database(tmp_path / "t.db") as db:
        result = _tune(task, ExhaustiveSearch(), db, budget=10_000, runner=SyntheticRunner(failing))
        errors = [r for r in result.trials if r.error]
        assert len(errors) == len(failing) and all(r.median_ms is None for r in errors)
        assert result.best.config.key() not in failing


def test_a_second_job_resumes_without_measuring_twice(tmp_path):
    task = gemm_task(2048, 2048, 1024)
    runner = SyntheticRunner()
    with Database(tmp_path / "t.db") as db:
        first = _tune(task, RandomSearch(seed=1), db, budget=12, runner=runner)
        second = _tune(task, RandomSearch(seed=2), db, budget=30, runner=runner)
    assert len(first.trials) == 12 and second.resumed == 12 and len(second.trials) == 18
    assert len(runner.measured) == len(set(runner.measured)) == 30
    assert second.best.median_ms <= first.best.median_ms
    # the untuned config was measured by the first job; the resumed one still reports its time
    assert first.untuned_ms is not None and second.untuned_ms == first.untuned_ms


def test_patience_stops_when_gains_flatten(tmp_path):
    with Database(tmp_path / "t.db") as db:
        result = _tune(gemm_task(1024, 1024, 1024), ExhaustiveSearch(), db, budget=10_000, patience=5)
    assert len(result.trials) < result.space_size


_KILLED_JOB = textwrap.dedent(
    """
    import sys, time
    from tilefuse.autotune.database import Database
    from tilefuse.autotune.search import RandomSearch, tune_task
    from tilefuse.autotune.space import SearchSpace
    from tilefuse.autotune.testing import NullBuilder, SyntheticRunner, gemm_task

    class SlowRunner(SyntheticRunner):
        def run(self, inputs):
            time.sleep(0.02)
            return super().run(inputs)

    def report(task, trials, budget, best):
        print(trials, flush=True)

    task = gemm_task(2048, 2048, 1024)
    with Database(sys.argv[1]) as db:
        tune_task(task, space=SearchSpace(task), strategy=RandomSearch(seed=3), runner=SlowRunner(),
                  builder=NullBuilder(), database=db, device="synthetic", versions="test", budget=100_000,
                  progress=report)
    """
)


def test_a_killed_job_loses_at_most_the_trial_in_flight_and_resumes(tmp_path):
    path = tmp_path / "t.db"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_JOB, str(path)], stdout=subprocess.PIPE, text=True)
    reported = 0
    while reported < 40:
        line = proc.stdout.readline()
        assert line, "the job ended before it could be killed"
        reported = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    task = gemm_task(2048, 2048, 1024)
    runner = SyntheticRunner()
    with Database(path) as db:
        kept = db.records(task.key, DEVICE, VERSIONS)
        assert reported <= len(kept) <= reported + 1  # the one in flight may or may not have landed
        budget = len(kept) + 10
        result = _tune(task, RandomSearch(seed=4), db, budget=budget, runner=runner)
    assert result.resumed == len(kept) and len(result.trials) == 10
    assert not {r.config.key() for r in kept} & set(runner.measured)
