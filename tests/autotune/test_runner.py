"""The builder and runner on a real kernel (in Triton's interpreter without CUDA) and on misbehaving candidates.

A candidate that raises, kills its process or hangs must become an error result
while the rest of its batch is still measured (in a fresh process where the old
one is gone). The misbehaving measure/build functions live in runner_fakes.py,
which the spawned children import by name.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tilefuse
from tilefuse.autotune.builder import Builder, LocalBuilder, _CompileOnly, _Layout, build_kernel
from tilefuse.autotune.heuristics import KernelConfig
from tilefuse.autotune.records import ArgSpec, MeasureInput, MeasureResult, TuningTask
from tilefuse.autotune.runner import LocalRunner, Runner, measure_kernel
from tilefuse.backends.triton import load

HERE = Path(__file__).parent
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def fakes(monkeypatch):
    """runner_fakes, importable by name here and in the children this test spawns."""
    monkeypatch.syspath_prepend(str(HERE))
    return importlib.import_module("runner_fakes")


@pytest.fixture(scope="module")
def gemm(tmp_path_factory) -> tuple[TuningTask, KernelConfig]:
    """relu(x @ y) on 32x48 @ 48x40 compiled by tilefuse: its one kernel as a task, and its default config."""
    dump = tmp_path_factory.mktemp("dump")
    f = tilefuse.compile(lambda x, y: torch.relu(x @ y), dump=dump)
    f(torch.randn(32, 48, device=DEVICE), torch.randn(48, 40, device=DEVICE))
    (report,) = f.tilefuse_reports
    (group,) = [g for p in report["partitions"] for g in p["groups"] if g["kernel"]]
    source = (dump / report["dir"] / "kernels" / f"{group['kernel']}.py").read_text()
    kernel = load(source, group["triton_function"])
    args = tuple(ArgSpec(shape, dtype) for shape, dtype in zip(kernel.shapes, kernel.dtypes))
    task = TuningTask("test-gemm", group["kernel"], group["kind"], {"M": 32, "N": 40, "K": 48}, source,
                      group["triton_function"], args)  # fmt: skip
    return task, KernelConfig.from_key(group["config"])


def candidate(mode: int, **extra: int) -> MeasureInput:
    task = TuningTask("fake", "fake", "gemm", {}, "", "fake", (ArgSpec((1,), "float32"),))
    return MeasureInput(task, KernelConfig({"MODE": mode, **extra}))


def test_measure_kernel_times_valid_configs_and_reports_invalid_ones(gemm):
    task, default = gemm
    small = KernelConfig(
        {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 4, "PROGRAMS": 2}, num_warps=2, num_stages=1
    )
    for config in (default, small):
        result = measure_kernel(MeasureInput(task, config))
        assert result.error is None, result.error
        assert result.config == config
        assert len(result.times_ms) == (10 if DEVICE == "cuda" else 3)  # the interpreter's cap: 3
        assert all(t > 0 for t in result.times_ms)
        assert result.median_ms > 0 and result.run_s >= sum(result.times_ms) / 1e3
    missing = KernelConfig({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16})
    result = measure_kernel(MeasureInput(task, missing))
    assert result.times_ms == () and result.median_ms is None
    assert result.error.startswith("LaunchError:") and "GROUP_M" in result.error


def test_measure_kernel_reports_a_source_that_does_not_load(gemm):
    task, default = gemm
    broken = TuningTask(**{**task.__dict__, "source": task.source.replace("@triton.jit", "@triton.jit(")})
    result = measure_kernel(MeasureInput(broken, default))
    assert result.error.startswith("SyntaxError:")


def test_local_runner_survives_raising_dying_and_hanging_candidates(fakes, gemm):
    task, default = gemm
    real = MeasureInput(task, default)  # no MODE: measured by measure_kernel in the child
    expected_device = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    runner = LocalRunner(fakes.fake_measure, timeout_s=2, device_index=0)
    assert isinstance(runner, Runner) and runner.pid is None  # started by the first run
    with runner:
        batch = [fakes.OK, fakes.RAISE, fakes.OK, fakes.EXIT, fakes.OK, fakes.HANG, fakes.OK, fakes.ENV]
        results = runner.run([candidate(mode, i=i) for i, mode in enumerate(batch)] + [real])
        first, raised, second, died, third, hung, fourth, env, measured = results
        assert [r.config.params["i"] for r in results[:-1]] == list(range(len(batch)))
        pids = [int(r.times_ms[0]) for r in (first, second, third, fourth)]
        assert raised.error == "ValueError: a bad candidate" and raised.times_ms == ()
        assert pids[0] == pids[1] != os.getpid()  # an exception leaves the child usable
        assert died.error == "measurement process died (exit code 3)"
        assert pids[2] != pids[1]  # a fresh child after the death
        assert hung.error == "timeout after 2 s"
        assert pids[3] != pids[2]  # and after the hang
        assert env.error == f"CUDA_VISIBLE_DEVICES={expected_device}"
        assert measured.config == default and measured.error is None, measured.error
        assert len(measured.times_ms) == 2 and measured.median_ms > 0
        # the child outlives a batch: the next one is measured in the same process
        (again,) = runner.run([candidate(fakes.OK)])
        assert int(again.times_ms[0]) == pids[3] == runner.pid
    assert runner.pid is None  # closed with the context


ORPHAN = """
import runner_fakes
from tilefuse.autotune.heuristics import KernelConfig
from tilefuse.autotune.records import ArgSpec, MeasureInput, TuningTask
from tilefuse.autotune.runner import LocalRunner

