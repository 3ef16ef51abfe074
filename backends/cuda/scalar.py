"""Scalar `arith`/`math` ops as C++ expressions, and the C++ types of `tile` element types.

Every element lives in a register of its *register type*: 16-bit floats are
held in `float`, rounded to their precision after every op that makes one
(as the Triton backend computes them in f32), so `arith.extf` from a 16-bit
float is free and `arith.truncf` to one is a rounding. In memory they keep
their storage types (`__half`, `__nv_bfloat16`); loads widen, stores narrow
(exactly: the value is already representable). Integers of 8 and 16 bits
wrap to their width after each op.

`scalar_expr(op, operands)` takes its operands as C atoms (names, literals
or array elements) and returns the C expression of the result; an op it
does not know raises `CudaEmitError` naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from xdsl.dialects import arith
from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    Signedness,
    i1,
)
from xdsl.ir import Attribute, Operation

from ...ir.builder import is_approx_reciprocal


class CudaEmitError(Exception):
    """The kernel uses a kind, an op or a type that the CUDA backend cannot write (yet)."""


def _integer_width(t: Attribute) -> int | None:
    return t.width.data if isinstance(t, IntegerType) and t.width.data in (1, 8, 16, 32, 64) else None


def _unsigned(t: Attribute) -> bool:
    return isinstance(t, IntegerType) and t.signedness.data == Signedness.UNSIGNED


def is_float(t: Attribute) -> bool:
    return isinstance(t, Float16Type | BFloat16Type | Float32Type | Float64Type)


def is_16bit_float(t: Attribute) -> bool:
    return isinstance(t, Float16Type | BFloat16Type)


def register_type(t: Attribute) -> str:
    """The C++ type a value of element type `t` is computed in."""
    if isinstance(t, Float16Type | BFloat16Type | Float32Type):
        return "float"
    if isinstance(t, Float64Type):
        return "double"
    width = _integer_width(t)
    if width == 1:
        return "bool"
    if width == 32 and not _unsigned(t):
        return "int"
    if width is not None:
        return f"{'u' if _unsigned(t) else ''}int{width}_t"
    raise CudaEmitError(f"no CUDA type for element type {t}")


def storage_type(t: Attribute) -> str:
    """The C++ type of an element of type `t` in global memory."""
    if isinstance(t, Float16Type):
        return "__half"
    if isinstance(t, BFloat16Type):
        return "__nv_bfloat16"
    return register_type(t)


def storage_bytes(t: Attribute) -> int:
    """Bytes of one element of type `t` in memory (a bool takes one)."""
    if isinstance(t, Float16Type | BFloat16Type | Float32Type | Float64Type):
        return t.bitwidth // 8
    width = _integer_width(t)
    if width is None:
        raise CudaEmitError(f"no CUDA type for element type {t}")
    return max(1, width // 8)


def load_expr(t: Attribute, element: str) -> str:
    """An element read from memory (`element`, a storage-typed lvalue) as a register value."""
    if isinstance(t, Float16Type):
        return f"__half2float({element})"
    if isinstance(t, BFloat16Type):
        return f"__bfloat162float({element})"
    return element


def store_expr(t: Attribute, value: str) -> str:
    """A register value as the storage type (16-bit values are exact already: no rounding happens)."""
    if isinstance(t, Float16Type):
        return f"__float2half_rn({value})"
    if isinstance(t, BFloat16Type):
        return f"__float2bfloat16_rn({value})"
    return value


def _rounded(t: Attribute, expr: str) -> str:
    """`expr`, computed in the register type, brought to the precision or width of `t`."""
    if isinstance(t, Float16Type):
        return f"round_to_f16({expr})"
    if isinstance(t, BFloat16Type):
        return f"round_to_bf16({expr})"
    if _integer_width(t) in (8, 16):
        return f"static_cast<{register_type(t)}>({expr})"
    return expr


def literal(attr: FloatAttr | IntegerAttr) -> str:
    """An attribute's value as a C++ literal of its register type; negative values parenthesized."""
    value, t = attr.value.data, attr.type
    if t == i1:
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            text = "NAN"
        elif math.isinf(value):
            text = "INFINITY" if value > 0 else "-INFINITY"
        elif isinstance(t, Float64Type):
            text = repr(value)
        else:  # the shortest decimal that reads back as the same float (16-bit values are floats too)
            text = str(np.float32(value)) + "f"
    elif _integer_width(t) == 64 and value == -(1 << 63):  # its magnitude is no long long literal
        text = "-9223372036854775807LL - 1"
    else:
        text = str(value) + ("LL" if _integer_width(t) == 64 else "")
    return f"({text})" if text.startswith("-") else text


