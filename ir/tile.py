"""The `tile` dialect: one GPU kernel per fused group, written over tiles of symbolic size.

A `tile.kernel` is a program instance's view of the work, as in Triton: it
reads its program id, builds index tiles (`tile.arange` plus scalar
arithmetic), loads tiles of its tensor arguments (masked at the edges),
computes with `tile.dot`, `tile.map` and `tile.reduce`, loops with `scf.for`,
and stores. Tile sizes are named parameters (`BLOCK_M`, ...) that the
autotuner binds; the launch grid is a list of expressions over them:

    tile.kernel "k0" kind "gemm" params ["BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"]
                grid ["cdiv(96, BLOCK_M) * cdiv(352, BLOCK_N)"] {
    ^bb0(%x: tensor<96x128xf16>, %w: tensor<352x128xf16>, %out: tensor<96x352xf16>):
      %pid = tile.program_id 0 : i32
      %bm = tile.param "BLOCK_M" : i32
      ...
      %a = tile.load %x[%rows, %ks] : (tensor<96x128xf16>, !tile.block<["BLOCK_M", "1"], i32>,
               !tile.block<["1", "BLOCK_K"], i32>) -> !tile.block<["BLOCK_M", "BLOCK_K"], f16>
      %acc2 = tile.dot %a, %b, %acc : ...
      tile.store %y, %out[%rows, %cols] : (...)
      tile.return
    }

Kernel arguments are global tensors; their strides are runtime arguments of
the generated kernel, so a view never needs a copy. Loads and stores take one
index per tensor dimension (a scalar or a tile); the index tiles broadcast
against each other and give the shape of the loaded tile; out-of-bounds
elements are masked off.
"""

from __future__ import annotations

from collections.abc import Sequence

from xdsl.dialects.builtin import (
    I64,
    ArrayAttr,
    FloatAttr,
    IntegerAttr,
    StringAttr,
    TensorType,
    i32,
    i64,
)
from xdsl.ir import Attribute, Dialect, ParametrizedAttribute, Region, SSAValue, TypeAttribute
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    ParsePropInAttrDict,
    irdl_attr_definition,
    irdl_op_definition,
    lazy_traits_def,
    operand_def,
    opt_prop_def,
    param_def,
    prop_def,
    region_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.traits import HasParent, IsolatedFromAbove, IsTerminator, Pure, SymbolOpInterface
from xdsl.utils.exceptions import VerifyException

from .dtypes import dims_of, parse_size, size_symbols, size_text
from .einsum import verify_scalar_body

KERNEL_KINDS = ("attention", "gemm", "pointwise", "reduction", "row", "scan")
REDUCE_KINDS = ("sum", "prod", "max", "min", "maxnum", "minnum")  # max/min propagate NaN, *num drop it
SCAN_KINDS = ("sum", "prod")


@irdl_attr_definition
class BlockType(ParametrizedAttribute, TypeAttribute):
    """A tile of values: dims are parameter names ("BLOCK_M") or literal sizes ("1")."""

    name = "tile.block"
    shape: ArrayAttr[StringAttr] = param_def(ArrayAttr[StringAttr])
    element_type: Attribute = param_def(Attribute)

    def __init__(self, shape: Sequence[str | int], element_type: Attribute):
        super().__init__(ArrayAttr([StringAttr(str(d)) for d in shape]), element_type)

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(d.data for d in self.shape.data)


def block_dims(t: Attribute) -> tuple[str, ...]:
    """Dims of a tile type; a scalar has none."""
    return t.dims if isinstance(t, BlockType) else ()


def element_type(t: Attribute) -> Attribute:
    return t.element_type if isinstance(t, BlockType) else t


def broadcast_dims(*shapes: Sequence[str]) -> tuple[str, ...] | None:
    """Broadcast symbolic tile shapes of equal rank (scalars broadcast to anything)."""
    ranked = [s for s in shapes if s]
    if not ranked:
        return ()
    if len({len(s) for s in ranked}) != 1:
        return None
    out = list(ranked[0])
    for s in ranked[1:]:
        for i, d in enumerate(s):
            if d == out[i] or d == "1":
                continue
            if out[i] != "1":
                return None
            out[i] = d
    return tuple(out)


