"""argmax/argmin over one dim (`lower_to_tile._lower_arg_reduction`) and products (`torch.prod`) as
reduction kernels, against eager PyTorch: the first index of the max or min, ties and NaNs as torch
decides them; products against float64; on ragged shapes and rows walked in many chunks."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups

CASES = {
    "argmax_middle": (lambda x: torch.argmax(x, 1), (3, 37, 5)),
    "argmin_last": (lambda x: torch.argmin(x, -1), (7, 3000)),
    "argmax_first_keepdim_prologue": (lambda x: torch.argmax(x * 2 - 1, 0, keepdim=True), (300, 6)),
    "argmax_ties": (lambda x: torch.argmax((x > 0.5).float() + (x > 1.5).float(), -1), (9, 5000)),
    "argmin_ties": (lambda x: torch.argmin((x > 0.5).float(), 1), (9, 777)),
    "argmax_nan_wins": (lambda x: torch.argmax(torch.where(x > 2.5, float("nan"), x), -1), (9, 5000)),
    "argmin_nan_wins": (lambda x: torch.argmin(torch.where(x > 2.5, float("nan"), x), -1), (9, 5000)),
    "argmax_all_minus_inf": (lambda x: torch.argmax(torch.full_like(x, float("-inf")), -1), (3, 50)),
    "argmax_bf16": (lambda x: torch.argmax(x.bfloat16(), 1), (4, 1000)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_arg_reductions_match_eager_exactly(name):
    fn, shape = CASES[name]
    torch._dynamo.reset()
    x = torch.randn(*shape)
    compiled = tilefuse.compile(fn)
    got = compiled(x)
    assert got.dtype == torch.int64 and torch.equal(got, fn(x)), (got, fn(x))
    groups = fusion_groups(compiled.tilefuse_reports)
    assert [g["kind"] for g in groups] == ["reduction"] and groups[0]["kernel"], groups


@settings(max_examples=10, deadline=None)
@given(
    rows=st.integers(1, 6),
    width=st.integers(1, 3000),
    levels=st.integers(2, 6),
    dim=st.sampled_from([0, 1]),
    argmax=st.booleans(),
    block_c=st.sampled_from([16, 128, 1024]),
)
def test_any_shape_any_chunk_keeps_the_first_index(rows, width, levels, dim, argmax, block_c):
    """Few distinct values (many ties) in rows of any length walked in chunks of any size: the
    first index of the extreme wins, across lanes and across chunks."""
    torch._dynamo.reset()
    x = torch.randint(0, levels, (rows, width)).float()
    fn = (lambda x: torch.argmax(x, dim)) if argmax else (lambda x: torch.argmin(x, dim))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TILEFUSE_KERNEL_CONFIG", json.dumps({"reduction": {"BLOCK_C": block_c}}))
        compiled = tilefuse.compile(fn)
        assert torch.equal(compiled(x), fn(x))


FLAT = {
    "argmax": lambda x: torch.argmax(x) + 1,
    "argmin_keepdim": lambda x: torch.argmin(x, keepdim=True),
    "argmax_ties": lambda x: torch.argmax((x > 0.5).float()),
    "argmax_nan_wins": lambda x: torch.argmax(torch.where(x > 2.0, float("nan"), x)),
}


@pytest.mark.parametrize("name", list(FLAT))
@pytest.mark.parametrize("shape", [(4, 10), (3, 7, 1001)], ids=str)
def test_small_flattened_arg_reductions_are_a_kernel(name, shape):
    """argmax/argmin without a dim over at most MAX_FLAT_ARG_ELEMENTS elements: one row of every
    element in order, walked by one program; the flat index torch returns, ties and NaNs included."""
    fn = FLAT[name]
    torch._dynamo.reset()
    x = torch.randn(*shape)
    compiled = tilefuse.compile(fn)
    got, want = compiled(x), fn(x)
    assert got.shape == want.shape and torch.equal(got, want), (got, want)
    # the arg reduction is a kernel (a prologue through the flattening view may be a kernel of its own,
    # the 0-d "+ 1" runs op by op); nothing falls back to PyTorch
    groups = fusion_groups(compiled.tilefuse_reports)
    assert any(g["kind"] == "reduction" and g["kernel"] for g in groups), groups
    assert not [f for r in compiled.tilefuse_reports for f in r["fallbacks"]]


def test_large_flattened_arg_reductions_stay_in_pytorch():
    from tilefuse.compiler.lower_structured import MAX_FLAT_ARG_ELEMENTS

    torch._dynamo.reset()
    x = torch.randn(2, MAX_FLAT_ARG_ELEMENTS)
    reports = compile_and_compare(lambda x: torch.argmax(x) + 1, x, allow_fallbacks=True)
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert any("flattened" in reason for reason in reasons), reasons


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
@pytest.mark.parametrize("argmax", [True, False])
def test_signed_integer_arg_reductions_are_kernels(dtype, argmax):
    """CLIP pools at the argmax of its int32 token ids. The type's own extremes are values a row may
    hold (a row of nothing but them keeps index 0); ties keep the first index."""
    torch._dynamo.reset()
    info = torch.iinfo(dtype)
    x = torch.randint(-3, 4, (5, 1500), dtype=dtype)
    x[1] = info.min
    x[2] = info.max
    x[3, 700] = info.max
    x[4, 900] = info.min
    fn = (lambda x: torch.argmax(x, 1)) if argmax else (lambda x: torch.argmin(x, 1))
    compiled = tilefuse.compile(fn)
    assert torch.equal(compiled(x), fn(x)), (compiled(x), fn(x))
    groups = fusion_groups(compiled.tilefuse_reports)
    assert [g["kind"] for g in groups] == ["reduction"] and groups[0]["kernel"], groups


@pytest.mark.parametrize("dtype", [torch.uint8])
def test_unsigned_arg_reductions_stay_in_pytorch(dtype):
    """Integers are compared signed in the kernels (PyTorch refuses bool arguments itself)."""
    torch._dynamo.reset()
    x = torch.randint(0, 2, (4, 10)).to(dtype)
    reports = compile_and_compare(lambda x: torch.argmin(x, 1) + 1, x, allow_fallbacks=True)
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert any(str(dtype) in reason for reason in reasons), reasons


PRODUCTS = {
    "prod_last": (lambda x: torch.prod(1 + x / 100, 1), (7, 300)),
    "prod_middle_keepdim": (lambda x: torch.prod(1 + x / 100, 1, keepdim=True), (3, 37, 5)),
    "prod_wide_row": (lambda x: torch.prod(1 + x / 1000, -1), (3, 20000)),
    "prod_first_dim": (lambda x: torch.prod(1 + x / 100, 0), (300, 7)),
    "x_over_row_product": (lambda x: x / torch.prod(1 + x / 100, -1, keepdim=True), (4, 100)),  # a row kernel
}


@pytest.mark.parametrize("name", list(PRODUCTS))
def test_products_are_kernels(name):
    fn, shape = PRODUCTS[name]
    torch._dynamo.reset()
    # 20000 factors in f32: eager's own error against float64 is 1.1e-5, and another order (the
    # kernel's lanes) lands as far on the other side
    rtol = 5e-5 if shape[-1] > 10000 else 1e-5
    reports = compile_and_compare(fn, torch.randn(*shape), rtol=rtol, atol=1e-6)
    assert all(g["kernel"] for g in fusion_groups(reports))


def test_bf16_product_accumulates_in_f32():
    """Closer to float64 than eager's CPU product of bf16, which rounds every step."""
    torch._dynamo.reset()
    x = (1 + torch.randn(4, 1000) / 100).bfloat16()
    compiled = tilefuse.compile(lambda x: torch.prod(x, -1))
    ref = torch.prod(x.double(), -1)
    rounding = (ref - ref.bfloat16().double()).abs().max()
    assert (compiled(x).double() - ref).abs().max() <= 2 * rounding + 1e-6


def test_integer_products_stay_in_pytorch():
    torch._dynamo.reset()
    ints = torch.randint(1, 3, (4, 10))
    reports = compile_and_compare(lambda x: torch.prod(x, 1) + 1, ints, allow_fallbacks=True)
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert any("product of integers" in reason for reason in reasons), reasons