# arith ops written as a C++ infix operator
_INFIX = {
    "arith.addf": "+", "arith.subf": "-", "arith.mulf": "*",
    "arith.addi": "+", "arith.subi": "-", "arith.muli": "*", "arith.divsi": "/", "arith.remsi": "%",
    "arith.andi": "&", "arith.ori": "|", "arith.xori": "^",
}  # fmt: skip

# math ops: the float function (the double one drops the "f")
_MATH = {
    "math.exp": "exp_approx", "math.exp2": "exp2_approx", "math.log": "logf", "math.log2": "log2f",
    "math.sqrt": "sqrtf", "math.rsqrt": "rsqrtf", "math.erf": "erff", "math.absf": "fabsf",
    "math.floor": "floorf", "math.ceil": "ceilf", "math.sin": "sinf", "math.cos": "cosf",
    "math.tanh": "tanhf", "math.expm1": "expm1f", "math.log1p": "log1pf", "math.roundeven": "rintf",
    "math.powf": "powf",
}  # fmt: skip

# float predicates: ordered ones are false on NaN (C's <, ==), unordered ones true
_FLOAT_PREDICATES = {
    "oeq": "{a} == {b}", "ogt": "{a} > {b}", "oge": "{a} >= {b}", "olt": "{a} < {b}", "ole": "{a} <= {b}",
    "one": "({a} < {b} || {a} > {b})", "ord": "({a} == {a} && {b} == {b})",
    "ueq": "!({a} < {b} || {a} > {b})", "ugt": "!({a} <= {b})", "uge": "!({a} < {b})",
    "ult": "!({a} >= {b})", "ule": "!({a} > {b})", "une": "{a} != {b}", "uno": "({a} != {a} || {b} != {b})",
    "false": "false", "true": "true",
}  # fmt: skip
_INT_PREDICATES = {"eq": "==", "ne": "!=", "slt": "<", "sle": "<=", "sgt": ">", "sge": ">=",
                   "ult": "<", "ule": "<=", "ugt": ">", "uge": ">="}  # fmt: skip


def _compare(op: arith.CmpfOp | arith.CmpiOp, a: str, b: str) -> str:
    if isinstance(op, arith.CmpfOp):
        predicate = arith.CMPF_COMPARISON_OPERATIONS[op.predicate.value.data]
        return _FLOAT_PREDICATES[predicate].format(a=a, b=b)
    predicate = arith.CMPI_COMPARISON_OPERATIONS[op.predicate.value.data]
    if predicate.startswith("u"):  # compare the bits as unsigned numbers of the operands' width
        unsigned = f"uint{max(_integer_width(op.lhs.type), 8)}_t"
        a, b = f"static_cast<{unsigned}>({a})", f"static_cast<{unsigned}>({b})"
    return f"{a} {_INT_PREDICATES[predicate]} {b}"


def _math(op: Operation, args: Sequence[str]) -> str:
    t = op.results[0].type
    if not is_float(t):
        raise CudaEmitError(f"no CUDA lowering for {op.name} on {t}")
    function = _MATH[op.name]
    if isinstance(t, Float64Type):
        doubles = {"rsqrtf": "rsqrt", "exp_approx": "exp", "exp2_approx": "exp2"}
        function = doubles.get(function, function[:-1])
    return _rounded(t, f"{function}({', '.join(args)})")


def _division(op: Operation) -> str:
    """The prelude's division: `rcp_approx` where the op is marked `fastmath<afn>` (a denominator of at
    least 1, `ScalarBuilder.approx_reciprocal`), else `div_full`."""
    return "rcp_approx" if is_approx_reciprocal(op) else "div_full"


def _min_max(op: Operation, args: Sequence[str]) -> str:
    t = op.results[0].type
    double = isinstance(t, Float64Type)
    function = {
        "arith.maximumf": "nan_max", "arith.minimumf": "nan_min",  # NaN-propagating, as torch.maximum
        "arith.maxnumf": "fmax" if double else "fmaxf", "arith.minnumf": "fmin" if double else "fminf",
        "arith.maxsi": "max", "arith.minsi": "min",
    }[op.name]  # fmt: skip
    return _rounded(t, f"{function}({args[0]}, {args[1]})")