@irdl_op_definition
class KernelOp(IRDLOperation):
    """One GPU kernel: tensor arguments, tunable `params`, launch `grid` expressions."""

    name = "tile.kernel"
    sym_name = prop_def(StringAttr)
    kind = prop_def(StringAttr)
    params = prop_def(ArrayAttr[StringAttr])
    grid = prop_def(ArrayAttr[StringAttr])
    body = region_def("single_block")
    traits = traits_def(IsolatedFromAbove(), SymbolOpInterface())

    assembly_format = "$sym_name `kind` $kind `params` $params `grid` $grid attr-dict-with-keyword $body"

    def __init__(
        self, name: str, kind: str, params: Sequence[str], grid: Sequence[str], body: Region
    ):
        super().__init__(
            properties={
                "sym_name": StringAttr(name),
                "kind": StringAttr(kind),
                "params": ArrayAttr([StringAttr(p) for p in params]),
                "grid": ArrayAttr([StringAttr(g) for g in grid]),
            },
            regions=[body],
        )

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.data for p in self.params.data)

    @property
    def grid_exprs(self) -> tuple[str, ...]:
        return tuple(g.data for g in self.grid.data)

    def verify_(self) -> None:
        if self.kind.data not in KERNEL_KINDS:
            raise VerifyException(f"tile.kernel: kind {self.kind.data!r} is not one of {KERNEL_KINDS}")
        if not 1 <= len(self.grid.data) <= 3:
            raise VerifyException("tile.kernel: grid needs one to three dimensions")
        for arg in self.body.block.args:
            if not isinstance(arg.type, TensorType):
                raise VerifyException(f"tile.kernel: argument type {arg.type} is not a tensor")
        if not isinstance(self.body.block.last_op, ReturnOp):
            raise VerifyException("tile.kernel: body must end with tile.return")
        known = set(self.param_names)
        for op in self.body.walk():
            if isinstance(op, ParamOp) and op.param.data not in known:
                raise VerifyException(f"tile.kernel: parameter {op.param.data!r} is not in params")
            for r in op.results:
                for d in block_dims(r.type):
                    if not d.isdigit() and d not in known:
                        raise VerifyException(f"tile.kernel: tile dim {d!r} is not a declared parameter")


@irdl_op_definition
class ReturnOp(IRDLOperation):
    name = "tile.return"
    traits = lazy_traits_def(lambda: (IsTerminator(), HasParent(KernelOp)))
    assembly_format = "attr-dict"


@irdl_op_definition
class ProgramIdOp(IRDLOperation):
    """This program's index along grid axis `axis`."""

    name = "tile.program_id"
    axis = prop_def(IntegerAttr[I64])
    result = result_def(i32)
    traits = traits_def(Pure())
    assembly_format = "$axis attr-dict `:` type($result)"

    def __init__(self, axis: int):
        super().__init__(properties={"axis": IntegerAttr(axis, i64)}, result_types=[i32])


@irdl_op_definition
class ParamOp(IRDLOperation):
    """The value of a tunable parameter (a compile-time constant of the kernel)."""

    name = "tile.param"
    param = prop_def(StringAttr)
    result = result_def(i32)
    traits = traits_def(Pure())
    assembly_format = "$param attr-dict `:` type($result)"

    def __init__(self, param: str):
        super().__init__(properties={"param": StringAttr(param)}, result_types=[i32])


