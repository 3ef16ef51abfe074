"""`ein` with symbolic sizes: types, printing and parsing, verifiers, and the reference interpreter
running one function at many sizes, against torch."""

from __future__ import annotations

import pytest
import sympy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from xdsl.dialects.builtin import ModuleOp, TensorType, f32
from xdsl.utils.exceptions import VerifyException

from tilefuse.ir import einsum as ein
from tilefuse.ir import parse_module, print_module, run_function
from tilefuse.ir.builder import EinBuilder
from tilefuse.ir.dtypes import dims_of, parse_size, same_size, size_symbol, tensor_type
from tilefuse.ir.interpreter import InterpreterError
from tilefuse.ir.module import IRError

S0, S1 = size_symbol("s0"), size_symbol("s1")


def _norm_mlp() -> ModuleOp:
    """x: [s0, s1, 24] -> rows of s0*s1: a linear layer, a row max subtracted, exp, a row sum divided
    (softmax), a bias, and back to [s0, s1, 16]."""
    b = EinBuilder("f")
    x = b.add_argument([S0, S1, 24], f32, "x")
    w = b.add_argument([16, 24], f32, "w")
    bias = b.add_argument([16], f32, "bias")
    rows = b.reshape(x, [S0 * S1, 24])
    y = b.contract("mk,nk->mn", rows, w)
    peak = b.reduce("max", y, [1], keepdim=True)
    e = b.map([y, peak], f32, lambda sb, v, m: sb.unary("exp", sb.sub(v, m)))
    total = b.reduce("sum", e, [1], keepdim=True)
    p = b.map([e, total, bias], f32, lambda sb, v, s, c: sb.add(sb.div(v, s), c))
    return ModuleOp([b.finish([b.reshape(p, [S0, S1, 16])])])


def _norm_mlp_reference(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    y = x.reshape(-1, x.shape[-1]).double() @ w.double().T
    return (torch.softmax(y, 1) + bias.double()).reshape(*x.shape[:2], -1)


def test_symbolic_type_names_its_sizes_and_round_trips():
    t = tensor_type([S0 * S1, 64, S1 + 1], f32)
    assert str(t) == 'tensor<?x64x?xf32, ["s0*s1", "s1 + 1"]>'
    assert dims_of(t) == (S0 * S1, 64, S1 + 1)
    text = print_module(_norm_mlp())
    assert 'tensor<?x?x24xf32, ["s0", "s1"]>' in text and '["s0*s1"]' in text
    again = parse_module(text)
    assert print_module(again) == text


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 7), st.integers(1, 33))
def test_one_function_runs_at_every_size(batch, length):
    fn = next(iter(parse_module(print_module(_norm_mlp())).ops))
    x, w, bias = torch.randn(batch, length, 24), torch.randn(16, 24), torch.randn(16)
    (got,) = run_function(fn, [x, w, bias])
    assert got.shape == (batch, length, 16)
    torch.testing.assert_close(got.double(), _norm_mlp_reference(x, w, bias), rtol=1e-5, atol=1e-5)


def test_arguments_that_disagree_on_a_size_are_refused():
    b = EinBuilder("f")
    x, y = b.add_argument([S0, 8], f32, "x"), b.add_argument([S0, 8], f32, "y")
    fn = b.finish([b.map([x, y], f32, lambda sb, u, v: sb.add(u, v))])
    (ok,) = run_function(fn, [torch.ones(5, 8), torch.ones(5, 8)])
    assert ok.shape == (5, 8)
    with pytest.raises(InterpreterError, match="argument 1.*s0 = 5"):
        run_function(fn, [torch.ones(5, 8), torch.ones(6, 8)])


def test_a_size_no_argument_binds_is_refused():
    b = EinBuilder("f")
    x = b.add_argument([S0 * S1, 8], f32, "x")  # no argument has s0 or s1 alone
    fn = b.finish([b.map([x], f32, lambda sb, u: sb.add(u, u))])
    with pytest.raises(InterpreterError, match="not bound"):
        run_function(fn, [torch.ones(6, 8)])


def test_verifiers_compare_sizes_as_expressions():
    b = EinBuilder("f")
    x = b.add_argument([S0, S1, 4], f32, "x")
    flat = b.reshape(x, [S1 * S0, 4])  # the same count written the other way round
    assert same_size(dims_of(flat.type)[0], S0 * S1)
    b.finish([flat]).verify()
    # a reshape that changes the element count
    bad = ein.ViewOp("reshape", x, tensor_type([S0 * S1 + 1, 4], f32))
    with pytest.raises(VerifyException, match="element count"):
        bad.verify()
    # a map whose operands have different symbolic sizes in one dim
    y = EinBuilder("g").add_argument([S1, S1, 4], f32, "y")
    with pytest.raises(ValueError, match="do not broadcast"):
        EinBuilder("h").map([x, y], f32, lambda sb, u, v: sb.add(u, v))
    # a slice of a symbolic dim
    sliced = ein.ViewOp("slice", x, tensor_type([2, S1, 4], f32), [0, 0, 2, 1])
    with pytest.raises(VerifyException, match="symbolic"):
        sliced.verify()


def test_a_dynamic_dim_the_encoding_does_not_name_is_an_error():
    text = """func.func @f(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %0 = ein.map(%x) : (tensor<?x8xf32>) -> tensor<?x8xf32> {
  ^bb0(%a: f32):
    ein.yield %a : f32
  }
  func.return %0 : tensor<?x8xf32>
}"""
    with pytest.raises(IRError, match="must name each of its 1 symbolic sizes"):
        parse_module(text)
    assert isinstance(tensor_type([S0], f32), TensorType)


@pytest.mark.parametrize(
    "text, value",
    [("64", 64), ("s0", S0), ("s0*s1", S0 * S1), ("s1 + 1", S1 + 1), ("2*s0 - s0", S0), ("(s0//1)", S0),
     # sympy's own printing of floor division (a half-sized slice of a dynamic length: GLM-4-MoE)
     ("s0 - floor(s0/2)", S0 - S0 // 2), ("ceiling(s1/4)", sympy.ceiling(S1 / 4))],
)  # fmt: skip
def test_sizes_parse_as_integer_expressions(text, value):
    assert same_size(parse_size(text), value)


@pytest.mark.parametrize(
    "text", ["__import__('os')", "s0.real", "s0 ** 2.5", "1.5", "s0 +", "floor(s0, 2)", "abs(s0)", "s0 / 2"]
)
def test_size_text_that_is_not_integer_arithmetic_is_refused(text):
    with pytest.raises(ValueError, match="size"):
        parse_size(text)
