"""aten elementwise ops → `ein.map`, plus constants, iotas and casts.

Arithmetic runs in the op's opmath type (f32 for f16/bf16, as eager PyTorch
does) and rounds once to the result dtype; comparisons run in the promoted
type of their inputs.
"""

from __future__ import annotations

import math

import torch
from torch.fx import Node
from xdsl.dialects.builtin import f32, i1
from xdsl.ir import SSAValue

from ..ir.builder import ScalarBuilder, opmath_type
from ..ir.dtypes import is_float, to_mlir_type
from .conv_layout import is_explicit_copy, is_layout_change
from .lowering_table import LoweringContext, bound_args, lowers, promoted_dtype, target_name

aten = torch.ops.aten
prims = torch.ops.prims


def _map(ctx: LoweringContext, node: Node, inputs: list[object], body, **kw) -> SSAValue:
    return ctx.b.map([ctx.value(x) for x in inputs], ctx.out_elem(node), body, **kw)


def _unary(body):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        return _map(ctx, node, [node.args[0]], body)

    return lower


_LOG2E = 1.0 / math.log(2.0)


def _exp_scaled(sb: ScalarBuilder, x: SSAValue, scale: float) -> SSAValue:
    """exp(scale x) as exp2((scale log2 e) x): the multiply Triton's f32 `exp` makes anyway, without its
    handling of subnormal results (`ex2.approx.f32` against `.ftz`: three instructions an element)."""
    return sb.unary("exp2", sb.mul(x, sb.const(scale * _LOG2E, x.type)))