@irdl_op_definition
class SizeOp(IRDLOperation):
    """A size of the kernel's tensors that is symbolic (`tensor<?x64xf32, ["s0"]>`): an integer
    expression over size symbols ("s0", "64*s0*s1"), which the kernel takes as runtime arguments
    (one per symbol) and the launch binds from its tensors' sizes."""

    name = "tile.size"
    size = prop_def(StringAttr)
    result = result_def(i32)
    traits = traits_def(Pure())
    assembly_format = "$size attr-dict `:` type($result)"

    def __init__(self, size: object):
        """`size`: a symbolic size (written by `dtypes.size_text`) or its text."""
        text = size if isinstance(size, str) else size_text(size)
        super().__init__(properties={"size": StringAttr(text)}, result_types=[i32])

    def verify_(self) -> None:
        try:
            parse_size(self.size.data)
        except ValueError as e:
            raise VerifyException(f"tile.size: {e}") from e


def size_symbol_names(kernel: KernelOp) -> tuple[str, ...]:
    """The size symbols of a kernel (its arguments' symbolic sizes and its `tile.size` ops), sorted by
    name: the runtime size arguments of the generated kernel, in order. Empty for a static kernel."""
    names: set[str] = set()
    for arg in kernel.body.block.args:
        names.update(str(s) for s in size_symbols(dims_of(arg.type)))
    for op in kernel.body.walk():
        if isinstance(op, SizeOp):
            names.update(str(s) for s in getattr(parse_size(op.size.data), "free_symbols", ()))
    return tuple(sorted(names, key=_symbol_order))


def _symbol_order(name: str) -> tuple:
    digits = name.lstrip("su")
    return (name[: len(name) - len(digits)], int(digits) if digits.isdigit() else -1, name)


@irdl_op_definition
class GroupedOrderOp(IRDLOperation):
    """Map a linear program id to (tile row, tile col) in groups of `group` rows (L2 reuse)."""

    name = "tile.grouped_order"
    pid = operand_def(i32)
    rows = operand_def(i32)
    cols = operand_def(i32)
    group = operand_def(i32)
    row = result_def(i32)
    col = result_def(i32)
    traits = traits_def(Pure())
    assembly_format = "$pid `,` $rows `,` $cols `,` $group attr-dict `:` type($row) `,` type($col)"

    def __init__(self, pid: SSAValue, rows: SSAValue, cols: SSAValue, group: SSAValue):
        super().__init__(operands=[pid, rows, cols, group], result_types=[i32, i32])


@irdl_op_definition
class ArangeOp(IRDLOperation):
    """The tile [0, 1, ..., size) with `size` a parameter name or a literal."""

    name = "tile.arange"
    result = result_def(BlockType)
    traits = traits_def(Pure())
    assembly_format = "attr-dict `:` type($result)"

    def __init__(self, size: str):
        super().__init__(result_types=[BlockType([size], i32)])

    def verify_(self) -> None:
        if len(self.result.type.dims) != 1 or self.result.type.element_type != i32:
            raise VerifyException("tile.arange: result must be a 1-d tile of i32")


@irdl_op_definition
class ExpandDimsOp(IRDLOperation):
    """Insert a size-1 dim at `axis` (Triton's x[:, None])."""

    name = "tile.expand_dims"
    input = operand_def(BlockType)
    axis = prop_def(IntegerAttr[I64])
    result = result_def(BlockType)
    traits = traits_def(Pure())
    assembly_format = "$input `axis` $axis attr-dict `:` type($input) `->` type($result)"

    def __init__(self, input: SSAValue, axis: int):
        dims = list(input.type.dims)
        dims.insert(axis, "1")
        super().__init__(
            operands=[input],
            properties={"axis": IntegerAttr(axis, i64)},
            result_types=[BlockType(dims, input.type.element_type)],
        )

    def verify_(self) -> None:
        dims = list(self.input.type.dims)
        dims.insert(self.axis.value.data, "1")
        if tuple(dims) != self.result.type.dims:
            raise VerifyException(f"tile.expand_dims: result dims should be {dims}")


