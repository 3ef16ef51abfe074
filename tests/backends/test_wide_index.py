"""Kernels over tensors of 2**31 elements or more compute their offsets in int64 (KernelBench's
avg_pool2d over 16 x 64 x 2048 x 2048 faulted with int32 offsets). The threshold is lowered here
so that the interpreter runs the int64 form on small ragged shapes, against eager PyTorch; a
kernel of int32 offsets refuses a tensor whose offsets would pass it (a symbolic size that large,
a view of a larger storage), and the partition falls back to PyTorch."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.backends.triton import launcher
from tilefuse.backends.triton.launcher import LaunchError, check_index_range, index_span

from .test_triton_backend import GEMM_CONFIGS, fixture_text, launch

triton_emit = importlib.import_module("tilefuse.backends.triton.emit")  # the package's `emit` is a function


@pytest.fixture
def small_threshold(monkeypatch):
    """Kernels over 500 elements or more are wide; the compiled-graph cache is off (a cached program
    of the ordinary threshold would be reused)."""
    monkeypatch.setattr(triton_emit, "WIDE_INDEX_ELEMENTS", 500)
    monkeypatch.setenv("TILEFUSE_CACHE", "0")


CASES = {
    "pointwise": (lambda x: torch.sigmoid(x) * x + 1.5, [(37, 29)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, 5, stride=2), [(2, 3, 23, 19)]),
    "softmax": (lambda x: torch.softmax(x, dim=-1), [(33, 47)]),
    "sum_dim1": (lambda x: x.sum(dim=1), [(5, 41, 13)]),
    "linear_gelu": (lambda x, w, b: F.gelu(x @ w.T + b), [(33, 47), (29, 47), (29,)]),
    "cumsum": (lambda x: torch.cumsum(x, dim=1), [(7, 83)]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_int64_offsets_match_eager(small_threshold, name):
    fn, shapes = CASES[name]
    inputs = [torch.randn(s) for s in shapes]
    compiled = tilefuse.compile(fn)
    torch.testing.assert_close(compiled(*inputs), fn(*inputs), rtol=1e-5, atol=1e-5)
    report = compiled.tilefuse_reports[0]
    assert report["partitions"] and not report["fallbacks"], report


def test_wide_kernel_source_casts_program_ids_and_offsets():
    text = fixture_text("pointwise_broadcast.mlir")
    from tilefuse.ir import parse_module

    (kernel,) = parse_module(text).body.block.ops
    narrow = triton_emit.emit(kernel, triton_emit.TritonOptions())
    assert "tl.int64" not in narrow and "WIDE_INDEX" not in narrow
    old = triton_emit.WIDE_INDEX_ELEMENTS
    try:
        triton_emit.WIDE_INDEX_ELEMENTS = 1
        wide = triton_emit.emit(kernel, triton_emit.TritonOptions())
    finally:
        triton_emit.WIDE_INDEX_ELEMENTS = old
    assert "tl.program_id(0).to(tl.int64)" in wide
    assert "tl.cast(" in wide and "WIDE_INDEX = True" in wide


def _wide_kernel(name: str, tmp_path) -> launcher.TritonKernel:
    """A fixture kernel emitted for the interpreter with int64 offsets."""
    from tilefuse.ir import parse_module

    (kernel,) = parse_module(fixture_text(name)).body.block.ops
    old = triton_emit.WIDE_INDEX_ELEMENTS
    try:
        triton_emit.WIDE_INDEX_ELEMENTS = 1
        source = triton_emit.emit(kernel, triton_emit.TritonOptions.for_interpreter())
    finally:
        triton_emit.WIDE_INDEX_ELEMENTS = old
    built = launcher.load(source, kernel.sym_name.data, cache_dir=tmp_path)
    assert built.wide_index and "tl.int64" in source
    return built


@pytest.mark.parametrize("config", GEMM_CONFIGS[:3], ids=lambda c: "x".join(str(v) for v in c.values()))
def test_wide_gemm_matches_torch(tmp_path, config):
    kernel = _wide_kernel("gemm_bias_gelu.mlir", tmp_path)
    x, w, bias = torch.randn(17, 33).t(), torch.randn(17, 65), torch.randn(2, 65)[1]  # views too
    *_, out = launch(kernel, [x, w, bias, torch.full((33, 65), float("nan"))], config)
    torch.testing.assert_close(out, F.gelu(x @ w + bias, approximate="tanh"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("block", [16, 256])
def test_wide_pointwise_with_broadcasting_matches_torch(tmp_path, block):
    kernel = _wide_kernel("pointwise_broadcast.mlir", tmp_path)
    x, y, s = torch.randn(5, 37).half(), torch.randn(37), torch.randn(5, 1)
    *_, out = launch(kernel, [x, y, s, torch.empty(5, 37)], {"BLOCK": block})
    a = x.float()
    picked = torch.where(a > y, torch.tanh(a) * y, torch.log1p(torch.exp(y - a)))
    total = torch.maximum(picked, s) + a.abs() ** 1.5 + a.abs().sqrt()
    torch.testing.assert_close(out, -(total / torch.exp(x).float()), rtol=1e-3, atol=1e-3)


def test_index_span_counts_a_views_reach():
    base = torch.empty(10, 100)
    assert index_span(base) == 1000
    assert index_span(base[:, :3]) == 9 * 100 + 3
    assert index_span(base.t()) == 1000
    assert index_span(base[:0]) == 0


def test_an_int32_kernel_refuses_a_view_reaching_past_the_threshold(tmp_path, monkeypatch):
    from tilefuse.ir import parse_module

    (kernel,) = parse_module(fixture_text("pointwise_broadcast.mlir")).body.block.ops
    built = launcher.load(
        triton_emit.emit(kernel, triton_emit.TritonOptions.for_interpreter()), kernel.sym_name.data, tmp_path
    )
    assert not built.wide_index
    tensors = [torch.empty(s, dtype=getattr(torch, d)) for s, d in zip(built.shapes, built.dtypes)]
    check_index_range(built, tensors)  # its own shapes fit
    monkeypatch.setattr(triton_emit, "WIDE_INDEX_ELEMENTS", max(index_span(t) for t in tensors))
    with pytest.raises(LaunchError, match="spans"):
        check_index_range(built, tensors)
    with pytest.raises(LaunchError, match="int32 offsets"):
        built(tensors, {p: 16 for p in built.params})


def test_a_partition_whose_view_passes_int32_runs_in_pytorch(monkeypatch, caplog):
    """A compiled graph's kernel of int32 offsets meets a view whose offsets pass the threshold:
    the launch is refused and the partition runs as PyTorch, with eager's result."""
    monkeypatch.setenv("TILEFUSE_CACHE", "0")

    def fn(x):
        return torch.relu(x) * 2 + 1

    storage = torch.randn(40, 300)
    view = storage[::4, :7]  # 10 x 7 elements spanning 9 * 1200 + 7
    compiled = tilefuse.compile(fn)
    monkeypatch.setattr(triton_emit, "WIDE_INDEX_ELEMENTS", 5000)
    with caplog.at_level("WARNING", logger="tilefuse"):
        out = compiled(view)
    torch.testing.assert_close(out, fn(view))
    assert "int32 offsets" in caplog.text and "runs in PyTorch" in caplog.text
    torch.testing.assert_close(compiled(view), fn(view))  # and from then on


def test_a_cuda_kernel_refuses_a_tensor_past_its_int32_indices(monkeypatch):
    """The CUDA backend's kernels index in int32 (the tile IR's): the first launch checks its tensors,
    as a Triton kernel of int32 offsets does."""
    from types import SimpleNamespace

    from tilefuse.backends.cuda.launcher import CudaBoundLaunch

    calls = []
    library = SimpleNamespace(launch_k=lambda *args: calls.append(args) or 0)
    kernel = SimpleNamespace(name="k", library=library, argtypes=[object] * 4)
    x = torch.empty(10, 300)[::2, :7]  # 5 x 7 elements spanning 4 * 600 + 7
    monkeypatch.setattr(triton_emit, "WIDE_INDEX_ELEMENTS", 1000)
    with pytest.raises(LaunchError, match="int32 offsets"):
        CudaBoundLaunch(kernel)(0, x, *x.stride())
    monkeypatch.setattr(triton_emit, "WIDE_INDEX_ELEMENTS", 10_000)
    CudaBoundLaunch(kernel)(0, x, *x.stride())
    assert len(calls) == 1
