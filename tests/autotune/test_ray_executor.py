"""The Ray executor on CPU: a local Ray cluster of two CPUs, the synthetic runner inside runner actors.

One cluster serves the whole file (starting Ray costs seconds). The fakes below run inside
Ray's workers, which cannot import this file: the fixture has Ray pickle them by value.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from dataclasses import replace

import pytest
import torch

from tilefuse.autotune.database import DB_ENV
from tilefuse.autotune.job import load_cost_model, plan_budget, tune_tasks
from tilefuse.autotune.ray_executor import (
    MixedDevicesError,
    RayUnavailable,
    RunnerInfo,
    check_one_kind,
    runner_count,
)
from tilefuse.autotune.records import BuildResult
from tilefuse.autotune.space import DeviceLimits, SearchSpace
from tilefuse.autotune.testing import SyntheticRunner, gemm_task
from tilefuse.compiler.cli import main as cli_main


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray cluster for the module's tests; its address, for a job in another process."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install tilefuse[ray])")
    from ray import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(module)


@pytest.fixture
def database(tmp_path, monkeypatch):
    """A fresh database path; `tune_tasks(database=...)` sets `$TILEFUSE_TUNING_DB`, restored after."""
    monkeypatch.setenv(DB_ENV, str(tmp_path / "unused.db"))
    return lambda name: tmp_path / f"{name}.db"


def synthetic_runner(device_index: int | None = None) -> SyntheticRunner:
    return SyntheticRunner()


def null_build(inp) -> BuildResult:
    return BuildResult(inp.config)


class DyingRunner(SyntheticRunner):
    """Logs each measurement (task, config, process) to `log`; the first runner to reach its
    `die_at`-th measurement kills its process there, once (`marker` keeps its replacement alive)."""

    def __init__(self, log: str, marker: str, die_at: int, device_index: int | None = None) -> None:
        super().__init__()
        self.log, self.marker, self.die_at, self.count = log, marker, die_at, 0

    def run(self, inputs):
        for inp in inputs:
            self.count += 1
            with open(self.log, "a") as f:
                f.write(f"{inp.task.key} {inp.config.key()} {os.getpid()}\n")
            if self.count == self.die_at and _first_to_create(self.marker):
                os._exit(1)
        return super().run(inputs)


class DeadlyRunner(SyntheticRunner):
    """Kills its process whenever it is asked to measure the config `deadly`."""

    def __init__(self, deadly: str, device_index: int | None = None) -> None:
        super().__init__()
        self.deadly = deadly

    def run(self, inputs):
        if any(inp.config.key() == self.deadly for inp in inputs):
            os._exit(1)
        return super().run(inputs)


def _first_to_create(path: str) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def _trials(summary) -> list[tuple[str, str, float | None, str | None]]:
    return [(r.task.key, t.config.key(), t.median_ms, t.error) for r in summary.results for t in r.trials]


def test_a_ray_job_tunes_as_a_local_one_with_the_real_builder(ray_address, database):
    two_gemms = lambda x, w1, w2: torch.relu(x @ w1) @ w2  # noqa: E731
    from tilefuse.compiler.tuning import kernel_tasks

    tasks = kernel_tasks(two_gemms, (torch.randn(16, 32), torch.randn(32, 24), torch.randn(24, 40)))
    assert [t.kind for t in tasks] == ["gemm", "gemm"] and all(t.source for t in tasks)
    options = dict(budget=5, strategy="random", make_runner=synthetic_runner, progress=False)
    local = tune_tasks(tasks, database=database("local"), **options)
    on_ray = tune_tasks(tasks, database=database("ray"), ray=True, **options)
    # the same configs in the same order, the same times, the same best configs
    assert _trials(on_ray) == _trials(local) and len(_trials(local)) == 10
    assert [r.best.config for r in on_ray.results] == [r.best.config for r in local.results]
    # every candidate went through build_kernel (a Ray task) before its measurement
    assert all(t.extra["build_s"] > 0 for r in on_ray.results for t in r.trials)
    # each summary ends with its runner's throughput; a runner actor says where it ran
    assert local.runners[0].place == "CPU" and on_ray.runners[0].place.endswith(" CPU")  # "10.0.0.3 CPU"
    for summary in (local, on_ray):
        (runner,) = summary.runners
        assert runner.trials == 10 and runner.per_second > 0
        assert f"| {runner.place} | 10 |" in summary.table()


def test_a_total_budget_is_split_on_ray_as_locally(ray_address, database):
    tasks = [gemm_task(2048, 2048, 2048), gemm_task(64, 64, 64)]
    launches = {tasks[1].key: 3}
    on_ray = tune_tasks(
        tasks, total_budget=14, launches=launches, strategy="random", make_runner=synthetic_runner,
        build_fn=null_build, progress=False, database=database("total"), ray=True,
    )  # fmt: skip
    # the runner actors (CPU-only here) report the limits a local job would plan with
    local = plan_budget(tasks, launches, 14, DeviceLimits.current(), load_cost_model())
    assert on_ray.split.trials == local.trials and sum(local.trials.values()) == 14
    assert [len(r.trials) for r in on_ray.results] == [local.trials[t.key] for t in tasks]


def test_a_runner_actor_that_dies_is_replaced_and_its_trial_measured_again(ray_address, database, tmp_path):
    log, marker = tmp_path / "measured.log", tmp_path / "died"
    make_runner = functools.partial(DyingRunner, log=str(log), marker=str(marker), die_at=3)
    tasks = [gemm_task(256, 256, 256), gemm_task(512, 128, 64)]
    summary = tune_tasks(
        tasks, 6, strategy="random", workers=2, database=database("dying"), ray=True,
        make_runner=make_runner, build_fn=null_build, progress=False,
    )  # fmt: skip
    assert marker.exists() and len(summary.runners) == 2
    assert [len(r.trials) for r in summary.results] == [6, 6]
    assert all(t.error is None for r in summary.results for t in r.trials)
    processes = defaultdict(set)
    for line in log.read_text().splitlines():
        task, config, pid = line.split()
        processes[task, config].add(pid)
    # 12 trials, one of them measured twice: by the actor that died, then by its replacement
    assert len(processes) == 12 and sorted(len(p) for p in processes.values()) == [1] * 11 + [2]


def test_a_candidate_that_kills_two_runner_actors_is_recorded_as_an_error(ray_address, database):
    task = gemm_task(256, 256, 256)
    deadly = SearchSpace(task, DeviceLimits()).untuned().key()  # measured first
    summary = tune_tasks(
        [task], 3, strategy="random", database=database("deadly"), ray=True,
        make_runner=functools.partial(DeadlyRunner, deadly), build_fn=null_build, progress=False,
    )  # fmt: skip
    (result,) = summary.results
    first, *rest = result.trials
    assert first.config.key() == deadly and first.error.startswith("two runner actors died measuring it")
    assert len(rest) == 2 and all(t.error is None for t in rest)  # the third actor measured them


JOB = """
import functools, sys, time

