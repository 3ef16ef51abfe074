"""The `ein` dialect: a tensor program as einsums, elementwise maps and reductions.

Every value is a ranked tensor. Its sizes are static, or symbolic (a dynamic graph's batch or
sequence length): `?` in the type, with the type's encoding naming each symbolic size in order,
`tensor<?x?x64xf32, ["s0", "s1"]>`; sizes are integer expressions over size symbols ("s0*s1",
"s1 + 1"), compared for equality as expressions. Weights and inputs are the arguments of a
`func.func`; the ops below compute on them:

    %y = ein.contract "bmk,nk->bmn" %x, %w : (tensor<2x8x32xf32>, tensor<64x32xf32>) -> tensor<2x8x64xf32>
    %z = ein.map(%y, %b) : (tensor<2x8x64xf32>, tensor<64xf32>) -> tensor<2x8x64xf32> {
    ^bb0(%a: f32, %c: f32):
      %s = arith.addf %a, %c : f32
      ein.yield %s : f32
    }
    %r = ein.reduce max [2] keepdim %z : tensor<2x8x64xf32> -> tensor<2x8x1xf32>

`ein.map` bodies are scalar `arith`/`math` code over one element of each
(numpy-broadcast) operand. `ein.view` is data-movement-free indexing: a
reshape, permute, expand or strided slice; `ein.gather` reads a table at
positions held in index tensors (embeddings). The verifiers check shapes and
dtypes, so an ill-formed graph is rejected with a message naming the op.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from xdsl.dialects.builtin import (
    DenseArrayBase,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    UnitAttr,
    f32,
    i64,
)
from xdsl.ir import Attribute, Block, Dialect, Region, SSAValue
from xdsl.irdl import (
    IRDLOperation,
    irdl_op_definition,
    lazy_traits_def,
    operand_def,
    opt_prop_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.parser import Parser, UnresolvedOperand
from xdsl.printer import Printer
from xdsl.traits import HasParent, IsolatedFromAbove, IsTerminator, Pure
from xdsl.utils.exceptions import VerifyException

from .dtypes import broadcasts_to, dims_of, is_bool, is_float, is_symbolic, same_shape, same_size

REDUCE_KINDS = ("sum", "max", "min", "mean", "prod", "argmax", "argmin")
ARG_KINDS = ("argmax", "argmin")  # the index (i64) of the first max/min over one dim
SCAN_KINDS = ("sum", "prod")
VIEW_KINDS = ("reshape", "permute", "expand", "slice", "flip")
SCALAR_DIALECTS = ("arith.", "math.")


def parse_spec(spec: str) -> tuple[str, str, str]:
    """Split an einsum spec "ab,bc->ac" into its three index strings.

    Raises ValueError naming what is wrong: not two operands, an index that is
    not a letter, a repeated index within one operand (a diagonal), or an
    output index that no operand has.
    """
    if spec.count("->") != 1:
        raise ValueError(f"spec {spec!r} needs exactly one '->'")
    ins, out = spec.split("->")
    parts = ins.split(",")
    if len(parts) != 2:
        raise ValueError(f"spec {spec!r} must have two operands, has {len(parts)}")
    lhs, rhs = parts
    for name, idx in (("lhs", lhs), ("rhs", rhs), ("result", out)):
        if not all(c.isascii() and c.isalpha() for c in idx):
            raise ValueError(f"spec {spec!r}: {name} indices {idx!r} must be letters")
        if len(set(idx)) != len(idx):
            raise ValueError(f"spec {spec!r}: {name} repeats an index (diagonals are not supported)")
    missing = set(out) - set(lhs) - set(rhs)
    if missing:
        raise ValueError(f"spec {spec!r}: result index {''.join(sorted(missing))} is in no operand")
    return lhs, rhs, out


def _ints(attr: DenseArrayBase | None) -> tuple[int, ...]:
    return tuple(attr.get_values()) if attr is not None else ()


def _int_array(values: Sequence[int]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, list(values))


def _dims(t: Attribute, op_name: str) -> tuple:
    """`dims_of(t)`, its errors (a symbolic size the encoding does not name) as the op's."""
    try:
        return dims_of(t)
    except (TypeError, ValueError) as e:
        raise VerifyException(f"{op_name}: {e}") from None


