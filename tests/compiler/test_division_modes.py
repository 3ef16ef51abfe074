"""`torch.div(..., rounding_mode=...)`: integer floor and trunc division and float trunc division run
as kernels, exactly as PyTorch rounds (MoE routing's `perm // top_k`); float floor division, which
PyTorch does not compute as floor(a / b), stays in PyTorch with the reason."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import compile_and_compare, fusion_groups


def _divisions(a, b):
    return (
        torch.div(a, b, rounding_mode="floor") * 3 + 1,
        torch.div(a, b, rounding_mode="trunc") - 2,
        a // 4 + torch.div(a, -3, rounding_mode="floor"),
    )


@settings(max_examples=6, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 70), seed=st.integers(0, 2**16))
def test_integer_floor_and_trunc_division_match_eager(rows, cols, seed):
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-1000, 1000, (rows, cols), generator=g)
    b = torch.randint(1, 40, (rows, cols), generator=g) * (
        torch.randint(0, 2, (rows, cols), generator=g) * 2 - 1
    )
    reports = compile_and_compare(_divisions, a, b, rtol=0, atol=0)
    assert all(g["kernel"] for g in fusion_groups(reports))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_float_trunc_division_is_a_kernel_and_float_floor_division_stays_in_pytorch(dtype):
    torch._dynamo.reset()
    a = (torch.randn(7, 33) * 50).to(dtype)
    b = (torch.randn(7, 33) * 3).to(dtype)
    b[0, :5] = 0.0  # +-inf and nan, as eager gives them
    reports = compile_and_compare(
        lambda a, b: torch.div(a, b, rounding_mode="trunc") * 2, a, b, rtol=0, atol=0
    )
    assert all(g["kernel"] for g in fusion_groups(reports))

    torch._dynamo.reset()
    reports = compile_and_compare(
        lambda a, b: torch.div(a * 2, b, rounding_mode="floor"), a, b, rtol=0, atol=0, allow_fallbacks=True
    )
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert any("rounding_mode='floor' on floating point" in reason for reason in reasons), reasons