def _sigmoid(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
    """1 / (1 + exp(-x)); the denominator is at least 1, so its reciprocal may be approximate (1 ulp,
    `ScalarBuilder.approx_reciprocal`). -inf gives 0, +inf 1, NaN NaN."""
    one = sb.const(1.0, x.type)
    return sb.approx_reciprocal(sb.add(one, _exp_scaled(sb, x, -1.0)), one)


def _softplus(sb: ScalarBuilder, x: SSAValue, beta: float = 1.0, threshold: float = 20.0) -> SSAValue:
    bx = sb.mul(x, sb.const(beta, x.type))
    soft = sb.div(sb.unary("log1p", sb.unary("exp", bx)), sb.const(beta, x.type))
    return sb.select(sb.cmp("gt", bx, sb.const(threshold, x.type)), x, soft)


def _gelu(sb: ScalarBuilder, x: SSAValue, approximate: str) -> SSAValue:
    one = sb.const(1.0, x.type)
    if approximate == "tanh":
        # 0.5 x (1 + tanh(u)) is x * sigmoid(2u) = x / (1 + exp(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3):
        # one exp and a division instead of libdevice's tanh, whose branches cost 55 us as the epilogue
        # of a 2048x2048x8192 bf16 GEMM on the H200 (the GEMM alone: 89; benchmarks/NOTES.md). The
        # same function: no cancellation (1 + tanh(u) loses digits as u -> -inf; this form does not);
        # -inf gives -inf * (1 / inf) = NaN as eager's -inf * 0 does, +inf gives +inf.
        # The reciprocal of 1 + e (at least 1) may be approximate.
        cube = sb.mul(sb.mul(x, x), x)
        inner = sb.add(x, sb.mul(sb.const(0.044715, x.type), cube))
        e = _exp_scaled(sb, inner, -2.0 * math.sqrt(2.0 / math.pi))
        return sb.mul(x, sb.approx_reciprocal(sb.add(one, e), one))
    if x.type != f32:  # f64 keeps erf: the formula below is an f32's accuracy
        t = sb.unary("erf", sb.mul(x, sb.const(1.0 / math.sqrt(2.0), x.type)))
        return sb.mul(sb.mul(sb.const(0.5, x.type), x), sb.add(one, t))
    return _gelu_erfc(sb, x, one)


# erfc(a) = t exp(-a^2 + P(t)), t = 1 / (1 + a / 2), a >= 0: Chebyshev-fitted, relative error under
# 1.2e-7 everywhere (Press et al., Numerical Recipes, `erfcc`); P's coefficients, lowest degree first
_ERFC_POLY = (
    -1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
    0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277,
)  # fmt: skip


def _gelu_erfc(sb: ScalarBuilder, x: SSAValue, one: SSAValue) -> SSAValue:
    """The exact GELU in f32 without a branch: 0.5 x erfc(a), a = -x / sqrt 2, with erfc from one exp2,
    one approximate reciprocal and ten multiply-adds.

    libdevice's `erf` branches between a polynomial and an exp form; as a GEMM epilogue it cost 24.6
    us over the plain 4096 x 1024 x 4096 bf16 GEMM on an H100 (59.3 us; the tanh GELU's form 11.5).
    Everything is computed from x (|a| = |x| / sqrt 2, a^2 = x^2 / 2, a >= 0 where x <= 0), so that
    only x, t and the polynomial are live across the epilogue: written from a and its sign, the
    128 x 256 tile at 8 warps spilled 632 bytes a thread (sm_90, compiled offline); from x, no spill.
    The epilogue is bound by its instructions (~0.7 us an instruction an element there): with
    Triton's exp and `/` it took 31 SASS instructions an element over the bias GEMM and measured 80.3
    us (eager's GEMM and GELU kernel: 80.4); exp2 with log2(e) folded into P's coefficients and the
    reciprocal of 1 + |a| / 2 (at least 1) as `rcp.approx` take it to 20.6 (offline sm_90 count;
    test_offline_sm90). Accuracy in f32 against float64 (x over [-14, 14], numpy's f32): relative
    error at most 4.9e-7 for x >= -1 (6.0e-7 with the reciprocal 1 ulp off; eager's 3.5e-7) and
    2.6e-6 down to -6, where eager's 0.5 x (1 + erf) cancels (2.3e-4 at -3, all digits by -6).
    NaN stays NaN, -inf gives NaN (as eager), +inf gives +inf.
    """
    magnitude = sb.mul(sb.unary("abs", x), sb.const(0.5 / math.sqrt(2.0), x.type))
    t = sb.approx_reciprocal(sb.add(one, magnitude), one)
    # exp(P(t) - x^2 / 2) as exp2(log2(e) P(t) - log2(e) x^2 / 2): log2(e) folded into P's coefficients
    p = sb.const(_ERFC_POLY[-1] * _LOG2E, x.type)
    for c in reversed(_ERFC_POLY[:-1]):
        p = sb.add(sb.mul(p, t), sb.const(c * _LOG2E, x.type))
    half_x = sb.mul(sb.const(0.5, x.type), x)
    r = sb.mul(t, sb.unary("exp2", sb.sub(p, sb.mul(sb.mul(x, sb.const(0.5 * _LOG2E, x.type)), x))))
    erfc = sb.select(sb.cmp("le", x, sb.const(0.0, x.type)), r, sb.sub(sb.const(2.0, x.type), r))
    return sb.mul(half_x, erfc)


def _clamp(sb: ScalarBuilder, x: SSAValue, lo: object, hi: object) -> SSAValue:
    if lo is not None:
        x = sb.max(x, lo if isinstance(lo, SSAValue) else sb.const(lo, x.type))
    if hi is not None:
        x = sb.min(x, hi if isinstance(hi, SSAValue) else sb.const(hi, x.type))
    return x


def _hardsigmoid(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
    return sb.div(_clamp(sb, sb.add(x, sb.const(3.0, x.type)), 0.0, 6.0), sb.const(6.0, x.type))


def _sign(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
    """(0 < x) - (x < 0), as PyTorch computes it: 0 for zeros and NaN."""
    zero, one = sb.const(0, x.type), sb.const(1, x.type)
    above = sb.select(sb.cmp("gt", x, zero), one, zero)
    return sb.sub(above, sb.select(sb.cmp("lt", x, zero), one, zero))


def _round_half_even(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
    """torch.round: to the nearest integer, ties to even (from floor: Triton has no rint)."""
    low = sb.unary("floor", x)
    fraction = sb.sub(x, low)
    half, one, two = sb.const(0.5, x.type), sb.const(1.0, x.type), sb.const(2.0, x.type)
    odd = sb.cmp("ne", sb.sub(low, sb.mul(two, sb.unary("floor", sb.div(low, two)))), sb.const(0.0, x.type))
    up = sb.logical("or", sb.cmp("gt", fraction, half), sb.logical("and", sb.cmp("eq", fraction, half), odd))
    return sb.select(up, sb.add(low, one), low)


def _trunc(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
    return sb.select(sb.cmp("lt", x, sb.const(0.0, x.type)), sb.unary("ceil", x), sb.unary("floor", x))


def _round_check(node: Node) -> str | None:
    if bound_args(node).get("decimals", 0):
        return f"{target_name(node)} with decimals runs in PyTorch"
    if not node.args[0].meta["val"].dtype.is_floating_point:
        return f"{target_name(node)} of an integer tensor runs in PyTorch"
    return None


lowers(aten.sign.default)(_unary(_sign))
lowers(aten.round.default, check=_round_check)(_unary(_round_half_even))
lowers(aten.trunc.default, check=_round_check)(_unary(_trunc))
lowers(aten.neg.default)(_unary(lambda sb, x: sb.unary("neg", x)))
lowers(aten.abs.default)(_unary(lambda sb, x: sb.unary("abs", x)))
lowers(aten.sigmoid.default)(_unary(_sigmoid))
lowers(aten.silu.default)(_unary(lambda sb, x: sb.mul(x, _sigmoid(sb, x))))
lowers(aten.mish.default)(_unary(lambda sb, x: sb.mul(x, sb.unary("tanh", _softplus(sb, x)))))
lowers(aten.reciprocal.default)(_unary(lambda sb, x: sb.div(sb.const(1.0, x.type), x)))
lowers(aten.relu.default)(_unary(lambda sb, x: sb.max(x, sb.const(0, x.type))))
lowers(aten.hardsigmoid.default)(_unary(_hardsigmoid))
lowers(aten.hardswish.default)(_unary(lambda sb, x: sb.mul(x, _hardsigmoid(sb, x))))
for _name in ("exp", "exp2", "expm1", "log", "log1p", "log2", "sqrt", "rsqrt", "tanh", "erf",
              "sin", "cos", "floor", "ceil"):  # fmt: skip
    lowers(getattr(aten, _name).default)(_unary(lambda sb, x, _n=_name: sb.unary(_n, x)))


@lowers(aten.gelu.default)
def lower_gelu(ctx: LoweringContext, node: Node) -> SSAValue:
    approximate = bound_args(node)["approximate"]
    return _map(ctx, node, [node.args[0]], lambda sb, x: _gelu(sb, x, approximate))


@lowers(aten.softplus.default)
def lower_softplus(ctx: LoweringContext, node: Node) -> SSAValue:
    a = bound_args(node)
    return _map(ctx, node, [a["self"]], lambda sb, x: _softplus(sb, x, a["beta"], a["threshold"]))


@lowers(aten.leaky_relu.default)
def lower_leaky_relu(ctx: LoweringContext, node: Node) -> SSAValue:
    slope = bound_args(node)["negative_slope"]

    def body(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
        pos = sb.cmp("gt", x, sb.const(0.0, x.type))
        return sb.select(pos, x, sb.mul(x, sb.const(slope, x.type)))

    return _map(ctx, node, [node.args[0]], body)


@lowers(aten.elu.default)
def lower_elu(ctx: LoweringContext, node: Node) -> SSAValue:
    """ELU, and SELU and CELU, which decompose to it: `scale * x` above 0, else
    `scale * alpha * expm1(input_scale * x)`."""
    a = bound_args(node)

    def body(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
        negative = sb.unary("expm1", sb.mul(x, sb.const(a["input_scale"], x.type)))
        negative = sb.mul(negative, sb.const(a["alpha"] * a["scale"], x.type))
        positive = sb.mul(x, sb.const(a["scale"], x.type))
        return sb.select(sb.cmp("gt", x, sb.const(0.0, x.type)), positive, negative)

    return _map(ctx, node, [a["self"]], body)


@lowers(aten.hardtanh.default)
def lower_hardtanh(ctx: LoweringContext, node: Node) -> SSAValue:
    a = bound_args(node)
    return _map(ctx, node, [a["self"]], lambda sb, x: _clamp(sb, x, a["min_val"], a["max_val"]))


@lowers(aten.clamp.default, aten.clamp.Tensor)
def lower_clamp(ctx: LoweringContext, node: Node) -> SSAValue:
    a = bound_args(node)
    inputs = [a["self"]] + [v for v in (a["min"], a["max"]) if isinstance(v, Node)]

    def body(sb: ScalarBuilder, x: SSAValue, *bounds: SSAValue) -> SSAValue:
        it = iter(bounds)
        lo = next(it) if isinstance(a["min"], Node) else a["min"]
        hi = next(it) if isinstance(a["max"], Node) else a["max"]
        return _clamp(sb, x, lo, hi)

    return _map(ctx, node, inputs, body)


@lowers(aten.clamp_min.default)
def lower_clamp_min(ctx: LoweringContext, node: Node) -> SSAValue:
    return _map(ctx, node, [node.args[0]], lambda sb, x: _clamp(sb, x, node.args[1], None))


@lowers(aten.clamp_max.default)
def lower_clamp_max(ctx: LoweringContext, node: Node) -> SSAValue:
    return _map(ctx, node, [node.args[0]], lambda sb, x: _clamp(sb, x, None, node.args[1]))


def _with_alpha(op: str):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        alpha = node.kwargs.get("alpha", 1)

        def body(sb: ScalarBuilder, x: SSAValue, y: SSAValue) -> SSAValue:
            if alpha != 1:
                y = sb.mul(y, sb.const(alpha, y.type))
            return sb.binary(op, x, y)

        return _map(ctx, node, list(node.args[:2]), body)

    return lower


lowers(aten.add.Tensor, aten.add.Scalar)(_with_alpha("add"))
lowers(aten.sub.Tensor, aten.sub.Scalar)(_with_alpha("sub"))


def _binary(op: str):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        return _map(ctx, node, list(node.args[:2]), lambda sb, x, y: sb.binary(op, x, y))

    return lower


def _division_check(node: Node) -> str | None:
    mode = node.kwargs.get("rounding_mode")
    if mode == "floor" and node.meta["val"].dtype.is_floating_point:
        # PyTorch floors (a - fmod(a, b)) / b, corrected, not floor(a / b): the two differ where a / b
        # rounds up to an integer
        return "div with rounding_mode='floor' on floating point is not supported"
    return None


def _int_floor_division(sb: ScalarBuilder, x: SSAValue, y: SSAValue) -> SSAValue:
    """Integer division rounding toward -inf (Python's //, `perm // top_k` in MoE routing): the
    truncated quotient, one less where the remainder is nonzero and its sign differs from `y`'s."""
    quotient, remainder, zero = sb.div(x, y), sb.binary("rem", x, y), sb.const(0, x.type)
    inexact = sb.cmp("ne", remainder, zero)
    signs_differ = sb.cmp("ne", sb.cmp("lt", remainder, zero), sb.cmp("lt", y, zero))
    below = sb.sub(quotient, sb.const(1, x.type))
    return sb.select(sb.logical("and", inexact, signs_differ), below, quotient)


@lowers(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode, check=_division_check)
def lower_div(ctx: LoweringContext, node: Node) -> SSAValue:
    mode = node.kwargs.get("rounding_mode")
    stored = to_mlir_type(node.meta["val"].dtype)

    def body(sb: ScalarBuilder, x: SSAValue, y: SSAValue) -> SSAValue:
        if mode is None or not is_float(x.type):  # true division, or an integer one truncating (divsi)
            return _int_floor_division(sb, x, y) if mode == "floor" else sb.div(x, y)
        # "trunc" on floats: PyTorch's trunc(a / b), the quotient rounded to the tensor's dtype first
        # (a bf16 quotient of 5.99 is 6.0, which truncates to 6)
        q = sb.div(x, y)
        if stored != q.type:
            q = sb.cast(sb.cast(q, stored), q.type)
        return sb.select(sb.cmp("lt", q, sb.const(0.0, q.type)), sb.unary("ceil", q), sb.unary("floor", q))

    return _map(ctx, node, list(node.args[:2]), body)


def _integer_only(node: Node) -> str | None:
    if node.meta["val"].dtype.is_floating_point:
        # PyTorch's float remainder is fmod corrected toward the divisor's sign; `ein` has no fmod
        return f"{target_name(node)} on floating point runs in PyTorch"
    return None


def _int_remainder(sb: ScalarBuilder, x: SSAValue, y: SSAValue) -> SSAValue:
    """Python's `x % y` (the sign of `y`): the truncated remainder, plus `y` where it is nonzero and
    its sign differs from `y`'s."""
    rem, zero = sb.binary("rem", x, y), sb.const(0, x.type)
    signs_differ = sb.cmp("ne", sb.cmp("lt", rem, zero), sb.cmp("lt", y, zero))
    return sb.select(sb.logical("and", sb.cmp("ne", rem, zero), signs_differ), sb.add(rem, y), rem)


lowers(aten.remainder.Tensor, aten.remainder.Scalar, check=_integer_only)(
    lambda ctx, node: _map(ctx, node, list(node.args[:2]), _int_remainder)
)
lowers(aten.fmod.Tensor, aten.fmod.Scalar, check=_integer_only)(_binary("rem"))  # C's %: the sign of x
lowers(aten.mul.Tensor, aten.mul.Scalar)(_binary("mul"))
lowers(aten.maximum.default)(_binary("max"))
lowers(aten.minimum.default)(_binary("min"))


def _float_pow_only(node: Node) -> str | None:
    out = node.meta["val"]
    exponent = node.args[1]
    if not out.dtype.is_floating_point and not (isinstance(exponent, int) and 0 <= exponent <= 4):
        return "integer pow is supported for constant exponents 0..4 only"
    return None


@lowers(aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar, check=_float_pow_only)
def lower_pow(ctx: LoweringContext, node: Node) -> SSAValue:
    base, exponent = node.args[:2]
    if isinstance(exponent, (int, float)) and exponent in (0, 1, 2, 3, 4):
        power = int(exponent)

        def repeated_mul(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
            result = sb.const(1, x.type) if power == 0 else x
            for _ in range(power - 1):
                result = sb.mul(result, x)
            return result

        return _map(ctx, node, [base], repeated_mul)
    if exponent == 0.5:
        return _map(ctx, node, [base], lambda sb, x: sb.unary("sqrt", x))
    return _map(ctx, node, [base, exponent], lambda sb, x, y: sb.binary("pow", x, y))


def _compare(pred: str):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        operands = [a.meta["val"] if isinstance(a, Node) else a for a in node.args[:2]]
        compute = opmath_type(to_mlir_type(promoted_dtype(operands)))
        return _map(ctx, node, list(node.args[:2]), lambda sb, x, y: sb.cmp(pred, x, y),
                    compute_elem=compute)  # fmt: skip

    return lower


for _pred in ("eq", "ne", "lt", "le", "gt", "ge"):
    _op = getattr(aten, _pred)
    lowers(_op.Tensor, _op.Scalar)(_compare(_pred))


@lowers(aten.isnan.default)
def lower_isnan(ctx: LoweringContext, node: Node) -> SSAValue:
    """`x != x`: the one comparison that is unordered (true for NaN); false for integers."""
    compute = opmath_type(to_mlir_type(node.args[0].meta["val"].dtype))
    return _map(ctx, node, [node.args[0]], lambda sb, x: sb.cmp("ne", x, x), compute_elem=compute)


@lowers(aten.isinf.default)
def lower_isinf(ctx: LoweringContext, node: Node) -> SSAValue:
    """`|x| == inf` (T5's float16 clamp asks it of every layer's hidden states); false for integers."""
    dtype = node.args[0].meta["val"].dtype
    if not dtype.is_floating_point:
        return ctx.b.constant(False, ctx.out_shape(node), i1)
    compute = opmath_type(to_mlir_type(dtype))

    def body(sb: ScalarBuilder, x: SSAValue) -> SSAValue:
        return sb.cmp("eq", sb.unary("abs", x), sb.const(float("inf"), x.type))

    return _map(ctx, node, [node.args[0]], body, compute_elem=compute)


def _logical(name: str):
    """and/or/xor: logical on bool results (inputs tested for nonzero), bitwise on ints."""

    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        return _map(ctx, node, list(node.args[:2]), lambda sb, x, y: sb.logical(name, x, y),
                    compute_elem=ctx.out_elem(node))  # fmt: skip

    return lower


for _name in ("and", "or", "xor"):
    lowers(getattr(aten, f"logical_{_name}").default)(_logical(_name))
    _bitwise = getattr(aten, f"bitwise_{_name}")
    lowers(_bitwise.Tensor, _bitwise.Scalar)(_logical(_name))


def _bool_only(node: Node) -> str | None:
    if node.meta["val"].dtype != torch.bool:
        return "bitwise_not is supported on bool tensors only"
    return None


@lowers(aten.logical_not.default)
def lower_logical_not(ctx: LoweringContext, node: Node) -> SSAValue:
    return _map(ctx, node, [node.args[0]], lambda sb, x: sb.logical_not(x), compute_elem=i1)


lowers(aten.bitwise_not.default, check=_bool_only)(lower_logical_not)


@lowers(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def lower_where(ctx: LoweringContext, node: Node) -> SSAValue:
    out = ctx.out_elem(node)

    def body(sb: ScalarBuilder, cond: SSAValue, x: SSAValue, y: SSAValue) -> SSAValue:
        return sb.select(sb.cast(cond, i1), sb.cast(x, out), sb.cast(y, out))

    values = [ctx.value(a) for a in node.args[:3]]
    return ctx.b.map(values, out, body, compute_elem=out, cast_inputs=False)


@lowers(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def lower_masked_fill(ctx: LoweringContext, node: Node) -> SSAValue:
    out = ctx.out_elem(node)
    x, mask, fill = (ctx.value(a) for a in node.args[:3])

    def body(sb: ScalarBuilder, xv: SSAValue, m: SSAValue, f: SSAValue) -> SSAValue:
        return sb.select(sb.cast(m, i1), f, xv)

    return ctx.b.map([x, mask, fill], out, body, compute_elem=out)


def _same_device(node: Node) -> str | None:
    a = bound_args(node)
    if a.get("device") is not None and torch.device(a["device"]) != node.args[0].meta["val"].device:
        return "a copy to another device runs in PyTorch"
    return None


@lowers(aten._to_copy.default, prims.convert_element_type.default, check=_same_device)
def lower_to_copy(ctx: LoweringContext, node: Node) -> SSAValue:
    return ctx.b.cast(ctx.tensor(node.args[0]), ctx.out_elem(node))


def _copy_check(node: Node) -> str | None:
    dst, src = (a.meta.get("val") if isinstance(a, Node) else a for a in node.args[:2])
    if not isinstance(src, torch.Tensor) or not isinstance(dst, torch.Tensor):
        return "a copy from a non-tensor runs in PyTorch"
    if src.device != dst.device:
        return "a copy to another device runs in PyTorch"
    return None


@lowers(aten.copy.default, check=_copy_check)
def lower_copy(ctx: LoweringContext, node: Node) -> SSAValue:
    """The functional copy AOTAutograd leaves for `dst.copy_(src)` into a tensor the graph made (a
    cache's new state: Mamba's `conv_state.copy_(...)`): `src` broadcast to `dst`'s shape, in `dst`'s
    dtype; `dst`'s values are not read."""
    src = ctx.b.cast(ctx.tensor(node.args[1]), ctx.out_elem(node))
    return ctx.b.expand(src, ctx.out_shape(node))


@lowers(aten.alias.default, aten.lift_fresh_copy.default, aten.detach.default)
def lower_identity(ctx: LoweringContext, node: Node) -> SSAValue:
    return ctx.tensor(node.args[0])


def _clone_check(node: Node) -> str | None:
    if is_layout_change(node):
        return "a conversion to channels-last runs in PyTorch (the strides it makes are its point)"
    return None


@lowers(aten.clone.default, check=_clone_check)
def lower_clone(ctx: LoweringContext, node: Node) -> SSAValue:
    """A copy. The copies around a channels-last convolution (`conv_layout.py`) are explicit: a
    result that leaves the partition as it is gets fresh row-major storage (a transposed copy
    runs as a tiled kernel), not a view of its operand's."""
    x = ctx.tensor(node.args[0])
    if is_explicit_copy(node):
        return ctx.b.map([x], ctx.out_elem(node), lambda sb, a: a)
    return x  # a copy of the model's own (`.contiguous()`): its readers index through its strides


def _fill(ctx: LoweringContext, node: Node, value: object) -> SSAValue:
    return ctx.b.constant(value, ctx.out_shape(node), ctx.out_elem(node))


@lowers(aten.full.default, aten.full_like.default, aten.fill.Scalar)
def lower_full(ctx: LoweringContext, node: Node) -> SSAValue:
    return _fill(ctx, node, node.args[1])


@lowers(aten.scalar_tensor.default)
def lower_scalar_tensor(ctx: LoweringContext, node: Node) -> SSAValue:
    return _fill(ctx, node, node.args[0])


@lowers(aten.zeros_like.default, aten.zeros.default)
def lower_zeros(ctx: LoweringContext, node: Node) -> SSAValue:
    return _fill(ctx, node, 0)


@lowers(aten.ones_like.default, aten.ones.default)
def lower_ones(ctx: LoweringContext, node: Node) -> SSAValue:
    return _fill(ctx, node, 1)


@lowers(aten.arange.start_step, aten.arange.start, aten.arange.default)
def lower_arange(ctx: LoweringContext, node: Node) -> SSAValue:
    a = bound_args(node)
    start = a.get("start", 0) if node.target != aten.arange.default else 0
    step = a.get("step", 1) or 1
    out = ctx.out_elem(node)
    index_elem = to_mlir_type(torch.int64)
    iota = ctx.b.iota(0, ctx.out_shape(node), index_elem)
    compute = opmath_type(out) if is_float(out) else index_elem

    def body(sb: ScalarBuilder, i: SSAValue) -> SSAValue:
        scaled = sb.mul(i, sb.const(step, i.type))
        return sb.add(sb.const(start, i.type), scaled)

    return ctx.b.map([iota], out, body, compute_elem=compute)