@irdl_op_definition
class FullOp(IRDLOperation):
    """A tile filled with one scalar (e.g. a zero accumulator)."""

    name = "tile.full"
    value = prop_def(FloatAttr | IntegerAttr)
    result = result_def(BlockType)
    traits = traits_def(Pure())
    assembly_format = "$value attr-dict `:` type($result)"

    def __init__(self, value: FloatAttr | IntegerAttr, result_type: BlockType):
        super().__init__(properties={"value": value}, result_types=[result_type])

    def verify_(self) -> None:
        if self.value.type != self.result.type.element_type:
            raise VerifyException("tile.full: value type differs from the tile element type")


def _check_indices(op_name: str, tensor: SSAValue, indices: Sequence[SSAValue]) -> tuple[str, ...]:
    rank = len(tensor.type.get_shape())
    if len(indices) != rank:
        raise VerifyException(f"{op_name}: {rank}-d tensor needs {rank} indices, got {len(indices)}")
    for i in indices:
        if element_type(i.type) != i32:
            raise VerifyException(f"{op_name}: index of type {i.type} is not i32")
    dims = broadcast_dims(*(block_dims(i.type) for i in indices))
    if dims is None:
        raise VerifyException(f"{op_name}: index tiles do not broadcast together")
    return dims


@irdl_op_definition
class LoadOp(IRDLOperation):
    """Load the elements at the broadcast index tiles; out-of-bounds ones read `other`.

    With `block_at [%o0, %o1]` (one scalar per tensor dim) the lowering also
    states that the indices are exactly the dense block starting at those
    offsets, so a backend may read it with a tensor descriptor (TMA) where the
    tensor's layout allows; the indices stay for the masked pointer path.
    """

    name = "tile.load"
    tensor = operand_def(TensorType)
    indices = var_operand_def()
    block_offsets = var_operand_def(i32)
    other = opt_prop_def(FloatAttr | IntegerAttr)
    result = result_def(BlockType)
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(as_property=True),)

    def __init__(
        self, tensor: SSAValue, indices: Sequence[SSAValue], block_offsets: Sequence[SSAValue] = ()
    ):
        dims = broadcast_dims(*(block_dims(i.type) for i in indices)) or ()
        super().__init__(
            operands=[tensor, list(indices), list(block_offsets)],
            result_types=[BlockType(dims, tensor.type.get_element_type())],
        )

    def verify_(self) -> None:
        dims = _check_indices("tile.load", self.tensor, self.indices)
        if self.result.type.dims != dims:
            raise VerifyException(f"tile.load: result dims {self.result.type.dims} should be {dims}")
        if self.result.type.element_type != self.tensor.type.get_element_type():
            raise VerifyException("tile.load: result element type differs from the tensor's")
        if self.block_offsets and len(self.block_offsets) != len(self.indices):
            raise VerifyException("tile.load: block_at needs one offset per tensor dimension")

    def print(self, printer: Printer) -> None:
        printer.print_string(" ")
        printer.print_operand(self.tensor)
        printer.print_string("[")
        printer.print_list(self.indices, printer.print_operand)
        printer.print_string("]")
        if self.block_offsets:
            printer.print_string(" block_at [")
            printer.print_list(self.block_offsets, printer.print_operand)
            printer.print_string("]")
        printer.print_op_attributes(self.attributes)
        if self.other is not None:
            printer.print_string(" other ")
            printer.print_attribute(self.other)
        types = ", ".join(str(v.type) for v in [self.tensor, *self.indices])
        printer.print_string(f" : ({types}) -> {self.result.type}")

    @classmethod
    def parse(cls, parser: Parser) -> LoadOp:
        tensor = parser.parse_unresolved_operand()
        indices = parser.parse_comma_separated_list(parser.Delimiter.SQUARE, parser.parse_unresolved_operand)
        offsets = []
        if parser.parse_optional_keyword("block_at"):
            offsets = parser.parse_comma_separated_list(
                parser.Delimiter.SQUARE, parser.parse_unresolved_operand
            )
        attrs = parser.parse_optional_attr_dict()
        other = parser.parse_attribute() if parser.parse_optional_keyword("other") else None
        parser.parse_punctuation(":")
        types = parser.parse_comma_separated_list(parser.Delimiter.PAREN, parser.parse_type)
        parser.parse_punctuation("->")
        parser.parse_type()
        if len(types) != len(indices) + 1:
            parser.raise_error("tile.load: one type for the tensor and one per index")
        op = cls(
            parser.resolve_operand(tensor, types[0]),
            [parser.resolve_operand(i, t) for i, t in zip(indices, types[1:])],
            [parser.resolve_operand(o, i32) for o in offsets],
        )
        if other is not None:
            op.properties["other"] = other
        op.attributes.update(attrs)
        return op


