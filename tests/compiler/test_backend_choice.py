"""The kernel backend choice (`backend=` / TILEFUSE_BACKEND): the CUDA C++ backend's kernels run in
compiled programs, beside Triton's, and in "auto" the faster of the two is kept per group.

No GPU here: CUDA C++ kernels run on CPU threads (`backends/cuda/testing.py`, g++), Triton's in
its interpreter; eager PyTorch is the oracle; shapes are ragged (no tile divides them).
"""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.compiler import group_selection, runtime

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: CUDA kernels cannot run on CPU")


@pytest.fixture(autouse=True)
def _fresh_tuning_database(monkeypatch, tmp_path):
    """Measured choices are recorded in the tuning database and read back by later compiles: each
    test starts from an empty one, so its fake clock decides."""
    monkeypatch.setenv("TILEFUSE_TUNING_DB", str(tmp_path / "tuning.db"))


def _block(x, w, g):
    h = torch.relu(x @ w)  # a GEMM: Triton's under any backend
    return F.layer_norm(h * 2, (h.shape[-1],)) + torch.sigmoid(g), torch.softmax(x * 3, dim=-1).sum(0)


def _inputs():
    return torch.randn(5, 13), torch.randn(13, 11), torch.randn(11)


def _compiled(backend, tmp_path, **kw):
    fn = tilefuse.compile(_block, backend=backend, dump=tmp_path, **kw)
    args = _inputs()
    with torch.no_grad():
        for got, want in zip(fn(*args), _block(*args)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    (report,) = fn.tilefuse_reports
    (partition,) = report["partitions"]
    kernels = [g for g in partition["groups"] if g["kernel"]]
    (program,) = tmp_path.glob("*/program_*.py")
    return partition, kernels, program.read_text()


def test_cuda_backend_runs_the_kinds_it_covers_and_leaves_gemms_to_triton_on_the_cpu(tmp_path):
    """Under the interpreter the CUDA kernels run emulated on CPU threads; a GEMM's CUTLASS kernel
    (TMA, WGMMA) has no emulation: its group keeps the Triton kernel and says why."""
    partition, kernels, program = _compiled("cuda", tmp_path)
    by_kind = {g["kind"]: g for g in kernels}
    assert by_kind["gemm"]["backend"] == "triton" and "Triton" in by_kind["gemm"]["cuda"]
    covered = [g for g in kernels if g["kind"] in ("pointwise", "reduction", "row")]
    assert covered and all(g["backend"] == "cuda" for g in covered), kernels
    assert program.count("[cuda]") == len(covered)


def test_the_environment_picks_the_backend_and_a_bad_name_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_BACKEND", "cuda")
    _, kernels, _ = _compiled(None, tmp_path)
    assert "cuda" in {g["backend"] for g in kernels}
    with pytest.raises(ValueError, match="backend must be one of"):
        tilefuse.compile(_block, backend="cutlass")
    monkeypatch.setenv("TILEFUSE_BACKEND", "ptx")
    with pytest.raises(ValueError, match="TILEFUSE_BACKEND"):
        tilefuse.compile(_block)


@pytest.mark.parametrize("faster", ["cuda", "kernel"])
def test_auto_keeps_the_faster_backend_per_group(tmp_path, monkeypatch, faster):
    monkeypatch.setattr(runtime, "group_selection_enabled", lambda device: True)

    def clock(kind, run, device):
        run()
        return 1.0 if kind == faster or (kind == "library" and faster == "kernel") else 2.0

    monkeypatch.setattr(group_selection, "default_clock", clock)
    partition, kernels, program = _compiled("auto", tmp_path)
    cuda_choices = [c for c in partition["group_selection"] if "cuda_ms" in c]
    assert cuda_choices and {c["chosen"] for c in cuda_choices} == {faster}
    assert all(g["backend"] == "triton" for g in kernels)  # the report names the compiled kernel
    assert program.count("[cuda]") == (len(cuda_choices) if faster == "cuda" else 0)


def test_cuda_kernels_build_on_threads_and_identical_ones_once(monkeypatch):
    """A graph's distinct CUDA C++ kernels build at the same time (nvcc is a subprocess; one at a
    time, Llama's took 65 s on the H200), and kernels with one source (two softmaxes) build once.
    The build is faked (a slow one, counted); under "auto" on a CPU the Triton kernels run."""
    import threading
    import time

    from tilefuse.compiler import codegen

    lock, active, peak, built = threading.Lock(), [0], [0], []

    def slow_build(source, function, config, target):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
            built.append(source)
        time.sleep(0.3)
        with lock:
            active[0] -= 1
        return object()  # never launched: on a CPU, "auto" runs the Triton kernel unmeasured

    monkeypatch.setenv("TILEFUSE_CACHE", "0")
    monkeypatch.setattr(codegen, "_load_cuda", slow_build)
    monkeypatch.setattr(codegen, "_cuda_kernels", {})

    def fn(x, y):
        return torch.softmax(x, -1), torch.softmax(y, -1), F.layer_norm(x * 2, (33,)), torch.exp(y) + 1

    x, y = torch.randn(5, 33), torch.randn(5, 33)
    compiled = tilefuse.compile(fn, backend="auto")
    for got, want in zip(compiled(x, y), fn(x, y)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    groups = [g for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]]
    assert sum(g["cuda"] == "built: measured against Triton" for g in groups) == len(groups) >= 4, groups
    assert len(built) == len(set(built)) < len(groups)  # the two softmaxes share a source
    assert peak[0] > 1


def test_a_cuda_build_that_fails_is_tried_once_and_its_group_stays_on_triton(monkeypatch):
    """A failed build (nvcc's error, or its time limit: up to minutes) is not run a second time
    in the same compile; the group keeps its Triton kernel and says why."""
    from tilefuse.compiler import codegen

    tried = []

    def failing_build(source, function, config, target):
        tried.append(source)
        raise RuntimeError("simulated nvcc failure")

    monkeypatch.setenv("TILEFUSE_CACHE", "0")
    monkeypatch.setattr(codegen, "_load_cuda", failing_build)
    monkeypatch.setattr(codegen, "_cuda_kernels", {})
    fn = lambda x: (torch.softmax(x, -1), torch.exp(x) + 1)  # noqa: E731
    x = torch.randn(5, 33)
    compiled = tilefuse.compile(fn, backend="cuda")
    for got, want in zip(compiled(x), fn(x)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    groups = [g for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]]
    assert len(tried) == len(set(tried)) == len(groups) == 2
    assert all(g["backend"] == "triton" and "simulated nvcc failure" in g["cuda"] for g in groups), groups