def _parse_int_list(parser: Parser) -> list[int]:
    return parser.parse_comma_separated_list(parser.Delimiter.SQUARE, parser.parse_integer)


def _print_int_list(printer: Printer, values: Sequence[int]) -> None:
    printer.print_string("[" + ", ".join(str(v) for v in values) + "]")


def _parse_unary_tail(parser: Parser) -> tuple[SSAValue, Attribute, dict[str, Attribute]]:
    """Parse `%x attr-dict : type -> type`, the tail of the unary ops."""
    operand = parser.parse_unresolved_operand()
    attrs = parser.parse_optional_attr_dict()
    parser.parse_punctuation(":")
    in_type = parser.parse_type()
    parser.parse_punctuation("->")
    out_type = parser.parse_type()
    return parser.resolve_operand(operand, in_type), out_type, attrs


def _parse_operand_types(
    parser: Parser, operands: Sequence[UnresolvedOperand], op_name: str
) -> tuple[list[SSAValue], Attribute]:
    """Parse `: (types) -> type` for `operands`; returns them resolved, and the result type."""
    parser.parse_punctuation(":")
    fn_type = parser.parse_function_type()
    if len(fn_type.inputs.data) != len(operands) or len(fn_type.outputs.data) != 1:
        parser.raise_error(f"{op_name}: type list does not match the operands")
    resolved = [parser.resolve_operand(o, t) for o, t in zip(operands, fn_type.inputs.data)]
    return resolved, fn_type.outputs.data[0]


def _print_unary_tail(printer: Printer, op: IRDLOperation, operand: SSAValue) -> None:
    printer.print_string(" ")
    printer.print_operand(operand)
    printer.print_op_attributes(op.attributes)
    printer.print_string(f" : {operand.type} -> {op.results[0].type}")


