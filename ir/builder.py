"""Builders for `ein` functions and the scalar bodies of `ein.map`.

`EinBuilder` appends ops to one `func.func` body and infers result types from
shapes and dtypes; `ScalarBuilder` writes `arith`/`math` code inside a map
body, picking the float or integer flavour of each op from its operand type,
so importers and passes say what to compute, not how to spell it in MLIR.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from xdsl.dialects import arith, func, math
from xdsl.dialects.builtin import (
    ArrayAttr,
    DictionaryAttr,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    Signedness,
    f32,
    i1,
    i32,
    i64,
)
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue

from . import einsum as ein
from .dtypes import broadcast_shapes, dims_of, is_bool, is_float, same_shape, shape_of, tensor_type

Scalar = bool | int | float

_FLOAT_BINARY = {
    "add": arith.AddfOp, "sub": arith.SubfOp, "mul": arith.MulfOp, "div": arith.DivfOp,
    "max": arith.MaximumfOp, "min": arith.MinimumfOp, "pow": math.PowFOp,
}  # fmt: skip
_INT_BINARY = {
    "add": arith.AddiOp, "sub": arith.SubiOp, "mul": arith.MuliOp, "div": arith.DivSIOp,
    "max": arith.MaxSIOp, "min": arith.MinSIOp, "rem": arith.RemSIOp,
}  # fmt: skip
_FLOAT_UNARY = {
    "exp": math.ExpOp, "exp2": math.Exp2Op, "expm1": math.ExpM1Op, "log": math.LogOp,
    "log1p": math.Log1pOp, "log2": math.Log2Op, "sqrt": math.SqrtOp, "rsqrt": math.RsqrtOp,
    "tanh": math.TanhOp, "erf": math.ErfOp, "abs": math.AbsFOp, "sin": math.SinOp,
    "cos": math.CosOp, "floor": math.FloorOp, "ceil": math.CeilOp, "round": math.RoundEvenOp,
}  # fmt: skip
_FLOAT_CMP = {"lt": "olt", "le": "ole", "gt": "ogt", "ge": "oge", "eq": "oeq", "ne": "une"}
_INT_CMP = {"lt": "slt", "le": "sle", "gt": "sgt", "ge": "sge", "eq": "eq", "ne": "ne"}
_BOOL_CMP = {"lt": "ult", "le": "ule", "gt": "ugt", "ge": "uge", "eq": "eq", "ne": "ne"}
# PyTorch's arithmetic on bools: a sum or maximum is their or, a product or minimum their and
_BOOL_BINARY = {"add": "or", "max": "or", "mul": "and", "min": "and"}


def opmath_type(elem: Attribute) -> Attribute:
    """The type arithmetic on `elem` is carried out in: f32 for 16-bit floats, i32 for unsigned
    integers (uint8: `arith` takes signless integers, and its constants only those; the result is
    truncated back, wrapping as PyTorch's uint8 arithmetic does)."""
    if is_float(elem) and elem.bitwidth < 32:
        return f32
    if is_unsigned(elem):
        return i32
    return elem


def is_unsigned(elem: Attribute) -> bool:
    return isinstance(elem, IntegerType) and elem.signedness.data == Signedness.UNSIGNED


def sums_in_i64(kind: str, elem: Attribute) -> bool:
    """Whether a `kind` reduction of `elem` is a sum of integers (not booleans), which PyTorch
    accumulates in i64 (a count of labels that are not ignored: cross-entropy's mean)."""
    return kind == "sum" and not is_float(elem) and not is_bool(elem)


def is_approx_reciprocal(op: Operation) -> bool:
    """Whether `op` is a division `ScalarBuilder.approx_reciprocal` made (marked `fastmath<afn>`), which a
    GPU backend may compute with its approximate reciprocal."""
    return isinstance(op, arith.DivfOp) and arith.FastMathFlag.APPROX_FUNC in op.fastmath.data


class ScalarBuilder:
    """Appends scalar `arith`/`math` ops to a block and returns their results."""

    def __init__(self, block: Block):
        self.block = block

    def _emit(self, op: Operation) -> SSAValue:
        self.block.add_op(op)
        return op.results[0]

    def const(self, value: Scalar, elem: Attribute) -> SSAValue:
        if is_float(elem):
            return self._emit(arith.ConstantOp(FloatAttr(float(value), elem)))
        return self._emit(arith.ConstantOp(IntegerAttr(int(value), elem)))

    def cast(self, x: SSAValue, elem: Attribute) -> SSAValue:
        """Convert like `tensor.to(dtype)`: float<->int truncates, nonzero -> true."""
        src = x.type
        if src == elem:
            return x
        if is_float(src) and is_float(elem):
            if src.bitwidth == elem.bitwidth:  # f16 <-> bf16 goes through f32
                return self.cast(self.cast(x, f32), elem)
            op = arith.ExtFOp if elem.bitwidth > src.bitwidth else arith.TruncFOp
            return self._emit(op(x, elem))
        if is_bool(elem):
            return self.cmp("ne", x, self.const(0, src))
        if is_float(elem):
            op = arith.UIToFPOp if is_bool(src) or is_unsigned(src) else arith.SIToFPOp
            return self._emit(op(x, elem))
        if is_float(src):
            return self._emit(arith.FPToSIOp(x, elem))
        if is_bool(src) or (is_unsigned(src) and elem.width.data > src.width.data):
            return self._emit(arith.ExtUIOp(x, elem))
        if elem.width.data == src.width.data:  # uint8 <-> int8: the same bits, through a wider type
            return self.cast(self.cast(x, i32 if src.width.data < 32 else i64), elem)
        op = arith.ExtSIOp if elem.width.data > src.width.data else arith.TruncIOp
        return self._emit(op(x, elem))

    def binary(self, name: str, a: SSAValue, b: SSAValue) -> SSAValue:
        if is_bool(a.type) and name in _BOOL_BINARY:  # True + True is True in PyTorch, not 2 wrapped to 0
            return self.logical(_BOOL_BINARY[name], a, b)
        table = _FLOAT_BINARY if is_float(a.type) else _INT_BINARY
        if name not in table:
            raise TypeError(f"no {name} on {a.type}")
        return self._emit(table[name](a, b))

    def add(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.binary("add", a, b)

    def sub(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.binary("sub", a, b)

    def mul(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.binary("mul", a, b)

    def div(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.binary("div", a, b)

    def approx_reciprocal(self, y: SSAValue, one: SSAValue | None = None) -> SSAValue:
        """1 / y for a y that is at least 1 (or +inf or NaN): `arith.divf` marked `fastmath<afn>`, which
        a GPU backend may compute with the approximate reciprocal (`rcp.approx.ftz.f32`: one instruction,
        1 ulp, against `div.full.f32`'s half dozen and 2 ulp). Its result flushes to zero where it would
        be under 2^-126, that is where y is over 2^126: sigmoid(x) for x below -87.3 is 0, not eager's
        subnormal, and SiLU(x) there -0.0, not eager's ~-1e-36 (both below any tolerance). For the
        denominators of tilefuse's own formulas (1 + exp(.), 1 + |x| c), never for a division the user
        wrote. Elsewhere (the interpreters, f64) it is a division."""
        flags = arith.FastMathFlagsAttr([arith.FastMathFlag.APPROX_FUNC])
        return self._emit(arith.DivfOp(one or self.const(1.0, y.type), y, flags=flags))

    def squared_difference(self, a: SSAValue, b: SSAValue) -> SSAValue:
        """(a - b)^2: a variance's squared deviation from its mean."""
        d = self.sub(a, b)
        return self.mul(d, d)

    def max(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.binary("max", a, b)

    def maxnum(self, a: SSAValue, b: SSAValue) -> SSAValue:
        """The larger float, ignoring a NaN operand (IEEE maxNum)."""
        return self._emit(arith.MaxnumfOp(a, b))

    def min(self, a: SSAValue, b: SSAValue) -> SSAValue:
        return self.binary("min", a, b)

    def unary(self, name: str, x: SSAValue) -> SSAValue:
        if name == "neg":
            if is_float(x.type):
                return self._emit(arith.NegfOp(x))
            return self.sub(self.const(0, x.type), x)
        if name == "abs" and not is_float(x.type):
            return self._emit(math.AbsIOp(x))
        if not is_float(x.type):
            raise TypeError(f"no {name} on {x.type}")
        return self._emit(_FLOAT_UNARY[name](x))

    def cmp(self, pred: str, a: SSAValue, b: SSAValue) -> SSAValue:
        """Compare with lt/le/gt/ge/eq/ne; float compares are ordered, except ne."""
        if is_float(a.type):
            return self._emit(arith.CmpfOp(a, b, _FLOAT_CMP[pred]))
        if is_bool(a.type):  # False < True: as signed 1-bit integers True would be -1
            return self._emit(arith.CmpiOp(a, b, _BOOL_CMP[pred]))
        return self._emit(arith.CmpiOp(a, b, _INT_CMP[pred]))

    def select(self, cond: SSAValue, a: SSAValue, b: SSAValue) -> SSAValue:
        return self._emit(arith.SelectOp(cond, a, b))

    def logical(self, name: str, a: SSAValue, b: SSAValue) -> SSAValue:
        op = {"and": arith.AndIOp, "or": arith.OrIOp, "xor": arith.XOrIOp}[name]
        return self._emit(op(a, b))

    def logical_not(self, a: SSAValue) -> SSAValue:
        return self.logical("xor", a, self.const(1, i1))


MapInput = SSAValue | Scalar
MapBody = Callable[..., SSAValue]


class EinBuilder:
    """Builds one `ein` function: arguments, then ops, then `finish(results)`."""

    def __init__(self, name: str):
        self.name = name
        self.block = Block()
        self.arg_attrs: list[DictionaryAttr] = []

    def _emit(self, op: Operation) -> SSAValue:
        self.block.add_op(op)
        return op.results[0]

    def add_argument(
        self, shape: Sequence[int], elem: Attribute, name: str | None = None,
        attrs: dict[str, Attribute] | None = None,
    ) -> SSAValue:  # fmt: skip
        arg = self.block.insert_arg(tensor_type(shape, elem), len(self.block.args))
        if name:
            arg.name_hint = name
        self.arg_attrs.append(DictionaryAttr(attrs or {}))
        return arg

    def contract(self, spec: str, a: SSAValue, b: SSAValue, elem: Attribute | None = None) -> SSAValue:
        """`ein.contract`; its result in the operands' element type unless `elem` says (f32 for
        16-bit operands: the accumulator kept, as split-K's partials are)."""
        lhs, rhs, out = ein.parse_spec(spec)
        sizes = dict(zip(lhs, dims_of(a.type))) | dict(zip(rhs, dims_of(b.type)))
        result = tensor_type([sizes[c] for c in out], elem or a.type.get_element_type())
        return self._emit(ein.ContractOp(spec, a, b, result))

    def map(
        self, inputs: Sequence[MapInput], out_elem: Attribute, body: MapBody,
        compute_elem: Attribute | None = None, cast_inputs: bool = True,
    ) -> SSAValue:  # fmt: skip
        """An `ein.map` over broadcast `inputs` (tensors or Python scalars).

        `body(sb, *args)` receives one scalar per input (tensor elements as
        block arguments, Python scalars as constants), converted to
        `compute_elem` (default: the opmath type of `out_elem`) unless
        `cast_inputs` is false, and returns the element, cast to `out_elem`.
        """
        compute = compute_elem or opmath_type(out_elem)
        operands = list(dict.fromkeys(x for x in inputs if isinstance(x, SSAValue)))
        shape = broadcast_shapes(*(dims_of(t.type) for t in operands))
        if shape is None:
            raise ValueError(f"map operands do not broadcast: {[str(t.type) for t in operands]}")
        block = Block(arg_types=[t.type.get_element_type() for t in operands])
        sb = ScalarBuilder(block)
        args = []
        for x in inputs:
            if isinstance(x, SSAValue):
                arg = block.args[operands.index(x)]
                args.append(sb.cast(arg, compute) if cast_inputs else arg)
            else:
                args.append(sb.const(x, compute))
        result = sb.cast(body(sb, *args), out_elem)
        block.add_op(ein.YieldOp(result))
        return self._emit(ein.MapOp(operands, tensor_type(shape, out_elem), Region(block)))

    def map_like(self, template: ein.MapOp, inputs: Sequence[SSAValue], shape: Sequence[int]) -> SSAValue:
        """An `ein.map` computing `template`'s body (cloned) over `inputs`, one per template operand,
        into a tensor of `shape` and the template's element type."""
        result = tensor_type(shape, template.result.type.get_element_type())
        return self._emit(ein.MapOp(list(inputs), result, template.body.clone()))

    def copy(self, x: SSAValue) -> SSAValue:
        """`x` copied into a buffer of its own (an identity `ein.map`: a pointwise kernel)."""
        return self.map([x], x.type.get_element_type(), lambda sb, a: a, cast_inputs=False)

    def cast(self, x: SSAValue, elem: Attribute) -> SSAValue:
        if x.type.get_element_type() == elem:
            return x
        return self.map([x], elem, lambda sb, a: a, compute_elem=elem)

    def reduce(self, kind: str, x: SSAValue, dims: Sequence[int], keepdim: bool) -> SSAValue:
        shape = dims_of(x.type)
        rank = len(shape)
        dims = sorted({d % rank for d in dims}) if rank else []
        if keepdim:
            out = [1 if i in dims else d for i, d in enumerate(shape)]
        else:
            out = [d for i, d in enumerate(shape) if i not in dims]
        result = tensor_type(out, i64 if kind in ein.ARG_KINDS else x.type.get_element_type())
        return self._emit(ein.ReduceOp(kind, dims, keepdim, x, result))

    def flip(self, x: SSAValue, dims: Sequence[int]) -> SSAValue:
        rank = len(dims_of(x.type))
        dims = sorted({d % rank for d in dims})
        if not dims:
            return x
        return self._emit(ein.ViewOp("flip", x, x.type, dims))

    def scan(self, kind: str, x: SSAValue, dim: int, reverse: bool = False) -> SSAValue:
        return self._emit(ein.ScanOp(kind, dim % len(dims_of(x.type)), x, reverse))

    def reshape(self, x: SSAValue, shape: Sequence[int]) -> SSAValue:
        if same_shape(dims_of(x.type), shape):
            return x
        result = tensor_type(shape, x.type.get_element_type())
        return self._emit(ein.ViewOp("reshape", x, result))

    def permute(self, x: SSAValue, perm: Sequence[int]) -> SSAValue:
        rank = len(dims_of(x.type))
        perm = [p % rank for p in perm]
        if perm == list(range(rank)):
            return x
        shape = dims_of(x.type)
        result = tensor_type([shape[p] for p in perm], x.type.get_element_type())
        return self._emit(ein.ViewOp("permute", x, result, perm))

    def expand(self, x: SSAValue, shape: Sequence[int]) -> SSAValue:
        """Broadcast to `shape`, adding leading dims first where needed."""
        src = dims_of(x.type)
        if len(src) < len(shape):
            x = self.reshape(x, [1] * (len(shape) - len(src)) + list(src))
        if same_shape(dims_of(x.type), shape):
            return x
        result = tensor_type(shape, x.type.get_element_type())
        return self._emit(ein.ViewOp("expand", x, result))

    def slice(self, x: SSAValue, dim: int, start: int, stop: int, step: int = 1) -> SSAValue:
        shape = list(shape_of(x.type))
        dim %= len(shape)
        if (start, stop, step) == (0, shape[dim], 1):
            return x
        shape[dim] = -(-(stop - start) // step)
        result = tensor_type(shape, x.type.get_element_type())
        return self._emit(ein.ViewOp("slice", x, result, [dim, start, stop, step]))

    def concat(self, xs: Sequence[SSAValue], dim: int) -> SSAValue:
        shape = list(dims_of(xs[0].type))
        dim %= len(shape)
        shape[dim] = sum(dims_of(x.type)[dim] for x in xs)
        return self._emit(ein.ConcatOp(dim, xs, tensor_type(shape, xs[0].type.get_element_type())))

    def gather(
        self, table: SSAValue, indices: Sequence[SSAValue], index_map: Sequence[int], shape: Sequence[int]
    ) -> SSAValue:
        """`ein.gather` of `table` into a tensor of `shape` (see `GatherOp` for `index_map`)."""
        result = tensor_type(shape, table.type.get_element_type())
        return self._emit(ein.GatherOp(table, indices, index_map, result))

    def constant(self, value: Scalar, shape: Sequence[int], elem: Attribute) -> SSAValue:
        if is_float(elem):
            attr = FloatAttr(float(value), elem)
        else:
            attr = IntegerAttr(int(value), elem)
        return self._emit(ein.ConstantOp(attr, tensor_type(shape, elem)))

    def iota(self, dim: int, shape: Sequence[int], elem: Attribute) -> SSAValue:
        return self._emit(ein.IotaOp(dim, tensor_type(shape, elem)))

    def finish(self, results: Sequence[SSAValue]) -> func.FuncOp:
        """Close the function with `func.return results` and return it."""
        self.block.add_op(func.ReturnOp(*results))
        arg_types = [a.type for a in self.block.args]
        fn = func.FuncOp(
            self.name,
            (arg_types, [r.type for r in results]),
            Region(self.block),
            arg_attrs=ArrayAttr(self.arg_attrs) if any(a.data for a in self.arg_attrs) else None,
        )
        return fn


FLOAT_CASTS = ("arith.extf", "arith.truncf")


class InsertingEinBuilder(EinBuilder):
    """An EinBuilder that inserts its ops into an existing function: before `anchor`, or after it
    (then in order, each after the last)."""

    def __init__(self, anchor: Operation, name: str, after: bool = False):
        super().__init__(name)
        self.anchor, self.after = anchor, after

    def _emit(self, op: Operation) -> SSAValue:
        if self.after:
            self.anchor.parent_block().insert_op_after(op, self.anchor)
            self.anchor = op
        else:
            self.anchor.parent_block().insert_op_before(op, self.anchor)
        return op.results[0]


def strip_casts(value: SSAValue) -> SSAValue:
    """`value` with the float casts (extf/truncf) that produce it looked through."""
    while isinstance(value.owner, Operation) and value.owner.name in FLOAT_CASTS:
        value = value.owner.operands[0]
    return value


def view_source(value: SSAValue) -> SSAValue:
    """`value` with every `ein.view` that produces it looked through."""
    while isinstance(value.owner, ein.ViewOp):
        value = value.owner.input
    return value


def yielded_value(map_op: ein.MapOp) -> SSAValue:
    """The scalar an `ein.map` body yields."""
    return map_op.body.block.last_op.operands[0]


def widened_source(value: SSAValue) -> SSAValue | None:
    """The tensor that `value` only widens (a one-input map whose body is a single `arith.extf`,
    same shape), or None."""
    op = value.owner
    if not (isinstance(op, ein.MapOp) and len(op.inputs) == 1):
        return None
    body = list(op.body.block.ops)
    widened = len(body) == 2 and body[0].name == "arith.extf" and body[0].operands[0] is op.body.block.args[0]
    return op.inputs[0] if widened and same_shape(dims_of(op.inputs[0].type), dims_of(value.type)) else None


def read_by_contraction(value: SSAValue) -> bool:
    """Whether a contraction reads `value`, directly or through views and widening casts (an
    attention kernel folds the f32 upcast of its 16-bit operands into its dots)."""
    for use in value.uses:
        user = use.operation
        if isinstance(user, ein.ContractOp):
            return True
        if isinstance(user, ein.ViewOp) and read_by_contraction(user.result):
            return True
        widens = isinstance(user, ein.MapOp) and widened_source(user.result) is value
        if widens and read_by_contraction(user.result):
            return True
    return False


def inline_map_body(
    map_op: ein.MapOp, args: Sequence[SSAValue], block: Block, value: SSAValue | None = None
) -> SSAValue:
    """Clone an `ein.map` body into `block`, its arguments bound to `args`; return the clone of
    the yielded value, or of the body's `value` if given."""
    mapping: dict[SSAValue, SSAValue] = dict(zip(map_op.body.block.args, args))
    for inner in map_op.body.block.ops:
        if isinstance(inner, ein.YieldOp):
            return mapping[value if value is not None else inner.value]
        clone = inner.clone(value_mapper=mapping)
        block.add_op(clone)
        mapping.update(zip(inner.results, clone.results))
    raise ValueError("ein.map body has no ein.yield")


def single_user(value: SSAValue) -> Operation | None:
    """The one op that reads `value`, or None if none or several do."""
    users = {use.operation for use in value.uses}
    return users.pop() if len(users) == 1 else None


def erase_dead(fn: func.FuncOp) -> None:
    """Erase the ops of `fn` whose results nothing reads (a rewrite's leftovers)."""
    changed = True
    while changed:
        changed = False
        for op in reversed(list(fn.body.block.ops)):
            if op is not fn.body.block.last_op and all(not r.uses for r in op.results):
                op.detach()
                op.erase()
                changed = True
