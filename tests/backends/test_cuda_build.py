"""Building emitted CUDA with nvcc, caching the libraries, and launching them through Triton's interface.

The kernel is the emitted softmax row kernel pinned by the golden file
`softmax_row.cu` (test_cuda_backend.py checks that `emit_cuda` still writes
exactly it), so these tests need no pipeline run. nvcc builds it twice (the
original and a changed copy, in parallel); every other build is a cache hit
or fails fast. Without a GPU its launcher returns a cudaError, which must
surface as CudaLaunchError; the same launcher interface then drives the g++
CPU emulation of `testing.py`, which does compute the softmax.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from tilefuse.backends.cuda import (
    BuildResult,
    CudaBuildError,
    CudaKernel,
    CudaLaunchError,
    build_many,
    build_shared_object,
    load_cuda_kernel,
)
from tilefuse.backends.cuda import build as build_module
from tilefuse.backends.cuda.testing import build_on_cpu, host_compiler
from tilefuse.backends.triton.launcher import LaunchError

SOFTMAX = (Path(__file__).parent / "softmax_row.cu").read_text()
NAME, CONFIG, WARPS = "softmax_row", {"BLOCK_R": 16, "BLOCK_C": 128}, 8  # as in the golden file's header
needs_nvcc = pytest.mark.skipif(
    build_module.find_nvcc() is None, reason="nvcc is not installed on this machine"
)
needs_gxx = pytest.mark.skipif(host_compiler() is None, reason="no g++ to build the CPU emulation")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cuda_cache")


@pytest.fixture(scope="module")
def built(cache) -> list[BuildResult]:
    """The softmax kernel and a changed copy, built by nvcc side by side."""
    results = build_many([(SOFTMAX, NAME), (SOFTMAX + "// changed\n", NAME)], workers=2, cache_dir=cache)
    for r in results:
        assert isinstance(r, BuildResult), r
    return results


def _softmax_args(device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list[object]]:
    x = torch.randn(37, 100, device=device)
    out = torch.empty_like(x)
    return x, out, [x, *x.stride(), out, *out.stride()]


@needs_nvcc
def test_nvcc_builds_a_library_and_a_second_build_is_a_cache_hit(built, cache, monkeypatch):
    first = built[0]
    assert not first.cached and first.seconds > 0 and first.path.parent == cache
    assert first.path.name.startswith(f"{NAME}_") and first.path.suffix == ".so"

    def no_nvcc(*args, **kwargs):
        raise AssertionError("nvcc ran on a cache hit")

    monkeypatch.setattr(subprocess, "Popen", no_nvcc)
    monkeypatch.setattr(subprocess, "run", no_nvcc)
    again = build_shared_object(SOFTMAX, NAME, cache_dir=cache)
    assert again == BuildResult(first.path, 0.0, cached=True)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "a temporary build folder was left"


@needs_nvcc
def test_a_changed_source_is_rebuilt(built):
    original, changed = built
    assert not changed.cached and changed.path != original.path and changed.path.exists()


@needs_nvcc
def test_a_compile_error_names_nvccs_error_and_the_generated_line(cache):
    anchor = "  constexpr int BLOCK_R = 16;"
    assert anchor in SOFTMAX
    broken = SOFTMAX.replace(anchor, anchor + "\n  injected_undefined_name = 1;", 1)
    line = broken.splitlines().index("  injected_undefined_name = 1;") + 1
    with pytest.raises(CudaBuildError) as error:
        build_shared_object(broken, NAME, cache_dir=cache)
    message = str(error.value)
    assert f"{NAME}.cu({line}): error" in message and "injected_undefined_name" in message
    assert f"generated line {line}: injected_undefined_name = 1;" in message


@needs_nvcc
def test_a_build_past_its_time_limit_is_left_to_triton(cache):
    with pytest.raises(CudaBuildError, match="left to Triton"):
        build_shared_object(SOFTMAX + "// slow\n", NAME, cache_dir=cache, timeout_s=0.01)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")], "a temporary build folder was left"


@needs_nvcc
def test_the_library_loads_and_its_launcher_reports_cuda_errors(built, cache):
    kernel = load_cuda_kernel(SOFTMAX, NAME, CONFIG, WARPS, cache_dir=cache)
    assert kernel.build is not None and kernel.build.cached and kernel.build.path == built[0].path
    assert hasattr(kernel.library, f"launch_{NAME}")
    launch = kernel.bind(CONFIG, WARPS)
    if torch.cuda.is_available():  # on a GPU the kernel computes the softmax
        x, out, args = _softmax_args("cuda")
        launch(None, *args)
        torch.cuda.synchronize()
        torch.testing.assert_close(out, torch.softmax(x, -1))
        return
    _, _, args = _softmax_args()
    with pytest.raises(CudaLaunchError) as error:
        launch(0, *args)
    assert error.value.code != 0
    assert f"{NAME}: launch failed with cudaError {error.value.code}: " in str(error.value)


@needs_nvcc
def test_bind_refuses_another_config_and_a_launch_the_wrong_arguments(cache, built):
    kernel = load_cuda_kernel(SOFTMAX, NAME, CONFIG, WARPS, cache_dir=cache)
    with pytest.raises(LaunchError, match="built for"):
        kernel.bind({"BLOCK_R": 8, "BLOCK_C": 128}, WARPS)
    with pytest.raises(LaunchError, match="takes 6 arguments after the stream, got 2"):
        kernel.bind(CONFIG, WARPS)(0, torch.zeros(1), 1)


def test_without_nvcc_a_build_is_left_to_triton(monkeypatch):
    monkeypatch.setattr(build_module, "find_nvcc", lambda: None)
    with pytest.raises(CudaBuildError, match="nvcc is not installed: left to Triton"):
        build_shared_object(SOFTMAX, NAME)


@needs_gxx
def test_the_same_launcher_interface_drives_the_cpu_emulation(tmp_path):
    library = build_on_cpu([SOFTMAX], tmp_path)
    launch = CudaKernel.from_library(library, SOFTMAX, NAME, CONFIG, WARPS).bind(CONFIG, WARPS)
    x, out, args = _softmax_args()
    launch(None, *args)
    torch.testing.assert_close(out, torch.softmax(x, -1))


def test_cpu_builds_without_a_cache_do_not_shadow_the_package(monkeypatch, tmp_path):
    """With the artifact cache off, kernels built for the CPU go to the temp folder, not in a folder
    named `tilefuse` there: a script run from the temp folder imported that folder instead of the
    package (`module 'tilefuse' has no attribute 'compile'`)."""
    import tempfile

    from tilefuse.compiler.codegen import cuda_on_cpu_dir

    monkeypatch.setenv("TILEFUSE_CACHE", "0")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    workdir = cuda_on_cpu_dir()
    assert workdir.parent == tmp_path and workdir.name != "tilefuse"
    monkeypatch.setenv("TILEFUSE_CACHE", "1")
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path / "cache" / "graphs"))
    assert cuda_on_cpu_dir() == tmp_path / "cache" / "cuda-on-cpu"
