"""Ops repeated with the same arguments are computed once (compiler/duplicate_ops.py); the graph's
results stay eager's, and only functional, deterministic ops whose results nothing mutates merge."""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx

from tilefuse.compiler.duplicate_ops import merge_duplicate_ops

aten = torch.ops.aten


def _targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_the_per_layer_mask_bias_is_computed_once_and_results_are_unchanged():
    def layers(mask, x):
        out = x
        for _ in range(3):  # as transformers' SDPA integration does inside every layer
            bias = aten.where.self(
                mask, aten.scalar_tensor.default(0.0), aten.scalar_tensor.default(-float("inf"))
            )
            out = aten.add.Tensor(out, bias)
        return out

    mask, x = torch.rand(4, 5) < 0.5, torch.randn(4, 5)
    gm = make_fx(layers)(mask, x)
    want = layers(mask, x)
    assert merge_duplicate_ops(gm) == 6  # two scalars and a where, in two of the three layers
    assert _targets(gm).count(aten.where.self) == 1 and _targets(gm).count(aten.add.Tensor) == 3
    torch.testing.assert_close(gm(mask, x), want)


def test_ops_that_differ_are_random_or_mutated_are_kept():
    def f(x):
        zero, negative_zero = aten.scalar_tensor.default(0.0), aten.scalar_tensor.default(-0.0)
        a = aten.div.Tensor(x, zero)  # +inf or -inf by the sign of the zero
        b = aten.div.Tensor(x, negative_zero)
        r1, r2 = aten.rand.default([3]), aten.rand.default([3])
        c1, c2 = aten.clone.default(x), aten.clone.default(x)
        aten.add_.Tensor(c2, 1.0)  # c2 is mutated: it is not c1
        return a, b, r1, r2, c1, c2

    x = torch.randn(3).abs() + 1
    gm = make_fx(f)(x)
    assert merge_duplicate_ops(gm) == 0
    a, b, r1, r2, c1, c2 = gm(x)
    assert bool((a > 0).all()) and bool((b < 0).all())
    assert not torch.equal(r1, r2)
    torch.testing.assert_close(c2, c1 + 1)
