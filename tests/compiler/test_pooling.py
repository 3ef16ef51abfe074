"""Pooling over windows that tile the input (stride = kernel, no padding): a map over strided slices
(small windows) or a reshape and a reduction (`lower_structured._lower_pool`), against eager PyTorch
on ragged shapes; other poolings stay in PyTorch and say why."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from helpers import compile_and_compare, fusion_groups

TILED = {
    "max2d": (lambda x: F.max_pool2d(x, 2), (2, 3, 8, 9)),  # a ragged width: the last column dropped
    "avg2d": (lambda x: F.avg_pool2d(x, 3), (2, 3, 10, 9)),
    "max2d_rect_then_relu": (lambda x: torch.relu(F.max_pool2d(x, (2, 3))) + 1, (2, 3, 8, 9)),
    "avg3d": (lambda x: F.avg_pool3d(x, 2), (2, 3, 5, 6, 7)),
    "max3d": (lambda x: F.max_pool3d(x, 2), (2, 3, 4, 6, 7)),
    "max2d_ceil_whole": (lambda x: F.max_pool2d(x, 2, ceil_mode=True), (2, 3, 8, 8)),
    "max1d": (lambda x: F.max_pool1d(x, 2), (2, 3, 9)),
    "avg1d": (lambda x: F.avg_pool1d(x, 3), (2, 3, 9)),
    "avg2d_wide_window": (lambda x: F.avg_pool2d(x, (4, 5)), (2, 3, 9, 11)),  # 20 > 16: a reduction
}


# eager PyTorch on CPU has no bf16 avg_pool3d to compare with
CASES = [(n, d) for n in TILED for d in (torch.float32, torch.bfloat16) if (n, d) != ("avg3d", torch.bfloat16)]


@pytest.mark.parametrize("name, dtype", CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in CASES])
def test_tiling_pools_are_reductions(name, dtype):
    fn, shape = TILED[name]
    torch._dynamo.reset()
    x = torch.randn(*shape).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    reports = compile_and_compare(fn, x, **tol)
    groups = fusion_groups(reports)
    assert groups and all(g["kernel"] for g in groups), groups
    # windows of up to MAX_UNROLLED_WINDOW elements: one strided slice each, read by one pointwise kernel
    assert groups[0]["kind"] == ("reduction" if name == "avg2d_wide_window" else "pointwise"), groups


@pytest.mark.parametrize(
    "fn, why",
    [
        (lambda x: F.max_pool2d(x, 3, stride=2), "overlapping"),
        (lambda x: F.avg_pool2d(x, 2, padding=1), "padding"),
        (lambda x: F.max_pool2d(x, 2, ceil_mode=True), "ceil mode"),  # 9 wide: a partial last window
    ],
    ids=["overlapping", "padded", "ceil_partial"],
)
def test_other_pools_stay_in_pytorch_and_say_why(fn, why):
    torch._dynamo.reset()
    reports = compile_and_compare(fn, torch.randn(2, 3, 9, 9), allow_fallbacks=True)
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert any(why in reason for reason in reasons), reasons


def test_max_pool_in_training_keeps_its_indices_in_pytorch(monkeypatch):
    """The backward reads the argmax indices: the pooling stays in PyTorch; gradients match eager."""
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch._dynamo.reset()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    fn = lambda x: (F.max_pool2d(x * 2, 2) ** 2).sum()  # noqa: E731
    compiled = tilefuse.compile(fn)
    compiled(x).backward()
    got, x.grad = x.grad, None
    fn(x).backward()
    torch.testing.assert_close(got, x.grad)
    reasons = [f["reason"] for r in compiled.tilefuse_reports for f in r["fallbacks"]]
    assert any("indices used" in reason for reason in reasons), reasons