_INT_TO_16BIT = {  # exact int -> 16-bit float conversions (int -> float -> bf16 would round twice)
    (Float16Type, False, 32): "__int2half_rn", (Float16Type, False, 64): "__ll2half_rn",
    (Float16Type, True, 32): "__uint2half_rn", (Float16Type, True, 64): "__ull2half_rn",
    (BFloat16Type, False, 32): "__int2bfloat16_rn", (BFloat16Type, False, 64): "__ll2bfloat16_rn",
    (BFloat16Type, True, 32): "__uint2bfloat16_rn", (BFloat16Type, True, 64): "__ull2bfloat16_rn",
}  # fmt: skip


def _int_to_float(x: str, src: Attribute, dst: Attribute, unsigned: bool) -> str:
    """An integer converted to a float with one rounding. A bool converts to 0 or 1, as in the
    Triton backend (`.to()`), whichever of sitofp/uitofp reads it."""
    width = 64 if _integer_width(src) == 64 else 32
    if src == i1:
        source = f"static_cast<int>({x})"
        unsigned = False
    elif unsigned and _integer_width(src) < 32:  # zero-extend the bits first
        source = f"static_cast<uint32_t>(static_cast<uint{_integer_width(src)}_t>({x}))"
    else:
        source = f"static_cast<{'u' if unsigned else ''}int{width}_t>({x})"
    if is_16bit_float(dst):
        widen = "__half2float" if isinstance(dst, Float16Type) else "__bfloat162float"
        return f"{widen}({_INT_TO_16BIT[type(dst), unsigned, width]}({source}))"
    return f"static_cast<{register_type(dst)}>({source})"


def _cast(op: Operation, x: str) -> str:
    src, dst = op.operands[0].type, op.results[0].type
    dst_type = register_type(dst)
    if op.name in ("arith.extf", "arith.truncf"):
        if is_16bit_float(dst):
            return _rounded(dst, x)  # exact for a 16-bit source, one rounding for f32 and f64
        return x if register_type(src) == dst_type else f"static_cast<{dst_type}>({x})"
    if op.name in ("arith.sitofp", "arith.uitofp"):
        return _int_to_float(x, src, dst, unsigned=op.name == "arith.uitofp")
    if op.name == "arith.fptosi":
        return (
            f"static_cast<{dst_type}>({x})"
            if _integer_width(dst) >= 32
            else (f"static_cast<{dst_type}>(static_cast<int>({x}))")
        )
    if op.name == "arith.extsi":
        return f"-static_cast<{dst_type}>({x})" if src == i1 else f"static_cast<{dst_type}>({x})"
    if op.name == "arith.extui":
        if src == i1:
            return f"static_cast<{dst_type}>({x})"
        return f"static_cast<{dst_type}>(static_cast<uint{_integer_width(src)}_t>({x}))"
    if op.name == "arith.trunci":
        return f"({x} & 1) != 0" if dst == i1 else f"static_cast<{dst_type}>({x})"
    raise CudaEmitError(f"no CUDA lowering for {op.name}")


_CASTS = (
    "arith.extf", "arith.truncf", "arith.sitofp", "arith.uitofp", "arith.fptosi",
    "arith.extsi", "arith.extui", "arith.trunci",
)  # fmt: skip

_EXPRESSIONS: dict[str, Callable[[Operation, Sequence[str]], str]] = {
    **dict.fromkeys(_INFIX, lambda op, a: _rounded(op.results[0].type, f"{a[0]} {_INFIX[op.name]} {a[1]}")),
    "arith.divf": lambda op, a: _rounded(op.results[0].type, f"{_division(op)}({a[0]}, {a[1]})"),
    **dict.fromkeys(_MATH, _math),
    **dict.fromkeys(
        ["arith.maximumf", "arith.minimumf", "arith.maxnumf", "arith.minnumf", "arith.maxsi", "arith.minsi"],
        _min_max,
    ),
    **dict.fromkeys(_CASTS, lambda op, a: _cast(op, a[0])),
    "arith.cmpf": lambda op, a: _compare(op, *a),
    "arith.cmpi": lambda op, a: _compare(op, *a),
    "arith.select": lambda op, a: f"{a[0]} ? {a[1]} : {a[2]}",
    "arith.negf": lambda op, a: f"-{a[0]}",
    "math.absi": lambda op, a: _rounded(op.results[0].type, f"abs({a[0]})"),  # abs(int64_t) overloads
}


def supports(op: Operation) -> bool:
    return op.name in _EXPRESSIONS


def scalar_expr(op: Operation, operands: Sequence[str]) -> str:
    """The C++ expression of `op`'s result from its operands' C atoms."""
    write = _EXPRESSIONS.get(op.name)
    if write is None:
        raise CudaEmitError(f"no CUDA lowering for {op.name}")
    return write(op, operands)