@irdl_op_definition
class StoreOp(IRDLOperation):
    """Store a tile at the broadcast index tiles; out-of-bounds elements are skipped."""

    name = "tile.store"
    tensor = operand_def(TensorType)
    indices = var_operand_def()
    value = operand_def(BlockType)
    assembly_format = (
        "$value `,` $tensor `[` $indices `]` attr-dict `:` `(` type($value) `,` type($tensor) `,`"
        " type($indices) `)`"
    )

    def __init__(self, tensor: SSAValue, indices: Sequence[SSAValue], value: SSAValue):
        super().__init__(operands=[tensor, list(indices), value])

    def verify_(self) -> None:
        dims = _check_indices("tile.store", self.tensor, self.indices)
        if broadcast_dims(dims, self.value.type.dims) != dims:
            raise VerifyException(f"tile.store: value dims {self.value.type.dims} do not fit indices {dims}")
        if self.value.type.element_type != self.tensor.type.get_element_type():
            raise VerifyException("tile.store: value element type differs from the tensor's (cast first)")


@irdl_op_definition
class DotOp(IRDLOperation):
    """acc + a @ b on 2-d tiles, accumulating in f32 (`tf32` allows TF32 for f32 inputs)."""

    name = "tile.dot"
    a = operand_def(BlockType)
    b = operand_def(BlockType)
    acc = operand_def(BlockType)
    tf32 = opt_prop_def(StringAttr)
    result = result_def(BlockType)
    traits = traits_def(Pure())
    irdl_options = (ParsePropInAttrDict(),)
    assembly_format = (
        "$a `,` $b `,` $acc attr-dict `:` type($a) `,` type($b) `,` type($acc) `->` type($result)"
    )

    def __init__(self, a: SSAValue, b: SSAValue, acc: SSAValue, allow_tf32: bool = False):
        props = {"tf32": StringAttr("allowed")} if allow_tf32 else {}
        super().__init__(operands=[a, b, acc], result_types=[acc.type], properties=props)

    def verify_(self) -> None:
        (m, k), (k2, n) = self.a.type.dims, self.b.type.dims
        if k != k2 or self.acc.type.dims != (m, n) or self.result.type != self.acc.type:
            raise VerifyException(
                f"tile.dot: shapes {self.a.type.dims} x {self.b.type.dims} -> {self.acc.type.dims} "
                "do not chain"
            )
        if self.a.type.element_type != self.b.type.element_type:
            raise VerifyException("tile.dot: operands must have one element type")


@irdl_op_definition
class MapOp(IRDLOperation):
    """Elementwise over broadcast tiles and scalars, with a scalar `arith`/`math` body."""

    name = "tile.map"
    inputs = var_operand_def()
    result = result_def(BlockType)
    body = region_def("single_block")
    traits = traits_def(IsolatedFromAbove(), Pure())
    assembly_format = "`(` $inputs `)` attr-dict `:` `(` type($inputs) `)` `->` type($result) $body"

    def __init__(self, inputs: Sequence[SSAValue], result_type: BlockType, body: Region):
        super().__init__(operands=[list(inputs)], result_types=[result_type], regions=[body])

    def verify_(self) -> None:
        dims = broadcast_dims(*(block_dims(v.type) for v in self.inputs))
        if dims is None or dims != self.result.type.dims:
            raise VerifyException(
                f"tile.map: operand tiles broadcast to {dims}, result has {self.result.type.dims}"
            )
        verify_scalar_body(
            "tile.map", self.body.block, [element_type(v.type) for v in self.inputs],
            self.result.type.element_type, YieldOp,
        )  # fmt: skip