task = TuningTask("fake", "fake", "gemm", {}, "", "fake", (ArgSpec((1,), "float32"),))
runner = LocalRunner(runner_fakes.fake_measure, timeout_s=600)
runner.run([MeasureInput(task, KernelConfig({"MODE": runner_fakes.OK}))])
print(runner.pid, flush=True)
runner.run([MeasureInput(task, KernelConfig({"MODE": runner_fakes.HANG}))])
"""


def alive(pid: int) -> bool:
    try:  # a zombie has exited: only its parent's wait is missing
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_the_child_exits_when_its_parent_is_killed_mid_measurement():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN], stdout=subprocess.PIPE, text=True, env=env)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    orphaned = alive(child)
    if orphaned:  # do not leave it hanging for ten minutes
        os.kill(child, signal.SIGKILL)
    assert not orphaned


def test_local_runner_fails_the_batch_when_its_child_cannot_start():
    # a lambda does not pickle: no child starts, and every candidate says why
    runner = LocalRunner(lambda inp: MeasureResult(inp.config))
    results = runner.run([candidate(0), candidate(1)])
    assert [r.config.params["MODE"] for r in results] == [0, 1]
    assert all(r.error.startswith("cannot start the measurement process") for r in results)


def test_build_kernel_checks_the_config_against_the_kernel(gemm):
    task, default = gemm
    assert build_kernel(MeasureInput(task, default)).error is None
    wrong = KernelConfig({**default.params, "BLOCK_Q": 8})
    assert "BLOCK_Q" in build_kernel(MeasureInput(task, wrong)).error
    other_shapes = TuningTask(**{**task.__dict__, "args": (ArgSpec((2, 2), "float32"),) * 3})
    assert "tensor 0 is (2, 2)" in build_kernel(MeasureInput(other_shapes, default)).error


class Recorder:
    """A JIT function that keeps what it was called with: by a launch (`fn[grid](...)`) or by `warmup`."""

    def __getitem__(self, grid):
        return lambda *args, **options: self.warmup(*args, grid=grid, **options)

    def warmup(self, *args, grid, **options):
        self.call = (args, grid, options)


@pytest.mark.parametrize("tma", ["0", "1"])
def test_a_build_compiles_what_a_launch_runs(gemm, tma, monkeypatch):
    # the warmup must see the launch's strides, grid and options (USE_TMA included), with a dtype in place of
    # each tensor: then Triton caches the binary under the key the measured launch looks up
    monkeypatch.setenv("TILEFUSE_TMA", tma)
    task, default = gemm
    kernel = load(task.source, task.kernel_name)
    launched, built = Recorder(), Recorder()
    tensors = [torch.empty(a.shape) for a in task.args]
    dataclasses.replace(kernel, function=launched)(tensors, default.params, 8, 3)
    stand_in = dataclasses.replace(kernel, function=_CompileOnly(built, compile=True))
    stand_in([_Layout(a.shape, a.dtype, cuda=False) for a in task.args], default.params, 8, 3)
    args, grid, options = launched.call
    assert built.call == (tuple(a.dtype if isinstance(a, torch.Tensor) else a for a in args), grid, options)
    assert built.call[0] == (torch.float32, 48, 1, torch.float32, 40, 1, torch.float32, 40, 1)
    ws = {"USE_WS": False} if kernel.warp_specializable else {}  # TILEFUSE_WS is off
    assert options == {**default.params, "USE_TMA": tma == "1", **ws, "num_warps": 8, "num_stages": 3}


def test_local_builder_survives_raising_dying_and_hanging_builds(fakes, gemm):
    task, default = gemm
    missing = KernelConfig({k: v for k, v in default.params.items() if k != "BLOCK_K"})
    # no MODE: built by build_kernel in a worker
    real = [MeasureInput(task, default), MeasureInput(task, missing)]
    # the crash comes while the hang is in flight: both are retried alone in fresh pools
    batch = [fakes.RAISE, fakes.OK, fakes.HANG, fakes.OK, fakes.EXIT]
    builder = LocalBuilder(workers=2, timeout_s=2, build_fn=fakes.fake_build)
    assert isinstance(builder, Builder)
    with builder:
        results = builder.build(real + [candidate(mode, i=i) for i, mode in enumerate(batch)])
        ok, bad, raised, first, hung, second, died = results
        assert ok.config == default and ok.error is None and ok.build_s > 0
        assert bad.config == missing and "config sets" in bad.error and "BLOCK_K" in bad.error
        assert [r.config.params["i"] for r in results[2:]] == list(range(len(batch)))
        assert raised.error == "ValueError: a bad candidate"
        assert first.error is None and second.error is None
        assert hung.error == "timeout after 2 s"
        assert died.error == "build process died"
