"""Triton source from `tile` kernels: one readable `@triton.jit` function per kernel.

Each tensor argument of the kernel becomes a pointer plus one stride per
dimension (strides are runtime values, so a view is read in place); each tile
parameter becomes a `tl.constexpr` argument; tensor shapes are static and
appear as literals in the masks. Every SSA value becomes a Python variable
named after its name hint, except constants and parameters, which are written
in place. A `tile.map` body is written inline over its operands' variables:
Triton broadcasting makes the scalar body work on tiles unchanged.

Two Triton facts shape the output. Integer `//` and `%` truncate on Triton
tensors (as `arith.divsi`/`remsi` do) but floor on Python ints, and
constants, parameters and (under the interpreter) loop indices are Python
ints; so the writer tracks which values may be Python numbers and a lower
bound of integer values, and writes a plain `//` only where both readings
agree. Triton's math functions take f32/f64 only, so 16-bit floats are
computed in f32, as PyTorch does.
"""

from __future__ import annotations

import ast
import builtins
import collections
import keyword
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from xdsl.dialects import arith, scf
from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    bf16,
    f32,
    i1,
    i32,
)
from xdsl.ir import Attribute, Block, BlockArgument, Operation, OpResult, SSAValue

from ...ir import tile
from ...ir.builder import is_approx_reciprocal
from ...ir.dtypes import Dim, dims_of, is_symbolic, parse_size, size_text, to_torch_dtype
from ..naming import fresh_name

EMITTER_VERSION = 7  # 2: assignments nothing reads are left out; 3: expm1/log1p formulas divide by no 0;
# 4: in the interpreter, bf16 compares in f32 and integers become bf16 through f32; 5: in the
# interpreter, a mask over a block of pointers has the block's shape; 6: in the interpreter, a
# comparison of scalars is made a bool; 7: int64 offsets in kernels over 2**31 elements or more

# Triton computes indices in int32 (program ids, aranges, strides below 2**31 are specialized int32):
# a kernel over a tensor of this many elements or more computes its element offsets in int64 instead
# (its program ids and every term of an address cast), as Inductor does past 2**31. The margin below
# 2**31: a grid's last block of indices runs past the last element before its mask stops it.
WIDE_INDEX_ELEMENTS = 2**31 - 2**24


def needs_wide_index(shapes: Sequence[Sequence[Dim]]) -> bool:
    """Whether a kernel over tensors of `shapes` needs int64 offsets (`WIDE_INDEX_ELEMENTS`). A
    symbolic size is checked at launch instead (`launcher.check_index_range`)."""
    return any(
        not any(is_symbolic(d) for d in shape) and math.prod(shape) >= WIDE_INDEX_ELEMENTS for shape in shapes
    )


_FLOAT_DTYPES = {
    Float16Type: "float16",
    BFloat16Type: "bfloat16",
    Float32Type: "float32",
    Float64Type: "float64",
}
# names the generated module uses; builtins too, so that `range` and `float` keep their meaning
_RESERVED = {
    "_multiply",
    "tl",
    "triton",
    "libdevice",
    "GRID",
    "PARAMS",
    "TENSOR_SHAPES",
    "TENSOR_DTYPES",
    *dir(builtins),
}


@dataclass(frozen=True)
class TritonOptions:
    """How kernels are written for Triton; `key()` names these choices in cache keys.

    Both fields work around Triton's interpreter (3.6 and 3.9), which
    multiplies bf16 dot operands as integers (triton-lang/triton#11584) and
    truncates f32 -> bf16 conversions (and flushes subnormals) instead of
    rounding them to nearest even: `upcast_bf16_dots` feeds tl.dot f32
    copies of bf16 operands, `round_bf16_casts` rounds the bits in integer
    arithmetic and reinterprets them (integers go through f32 first, as
    PyTorch converts them), and compares bf16 values in f32 (the interpreter
    compares their bits, so -inf > 0).
    """

    upcast_bf16_dots: bool = False
    round_bf16_casts: bool = False
    # tanh, expm1 and log1p from CUDA's libdevice; the interpreter has none, so there they are formulas
    # of exp and log. The formulas keep several full tiles alive at once: as a GEMM epilogue (GPT-2's
    # tanh GELU on a 128x256 tile) they spilled 752 registers and took 245 us against 90 for libdevice.
    libdevice: bool = True
    # an f32 division marked `fastmath<afn>` (`ScalarBuilder.approx_reciprocal`: tilefuse's own
    # formulas, 1 / y with y >= 1) as PTX's approximate reciprocal, `rcp.approx.ftz.f32`: one
    # instruction and 1 ulp, where Triton's `/` makes `div.full.f32` (half a dozen, 2 ulp). The
    # interpreter divides.
    approx_reciprocal: bool = True
    # f32 dots where PyTorch's matmul precision is "highest". "auto": 3xTF32 in GEMM kernels (measured
    # more accurate than SGEMM against float64, and faster, on the H200: issue 12; the GPU test
    # test_fp32_at_highest_precision_is_as_accurate_as_sgemm keeps it so), exact FMA math ("ieee")
    # elsewhere: an attention kernel with 3xTF32 f32 dots faulted on the H200 (Triton 3.6).
    # TILEFUSE_F32_DOTS=ieee|tf32x3 forces one for every kernel.
    exact_f32_dots: str = field(default_factory=lambda: os.environ.get("TILEFUSE_F32_DOTS", "auto"))
    # the interpreter types `scalar_cond & block_cond` int32 (a 0-d index a block-typed IR value stands
    # for: a gather at one loaded position), which a mask refuses; `(...) != 0` makes it int1 again
    bool_masks: bool = False
    # a division of the tile's indices by a constant its size divides, computed once from the tile's
    # start (`_narrow_divisions`); TILEFUSE_NARROW_DIVISIONS=0 keeps them per element (to measure)
    narrow_divisions: bool = field(default_factory=lambda: os.environ.get("TILEFUSE_NARROW_DIVISIONS") != "0")

    @classmethod
    def for_interpreter(cls) -> TritonOptions:
        """The options for kernels that run in Triton's interpreter (CPU tensors)."""
        interpreter = dict(
            upcast_bf16_dots=True,
            round_bf16_casts=True,
            libdevice=False,
            bool_masks=True,
            approx_reciprocal=False,
        )
        return cls(exact_f32_dots="ieee", **interpreter)

    def key(self) -> str:
        flags = f"upcast_bf16_dots={int(self.upcast_bf16_dots)},round_bf16_casts={int(self.round_bf16_casts)}"
        flags += ",libdevice=1" if self.libdevice else ""
        flags += ",bool_masks=1" if self.bool_masks else ""
        flags += ",rcp=1" if self.approx_reciprocal else ""
        flags += ",narrow=1" if self.narrow_divisions else ""
        return f"triton-emit-v{EMITTER_VERSION}:{flags},f32={self.exact_f32_dots}"


class EmitError(Exception):
    """The kernel uses an op or a type that this backend cannot write in Triton."""