@irdl_op_definition
class YieldOp(IRDLOperation):
    """Ends a `tile.map` body (each dialect owns its terminator, as scf.yield and linalg.yield do)."""

    name = "tile.yield"
    value = operand_def()
    traits = lazy_traits_def(lambda: (IsTerminator(), HasParent(MapOp), Pure()))
    assembly_format = "$value attr-dict `:` type($value)"

    def __init__(self, value: SSAValue):
        super().__init__(operands=[value])


@irdl_op_definition
class ReduceOp(IRDLOperation):
    """Reduce a tile along `axis` with sum, max or min (the axis is removed).

    `max`/`min` propagate NaN like torch.amax; `maxnum`/`minnum` ignore it (IEEE maxNum), for
    kernels whose result is NaN anyway when an input is, where the check would cost a pass.
    """

    name = "tile.reduce"
    input = operand_def(BlockType)
    axis = prop_def(IntegerAttr[I64])
    kind = prop_def(StringAttr)
    result = result_def(BlockType)
    traits = traits_def(Pure())
    assembly_format = "$kind $input `axis` $axis attr-dict `:` type($input) `->` type($result)"

    def __init__(self, kind: str, input: SSAValue, axis: int):
        dims = [d for i, d in enumerate(input.type.dims) if i != axis]
        super().__init__(
            operands=[input],
            properties={"kind": StringAttr(kind), "axis": IntegerAttr(axis, i64)},
            result_types=[BlockType(dims, input.type.element_type)],
        )

    def verify_(self) -> None:
        if self.kind.data not in REDUCE_KINDS:
            raise VerifyException(f"tile.reduce: kind {self.kind.data!r} is not one of {REDUCE_KINDS}")
        axis, dims = self.axis.value.data, self.input.type.dims
        if not 0 <= axis < len(dims):
            raise VerifyException(f"tile.reduce: axis {axis} out of range for {dims}")
        if self.result.type.dims != tuple(d for i, d in enumerate(dims) if i != axis):
            raise VerifyException("tile.reduce: result must drop the reduced axis")


@irdl_op_definition
class ScanOp(IRDLOperation):
    """A running sum or product of a tile along `axis` (the shape is kept); `reverse` = 1 runs it
    from the end of the axis."""

    name = "tile.scan"
    input = operand_def(BlockType)
    axis = prop_def(IntegerAttr[I64])
    reverse = prop_def(IntegerAttr[I64])
    kind = prop_def(StringAttr)
    result = result_def(BlockType)
    traits = traits_def(Pure())
    assembly_format = (
        "$kind $input `axis` $axis `reverse` $reverse attr-dict `:` type($input) `->` type($result)"
    )

    def __init__(self, kind: str, input: SSAValue, axis: int, reverse: bool = False):
        super().__init__(
            operands=[input],
            properties={
                "kind": StringAttr(kind), "axis": IntegerAttr(axis, i64),
                "reverse": IntegerAttr(int(reverse), i64),
            },
            result_types=[input.type],
        )  # fmt: skip

    def verify_(self) -> None:
        if self.kind.data not in SCAN_KINDS:
            raise VerifyException(f"tile.scan: kind {self.kind.data!r} is not one of {SCAN_KINDS}")
        axis, dims = self.axis.value.data, self.input.type.dims
        if not 0 <= axis < len(dims):
            raise VerifyException(f"tile.scan: axis {axis} out of range for {dims}")
        if self.result.type != self.input.type:
            raise VerifyException("tile.scan: the result must have the input's type")


Tile = Dialect(
    "tile",
    [
        KernelOp, ReturnOp, ProgramIdOp, ParamOp, SizeOp, GroupedOrderOp, ArangeOp, ExpandDimsOp, FullOp,
        LoadOp, StoreOp, DotOp, MapOp, YieldOp, ReduceOp, ScanOp,
    ],
    [BlockType],
)  # fmt: skip