from tilefuse.autotune.job import tune_tasks
from tilefuse.autotune.records import BuildResult
from tilefuse.autotune.testing import SyntheticRunner, gemm_task


class LoggingRunner(SyntheticRunner):
    # says what it measures, slowly enough for the test to kill the job between two trials
    def __init__(self, log, device_index=None):
        super().__init__()
        self.log = log

    def run(self, inputs):
        with open(self.log, "a") as f:
            f.writelines(f"{i.task.key} {i.config.key()}\\n" for i in inputs)
        time.sleep(0.1)
        return super().run(inputs)


def null_build(inp):
    return BuildResult(inp.config)


address, db, log = sys.argv[1:]
tasks = [gemm_task(256, 256, 256), gemm_task(512, 128, 64)]
tune_tasks(tasks, 8, strategy="random", database=db, ray=address, progress=False,
           make_runner=functools.partial(LoggingRunner, log), build_fn=null_build)
"""


def _records(db) -> set[tuple[str, str]]:
    try:
        with sqlite3.connect(db) as conn:
            return set(conn.execute("SELECT task_key, config FROM records").fetchall())
    except sqlite3.OperationalError:  # no database yet, or no tables
        return set()


def test_a_job_whose_driver_is_killed_resumes_without_measuring_again(ray_address, tmp_path):
    script, db = tmp_path / "job.py", tmp_path / "tuning.db"
    script.write_text(textwrap.dedent(JOB))

    def job(log: str) -> list[str]:
        return [sys.executable, str(script), ray_address, str(db), str(tmp_path / log)]

    first = subprocess.Popen(job("first.log"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # generous: a loaded 2-core machine runs two test workers
    while len(_records(db)) < 3 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, f"the job ended before it was killed: {first.communicate()[1]}"
    first.send_signal(signal.SIGKILL)
    first.wait()
    committed = _records(db)
    assert 3 <= len(committed) < 16
    again = subprocess.run(job("again.log"), capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    measured = {tuple(line.split()) for line in (tmp_path / "again.log").read_text().splitlines()}
    assert not measured & committed  # what the killed job committed is not measured again
    assert committed < _records(db) and len(_records(db)) == 16


def test_asking_for_ray_without_ray_says_how_to_install_it(monkeypatch, database, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails, installed or not
    with pytest.raises(RayUnavailable, match=r"pip install tilefuse\[ray\]"):
        tune_tasks([gemm_task(64, 64, 64)], 1, ray=True, make_runner=synthetic_runner, database=database("x"))
    # the command line says so in one line, before it compiles anything
    script = tmp_path / "model.py"
    script.write_text("import torch\n\ndef tune_target():\n    return torch.tanh, (torch.randn(4),)\n")
    assert cli_main(["tune", str(script), "--ray", "--db", str(database("cli"))]) == 1
    assert "error: tuning on Ray needs Ray" in capsys.readouterr().err


def test_runner_actors_of_different_devices_or_software_are_refused():
    h200 = RunnerInfo(
        "NVIDIA H200", "torch=2.11.0,triton=3.6.0,tilefuse=0.1.0", DeviceLimits(), "n1", "a GPU 0"
    )
    check_one_kind([h200, replace(h200, node_id="n2", place="b GPU 3")])  # one kind on two nodes
    with pytest.raises(MixedDevicesError, match="H100.*H200"):
        check_one_kind([h200, replace(h200, device="NVIDIA H100 80GB HBM3")])
    with pytest.raises(MixedDevicesError, match="torch=2.13"):
        check_one_kind([h200, replace(h200, versions="torch=2.13.0,triton=3.9.0,tilefuse=0.1.0")])


@pytest.mark.parametrize(
    "workers, gpus, tasks, actors",
    [(None, 8, 20, 8), (2, 8, 20, 2), (16, 8, 20, 8), (None, 8, 3, 3), (None, 0, 5, 1), (3, 0, 5, 3)],
)
def test_one_runner_actor_per_gpu_or_as_many_cpu_ones_as_asked(workers, gpus, tasks, actors):
    assert runner_count(workers, gpus, tasks) == actors
