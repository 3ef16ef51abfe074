"""`torch.max(x, dim)` / `torch.min(x, dim)` with their indices read (an arg reduction, and the
values gathered at its indices), `torch.max(x)` over every element, and adaptive pooling whose output size divides the
input's (a reshape and a reduction): kernels, against eager PyTorch on ragged shapes, ties and NaNs.
Output sizes that do not divide the input's stay in PyTorch and say why."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups


def _values_and_indices(fn, x):
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn)
    got, want = compiled(x), fn(x)
    return compiled, got, want


EXTREMES = {
    "max_last": (lambda x: torch.max(x, -1), (7, 3001)),
    "min_middle_keepdim": (lambda x: torch.min(x, 1, keepdim=True), (3, 37, 5)),
    "max_ties": (lambda x: torch.max((x > 0.5).float() + (x > 1.5).float(), 0), (900, 6)),
    "max_nan_wins": (lambda x: torch.max(torch.where(x > 2.5, float("nan"), x), -1), (9, 5000)),
    "min_bf16": (lambda x: torch.min(x.bfloat16() * 3, 1), (4, 1000)),
}


@pytest.mark.parametrize("name", list(EXTREMES))
def test_max_and_min_with_their_indices_are_an_arg_reduction_and_a_gather(name):
    fn, shape = EXTREMES[name]
    compiled, got, want = _values_and_indices(fn, torch.randn(*shape))
    assert torch.equal(got.indices, want.indices), (got.indices, want.indices)
    torch.testing.assert_close(got.values, want.values, equal_nan=True, rtol=0, atol=0)
    groups = fusion_groups(compiled.tilefuse_reports)
    # one pass over x: the arg reduction's kernel; the values are a gather of one element a row (a
    # PyTorch gather of x, or a pointwise kernel where x is computed: it recomputes those elements)
    assert [g["kind"] for g in groups] in (["reduction"], ["reduction", "pointwise"]), groups
    assert all(g["kernel"] for g in groups), groups


@settings(max_examples=8, deadline=None)
@given(rows=st.integers(1, 5), width=st.integers(1, 2500), levels=st.integers(2, 5), dim=st.sampled_from([0, 1]))
def test_indices_of_the_first_extreme_on_any_shape(rows, width, levels, dim):
    x = torch.randint(0, levels, (rows, width)).float()
    for fn in (lambda x: torch.max(x, dim), lambda x: torch.min(x, dim)):
        _, got, want = _values_and_indices(fn, x)
        assert torch.equal(got.indices, want.indices) and torch.equal(got.values, want.values)


def test_values_and_indices_feed_later_ops():
    def fn(x):
        values, indices = torch.max(x, -1)
        return torch.relu(values) * 2, indices + 1

    x = torch.randn(6, 333)
    torch._dynamo.reset()
    got, want = tilefuse.compile(fn)(x), fn(x)
    torch.testing.assert_close(got[0], want[0])
    assert torch.equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(5, 7), (3, 100_003)])
def test_max_and_min_of_every_element_are_kernels(dtype, shape):
    torch._dynamo.reset()
    x = torch.randn(*shape).to(dtype)
    for fn in (lambda x: torch.max(x) + 1, lambda x: torch.min(x * 2)):
        torch._dynamo.reset()
        reports = compile_and_compare(fn, x, rtol=0, atol=0)
        assert all(g["kernel"] for g in fusion_groups(reports)), fusion_groups(reports)


ADAPTIVE = {
    "avg2d_global": (lambda x: F.adaptive_avg_pool2d(x, 1).flatten(1), (2, 5, 7, 9)),
    "avg2d_halves": (lambda x: F.adaptive_avg_pool2d(x, (4, 3)), (2, 3, 8, 9)),
    "max2d_halves": (lambda x: F.adaptive_max_pool2d(x, (2, 3)) + 1, (2, 3, 8, 9)),
    "avg1d": (lambda x: F.adaptive_avg_pool1d(x, 3), (2, 4, 12)),
    "avg3d": (lambda x: F.adaptive_avg_pool3d(x, (1, 2, 1)), (2, 3, 3, 4, 5)),
    "max1d_global": (lambda x: F.adaptive_max_pool1d(x, 1), (2, 4, 13)),
}


# eager PyTorch on CPU has no bf16 adaptive_avg_pool3d to compare with
POOL_CASES = [(n, d) for n in ADAPTIVE for d in (torch.float32, torch.bfloat16) if (n, d) != ("avg3d", torch.bfloat16)]


@pytest.mark.parametrize("name, dtype", POOL_CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in POOL_CASES])
def test_adaptive_pools_that_tile_the_input_are_reductions(name, dtype):
    fn, shape = ADAPTIVE[name]
    torch._dynamo.reset()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    reports = compile_and_compare(fn, torch.randn(*shape).to(dtype), **tol)
    groups = fusion_groups(reports)  # a reduction kernel, or a row kernel where an epilogue joined it
    assert groups and all(g["kind"] in ("reduction", "row") and g["kernel"] for g in groups), groups
    assert not [f for r in reports for f in r["fallbacks"]]


def test_adaptive_pools_with_varying_windows_stay_in_pytorch_and_say_why():
    torch._dynamo.reset()
    reports = compile_and_compare(lambda x: F.adaptive_avg_pool2d(x, 3) * 2, torch.randn(2, 3, 7, 8),
                                  allow_fallbacks=True)  # fmt: skip
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert any("varying size" in reason for reason in reasons), reasons
