"""Sibling reductions (fusion_groups._merge_sibling_reductions): reductions over one space that read a
tensor in common run as one kernel, a loop with an accumulator each (Triton interpreter).

A LayerNorm's weight and bias gradients, `sum(dy * xhat)` and `sum(dy)` over the tokens, were two
launches reading dy twice in every LayerNorm layer of a training step's backward. Checked against eager
PyTorch (float32) or float64 (bfloat16) on ragged shapes, with the kernel count.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups


def layer_norm_grads(dy, xhat):
    return (dy * xhat).sum((0, 1)), dy.sum((0, 1))


def three_kinds(x, y):  # a mean (keepdim), a max and a sum of a product, over the rows
    return (x - y).mean(0, keepdim=True), x.amax(0), (x * y).sum(0)


def reduction_kernels(reports) -> list[dict]:
    return [g for g in fusion_groups(reports) if g["kind"] in ("reduction", "row")]


@settings(max_examples=6, deadline=None)
@given(b=st.integers(1, 4), s=st.integers(1, 70), c=st.integers(1, 40))
def test_layer_norm_weight_and_bias_gradients_are_one_kernel(b, s, c):
    torch._dynamo.reset()  # each shape compiled as static (a second shape would be made dynamic)
    g = torch.Generator().manual_seed(b * 1000 + s * 10 + c)
    dy, xhat = torch.randn(b, s, c, generator=g), torch.randn(b, s, c, generator=g)
    reports = compile_and_compare(layer_norm_grads, dy, xhat, rtol=1e-4, atol=1e-4)
    (group,) = reduction_kernels(reports)
    assert group["kind"] == "reduction" and group["kernel"] is not None, group
    assert len(group["ops"]) == 3, group  # the product, its sum, the sum of dy


def test_three_reductions_of_three_kinds_are_one_kernel():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(37, 19, generator=g), torch.randn(37, 19, generator=g)
    reports = compile_and_compare(three_kinds, x, y, rtol=1e-5, atol=1e-5)
    (group,) = reduction_kernels(reports)
    assert group["kind"] == "reduction" and len(group["ops"]) == 5, group


def test_bfloat16_sums_accumulate_in_float32():
    g = torch.Generator().manual_seed(4)
    dy, xhat = (torch.randn(2, 300, 24, generator=g).to(torch.bfloat16) for _ in "ab")
    compiled = tilefuse.compile(layer_norm_grads)
    got = compiled(dy, xhat)
    want = layer_norm_grads(dy.double(), xhat.double())
    eager = layer_norm_grads(dy, xhat)
    for a, e, w in zip(got, eager, want):
        err, eager_err = ((t.double() - w).abs().max().item() for t in (a, e))
        assert err <= 2 * eager_err + 1e-2, (err, eager_err)
    assert len(reduction_kernels(compiled.tilefuse_reports)) == 1


@pytest.mark.parametrize("case", ["other_dims", "dependent"])
def test_reductions_that_cannot_share_a_loop_stay_apart(case):
    """Over other dims there is no common loop; a reduction reading another's result is a row
    kernel (the statistic, then the pass that reads it), not two accumulators."""
    x = torch.randn(9, 70, generator=torch.Generator().manual_seed(5))
    if case == "other_dims":
        reports = compile_and_compare(lambda t: (t.sum(0), t.amax(1)), x)
        assert sorted(g["kind"] for g in reduction_kernels(reports)) == ["reduction", "reduction"]
    else:
        reports = compile_and_compare(lambda t: (t * t.sum(0, keepdim=True)).sum(0), x, rtol=1e-4, atol=1e-3)
        assert [g["kind"] for g in reduction_kernels(reports)] == ["row"]


def test_a_layer_norm_training_step_matches_eager(monkeypatch):
    """The backward of a LayerNorm with weight and bias (compiled): its two parameter gradients from
    one kernel."""
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch.manual_seed(6)
    norm = torch.nn.LayerNorm(24)
    x = torch.randn(3, 41, 24, requires_grad=True)
    compiled = tilefuse.compile(norm)
    compiled(x).square().sum().backward()
    got = [norm.weight.grad.clone(), norm.bias.grad.clone(), x.grad.clone()]
    norm.zero_grad()
    x.grad = None
    norm(x).square().sum().backward()
    for a, b in zip(got, [norm.weight.grad, norm.bias.grad, x.grad]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    backward = [r for r in compiled.tilefuse_reports if r.get("kind") == "backward"]
    assert backward, [r.get("kind") for r in compiled.tilefuse_reports]
    siblings = [
        g for g in reduction_kernels(backward)
        if g["kind"] == "reduction" and sum("reduce" in str(op) for op in g["ops"]) == 2
    ]  # fmt: skip
    assert siblings, [(g["kind"], len(g["ops"])) for g in fusion_groups(backward)]