@irdl_op_definition
class ContractOp(IRDLOperation):
    """An einsum over two operands, accumulated in fp32 for float inputs."""

    name = "ein.contract"
    spec = prop_def(StringAttr)
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())

    assembly_format = "$spec $lhs `,` $rhs attr-dict `:` `(` type($lhs) `,` type($rhs) `)` `->` type($result)"

    def __init__(self, spec: str, lhs: SSAValue, rhs: SSAValue, result_type: Attribute):
        super().__init__(
            operands=[lhs, rhs], result_types=[result_type], properties={"spec": StringAttr(spec)}
        )

    def verify_(self) -> None:
        try:
            lhs_idx, rhs_idx, out_idx = parse_spec(self.spec.data)
        except ValueError as e:
            raise VerifyException(f"ein.contract: {e}") from None
        sizes: dict[str, int] = {}
        for name, idx, value in (("lhs", lhs_idx, self.lhs), ("rhs", rhs_idx, self.rhs)):
            shape = _dims(value.type, "ein.contract")
            if len(shape) != len(idx):
                raise VerifyException(
                    f"ein.contract: {name} has rank {len(shape)} but spec "
                    f"{self.spec.data!r} gives it {len(idx)} indices ({idx!r})"
                )
            for c, d in zip(idx, shape):
                if not same_size(sizes.setdefault(c, d), d):
                    raise VerifyException(
                        f"ein.contract: index {c!r} has size {sizes[c]} in one place and {d} in another"
                    )
        expected = tuple(sizes[c] for c in out_idx)
        if not same_shape(_dims(self.result.type, "ein.contract"), expected):
            raise VerifyException(
                f"ein.contract: result shape {dims_of(self.result.type)} should be {expected} "
                f"for spec {self.spec.data!r}"
            )
        elem, out_elem = self.lhs.type.get_element_type(), self.result.type.get_element_type()
        widened = is_float(elem) and elem.bitwidth == 16 and out_elem == f32  # f32 accumulation kept
        if elem != self.rhs.type.get_element_type() or (out_elem != elem and not widened):
            raise VerifyException(
                f"ein.contract: operand element types must match, and the result's too (or be f32 "
                f"for 16-bit operands), got "
                f"{self.lhs.type}, {self.rhs.type} -> {self.result.type}"
            )


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Ends an `ein.map` body with the element it computes."""

    name = "ein.yield"
    value = operand_def()
    traits = lazy_traits_def(lambda: (IsTerminator(), HasParent(MapOp), Pure()))
    assembly_format = "$value attr-dict `:` type($value)"

    def __init__(self, value: SSAValue):
        super().__init__(operands=[value])


@irdl_op_definition
class MapOp(IRDLOperation):
    """Elementwise computation over numpy-broadcast operands.

    The body has one scalar block argument per operand (its element type) and
    yields the result element; it may hold only `arith` and `math` ops.
    """

    name = "ein.map"
    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    body = region_def("single_block")
    traits = traits_def(IsolatedFromAbove(), Pure())

    assembly_format = "`(` $inputs `)` attr-dict `:` `(` type($inputs) `)` `->` type($result) $body"

    def __init__(self, inputs: Sequence[SSAValue], result_type: Attribute, body: Region):
        super().__init__(operands=[list(inputs)], result_types=[result_type], regions=[body])

    def verify_(self) -> None:
        out_shape = _dims(self.result.type, "ein.map")
        for i, value in enumerate(self.inputs):
            if not broadcasts_to(_dims(value.type, "ein.map"), out_shape):
                raise VerifyException(
                    f"ein.map: operand {i} of type {value.type} does not broadcast to "
                    f"result shape {out_shape}"
                )
        verify_scalar_body(
            "ein.map", self.body.block, [v.type.get_element_type() for v in self.inputs],
            self.result.type.get_element_type(), YieldOp,
        )  # fmt: skip


def verify_scalar_body(
    op_name: str, block: Block, arg_types: Sequence[Attribute], result_type: Attribute,
    yield_type: type[IRDLOperation],
) -> None:  # fmt: skip
    """Check a map body: a scalar argument per operand, arith/math ops, a yield of the result type."""
    if len(block.args) != len(arg_types):
        count = f"{len(block.args)} arguments for {len(arg_types)} operands"
        raise VerifyException(f"{op_name}: body has {count}")
    if [a.type for a in block.args] != list(arg_types):
        raise VerifyException(
            f"{op_name}: body arguments {[str(a.type) for a in block.args]} should be the operands' "
            f"element types {[str(t) for t in arg_types]}"
        )
    last = block.last_op
    if not isinstance(last, yield_type):
        raise VerifyException(f"{op_name}: body must end with {yield_type.name}")
    if last.value.type != result_type:
        raise VerifyException(
            f"{op_name}: body yields {last.value.type} but result element type is {result_type}"
        )
    for op in block.ops:
        if op is last:
            continue
        if not op.name.startswith(SCALAR_DIALECTS):
            raise VerifyException(f"{op_name}: body op {op.name} is not an arith/math op")
        if any(isinstance(r.type, TensorType) for r in op.results):
            raise VerifyException(f"{op_name}: body op {op.name} must compute on scalars")


@irdl_op_definition
class ReduceOp(IRDLOperation):
    """Reduce over `dims` with sum, max, min, mean or prod, or one dim to the index of its first max or
    min (argmax, argmin: i64, NaN counting as the max and the min, as torch's); `keepdim` keeps
    the dims as size 1."""

    name = "ein.reduce"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    kind = prop_def(StringAttr)
    dims = prop_def(DenseArrayBase)
    keepdim = opt_prop_def(UnitAttr)
    traits = traits_def(Pure())

    def __init__(
        self, kind: str, dims: Sequence[int], keepdim: bool, input: SSAValue, result_type: Attribute
    ):
        props: dict[str, Attribute] = {"kind": StringAttr(kind), "dims": _int_array(dims)}
        if keepdim:
            props["keepdim"] = UnitAttr()
        super().__init__(operands=[input], result_types=[result_type], properties=props)

    @property
    def reduce_dims(self) -> tuple[int, ...]:
        return _ints(self.dims)

    def verify_(self) -> None:
        kind = self.kind.data
        if kind not in REDUCE_KINDS:
            raise VerifyException(f"ein.reduce: kind {kind!r} is not one of {', '.join(REDUCE_KINDS)}")
        shape = _dims(self.input.type, "ein.reduce")
        dims = self.reduce_dims
        if len(set(dims)) != len(dims) or any(not 0 <= d < len(shape) for d in dims):
            raise VerifyException(f"ein.reduce: dims {list(dims)} invalid for rank {len(shape)}")
        if self.keepdim is not None:
            expected = tuple(1 if i in dims else d for i, d in enumerate(shape))
        else:
            expected = tuple(d for i, d in enumerate(shape) if i not in dims)
        if not same_shape(_dims(self.result.type, "ein.reduce"), expected):
            raise VerifyException(
                f"ein.reduce: result shape {dims_of(self.result.type)} should be {expected}"
            )
        elem = self.input.type.get_element_type()
        if kind in ARG_KINDS:
            if len(dims) != 1 or self.result.type.get_element_type() != i64:
                raise VerifyException(f"ein.reduce: {kind} reduces one dim to i64 indices")
        elif self.result.type.get_element_type() != elem:
            raise VerifyException("ein.reduce: result element type must match the input")
        if kind == "mean" and not is_float(elem):
            raise VerifyException(f"ein.reduce: mean needs a float input, got {elem}")
        if kind in ("sum", "mean", "prod") and is_bool(elem):
            raise VerifyException(f"ein.reduce: {kind} over i1 is not defined; cast first")

    def print(self, printer: Printer) -> None:
        printer.print_string(f" {self.kind.data} ")
        _print_int_list(printer, self.reduce_dims)
        if self.keepdim is not None:
            printer.print_string(" keepdim")
        _print_unary_tail(printer, self, self.input)

    @classmethod
    def parse(cls, parser: Parser) -> ReduceOp:
        kind = parser.parse_identifier("reduction kind")
        dims = _parse_int_list(parser)
        keepdim = parser.parse_optional_keyword("keepdim") is not None
        operand, out_type, attrs = _parse_unary_tail(parser)
        op = cls(kind, dims, keepdim, operand, out_type)
        op.attributes.update(attrs)
        return op


@irdl_op_definition
class ScanOp(IRDLOperation):
    """A running sum or product along `dim` (torch.cumsum/cumprod), from the end when `reverse`.

    Float inputs accumulate in f32 (as torch.compile's scan does; eager's CUDA scan of 16-bit
    floats does too), integers in their own type; the result has the input's type.
    """

    name = "ein.scan"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    kind = prop_def(StringAttr)
    dim = prop_def(IntegerAttr)
    reverse = opt_prop_def(UnitAttr)
    traits = traits_def(Pure())

    def __init__(self, kind: str, dim: int, input: SSAValue, reverse: bool = False):
        props: dict[str, Attribute] = {"kind": StringAttr(kind), "dim": IntegerAttr(dim, i64)}
        if reverse:
            props["reverse"] = UnitAttr()
        super().__init__(operands=[input], result_types=[input.type], properties=props)

    @property
    def scan_dim(self) -> int:
        return self.dim.value.data

    def verify_(self) -> None:
        if self.kind.data not in SCAN_KINDS:
            raise VerifyException(f"ein.scan: kind {self.kind.data!r} is not one of {', '.join(SCAN_KINDS)}")
        rank = len(_dims(self.input.type, "ein.scan"))
        if not 0 <= self.scan_dim < rank:
            raise VerifyException(f"ein.scan: dim {self.scan_dim} invalid for rank {rank}")
        if self.result.type != self.input.type:
            raise VerifyException("ein.scan: the result must have the input's type")
        if is_bool(self.input.type.get_element_type()):
            raise VerifyException("ein.scan: a scan over i1 is not defined; cast first")

    def print(self, printer: Printer) -> None:
        printer.print_string(f" {self.kind.data} {self.scan_dim}")
        if self.reverse is not None:
            printer.print_string(" reverse")
        _print_unary_tail(printer, self, self.input)

    @classmethod
    def parse(cls, parser: Parser) -> ScanOp:
        kind = parser.parse_identifier("scan kind")
        dim = parser.parse_integer(allow_boolean=False, allow_negative=False)
        reverse = parser.parse_optional_keyword("reverse") is not None
        operand, out_type, attrs = _parse_unary_tail(parser)
        op = cls(kind, dim, operand, reverse)
        if out_type != op.result.type:
            parser.raise_error(f"ein.scan: result type {out_type} must be the input's {operand.type}")
        op.attributes.update(attrs)
        return op


@irdl_op_definition
class ViewOp(IRDLOperation):
    """Indexing without data movement: reshape, permute, expand or slice.

    `params` holds the permutation for permute and [dim, start, stop, step]
    for slice; reshape and expand read their target from the result type.
    """

    name = "ein.view"
    input = operand_def(TensorType)
    result = result_def(TensorType)
    kind = prop_def(StringAttr)
    params = prop_def(DenseArrayBase)
    traits = traits_def(Pure())

    def __init__(self, kind: str, input: SSAValue, result_type: Attribute, params: Sequence[int] = ()):
        super().__init__(
            operands=[input],
            result_types=[result_type],
            properties={"kind": StringAttr(kind), "params": _int_array(params)},
        )

    @property
    def view_params(self) -> tuple[int, ...]:
        return _ints(self.params)

    def verify_(self) -> None:
        kind, p = self.kind.data, self.view_params
        src, dst = _dims(self.input.type, "ein.view"), _dims(self.result.type, "ein.view")
        if self.input.type.get_element_type() != self.result.type.get_element_type():
            raise VerifyException("ein.view: a view cannot change the element type")
        if kind == "reshape":
            if not same_size(math.prod(src), math.prod(dst)):
                raise VerifyException(f"ein.view reshape: {src} and {dst} differ in element count")
        elif kind == "permute":
            if sorted(p) != list(range(len(src))):
                raise VerifyException(f"ein.view permute: {list(p)} is not a permutation of rank {len(src)}")
            if not same_shape([src[i] for i in p], dst):
                raise VerifyException(f"ein.view permute: result shape should be {tuple(src[i] for i in p)}")
        elif kind == "expand":
            if len(src) != len(dst) or any(not same_size(s, d) and s != 1 for s, d in zip(src, dst)):
                raise VerifyException(f"ein.view expand: cannot expand {src} to {dst}")
        elif kind == "slice":
            if len(p) != 4:
                raise VerifyException("ein.view slice: params must be [dim, start, stop, step]")
            dim, start, stop, step = p
            if 0 <= dim < len(src) and is_symbolic(src[dim]):
                raise VerifyException(
                    f"ein.view slice: dim {dim} of {src} is symbolic; slices take static dims"
                )
            if not 0 <= dim < len(src) or step < 1 or not 0 <= start <= stop <= src[dim]:
                raise VerifyException(f"ein.view slice: bad slice {list(p)} of shape {src}")
            want = list(src)
            want[dim] = -(-(stop - start) // step)
            if not same_shape(want, dst):
                raise VerifyException(f"ein.view slice: result shape should be {tuple(want)}")
        elif kind == "flip":
            if not p or len(set(p)) != len(p) or any(not 0 <= d < len(src) for d in p):
                raise VerifyException(f"ein.view flip: dims {list(p)} invalid for rank {len(src)}")
            if not same_shape(src, dst):
                raise VerifyException("ein.view flip: the result must have the input's shape")
        else:
            raise VerifyException(f"ein.view: kind {kind!r} is not one of {', '.join(VIEW_KINDS)}")

    def print(self, printer: Printer) -> None:
        kind, p = self.kind.data, self.view_params
        printer.print_string(f" {kind}")
        if kind == "permute":
            printer.print_string(" ")
            _print_int_list(printer, p)
        elif kind == "slice" and len(p) == 4:
            printer.print_string(f" dim {p[0]} [{p[1]}:{p[2]}:{p[3]}]")
        elif p:
            printer.print_string(" params ")
            _print_int_list(printer, p)
        _print_unary_tail(printer, self, self.input)

    @classmethod
    def parse(cls, parser: Parser) -> ViewOp:
        kind = parser.parse_identifier("view kind")
        params: list[int] = []
        if kind == "permute":
            params = _parse_int_list(parser)
        elif kind == "slice":
            parser.parse_keyword("dim")
            params.append(parser.parse_integer())
            parser.parse_punctuation("[")
            params.append(parser.parse_integer())
            parser.parse_punctuation(":")
            params.append(parser.parse_integer())
            parser.parse_punctuation(":")
            params.append(parser.parse_integer())
            parser.parse_punctuation("]")
        elif parser.parse_optional_keyword("params"):
            params = _parse_int_list(parser)
        operand, out_type, attrs = _parse_unary_tail(parser)
        op = cls(kind, operand, out_type, params)
        op.attributes.update(attrs)
        return op


@irdl_op_definition
class ConcatOp(IRDLOperation):
    """Concatenation along `dim`; the other dimensions must agree."""

    name = "ein.concat"
    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    dim = prop_def(IntegerAttr)
    traits = traits_def(Pure())

    def __init__(self, dim: int, inputs: Sequence[SSAValue], result_type: Attribute):
        super().__init__(
            operands=[list(inputs)], result_types=[result_type], properties={"dim": IntegerAttr(dim, i64)}
        )

    def verify_(self) -> None:
        dim = self.dim.value.data
        out = _dims(self.result.type, "ein.concat")
        if not self.inputs:
            raise VerifyException("ein.concat: needs at least one operand")
        if not 0 <= dim < len(out):
            raise VerifyException(f"ein.concat: dim {dim} out of range for rank {len(out)}")
        total = 0
        for i, v in enumerate(self.inputs):
            s = _dims(v.type, "ein.concat")
            if len(s) != len(out) or any(
                not same_size(a, b) for j, (a, b) in enumerate(zip(s, out)) if j != dim
            ):
                raise VerifyException(f"ein.concat: operand {i} shape {s} does not fit result {out}")
            if v.type.get_element_type() != self.result.type.get_element_type():
                raise VerifyException(f"ein.concat: operand {i} element type differs from the result")
            total += s[dim]
        if not same_size(total, out[dim]):
            raise VerifyException(f"ein.concat: sizes along dim {dim} add to {total}, result has {out[dim]}")

    def print(self, printer: Printer) -> None:
        printer.print_string(f" dim {self.dim.value.data} (")
        printer.print_list(self.inputs, printer.print_operand)
        printer.print_string(")")
        printer.print_op_attributes(self.attributes)
        types = ", ".join(str(v.type) for v in self.inputs)
        printer.print_string(f" : ({types}) -> {self.result.type}")

    @classmethod
    def parse(cls, parser: Parser) -> ConcatOp:
        parser.parse_keyword("dim")
        dim = parser.parse_integer()
        operands = parser.parse_comma_separated_list(parser.Delimiter.PAREN, parser.parse_unresolved_operand)
        attrs = parser.parse_optional_attr_dict()
        resolved, result_type = _parse_operand_types(parser, operands, "ein.concat")
        op = cls(dim, resolved, result_type)
        op.attributes.update(attrs)
        return op


@irdl_op_definition
class GatherOp(IRDLOperation):
    """Elements of `table` at computed positions: embedding, index_select, gather, `x[idx]`.

    `index_map` has one entry per table dimension: `d<m>` reads it at result index m, `i<j>`
    at the value of index tensor j (broadcast to the result shape) there; a negative index
    counts from the end. `ein.gather %w [i0, d2] (%ids)` of a [128, 64] table with [2, 16, 1]
    ids is an embedding: `out[b, s, c] = w[ids[b, s, 0], c]`.
    """

    name = "ein.gather"
    table = operand_def(TensorType)
    indices = var_operand_def(TensorType)
    result = result_def(TensorType)
    index_map = prop_def(DenseArrayBase)
    traits = traits_def(Pure())

    def __init__(
        self, table: SSAValue, indices: Sequence[SSAValue], index_map: Sequence[int], result_type: Attribute
    ):
        super().__init__(
            operands=[table, list(indices)], result_types=[result_type],
            properties={"index_map": _int_array(index_map)},
        )  # fmt: skip

    @property
    def sources(self) -> tuple[int, ...]:
        """Per table dim: the result dim m (m >= 0) or the index tensor -1 - m (m < 0) it is read at."""
        return _ints(self.index_map)

    def verify_(self) -> None:
        table, out = _dims(self.table.type, "ein.gather"), _dims(self.result.type, "ein.gather")
        sources = self.sources
        if len(sources) != len(table):
            count = f"{len(sources)} entries for a rank-{len(table)} table"
            raise VerifyException(f"ein.gather: index map has {count}")
        for k, m in enumerate(sources):
            if m >= 0 and (
                m >= len(out) or is_symbolic(out[m]) or is_symbolic(table[k]) or out[m] > table[k]
            ):
                raise VerifyException(f"ein.gather: table dim {k} cannot be read at result dim {m} of {out}")
            if m < 0 and -1 - m >= len(self.indices):
                raise VerifyException(f"ein.gather: table dim {k} reads a missing index tensor {-1 - m}")
        for j, v in enumerate(self.indices):
            elem = v.type.get_element_type()
            if is_float(elem) or is_bool(elem):
                raise VerifyException(f"ein.gather: index tensor {j} must be an integer tensor, got {elem}")
            if not broadcasts_to(_dims(v.type, "ein.gather"), out):
                raise VerifyException(f"ein.gather: index tensor {j} does not broadcast to the result {out}")
        if self.table.type.get_element_type() != self.result.type.get_element_type():
            raise VerifyException("ein.gather: the result's element type must be the table's")

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.table)
        names = [f"d{m}" if m >= 0 else f"i{-1 - m}" for m in self.sources]
        printer.print_string(f" [{', '.join(names)}] (")
        printer.print_list(self.indices, printer.print_operand)
        printer.print_string(")")
        printer.print_op_attributes(self.attributes)
        types = ", ".join(str(v.type) for v in (self.table, *self.indices))
        printer.print_string(f" : ({types}) -> {self.result.type}")

    @classmethod
    def parse(cls, parser: Parser) -> GatherOp:
        table = parser.parse_unresolved_operand()

        def source() -> int:
            name = parser.parse_identifier("d<result dim> or i<index tensor>")
            if name[:1] not in ("d", "i") or not name[1:].isdigit():
                parser.raise_error(f"ein.gather: expected d<N> or i<N>, got {name!r}")
            return int(name[1:]) if name[0] == "d" else -1 - int(name[1:])

        index_map = parser.parse_comma_separated_list(parser.Delimiter.SQUARE, source)
        indices = parser.parse_comma_separated_list(parser.Delimiter.PAREN, parser.parse_unresolved_operand)
        attrs = parser.parse_optional_attr_dict()
        (table, *resolved), result_type = _parse_operand_types(parser, [table, *indices], "ein.gather")
        op = cls(table, resolved, index_map, result_type)
        op.attributes.update(attrs)
        return op


@irdl_op_definition
class ConstantOp(IRDLOperation):
    """A tensor filled with one scalar (splat); tensor-valued constants are arguments."""

    name = "ein.constant"
    value = prop_def(FloatAttr | IntegerAttr)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$value attr-dict `->` type($result)"

    def __init__(self, value: FloatAttr | IntegerAttr, result_type: Attribute):
        super().__init__(result_types=[result_type], properties={"value": value})

    def verify_(self) -> None:
        if self.value.type != self.result.type.get_element_type():
            raise VerifyException(
                f"ein.constant: value type {self.value.type} differs from result element type "
                f"{self.result.type.get_element_type()}"
            )


@irdl_op_definition
class IotaOp(IRDLOperation):
    """The index along `dim` at every position: iota(dim=1) of 2x3 is [[0,1,2],[0,1,2]]."""

    name = "ein.iota"
    result = result_def(TensorType)
    dim = prop_def(IntegerAttr)
    traits = traits_def(Pure())

    def __init__(self, dim: int, result_type: Attribute):
        super().__init__(result_types=[result_type], properties={"dim": IntegerAttr(dim, i64)})

    def verify_(self) -> None:
        rank = len(_dims(self.result.type, "ein.iota"))
        if not 0 <= self.dim.value.data < rank:
            raise VerifyException(f"ein.iota: dim {self.dim.value.data} out of range for rank {rank}")
        elem = self.result.type.get_element_type()
        if is_bool(elem):
            raise VerifyException("ein.iota: result must be an integer or float tensor, not i1")

    def print(self, printer: Printer) -> None:
        printer.print_string(f" dim {self.dim.value.data}")
        printer.print_op_attributes(self.attributes)
        printer.print_string(f" : {self.result.type}")

    @classmethod
    def parse(cls, parser: Parser) -> IotaOp:
        parser.parse_keyword("dim")
        dim = parser.parse_integer()
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        op = cls(dim, parser.parse_type())
        op.attributes.update(attrs)
        return op


Einsum = Dialect(
    "ein",
    [ContractOp, MapOp, YieldOp, ReduceOp, ScanOp, ViewOp, ConcatOp, GatherOp, ConstantOp, IotaOp],
    [],
)
