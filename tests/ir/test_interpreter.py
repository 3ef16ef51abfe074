"""The reference interpreter against torch, on IR built directly (no capture)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from xdsl.dialects.builtin import ModuleOp, bf16, f32, i64

from tilefuse.ir import parse_module, print_module, run_function
from tilefuse.ir.builder import EinBuilder
from tilefuse.ir.interpreter import InterpreterError

LETTERS = "abcdefg"


@st.composite
def einsum_problems(draw):
    """A random two-operand einsum: batch, transposed and summed indices, odd sizes."""
    n = draw(st.integers(2, 5))
    letters = LETTERS[:n]
    sizes = {c: draw(st.integers(1, 9)) for c in letters}
    lhs = draw(st.permutations(letters).map(lambda p: "".join(p[: draw(st.integers(1, n))])))
    rhs_pool = [c for c in letters if c not in lhs] + list(lhs)
    rhs = "".join(draw(st.permutations(rhs_pool)))[: draw(st.integers(1, len(rhs_pool)))]
    used = sorted(set(lhs + rhs))
    out = "".join(draw(st.permutations(used)))[: draw(st.integers(0, len(used)))]
    return f"{lhs},{rhs}->{out}", [sizes[c] for c in lhs], [sizes[c] for c in rhs]


@settings(max_examples=60, deadline=None)
@given(einsum_problems())
def test_contract_matches_torch_einsum(problem):
    spec, lhs_shape, rhs_shape = problem
    b = EinBuilder("f")
    x, y = b.add_argument(lhs_shape, f32, "x"), b.add_argument(rhs_shape, f32, "y")
    fn = b.finish([b.contract(spec, x, y)])
    module = parse_module(print_module(ModuleOp([fn])))  # also round-trips the printed form
    a, c = torch.randn(*lhs_shape), torch.randn(*rhs_shape)
    (out,) = run_function(module.body.block.first_op, [a, c])
    torch.testing.assert_close(out, torch.einsum(spec, a, c), rtol=1e-5, atol=1e-5)


@st.composite
def broadcast_pairs(draw):
    rank = draw(st.integers(1, 4))
    out = [draw(st.integers(1, 7)) for _ in range(rank)]
    def operand():
        drop = draw(st.integers(0, rank))
        return [1 if draw(st.booleans()) else d for d in out[drop:]]
    return operand(), operand()


@settings(max_examples=40, deadline=None)
@given(broadcast_pairs())
def test_map_broadcasts_like_torch(shapes):
    b = EinBuilder("f")
    x, y = (b.add_argument(s, f32, n) for s, n in zip(shapes, "xy"))
    out = b.map([x, y, 0.5], f32, lambda sb, u, v, h: sb.add(sb.mul(u, h), sb.unary("exp", v)))
    fn = b.finish([out])
    a, c = torch.randn(shapes[0]), torch.randn(shapes[1])
    (result,) = run_function(fn, [a, c])
    torch.testing.assert_close(result, a * 0.5 + torch.exp(c))


def test_bf16_map_computes_in_f32_and_rounds_once():
    b = EinBuilder("f")
    x = b.add_argument([64], bf16, "x")
    fn = b.finish([b.map([x], bf16, lambda sb, v: sb.unary("tanh", sb.mul(v, sb.const(3.0, v.type))))])
    a = torch.randn(64).to(torch.bfloat16)
    (out,) = run_function(fn, [a])
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, torch.tanh(a.float() * 3).to(torch.bfloat16), rtol=0, atol=0)


def test_reductions_views_iota_constant():
    b = EinBuilder("f")
    x = b.add_argument([3, 5, 7], f32, "x")
    mean = b.reduce("mean", x, [0, 2], keepdim=False)
    peak = b.reduce("max", x, [1], keepdim=True)
    sliced = b.slice(b.permute(x, [2, 0, 1]), 0, 1, 7, 2)
    rows = b.iota(1, [2, 4], i64)
    fill = b.constant(-math.inf, [2, 2], f32)
    cat = b.concat([x, x], 1)
    fn = b.finish([mean, peak, sliced, rows, fill, cat])
    a = torch.randn(3, 5, 7)
    outs = run_function(fn, [a])
    expected = [
        a.mean((0, 2)), a.amax(1, keepdim=True), a.permute(2, 0, 1)[1:7:2],
        torch.arange(4).expand(2, 4), torch.full((2, 2), -math.inf), torch.cat([a, a], 1),
    ]  # fmt: skip
    for got, want in zip(outs, expected):
        torch.testing.assert_close(got, want)


def test_wrong_inputs_are_rejected_with_the_argument_named():
    b = EinBuilder("f")
    x = b.add_argument([4, 8], f32, "x")
    fn = b.finish([b.reduce("sum", x, [1], keepdim=False)])
    with pytest.raises(InterpreterError, match=r"argument 0: expected \(4, 8\)"):
        run_function(fn, [torch.randn(4, 9)])
    with pytest.raises(InterpreterError, match="takes 1 tensors, got 2"):
        run_function(fn, [torch.randn(4, 8), torch.randn(1)])