def python_identifier(name: str) -> str:
    """`name` made a valid Python identifier that is not a keyword (the kernel's function name)."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "_"
    return f"_{ident}" if ident[0].isdigit() or keyword.iskeyword(ident) else ident


def dtype_name(t: Attribute) -> str:
    """The Triton dtype name of an MLIR element type ("float32", "int1"); integers are signed."""
    if type(t) in _FLOAT_DTYPES:
        return _FLOAT_DTYPES[type(t)]
    if isinstance(t, IntegerType) and t.width.data in (1, 8, 16, 32, 64):
        return f"int{t.width.data}"
    raise EmitError(f"no Triton dtype for {t}")


def _tl(t: Attribute) -> str:
    return f"tl.{dtype_name(t)}"


def _bitwidth(t: Attribute) -> int:
    return t.width.data if isinstance(t, IntegerType) else t.bitwidth


def _is_float(t: Attribute) -> bool:
    return type(t) in _FLOAT_DTYPES


def _literal(attr: FloatAttr | IntegerAttr) -> str:
    """The attribute's value as Python source (`float("-inf")` for non-finite floats)."""
    value = attr.value.data
    if attr.type == i1:
        return str(bool(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f'float("{value}")'
    return str(value)


def _dims(dims: Sequence[str]) -> str:
    return f"[{', '.join(dims)}]"


def _is_name(expr: str) -> bool:
    return expr.isidentifier()


def _reaching_arguments(value: SSAValue) -> set[BlockArgument]:
    """The block arguments of a map body that `value` is computed from."""
    stack, seen, found = [value], set(), set()
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        if isinstance(v, BlockArgument):
            found.add(v)
        else:
            stack.extend(v.owner.operands)
    return found


def _yield_spans_result(op: tile.MapOp) -> bool:
    """Whether the yielded value is computed from operands that already span the result's dims."""
    reached = _reaching_arguments(op.body.block.last_op.value)
    dims = tile.broadcast_dims(*(tile.block_dims(op.inputs[a.index].type) for a in reached))
    return dims == op.result.type.dims


def _overwrites_carried(body: Block, carried: BlockArgument, yielded: SSAValue) -> bool:
    """Whether a loop body may assign `yielded` straight to `carried`'s variable (`acc = tl.dot(a, b, acc)`).

    True when `yielded` is made in the body, read only by the yield, and no op
    after it reads `carried`'s old value.
    """
    if not isinstance(yielded, OpResult) or yielded.owner.parent_block() is not body:
        return False
    if not yielded.has_one_use():
        return False
    ops = list(body.ops)
    made_at = ops.index(yielded.owner)
    return all(ops.index(body.find_ancestor_op_in_block(use.operation)) <= made_at for use in carried.uses)


def _upper_bound(
    op: Operation, lower: dict[SSAValue, int], upper: dict[SSAValue, int], constants: dict[SSAValue, int]
) -> int | None:
    """An exclusive upper bound of a non-negative integer op's result (None: unknown): `i % c` is
    below c, and sums and products of bounded non-negative indices stay bounded. A load's index
    below its dim's size needs no mask for it (an unraveled index's inner dims never leave them)."""
    ops = op.operands
    if any(lower.get(v, -1) < 0 for v in ops):
        return None
    hi = [upper.get(v, constants[v] + 1 if v in constants else None) for v in ops]
    if op.name == "arith.remsi" and ops[1] in constants and constants[ops[1]] >= 1:
        return constants[ops[1]] if hi[0] is None else min(hi[0], constants[ops[1]])
    if None in hi or len(hi) != 2:
        return None
    if op.name == "arith.muli":
        return (hi[0] - 1) * (hi[1] - 1) + 1
    if op.name == "arith.addi":
        return hi[0] + hi[1] - 1
    return None


def _lower_bound(op: Operation, lower: dict[SSAValue, int], constants: dict[SSAValue, int]) -> int | None:
    """A lower bound of an integer op's result, from its operands' bounds (None: unknown)."""
    lo = [lower.get(v) for v in op.operands]
    if op.name == "arith.extsi":
        return lo[0]
    if op.name == "arith.extui":
        return max(lo[0], 0) if lo[0] is not None else 0
    if op.name == "arith.select":
        return None if None in lo[1:] else min(lo[1:])
    if len(lo) != 2:
        return None
    a, b = lo
    if op.name == "arith.subi":
        c = constants.get(op.operands[1])
        return None if a is None or c is None else a - c
    if op.name == "arith.maxsi":
        return max((x for x in lo if x is not None), default=None)
    if a is None or b is None:
        return None
    if op.name == "arith.addi":
        return a + b
    if op.name == "arith.minsi":
        return min(a, b)
    if op.name == "arith.muli" and a >= 0 and b >= 0:
        return a * b
    if op.name in ("arith.divsi", "arith.remsi") and a >= 0 and b >= 1:
        return 0
    return None


_OPERATORS = {
    "arith.addf": "+", "arith.addi": "+", "arith.subf": "-", "arith.subi": "-", "arith.mulf": "*",
    "arith.muli": "*", "arith.divf": "/", "arith.andi": "&", "arith.ori": "|", "arith.xori": "^",
}  # fmt: skip
_RCP_APPROX = 'tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r"'


def _is_one(value: SSAValue) -> bool:
    """Whether `value` is the constant 1.0."""
    owner = value.owner
    return (
        isinstance(owner, arith.ConstantOp)
        and isinstance(owner.value, FloatAttr)
        and owner.value.value.data == 1.0
    )


_CALLS = {
    "arith.maximumf": "tl.maximum({}, {}, propagate_nan=tl.PropagateNan.ALL)",
    "arith.minimumf": "tl.minimum({}, {}, propagate_nan=tl.PropagateNan.ALL)",
    "arith.maxnumf": "tl.maximum({}, {})", "arith.minnumf": "tl.minimum({}, {})",
    "arith.maxsi": "tl.maximum({}, {})", "arith.minsi": "tl.minimum({}, {})",
    "arith.select": "tl.where({}, {}, {})", "math.absi": "tl.abs({})",
}  # fmt: skip
_COMPARISONS = {
    "olt": "<", "ole": "<=", "ogt": ">", "oge": ">=", "oeq": "==", "une": "!=",
    "slt": "<", "sle": "<=", "sgt": ">", "sge": ">=", "eq": "==", "ne": "!=",
    "ult": "<", "ule": "<=", "ugt": ">", "uge": ">=",  # on i1 only (bools), which Triton compares unsigned
}  # fmt: skip
_MATH_FUNCTIONS = {
    "math.exp": "tl.exp", "math.exp2": "tl.exp2", "math.log": "tl.log", "math.log2": "tl.log2",
    "math.sqrt": "tl.sqrt_rn", "math.rsqrt": "tl.rsqrt", "math.erf": "tl.erf", "math.absf": "tl.abs",
    "math.floor": "tl.floor", "math.ceil": "tl.ceil", "math.sin": "tl.sin", "math.cos": "tl.cos",
}  # fmt: skip
_CASTS = (
    "arith.extf", "arith.truncf", "arith.sitofp", "arith.uitofp", "arith.fptosi",
    "arith.extsi", "arith.extui", "arith.trunci",
)  # fmt: skip
_TERMINATORS = (tile.ReturnOp, tile.YieldOp, scf.YieldOp)


class _KernelWriter:
    """Writes one kernel's Triton function, op by op, tracking a Python expression per SSA value."""

    def __init__(self, kernel: tile.KernelOp, options: TritonOptions):
        self.kernel = kernel
        self.options = options
        self.function = python_identifier(kernel.sym_name.data)
        self.lines: list[str] = []
        self.depth = 1
        self.exprs: dict[SSAValue, str] = {}
        self.hints: dict[SSAValue, str] = {}
        self.forced: dict[SSAValue, str] = {}  # variables chosen in advance (loop-carried names)
        self.python_level: set[SSAValue] = set()  # values that may be Python numbers at run time
        self.lower: dict[SSAValue, int] = {}
        self.upper: dict[SSAValue, int] = {}  # exclusive upper bounds of non-negative indices
        self.int_constants: dict[SSAValue, int] = {}
        # size symbols: the kernel's runtime size arguments, named as in its types ("s0")
        self.symbols = tile.size_symbol_names(kernel)
        self.taken = set(keyword.kwlist) | _RESERVED | set(kernel.param_names) | {self.function}
        self.taken |= set(self.symbols)
        self.tensors: dict[SSAValue, tuple[str, tuple[Dim, ...]]] = {}
        for i, arg in enumerate(kernel.body.block.args):
            base = self._fresh(arg.name_hint or f"arg{i}")
            shape = dims_of(arg.type)
            self.taken.update({f"{base}_ptr", *(f"{base}_s{d}" for d in range(len(shape)))})
            self.tensors[arg] = (base, shape)
        self.taken.update({TMA_FLAG, WS_FLAG})
        self.wide = needs_wide_index([shape for _, shape in self.tensors.values()])
        self.descriptors = self._descriptor_blocks()
        self.taken.update(tail_flag(i) for i in range(len(self.tensors)))
        self.taken.update(
            merge_flag(i, d, e)
            for i, (_, shape) in enumerate(self.tensors.values())
            for d in range(len(shape))
            for e in range(d + 1, len(shape))
        )
        # (tensor, first dim, last dim) runs of dims some access reads through one unraveled flat index
        # (`_merged_runs`): each takes a MERGE switch, set by the launcher where the layout nests them
        self.merged: dict[tuple[int, int, int], None] = {}
        # GEMM operand loads whose row tail may be read (ROW_TAILS), and each such tensor's bound's name
        self.tail_loads = self._row_tail_loads()
        tailed = dict.fromkeys(op.tensor for op in self.tail_loads)
        self.tail_bounds = {t: self._fresh(f"{self.tensors[t][0]}_tail") for t in tailed}
        # a GEMM that reads through descriptors loops over its output tiles in a `tl.range` that may be
        # warp-specialized (WS_FLAG): set once that loop is written
        self.warp_specialized = False
        self.uses_libdevice = False
        self.uses_multiply = False  # a product reduction combines with the module's `_multiply`
        # divisions of the tile's indices computed once from its start (`_narrow_divisions`)
        self.narrow = _narrow_divisions(kernel) if options.narrow_divisions else {}

    def _descriptor_blocks(self) -> dict[SSAValue, tuple[str, tuple[str, ...]]]:
        """Tensors every load of which is a dense block (`block_at`) of one shape: name their descriptor.

        The block shape is, per tensor dim, the tile dim its index tile varies along.
        """
        blocks: dict[SSAValue, set[tuple[str, ...]]] = {}
        plain: set[SSAValue] = set()
        for op in self.kernel.walk():
            if isinstance(op, tile.LoadOp):
                if not op.block_offsets or len(op.indices) != 2:
                    plain.add(op.tensor)
                    continue
                shape = tuple(_varying_dim(tile.block_dims(i.type)) for i in op.indices)
                blocks.setdefault(op.tensor, set()).add(shape)
        return {
            t: (self._fresh(f"{self.tensors[t][0]}_desc"), next(iter(shapes)))
            for t, shapes in blocks.items()
            if len(shapes) == 1 and t not in plain and all(d is not None for d in next(iter(shapes)))
            and not self._symbolic(t)
        }

    def _symbolic(self, tensor: SSAValue) -> bool:
        """Whether a tensor argument has a symbolic size (its layout is not known when writing)."""
        return any(map(is_symbolic, self.tensors[tensor][1]))

    def _row_tail_loads(self) -> set[tile.LoadOp]:
        """Operand loads of a GEMM whose tensor's last dim is the dot's M (`a`'s rows) or N (`b`'s
        columns), at least PAD_MIN_ROW and not a multiple of ROW_TAIL elements: where the launcher
        finds the rows padded (`launcher.row_tails_fit`, the switch `tail_flag`), they are read to the
        rounded extent, so that the mask is constant over 16 bytes and the loads are vectors (GPT-2's
        LM-head weight gradient reads the log-softmax gradient [2048, 50257] along its rows as M:
        2-byte loads made it 2.3x slower than cuBLAS on the padded shape). The extra elements only
        reach output rows or columns beyond the output, which the stores mask; a kernel with a
        reduction (an epilogue summing over the output's columns) or more than one dot keeps its
        exact masks. A kernel of TAIL_SELECT_KINDS takes the tail in every such load and selects
        the load's `other` over it in registers, so what the padding holds never reaches a value."""
        ops = list(self.kernel.walk())
        if self.kernel.kind.data in TAIL_SELECT_KINDS:
            return {op for op in ops if isinstance(op, tile.LoadOp) and self._tailable(op)}
        if self.kernel.kind.data != "gemm":
            return set()
        dots = [op for op in ops if isinstance(op, tile.DotOp)]
        if len(dots) != 1 or any(isinstance(op, (tile.ReduceOp, tile.ScanOp)) for op in ops):
            return set()
        found = set()
        for operand, axis in ((dots[0].a, 0), (dots[0].b, 1)):
            load = operand.owner
            if not isinstance(load, tile.LoadOp) or {u.operation for u in operand.uses} != {dots[0]}:
                continue
            if self._tailable(load) and _varying_axis(tile.block_dims(load.indices[-1].type)) == axis:
                found.add(load)
        return found

    def _tailable(self, load: tile.LoadOp) -> bool:
        """Whether `load` reads a tile along its tensor's last dim, one of at least PAD_MIN_ROW elements
        that is not a multiple of ROW_TAIL (rows that may be padded)."""
        shape = self.tensors[load.tensor][1]
        if self.symbols or len(shape) < 2:  # (a kernel of symbolic sizes takes no launch switch)
            return False
        if shape[-1] % ROW_TAIL == 0 or shape[-1] < PAD_MIN_ROW:
            return False
        return isinstance(load.indices[-1].type, tile.BlockType)

    # names and lines

    def _fresh(self, base: str | None) -> str:
        return fresh_name(base, self.taken, python_identifier)

    def _hint(self, v: SSAValue) -> str | None:
        return self.hints.get(v) or v.name_hint

    def _write(self, line: str) -> None:
        self.lines.append("    " * self.depth + line)

    def _temp(self, name: str, expr: str) -> str:
        var = self._fresh(name)
        self._write(f"{var} = {expr}")
        return var

    def _name_for(self, v: SSAValue) -> str:
        return self.forced.pop(v, None) or self._fresh(self._hint(v))

    def _define(self, v: SSAValue, expr: str, python_level: bool = False, name: str | None = None) -> str:
        var = name or self._name_for(v)
        self._write(f"{var} = {expr}")
        self._bind(v, var, python_level)
        return var

    def _bind(self, v: SSAValue, expr: str, python_level: bool) -> None:
        self.exprs[v] = expr
        if python_level:
            self.python_level.add(v)

    def _alias(self, v: SSAValue, source: SSAValue) -> None:
        self._bind(v, self.exprs[source], source in self.python_level)
        if source in self.lower:
            self.lower[v] = self.lower[source]
        if source in self.upper:
            self.upper[v] = self.upper[source]
        if source in self.int_constants:
            self.int_constants[v] = self.int_constants[source]

    def _e(self, v: SSAValue) -> str:
        return self.exprs[v]

    def _tensor(self, v: SSAValue) -> str:
        """`v` as a Triton tensor: Python numbers have no `.to()` and compute in double precision."""
        if v in self.python_level:
            return f"tl.full([], {self.exprs[v]}, {_tl(tile.element_type(v.type))})"
        return self.exprs[v]

    def _atom(self, expr: str, name: str) -> str:
        """`expr` as a variable, for formulas that read it several times."""
        return expr if _is_name(expr) else self._temp(name, expr)

    # regions

    def body(self) -> list[str]:
        if self.descriptors:
            self._write(f"if {TMA_FLAG}:  # the launcher checked layout and alignment for TMA")
            for t, (name, block) in self.descriptors.items():
                base, shape = self.tensors[t]
                strides = ", ".join(f"{base}_s{d}" for d in range(len(shape)))
                self._write(
                    f"    {name} = tl.make_tensor_descriptor({base}_ptr, shape={list(shape)}, "
                    f"strides=[{strides}], block_shape=[{', '.join(block)}])"
                )
        for t, name in self.tail_bounds.items():
            size, flag = self.tensors[t][1][-1], tail_flag(list(self.tensors).index(t))
            self._write(f"{name} = {row_tail(size)} if {flag} else {size}  # the launcher found rows padded")
        self._ops(self.kernel.body.block)
        return _drop_unused(self.lines) or ["    pass"]

    def _ops(self, block: Block) -> None:
        for op in block.ops:
            if isinstance(op, _TERMINATORS):
                continue
            handler = _HANDLERS.get(op.name)
            if handler is None:
                raise EmitError(f"no Triton lowering for {op.name}")
            handler(self, op)

    def _map(self, op: tile.MapOp) -> None:
        block = op.body.block
        for arg, operand in zip(block.args, op.inputs):
            self._alias(arg, operand)
        yielded = block.last_op.value
        spans = _yield_spans_result(op)
        if spans and not isinstance(yielded, BlockArgument):  # the body's last value takes the result's name
            if op.result in self.forced:
                self.forced[yielded] = self.forced.pop(op.result)
            elif self._hint(op.result):
                self.hints[yielded] = self._hint(op.result)
        self._ops(block)
        if spans and op.result not in self.forced:
            self._alias(op.result, yielded)
        elif spans:
            self._define(op.result, self._e(yielded))
        else:  # a body that ignores some operands still yields a full tile
            zeros = f"tl.full({_dims(op.result.type.dims)}, 0, {_tl(op.result.type.element_type)})"
            self._define(op.result, f"{self._e(yielded)} + {zeros}")

    def _for(self, op: scf.ForOp) -> None:
        body = op.body.block
        iv, carried = body.args[0], body.args[1:]
        yielded = body.last_op.operands
        names = []
        for arg, init, result, value in zip(carried, op.iter_args, op.res, yielded):
            # Triton types a loop-carried variable by its first value: make it a tensor from the start
            name = self._define(
                arg, self._tensor(init), name=self._fresh(self._hint(result) or self._hint(arg))
            )
            self._bind(result, name, False)
            names.append(name)
            if _overwrites_carried(body, arg, value):
                self.forced[value] = name
        index = self._fresh(self._hint(iv))
        self._bind(iv, index, True)  # the interpreter runs the loop in Python
        lb, step = self.lower.get(op.lb), self.lower.get(op.step)
        if lb is not None and step is not None and step >= 1:
            self.lower[iv] = lb
        bounds = ", ".join(self._e(v) for v in (op.lb, op.ub, op.step))
        tile_loop = self.kernel.kind.data == "gemm" and self.descriptors and self.depth == 1
        if tile_loop and not self.warp_specialized:
            # the persistent loop over output tiles: with WS_FLAG (TMA loads only), Triton splits it into
            # a producer warp issuing the loads and consumer warps running the dots and the epilogue
            self.warp_specialized = True
            self._write(f"for {index} in tl.range({bounds}, flatten={WS_FLAG}, warp_specialize={WS_FLAG}):")
        else:
            self._write(f"for {index} in range({bounds}):")
        self.depth += 1
        start = len(self.lines)
        self._ops(body)
        for value in yielded:  # a value bound without a line of its own never took its forced name
            self.forced.pop(value, None)
        updates = [(n, self._e(v)) for n, v in zip(names, yielded) if self._e(v) != n]
        if updates:
            self._write(f"{', '.join(n for n, _ in updates)} = {', '.join(e for _, e in updates)}")
        if len(self.lines) == start:
            self._write("pass")
        self.depth -= 1

    # tile ops

    def _program_id(self, op: tile.ProgramIdOp) -> None:
        pid = f"tl.program_id({op.axis.value.data})"
        self._define(op.result, f"{pid}.to(tl.int64)" if self.wide else pid)
        self.lower[op.result] = 0

    def _param(self, op: tile.ParamOp) -> None:
        self._bind(op.result, op.param.data, True)
        self.lower[op.result] = 1  # tile sizes and group sizes are positive

    def _size(self, op: tile.SizeOp) -> None:
        try:
            text = size_text(parse_size(op.size.data))
        except ValueError as e:
            raise EmitError(str(e)) from None
        self._bind(op.result, text if text.isidentifier() or text.isdigit() else f"({text})", True)
        self.lower[op.result] = 1  # sizes are positive

    def _grouped_order(self, op: tile.GroupedOrderOp) -> None:
        pid, rows, cols, group = (self._e(v) for v in op.operands)
        # Triton's matmul tutorial: `group` tile rows sweep the columns together, so tiles share L2
        per_group = self._temp("tiles_per_group", f"{group} * {cols}")
        first = self._temp("first_row", f"({pid} // {per_group}) * {group}")
        rows_here = self._temp("group_rows", f"tl.minimum({rows} - {first}, {group})")
        self._define(op.row, f"{first} + {pid} % {rows_here}")
        self._define(op.col, f"({pid} % {per_group}) // {rows_here}")
        self.lower[op.row] = self.lower[op.col] = 0

    def _arange(self, op: tile.ArangeOp) -> None:
        self._define(op.result, f"tl.arange(0, {op.result.type.dims[0]})")
        self.lower[op.result] = 0

    def _expand_dims(self, op: tile.ExpandDimsOp) -> None:
        index = [":"] * len(op.input.type.dims)
        index.insert(op.axis.value.data, "None")
        self._define(op.result, f"{self._e(op.input)}[{', '.join(index)}]")
        if op.input in self.lower:
            self.lower[op.result] = self.lower[op.input]
        if op.input in self.upper:
            self.upper[op.result] = self.upper[op.input]

    def _full(self, op: tile.FullOp) -> None:
        t = op.result.type
        self._define(op.result, f"tl.full({_dims(t.dims)}, {_literal(op.value)}, {_tl(t.element_type)})")

    def _offset(self, index: str) -> str:
        """An index as it multiplies a stride: cast to int64 in a kernel of wide indices (a loop's
        counter or a constant is int32 however large the stride it multiplies)."""
        return f"tl.cast({index}, tl.int64)" if self.wide else index

    def _address(
        self, tensor: SSAValue, indices: Sequence[SSAValue], to_row_stride: bool = False, tail: bool = False
    ) -> tuple[str, str | None]:
        """The pointer expression of `tensor[indices]` and the mask of in-bounds elements (with
        `to_row_stride`, the last dim's bound is the stride of the dim before it: a padded row; with
        `tail`, it is the tensor's tail bound, `_row_tail_loads`)."""
        base, shape = self.tensors[tensor]
        terms, scalar_mask, tile_mask, in_bounds_blocks = [f"{base}_ptr"], [], [], []
        runs = self._merged_runs(tensor, indices)
        run_of = {k: run for run in runs for k in range(run.first, run.last + 1)}
        for d, (index, size) in enumerate(zip(indices, shape)):
            const = self.int_constants.get(index)
            symbolic = is_symbolic(size)
            if const is not None and (0 <= const < size if not symbolic else const == 0):  # in bounds
                if const:
                    terms.append(f"{self._offset(str(const))} * {base}_s{d}")
                continue
            expr = self._e(index)
            run = run_of.get(d)
            if run is None:
                terms.append(f"{self._offset(expr)} * {base}_s{d}")
            elif d == run.first:
                per_dim = " + ".join(
                    f"{self._offset(self._e(indices[k]))} * {base}_s{k}" for k in range(d, run.last + 1)
                )
                terms.append(f"({self._offset(run.index)} * {base}_s{run.last} if {run.flag} else {per_dim})")
            # a run's flat index known non-negative puts its bounds on it: Triton sees a comparison of
            # the flat index constant along its contiguous runs (a div's or a mod's is not)
            flat = run.flat if run is not None and run.nonnegative else None
            is_block = isinstance(index.type, tile.BlockType)
            mask = tile_mask if is_block else scalar_mask
            conditions = len(mask)
            if self.lower.get(index, -1) < 0:
                mask.append(f"({flat or expr} >= 0)")
            if to_row_stride and d == len(shape) - 1:
                mask.append(f"({expr} < {base}_s{d - 1})")
            elif tail and d == len(shape) - 1:
                mask.append(f"({expr} < {self.tail_bounds[tensor]})")
            elif symbolic:  # the kernel's size argument bounds it
                mask.append(f"({expr} < ({size_text(size)}))")
            elif self.upper.get(index, size + 1) > size:  # else known in bounds: an unraveled inner index
                # q < size for q = j // p (j >= 0) is j < size * p
                bounded = flat is not None and run.divisors[d - run.first] is not None
                mask.append(
                    f"({flat} < {size * run.divisors[d - run.first]})" if bounded else f"({expr} < {size})"
                )
            if is_block and len(mask) == conditions:
                in_bounds_blocks.append(flat or expr)
        pointer = " + ".join(terms)
        if self.options.bool_masks and (scalar_mask or tile_mask) and in_bounds_blocks:
            # the other conditions may all be Triton scalars (a gather at one loaded position: a
            # block-typed IR value stands for a 0-d load), which the interpreter refuses as a mask
            # over a block of pointers; a condition that always holds on an in-bounds block index
            # gives the mask the block's shape
            tile_mask.append(f"({in_bounds_blocks[0]} >= 0)")
        if scalar_mask and tile_mask:
            # Triton's interpreter broadcasts a scalar comparison as int32, which a mask refuses; where()
            # takes it
            return pointer, f"tl.where({' & '.join(scalar_mask)}, {' & '.join(tile_mask)}, False)"
        conditions = scalar_mask or tile_mask
        if self.options.bool_masks and len(conditions) > 1:
            return pointer, f"({' & '.join(conditions)}) != 0"
        return pointer, " & ".join(conditions) or None

    def _merged_runs(self, tensor: SSAValue, indices: Sequence[SSAValue]) -> list[MergedRun]:
        """Runs of dims d..e of `tensor` whose indices unravel one flat index j the way a row-major
        run of those dims would: dim k's index is `(j // p_k) % size_k`, p_k the sizes after k in the
        run (a flat pointwise kernel's indices over its output, a row kernel's rows over [batch,
        channels] and columns over a feature map's [h, w]). Their address `sum(index_k * s_k)` is
        `(j // p_e) * s_e` (modulo the run's extent where its first index is a remainder) wherever
        the dims nest in memory (s_k = size_k+1 * s_k+1); Triton cannot see that through the divs and
        mods, so the unit-stride run along j is lost and the loads and stores along it go element by
        element (the NHWC feature map's pooler stored NCHW: 4x slower on the H200). Each run takes
        the switch `merge_flag`, which the launcher sets from the tensor's strides."""
        _, shape = self.tensors[tensor]
        if self.symbols:  # a kernel of symbolic sizes is launched with any layout: no switch is set
            return []
        position = list(self.tensors).index(tensor)
        forms = [_unraveled(index, self.int_constants) for index in indices]
        runs: list[MergedRun] = []
        d = 0
        while d < len(shape) - 1:
            first = forms[d]  # (j, p, size, axes)
            if first is None or first[2] not in (None, shape[d]):
                d += 1
                continue
            root, axes = first[0], first[3]
            e = d
            while e + 1 < len(shape):
                nxt, cur = forms[e + 1], forms[e]
                if nxt is None or nxt[0] is not root or nxt[3] != axes or nxt[2] != shape[e + 1]:
                    break
                if cur[1] != nxt[1] * shape[e + 1]:  # p_k = size_k+1 * p_k+1
                    break
                e += 1
            if e == d or root not in self.exprs or any(shape[k] <= 0 for k in range(d, e + 1)):
                d = e + 1
                continue
            flat = self._atom(self._e(root), "flat")
            for axis in axes:  # the expansions the indices went through, innermost first
                flat = f"tl.expand_dims({flat}, {axis})"
            last_p, extent = forms[e][1], math.prod(shape[d : e + 1])
            index = flat if last_p == 1 else f"({flat} // {last_p})"
            if first[2] is not None:  # the run's first index is a remainder: so is the run's
                index = f"({index} % {extent})"
            divisors = tuple(forms[k][1] if forms[k][2] is None else None for k in range(d, e + 1))
            flag = merge_flag(position, d, e)
            runs.append(MergedRun(d, e, index, flat, self.lower.get(root, -1) >= 0, divisors, flag))
            self.merged[(position, d, e)] = None
            d = e + 1
        return runs

    def _load(self, op: tile.LoadOp) -> None:
        other = _literal(op.other) if op.other is not None else "0"
        if op in self.tail_loads and self.kernel.kind.data in TAIL_SELECT_KINDS:
            # the tail's elements are read (a vector load) and replaced by `other` in registers
            pointer, exact = self._address(op.tensor, op.indices)
            _, mask = self._address(op.tensor, op.indices, tail=True)
            if exact is not None:
                loaded = f"tl.load({pointer}, mask={mask}, other={other})"
                self._define(op.result, f"tl.where({exact}, {loaded}, {other})")
                return
        pointer, mask = self._address(op.tensor, op.indices, tail=op in self.tail_loads)
        args = f"{pointer}, mask={mask}, other={other}" if mask else pointer
        zero_padded = op.other is None or _literal(op.other) in ("0", "0.0")  # TMA pads with zeros
        if op.tensor not in self.descriptors or not zero_padded:
            self._define(op.result, f"tl.load({args})")
            return
        name = self._name_for(op.result)
        offsets = ", ".join(self._e(o) for o in op.block_offsets)
        rows_first = [_varying_axis(tile.block_dims(i.type)) for i in op.indices] == [0, 1]
        block = f"{self.descriptors[op.tensor][0]}.load([{offsets}])" + ("" if rows_first else ".T")
        self._write(f"if {TMA_FLAG}:  # out-of-bounds elements of the block read zero")
        self._write(f"    {name} = {block}")
        self._write("else:")
        self._write(f"    {name} = tl.load({args})")
        self._bind(op.result, name, False)

    def _store(self, op: tile.StoreOp) -> None:
        _, shape = self.tensors[op.tensor]
        itemsize = to_torch_dtype(op.tensor.type.get_element_type()).itemsize
        kind = self.kernel.kind.data
        padded = (
            stores_to_row_stride(kind) and not self.symbols  # (its programs allocate row-major buffers)
            and padded_row(kind, shape, itemsize) is not None
        )  # fmt: skip
        if padded:
            self._write(
                "# stores run to the row stride: a padded row's tail is written too (it is the buffer's own)"
            )
        pointer, mask = self._address(op.tensor, op.indices, to_row_stride=padded)
        self._write(f"tl.store({pointer}, {self._e(op.value)}" + (f", mask={mask})" if mask else ")"))

    def _dot(self, op: tile.DotOp) -> None:
        a, b = self._e(op.a), self._e(op.b)
        elem, acc_elem = tile.element_type(op.a.type), tile.element_type(op.acc.type)
        options = []
        if isinstance(elem, BFloat16Type) and self.options.upcast_bf16_dots:
            # Triton's interpreter multiplies bf16 bit patterns as integers (triton-lang/triton#11584)
            a, b = f"{a}.to(tl.float32)", f"{b}.to(tl.float32)"
            options.append('input_precision="ieee"')
        elif isinstance(elem, Float32Type):
            precision = "tf32" if op.tf32 is not None else self.options.exact_f32_dots
            if precision == "auto":
                precision = "tf32x3" if self.kernel.kind.data == "gemm" else "ieee"
            options.append(f'input_precision="{precision}"')
        if acc_elem != f32:
            options.append(f"out_dtype={_tl(acc_elem)}")
        self._define(op.result, f"tl.dot({', '.join([a, b, self._e(op.acc), *options])})")

    def _reduce(self, op: tile.ReduceOp) -> None:
        x, axis, kind = self._e(op.input), op.axis.value.data, op.kind.data
        elem = op.input.type.element_type
        narrow = _bitwidth(elem) < 32  # Triton reduces these in 32 bits; torch sums 16-bit floats in f32
        source = f"{x}.to(tl.float32)" if narrow and _is_float(elem) else x
        if kind == "prod":  # Triton has no tl.prod: a reduce with the module's _multiply
            self.uses_multiply = True
            expr = f"tl.reduce({source}, {axis}, _multiply)"
        else:
            expr = f"tl.{kind.removesuffix('num')}({source}, axis={axis})"
        if kind in ("max", "min") and _is_float(elem):
            # tl.max/tl.min drop NaNs on the GPU, where torch.amax/amin propagate them
            expr = f'tl.where(tl.sum(({x} != {x}).to(tl.int32), axis={axis}) > 0, float("nan"), {expr})'
        self._define(op.result, f"{expr}.to({_tl(elem)})" if narrow else expr)

    def _scan(self, op: tile.ScanOp) -> None:
        x, axis, kind = self._e(op.input), op.axis.value.data, op.kind.data
        reverse = ", reverse=True" if op.reverse.value.data else ""
        self._define(op.result, f"tl.cum{kind}({x}, axis={axis}{reverse})")

    # arith and math

    def _constant(self, op: arith.ConstantOp) -> None:
        attr = op.value
        if not isinstance(attr, FloatAttr | IntegerAttr):
            raise EmitError(f"no Triton lowering for arith.constant {attr}")
        if attr.type in (i1, i32, f32):  # the types Triton gives Python literals
            self._bind(op.result, _literal(attr), True)
        else:
            self._bind(op.result, f"tl.full([], {_literal(attr)}, {_tl(attr.type)})", False)
        if isinstance(attr, IntegerAttr) and attr.type != i1:
            self.lower[op.result] = self.int_constants[op.result] = attr.value.data

    def _operands(self, op: Operation) -> tuple[list[str], bool]:
        """Operand expressions, and whether the result stays a Python number.

        Python evaluates an op on Python numbers itself: exactly for integers
        and comparisons, but in double precision for floats (raising on 1.0 /
        0.0); so float ops and `tl.*` calls on Python numbers get their first
        operand as a tensor.
        """
        exprs = [self._e(v) for v in op.operands]
        python_level = all(v in self.python_level for v in op.operands)
        if python_level and (op.name in _CALLS or _is_float(op.results[0].type)):
            exprs[0] = self._tensor(op.operands[0])
            python_level = False
        return exprs, python_level

    def _track_bound(self, op: Operation) -> None:
        bound = _lower_bound(op, self.lower, self.int_constants)
        if bound is not None:
            self.lower[op.results[0]] = bound
        high = _upper_bound(op, self.lower, self.upper, self.int_constants)
        if high is not None:
            self.upper[op.results[0]] = high

    def _operator(self, op: Operation) -> None:
        (a, b), python_level = self._operands(op)
        if self._approximate_reciprocal(op):
            rcp = f"{_RCP_APPROX}, [{self._tensor(op.operands[1])}], dtype=tl.float32, is_pure=True, pack=1)"
            self._define(op.results[0], rcp if _is_one(op.operands[0]) else f"{a} * {rcp}", False)
            return
        self._define(op.results[0], f"{a} {_OPERATORS[op.name]} {b}", python_level)
        self._track_bound(op)

    def _approximate_reciprocal(self, op: Operation) -> bool:
        """An f32 division the GPU may make with its approximate reciprocal (TritonOptions)."""
        if not (self.options.approx_reciprocal and is_approx_reciprocal(op)):
            return False
        elem = op.results[0].type
        return (elem.element_type if isinstance(elem, tile.BlockType) else elem) == f32

    def _call(self, op: Operation) -> None:
        exprs, _ = self._operands(op)
        self._define(op.results[0], _CALLS[op.name].format(*exprs))
        self._track_bound(op)

    def _compare(self, op: arith.CmpiOp | arith.CmpfOp) -> None:
        table = (
            arith.CMPF_COMPARISON_OPERATIONS if op.name == "arith.cmpf" else arith.CMPI_COMPARISON_OPERATIONS
        )
        predicate = table[op.predicate.value.data]
        if predicate not in _COMPARISONS:
            raise EmitError(f"no Triton lowering for {op.name} predicate {predicate!r}")
        (a, b), python_level = self._operands(op)
        if self.options.round_bf16_casts and op.operands[0].type == bf16:
            # the interpreter compares bf16 values by their bits (-inf > 0): a bf16 attention mask's
            # rows all read as fully masked
            a, b = (f"{self._tensor(v)}.to(tl.float32)" for v in op.operands)
            python_level = False
        compared = f"{a} {_COMPARISONS[predicate]} {b}"
        scalar = not any(isinstance(v.type, tile.BlockType) for v in op.operands)
        if self.options.bool_masks and scalar and not python_level:
            # the interpreter (Triton 3.9) types a comparison of loaded scalars as their float type, and
            # `&` with a block's comparison then raises (a full max()'s backward: `x == m | isnan(x) &
            # isnan(m)`); `!= 0` makes it a bool
            compared = f"({compared}) != 0"
        self._define(op.result, compared, python_level)

    def _divide(self, op: arith.DivSIOp | arith.RemSIOp) -> None:
        a, b = op.operands
        left = self._e(a)
        exact = self.lower.get(a, -1) >= 0 and self.lower.get(b, 0) >= 1
        python_level = a in self.python_level and b in self.python_level
        if python_level and not exact:  # Python floors where divsi/remsi truncate: divide tensors
            left, python_level = self._tensor(a), False
        symbol = "//" if op.name == "arith.divsi" else "%"
        expr = f"{left} {symbol} {self._e(b)}"
        division = self.narrow.get(op)
        if division is not None:  # the tile's one quotient where its size divides the divisor
            start, d, size = self._e(division.start), division.divisor, division.block
            one = f"{start} // {d} + tl.zeros([1], {'tl.int64' if self.wide else 'tl.int32'})"
            expr = f"({one} if {d} % {size} == 0 else {expr})"
        self._define(op.result, expr, python_level)
        self._track_bound(op)

    def _negate(self, op: arith.NegfOp) -> None:
        x = self._e(op.operand)
        self._define(op.result, f"-({x})" if x.startswith("-") else f"-{x}", op.operand in self.python_level)

    def _cast(self, op: Operation) -> None:
        (x,) = op.operands
        src, dst = x.type, op.results[0].type
        value = self._tensor(x)
        if op.name == "arith.truncf" and dst == bf16 and src == f32 and self.options.round_bf16_casts:
            expr = self._round_to_bf16(value, op.results[0])
        elif op.name in ("arith.sitofp", "arith.uitofp") and dst == bf16 and self.options.round_bf16_casts:
            # the interpreter turns integers into bf16 wrongly too (1 -> 0, -3 -> nan: a BERT-style
            # `(1 - mask.to(bf16)) * finfo.min`); through f32, as PyTorch converts them
            unsigned = op.name == "arith.uitofp" and src != i1
            wide = f"{value}.to(tl.uint{_bitwidth(src)})" if unsigned else value
            expr = self._round_to_bf16(f"{wide}.to(tl.float32)", op.results[0])
        elif op.name == "arith.trunci" and dst == i1:  # trunci keeps the low bit; .to(tl.int1) tests != 0
            expr = f"({value} & 1) != 0"
        elif op.name in ("arith.extui", "arith.uitofp") and src != i1:  # zero-extend: read as unsigned
            expr = f"{value}.to(tl.uint{_bitwidth(src)}).to({_tl(dst)})"
        elif op.name == "arith.extsi" and src == i1:  # sign-extending true gives -1
            expr = f"-{value}.to({_tl(dst)})"
        else:
            expr = f"{value}.to({_tl(dst)})"
        self._define(op.results[0], expr)
        self._track_bound(op)

    def _round_to_bf16(self, x: str, result: SSAValue) -> str:
        """f32 -> bf16 rounded to nearest even on the bits, which are then reinterpreted (no float cast)."""
        name = self._name_for(result)
        self.forced[result] = name
        x = self._atom(x, f"{name}_f32")
        bits = self._temp(f"{name}_bits", f"{x}.to(tl.uint32, bitcast=True)")
        rounded = self._temp(f"{name}_rne", f"({bits} + 0x7FFF + (({bits} >> 16) & 1)) >> 16")
        return f"tl.where({x} != {x}, 0x7FC0, {rounded}).to(tl.uint16).to(tl.bfloat16, bitcast=True)"

    def _math(self, op: Operation) -> None:
        """A math function or formula, computed in f32 for 16-bit floats (Triton's take f32/f64)."""
        result = op.results[0]
        name = self._name_for(result)
        elem = result.type
        narrow = _bitwidth(elem) < 32  # never a Python number: those are i1, i32 or f32
        formula = None if self.options.libdevice and op.name in _LIBDEVICE else _FORMULAS.get(op.name)
        # Triton's math functions turn Python numbers into tensors; formulas combine comparisons,
        # which must not be Python bools
        value = self._tensor if formula is not None else self._e
        args = [f"{value(v)}.to(tl.float32)" if narrow else value(v) for v in op.operands]
        if formula is not None:
            expr = formula(self, [self._atom(a, f"{name}_x{i}") for i, a in enumerate(args)], name)
        elif op.name == "math.sqrt" and isinstance(elem, Float64Type):  # sqrt_rn takes f32 only
            expr = f"tl.sqrt({args[0]})"
        elif op.name in _LIBDEVICE:
            self.uses_libdevice = True
            expr = f"{_LIBDEVICE[op.name]}({args[0]})"
        else:
            expr = f"{_MATH_FUNCTIONS[op.name]}({args[0]})"
        self._define(result, f"{expr}.to({_tl(elem)})" if narrow else expr, name=name)

    # formulas for math ops Triton lacks (each returns a tl.where(...) expression)

    def _expm1(self, args: list[str], name: str) -> str:
        (x,) = args
        u = self._temp(f"{name}_exp", f"tl.exp({x})")
        # Kahan: (u - 1) * x / log(u) cancels the rounding error of u near x = 0; lanes that take another
        # branch divide by log(2) instead of 0 (numpy warns of 0/0 under the interpreter otherwise)
        safe = self._temp(f"{name}_safe", f"tl.where(({u} == 1.0) | (tl.abs({x}) > 1.0), 2.0, {u})")
        near_zero = f"({safe} - 1.0) * {x} / tl.log({safe})"
        return f"tl.where({u} == 1.0, {x}, tl.where(tl.abs({x}) > 1.0, {u} - 1.0, {near_zero}))"

    def _log1p(self, args: list[str], name: str) -> str:
        (x,) = args
        u = self._temp(f"{name}_1p", f"1.0 + {x}")
        # Kahan: log(u) * x / (u - 1) cancels the rounding error of u = 1 + x near x = 0 (other lanes: 2)
        safe = self._temp(f"{name}_safe", f"tl.where(({u} == 1.0) | (tl.abs({x}) > 1.0), 2.0, {u})")
        near_zero = f"tl.log({safe}) * {x} / ({safe} - 1.0)"
        return f"tl.where({u} == 1.0, {x}, tl.where(tl.abs({x}) > 1.0, tl.log({u}), {near_zero}))"

    def _tanh(self, args: list[str], name: str) -> str:
        (x,) = args
        # tanh(x) = expm1(2x) / (expm1(2x) + 2): accurate near 0, exact +-1 for large |x| (x capped first,
        # NaN kept: exp(2x) overflowing made inf / inf in lanes the where() then discards)
        capped = self._temp(f"{name}_2x", f"2.0 * tl.where({x} > 10.0, 10.0, {x})")
        e = self._temp(f"{name}_em1", self._expm1([capped], name))
        return f"tl.where({x} > 10.0, 1.0, {e} / ({e} + 2.0))"

    def _round_even(self, args: list[str], name: str) -> str:
        (x,) = args
        r = self._temp(f"{name}_floor", f"tl.floor({x})")
        d = self._temp(f"{name}_frac", f"{x} - {r}")
        odd = f"({r} - 2.0 * tl.floor(0.5 * {r}) == 1.0)"
        return f"tl.where(({d} > 0.5) | (({d} == 0.5) & {odd}), {r} + 1.0, {r})"

    def _pow(self, args: list[str], name: str) -> str:
        a, b = args
        # |a|^b through exp2/log2, then C pow's cases: b == 0 or a == 1 give 1, a < 0 needs an integral b
        # (or a = -inf) and an odd b makes it negative. Conditions nest in where() rather than meeting in
        # `|`, because the interpreter cannot broadcast a scalar comparison (b's) into a `|` with a tile.
        r = self._temp(f"{name}_abs", f"tl.exp2({b} * tl.log2(tl.abs({a})))")
        signed = self._temp(f"{name}_signed", f"tl.where({b} - 2.0 * tl.floor(0.5 * {b}) == 1.0, -{r}, {r})")
        real = f'tl.where({a} == float("-inf"), {signed}, float("nan"))'
        negative = self._temp(f"{name}_neg", f"tl.where({b} == tl.floor({b}), {signed}, {real})")
        general = f"tl.where({a} == 1.0, 1.0, tl.where({a} >= 0.0, {r}, {negative}))"
        return f"tl.where({b} == 0.0, 1.0, {general})"


_FORMULAS: dict[str, Callable[[_KernelWriter, list[str], str], str]] = {
    "math.expm1": _KernelWriter._expm1, "math.log1p": _KernelWriter._log1p, "math.tanh": _KernelWriter._tanh,
    "math.roundeven": _KernelWriter._round_even, "math.powf": _KernelWriter._pow,
}  # fmt: skip

_ASSIGNMENT = re.compile(r"^\s+([A-Za-z_]\w*) = ")
_WORD = re.compile(r"\b[A-Za-z_]\w*\b")


def _drop_unused(lines: list[str]) -> list[str]:
    """`lines` without the assignments to a name nothing reads (an index or mask a lowering made and
    no load used): Triton would drop them, a reader should not have to. Loads and arithmetic have no
    side effects; stores are not assignments. Unchanged if the result would not parse.

    A name is unread when its one occurrence is its assignment; dropping that line takes its words'
    occurrences away, which may leave another name unread, and so on (a worklist over the counts:
    rescanning every line per round cost DenseNet-201's kernels 3 s)."""
    words = [_WORD.findall(line.split("#", 1)[0]) for line in lines]
    counts = collections.Counter(w for ws in words for w in ws)
    assigned: dict[str, list[int]] = {}
    for i, line in enumerate(lines):
        if m := _ASSIGNMENT.match(line):
            assigned.setdefault(m[1], []).append(i)
    dead: set[int] = set()
    unread = [name for name in assigned if counts[name] == 1]
    while unread:
        for i in assigned[unread.pop()]:
            if i in dead:
                continue
            dead.add(i)  # the name's one occurrence: this line assigns it
            for w in words[i]:
                counts[w] -= 1
                if counts[w] == 1 and w in assigned:
                    unread.append(w)
    if not dead:
        return list(lines)
    kept = [line for i, line in enumerate(lines) if i not in dead]
    try:
        ast.parse("def kernel():\n" + "\n".join(kept))
    except SyntaxError:  # a block left empty: keep the original
        return lines
    return kept


_LIBDEVICE = {"math.tanh": "libdevice.tanh", "math.expm1": "libdevice.expm1", "math.log1p": "libdevice.log1p"}

_HANDLERS: dict[str, Callable[[_KernelWriter, Operation], None]] = {
    "tile.program_id": _KernelWriter._program_id, "tile.param": _KernelWriter._param,
    "tile.size": _KernelWriter._size,
    "tile.grouped_order": _KernelWriter._grouped_order, "tile.arange": _KernelWriter._arange,
    "tile.expand_dims": _KernelWriter._expand_dims, "tile.full": _KernelWriter._full,
    "tile.load": _KernelWriter._load, "tile.store": _KernelWriter._store, "tile.dot": _KernelWriter._dot,
    "tile.map": _KernelWriter._map, "tile.reduce": _KernelWriter._reduce,
    "tile.scan": _KernelWriter._scan, "scf.for": _KernelWriter._for,
    "arith.constant": _KernelWriter._constant, "arith.cmpi": _KernelWriter._compare,
    "arith.cmpf": _KernelWriter._compare, "arith.divsi": _KernelWriter._divide,
    "arith.remsi": _KernelWriter._divide, "arith.negf": _KernelWriter._negate,
    **dict.fromkeys(_OPERATORS, _KernelWriter._operator), **dict.fromkeys(_CALLS, _KernelWriter._call),
    **dict.fromkeys(_CASTS, _KernelWriter._cast),
    **dict.fromkeys([*_MATH_FUNCTIONS, *_FORMULAS], _KernelWriter._math),
}  # fmt: skip


TMA_FLAG = "USE_TMA"
WS_FLAG = "USE_WS"  # warp specialization of a GEMM's tile loop (set by the launcher with USE_TMA only)
# a row tail's rounding (elements): a bound that is a multiple of 16 keeps a mask constant over 16 bytes
ROW_TAIL = 16
# kernels that read every padded row's tail (a vector load) and select `other` over it in registers: a
# row kernel over GPT-2's logits (50257 a row) loaded 2 bytes at a time; a GEMM's operand loads feed its
# pipelined dots, where only M and N take the tail (`_row_tail_loads`)
TAIL_SELECT_KINDS = ("row", "reduction", "pointwise")


def merge_flag(tensor: int, first: int, last: int) -> str:
    """The switch by which the launcher lets a kernel address dims `first`..`last` of its `tensor`-th
    argument by their flat index (`_KernelWriter._merged_runs`, `launcher.merge_flags`)."""
    return f"MERGE_{tensor}_{first}_{last}"


@dataclass(frozen=True)
class MergedRun:
    """Dims `first`..`last` of a tensor access addressed through one flat index (`_merged_runs`)."""

    first: int
    last: int
    index: str  # the run's row-major index over its dims, as an expression
    flat: str  # the flat index it unravels, expanded as the access's indices are
    nonnegative: bool  # whether the flat index is known non-negative
    divisors: tuple[int | None, ...]  # per dim of the run: p where its index is `j // p` (no mod)
    flag: str


def _unraveled(
    index: SSAValue, constants: Mapping[SSAValue, int]
) -> tuple[SSAValue, int, int | None, tuple] | None:
    """`index` as (j, p, size, axes) where it is `(j // p) % size` (size None: no mod; p 1: no div) of a
    flat index j by constants, then expanded along `axes` (`tile.expand_dims`, in order); else None."""
    axes: list[int] = []
    while isinstance(index.owner, tile.ExpandDimsOp):
        axes.append(index.owner.axis.value.data)
        index = index.owner.input
    size = None
    step = _int_map(index, "arith.remsi", constants)
    if step is not None:
        index, size = step
    p = 1
    step = _int_map(index, "arith.divsi", constants)
    if step is not None:
        index, p = step
    if size is None and p == 1:
        return None
    return index, p, size, tuple(reversed(axes))


def _int_map(value: SSAValue, name: str, constants: Mapping[SSAValue, int]) -> tuple[SSAValue, int] | None:
    """(j, c) where `value` is a `tile.map` computing `name` (a div or a mod) of j by a constant c > 0."""
    owner = value.owner
    if not isinstance(owner, tile.MapOp) or len(owner.inputs) != 2:
        return None
    block = owner.body.block
    body = [op for op in block.ops if op.name != "tile.yield"]
    if len(body) != 1 or body[0].name != name or tuple(body[0].operands) != tuple(block.args):
        return None
    if block.last_op.operands[0] is not body[0].results[0]:
        return None
    c = constants.get(owner.inputs[1])
    return None if c is None or c <= 0 else (owner.inputs[0], c)


@dataclass(frozen=True)
class TileStartDivision:
    """`x // D` of a tile's own indices `x = pid * B + arange(B)` by a constant D: where B divides D,
    every index of the tile has the same quotient, that of the tile's start (`_narrow_divisions`)."""

    start: SSAValue  # pid * B
    block: str  # B, the kernel parameter
    divisor: int  # D


def _narrow_divisions(kernel: tile.KernelOp) -> dict[Operation, TileStartDivision]:
    """The divisions of a tile's own indices by a constant that the kernel may compute once, from the
    tile's start, as a one-element block (where its block size divides the divisor: a constexpr test).

    A row kernel over [tokens, hidden] rows gathers each row through an index per token (a mixture of
    experts' permutation): the token is the row index // hidden, and every index load after
    it ran once per element (8 int64 loads a thread in Mixtral's experts' combine, 39 us a layer on
    the H100 for 24 MB). Computed from the tile's start, the token is one value, broadcast: the
    index loads are one-element blocks, and only the loads that mix in the hidden index are full.

    The values derived from such a quotient are blocks of size 1 along the tile's dim B wherever no
    operand is full along it. That is sound for elementwise maps, loads (masks come from the same
    indices), expansions and reductions along other dims, which broadcast; it is not for a reduction or
    scan along B, a dot, a loop-carried value, a store through a narrow pointer, a block-pointer (TMA)
    load or a merged run of dims (whose flat index is full: an embedding's ids read as `ids[b, s]`,
    merged, stay per element): a kernel where a narrow value reaches one of those keeps every
    division full (returns {})."""
    constants = {
        op.result: op.value.value.data
        for op in kernel.walk()
        if isinstance(op, arith.ConstantOp) and isinstance(op.value, IntegerAttr) and op.value.type != i1
    }
    found: dict[Operation, TileStartDivision] = {}
    narrow: dict[SSAValue, frozenset[str]] = {}
    for op in kernel.walk():
        if isinstance(op, tile.MapOp):
            division = _tile_start_division(op, constants)
            if division is not None:
                found[next(o for o in op.body.block.ops if o.name == "arith.divsi")] = division
                narrow[op.result] = frozenset({division.block})
    if not found:
        return {}

    def narrowed(values: Sequence[SSAValue], dims: Sequence[str]) -> frozenset[str]:
        """The dims of `dims` along which every block of `values` that has the dim is narrow."""
        blocks = [v for v in values if isinstance(v.type, tile.BlockType)]
        return frozenset(
            d
            for d in dims
            if d != "1"
            and all(d in narrow.get(v, ()) for v in blocks if d in v.type.dims)
            and any(d in v.type.dims for v in blocks)
        )

    for op in kernel.walk():
        operands = [v for v in op.operands if narrow.get(v)]
        if isinstance(op, tile.MapOp):
            if not _yield_spans_result(op):
                continue  # zeros of the result's full shape are added
            reached = [op.inputs[a.index] for a in _reaching_arguments(op.body.block.last_op.value)]
            got = narrowed(reached, op.result.type.dims)
        elif isinstance(op, tile.ExpandDimsOp):
            got = narrow.get(op.input, frozenset())
        elif isinstance(op, tile.LoadOp):
            got = narrowed(list(op.indices), op.result.type.dims)
            roots = _merged_roots(op.indices, constants)
            if got and (op.block_offsets or any(not got <= narrow.get(r, frozenset()) for r in roots)):
                return {}  # the block, or a merged run's flat index and mask, is full where it is not
        elif isinstance(op, tile.StoreOp):
            if narrowed(list(op.indices), op.value.type.dims):
                return {}
            continue
        elif isinstance(op, tile.ReduceOp | tile.ScanOp):
            if op.input.type.dims[op.axis.value.data] in narrow.get(op.input, ()):
                return {}
            got = narrow.get(op.input, frozenset()) & frozenset(op.result.type.dims)
        elif operands and (
            isinstance(op, tile.DotOp | scf.ForOp | scf.YieldOp) or isinstance(op.parent_op(), tile.MapOp)
        ):
            return {}  # (a map body reads its block inputs as arguments, not directly)
        elif operands and any(isinstance(r.type, tile.BlockType) for r in op.results):
            return {}  # an op this analysis does not know
        else:
            continue
        if got:
            narrow[op.results[0]] = got
    return found


def _tile_start_division(op: tile.MapOp, constants: Mapping[SSAValue, int]) -> TileStartDivision | None:
    """The division if `op` is `x // D` with `x = pid * B + arange(B)` (either operand order)."""
    step = _int_map(op.result, "arith.divsi", constants)
    if step is None or len(op.result.type.dims) != 1:
        return None
    x, divisor = step
    owner = x.owner
    if not isinstance(owner, tile.MapOp) or len(owner.inputs) != 2:
        return None
    body = [o for o in owner.body.block.ops if o.name != "tile.yield"]
    if len(body) != 1 or body[0].name != "arith.addi" or set(body[0].operands) != set(owner.body.block.args):
        return None
    if owner.body.block.last_op.operands[0] is not body[0].results[0]:
        return None
    ranges = [v for v in owner.inputs if isinstance(v.owner, tile.ArangeOp)]
    starts = [v for v in owner.inputs if isinstance(v.owner, arith.MuliOp)]
    if len(ranges) != 1 or len(starts) != 1:
        return None
    (block,) = ranges[0].type.dims
    factors = starts[0].owner.operands
    pid = [v for v in factors if isinstance(v.owner, tile.ProgramIdOp)]
    param = [v for v in factors if isinstance(v.owner, tile.ParamOp) and v.owner.param.data == block]
    if len(pid) != 1 or len(param) != 1:
        return None
    return TileStartDivision(starts[0], block, divisor)


def _merged_roots(indices: Sequence[SSAValue], constants: Mapping[SSAValue, int]) -> set[SSAValue]:
    """The flat indices that two or more of an access's indices unravel (a merged run may address them
    by it: `_KernelWriter._merged_runs`)."""
    roots = collections.Counter(form[0] for form in (_unraveled(i, constants) for i in indices) if form)
    return {root for root, n in roots.items() if n > 1}


def tail_flag(tensor: int) -> str:
    """The switch by which the launcher lets a GEMM read its `tensor`-th argument's padded rows to their
    rounded extent (`row_tail`, `launcher.row_tails_fit`)."""
    return f"ROW_TAILS_{tensor}"


def _varying_axis(dims: Sequence[str]) -> int | None:
    varying = [a for a, d in enumerate(dims) if d != "1"]
    return varying[0] if len(varying) == 1 else None


def _varying_dim(dims: Sequence[str]) -> str | None:
    axis = _varying_axis(dims)
    return dims[axis] if axis is not None else None


# where a padded output row starts (Inductor's padding alignment): a GEMM's output row that is not a
# multiple of 16 bytes (an LM head over a 50257-token vocabulary) makes every store of its epilogue a
# scalar store; rows narrower than PAD_MIN_ROW elements stay packed (the padding would cost more memory
# than it saves)
ROW_ALIGN_BYTES, PAD_MIN_ROW = 128, 256


PADDED_KINDS = ("gemm", "row")


def padded_row(kind: str, shape: Sequence[int], itemsize: int) -> int | None:
    """The padded row length (elements) a Triton kernel of `kind` writes an output of `shape` with: a
    GEMM's or a row kernel's output whose wide last dim is not a multiple of 16 bytes gets rows starting
    ROW_ALIGN_BYTES apart; None where the output stays packed. The program allocates such outputs
    (`compiler.program.output_strides`). A GEMM's stores run to the row stride it is given, into the
    padding, so that their mask is constant over 16 bytes and the stores are vectors; a row kernel's
    stay in the row (`stores_to_row_stride`). Its readers gain aligned rows: the GEMM that reads an LM
    head's log-softmax gradient along the vocabulary (K = 50257 in GPT-2's backward) loads vectors,
    and cuBLAS takes it as an aligned operand."""
    if kind not in PADDED_KINDS or len(shape) < 2 or 0 in shape:
        return None
    row = shape[-1]
    if row < PAD_MIN_ROW or row * itemsize % 16 == 0:
        return None
    per_row = ROW_ALIGN_BYTES // itemsize
    return -(-row // per_row) * per_row


def row_tail(size: int) -> int:
    """The extent a GEMM operand's row of `size` elements is read to where its rows are padded."""
    return -(-size // ROW_TAIL) * ROW_TAIL


def _shape_entry(d: Dim) -> int | str:
    """A TENSOR_SHAPES entry: a static size, or a symbolic one's expression."""
    return int(d) if not is_symbolic(d) else str(d)


def stores_to_row_stride(kind: str) -> bool:
    """Whether a kernel of `kind` stores a padded output's rows to the row stride: so the mask is
    constant over 16 bytes and the stores are vectors (the padding is the buffer's own, and nothing
    reads it as data). A GEMM's and a row kernel's padded outputs do (`PADDED_KINDS`)."""
    return kind in PADDED_KINDS


# the combine of a product reduction (`tl.reduce`), written after the kernel when it has one
_MULTIPLY = ["", "@triton.jit", "def _multiply(a, b):", "    return a * b", ""]


def emit(kernel: tile.KernelOp, options: TritonOptions) -> str:
    """Python source of a module holding one `@triton.jit` function for `kernel`.

    The function is named after the kernel (made an identifier) and takes,
    for each tensor argument, its pointer and strides, then the tile
    parameters as `tl.constexpr`. Beside it the module records what `load`
    needs to launch it: `GRID` (expressions over the parameters), `PARAMS`,
    and the tensors' static `TENSOR_SHAPES` and `TENSOR_DTYPES`.
    """
    writer = _KernelWriter(kernel, options)
    body = writer.body()
    tensors = list(writer.tensors.items())
    signature = [
        ", ".join([f"{base}_ptr", *(f"{base}_s{d}" for d in range(len(shape)))]) + ","
        for _, (base, shape) in tensors
    ]
    if writer.symbols:  # the symbolic sizes, after the tensors (`SIZE_SYMBOLS`)
        signature.append(", ".join(writer.symbols) + ",")
    flags = ([TMA_FLAG] if writer.descriptors else []) + ([WS_FLAG] if writer.warp_specialized else [])
    tails = tuple(i for i, (arg, _) in enumerate(tensors) if arg in writer.tail_bounds)
    flags += [tail_flag(i) for i in tails]
    merged = tuple(sorted(writer.merged))
    flags += [merge_flag(*run) for run in merged]
    constexprs = list(kernel.param_names) + flags
    if constexprs:
        signature.append(", ".join(f"{p}: tl.constexpr" for p in constexprs) + ",")
    described = ", ".join(f"{base}: {arg.type}" for arg, (base, _) in tensors)
    dtypes = [dtype_name(arg.type.get_element_type()).replace("int1", "bool") for arg, _ in tensors]
    return "\n".join([
        f'# tilefuse kernel "{kernel.sym_name.data}" ({kernel.kind.data}), by tilefuse.backends.triton',
        f"# options: {options.key()}",
        f"# {described}",
        "import triton",
        "import triton.language as tl",
        *(["from triton.language.extra import libdevice"] if writer.uses_libdevice else []),
        "",
        f"GRID = {tuple(kernel.grid_exprs)!r}",
        f"PARAMS = {tuple(kernel.param_names)!r}",
        f"TENSOR_SHAPES = {tuple(tuple(_shape_entry(d) for d in shape) for _, (_, shape) in tensors)!r}",
        *([f"SIZE_SYMBOLS = {writer.symbols!r}"] if writer.symbols else []),
        f"TENSOR_DTYPES = {tuple(dtypes)!r}",
        f"TMA_TENSORS = {tuple(i for i, (arg, _) in enumerate(tensors) if arg in writer.descriptors)!r}",
        f"WARP_SPECIALIZABLE = {writer.warp_specialized!r}",
        *([f"ROW_TAIL_TENSORS = {tails!r}"] if tails else []),
        *([f"MERGED_DIMS = {merged!r}"] if merged else []),
        *(["WIDE_INDEX = True"] if writer.wide else []),
        "",
        "",
        "@triton.jit",
        f"def {writer.function}(",
        *(f"    {line}" for line in signature),
        "):",
        *body,
        "",
        # after the kernel: it stays the module's first @triton.jit function (triton_function_name)
        *(_MULTIPLY if writer.uses_multiply else []),
    ])  # fmt: skip
