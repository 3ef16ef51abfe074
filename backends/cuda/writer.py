"""The body of one CUDA kernel, written op by op from a `tile` kernel.

Each SSA value becomes either a C atom (a literal, a parameter, a scalar
variable: the same at every slot) or a register tile: an array with one
slot per element the thread owns along the space axes the tile spans
(`layout.py`). An op on tiles is a loop nest over the result's slots
(`#pragma unroll`, literal trip counts), reading each operand at the slot
of the axes it spans: that is broadcasting. `tile.expand_dims` costs
nothing (a size-1 dim is no axis). Loads and stores are in `memory.py`,
reductions in `reduction.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from xdsl.dialects import arith, scf
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, TensorType
from xdsl.ir import Attribute, Block, BlockArgument, Operation, OpResult, SSAValue

from ...ir import tile
from ..naming import fresh_name
from .layout import WARP_SIZE, BlockLayout, LayoutError, block_layout
from .memory import write_load, write_store
from .prelude import RESERVED
from .reduction import write_reduce
from .scalar import CudaEmitError, literal, register_type, scalar_expr, storage_bytes

VECTOR_BYTES = 16  # a thread owns this many contiguous bytes of the last axis: one 128-bit access


def c_identifier(name: str) -> str:
    """`name` made a C++ identifier that is no keyword nor a name the kernel file uses."""
    ident = re.sub(r"[^0-9A-Za-z_]", "_", name) or "k"
    ident = f"k{ident}" if ident[0].isdigit() else ident
    return f"{ident}_" if ident in RESERVED else ident


@dataclass(frozen=True)
class Tile:
    """A tile in registers: the array `name`, one slot per combination of slots along `axes`."""

    name: str
    axes: tuple[int, ...]  # the space axes it spans, in space order
    # how an element is read as a register value, where the array keeps the stored type (a loaded
    # 16-bit tile: half the registers, widened where used); None: the array holds register values
    widen: str | None = None
    run_local: bool = False  # defined in the streamed tail: holds the current run only (`_stream`)


class KernelWriter:
    """Writes one kernel's body, tracking for each SSA value a C atom or a register `Tile`."""

    def __init__(self, kernel: tile.KernelOp, config: dict[str, int], num_warps: int):
        self.kernel = kernel
        self.config = config
        self.num_threads = num_warps * WARP_SIZE
        self.function = c_identifier(kernel.sym_name.data)
        self.lines: list[str] = []
        self.depth = 1
        self.loop_depth = 0  # scf.for loops around the op being written
        self.shared_bytes = 0
        self.values: dict[SSAValue, str | Tile] = {}
        self.taken = set(RESERVED) | set(kernel.param_names) | {self.function}
        self.taken |= {f"{p}{i}" for p in "it" for i in range(8)}  # slot indices and thread places
        self.tensors: dict[SSAValue, tuple[str, tuple[int, ...]]] = {}
        for i, arg in enumerate(kernel.body.block.args):
            base = self.fresh(arg.name_hint or f"arg{i}")
            shape = tuple(arg.type.get_shape())
            self.taken.update(f"{base}_s{d}" for d in range(len(shape)))
            self.tensors[arg] = (base, shape)
        self.stored = {op.tensor for op in kernel.walk() if isinstance(op, tile.StoreOp)}
        self.live = _live_ops(kernel)
        self.contiguous: set[SSAValue] = set()  # index tiles that step by one along the last axis
        self.layout = self._layout()
        self.streaming = False  # writing the streamed tail (`_stream`): one run of the last axis at a time

    def _layout(self) -> BlockLayout:
        """The layout of the kernel's widest tile; every other tile's dims must be among its axes."""
        spans = [
            tuple(d for d in r.type.dims if d != "1")
            for op in self.kernel.walk() for r in op.results if isinstance(r.type, tile.BlockType)
        ]  # fmt: skip
        space = max(spans, key=len, default=())
        if len(set(space)) != len(space):
            raise CudaEmitError(f"tile dims {space} repeat a dim: the CUDA layout names axes by their dims")
        for span in spans:
            if not set(span) <= set(space):
                raise CudaEmitError(f"tile dims {span} are not all axes of the kernel's widest tile {space}")
        widest = max((storage_bytes(arg.type.get_element_type()) for arg in self.tensors), default=4)
        sizes = [(d, int(d) if d.isdigit() else self.config[d]) for d in space]
        try:
            return block_layout(sizes, self.num_threads, max(1, VECTOR_BYTES // widest))
        except LayoutError as e:
            raise CudaEmitError(str(e)) from None

    # tiles and slots

    @property
    def last_axis(self) -> int:
        return len(self.layout.axes) - 1

    def axes(self, t: Attribute) -> tuple[int, ...]:
        """The space axes a tile type spans (none for a scalar)."""
        return tuple(sorted(self.layout.axis_of(d) for d in tile.block_dims(t) if d != "1"))

    def slots(self, axes: Sequence[int]) -> int:
        return math.prod(self.layout.axes[a].slots for a in axes)

    def index(self, axes: Sequence[int], fixed: dict[int, str] | None = None, run_local: bool = False) -> str:
        """The slot of a tile spanning `axes` at the current slot indices (`fixed` overrides some).
        While streaming, the slot along the last axis is `i<last> + j` (the run's start, then the
        place in it); a `run_local` tile holds that run only: its slot is `j`."""
        last = self.last_axis
        if self.streaming and last in axes and self.layout.axes[last].slots > 1:
            fixed = {last: f"i{last} + j", **(fixed or {})}
            if run_local:  # the slot's place in the run: "i<last> + j" -> "j", "i<last>" -> "0"
                return fixed[last].removeprefix(f"i{last}").removeprefix(" + ") or "0"
        elif run_local:
            return "0"
        terms, scale = [], 1
        for a in reversed(axes):
            i = (fixed or {}).get(a, f"i{a}" if self.layout.axes[a].slots > 1 else "0")
            if i != "0":
                terms.append(i if scale == 1 else f"{i} * {scale}")
            scale *= self.layout.axes[a].slots
        return " + ".join(reversed(terms)) or "0"

    def at(self, v: SSAValue, fixed: dict[int, str] | None = None) -> str:
        """`v` at the current slot, as a C atom."""
        value = self.values[v]
        if isinstance(value, str):
            return value
        element = f"{value.name}[{self.index(value.axes, fixed, value.run_local)}]"
        return value.widen.format(element) if value.widen else element

    def new_tile(
        self, v: SSAValue, what: str, stored_as: str | None = None, widen: str | None = None
    ) -> Tile:
        """Declare the register array of tile `v`; `what` says where it comes from. `stored_as`: the
        array's C type where it is not the register type, `widen` how its elements are read then."""
        axes = self.axes(v.type)
        name = self.fresh(v.name_hint)
        elem = tile.element_type(v.type)
        dims = ", ".join(tile.block_dims(v.type))
        ctype = stored_as or register_type(elem)
        slots = self.slots(axes)
        if self.streaming:
            slots = self.layout.axes[self.last_axis].vec if self.last_axis in self.looped(axes) else 1
        self.write(f"{ctype} {name}[{slots}];  // [{dims}] {elem}: {what}")
        value = self.values[v] = Tile(name, axes, widen, run_local=self.streaming)
        return value

    def looped(self, axes: Sequence[int]) -> list[int]:
        """The axes among `axes` a slot loop walks: those of several slots; while streaming, only the
        last one (by the places of the current run), the others being fixed by the loops around it."""
        if self.streaming:
            return [a for a in axes if a == self.last_axis and self.layout.axes[a].slots > 1]
        return [a for a in axes if self.layout.axes[a].slots > 1]

    def materialized(self, v: SSAValue) -> Tile:
        """`v` as a register tile, filling one from a splat (a tile.full) where needed."""
        value = self.values[v]
        if isinstance(value, Tile):
            return value
        out = self.new_tile(v, "splat")
        with self.slot_loops(out.axes):
            self.write(f"{self.write_to(out)} = {value};")
        return out

    # names and lines

    def fresh(self, base: str | None) -> str:
        """An unused C name: `base` made an identifier (numbered if taken), else v0, v1, ..."""
        return fresh_name(base, self.taken, c_identifier)

    def write(self, line: str) -> None:
        self.lines.append("  " * self.depth + line)

    @contextmanager
    def block(self, opening: str) -> Iterator[None]:
        """`opening {` ... `}` (a bare scope where `opening` is empty)."""
        self.write(f"{opening} {{" if opening else "{")
        self.depth += 1
        yield
        self.depth -= 1
        self.write("}")

    @contextmanager
    def slot_loops(self, axes: Sequence[int], scoped: bool = False) -> Iterator[None]:
        """Loops over this thread's slots along `axes` (an axis of one slot needs none); `scoped`
        opens a scope where no loop does, for a body that declares fixed names."""
        looped = self.looped(axes)
        with ExitStack() as loops:
            for axis in looped:
                if self.streaming:
                    self.write("#pragma unroll")
                    loops.enter_context(self.block(f"for (int j = 0; j < {self.layout.axes[axis].vec}; ++j)"))
                else:
                    loops.enter_context(self.slot_loop(axis))
            if scoped and not looped:
                loops.enter_context(self.block(""))
            yield

    @contextmanager
    def slot_loop(self, axis: int, start: int = 0) -> Iterator[None]:
        self.write("#pragma unroll")
        with self.block(f"for (int i{axis} = {start}; i{axis} < {self.layout.axes[axis].slots}; ++i{axis})"):
            yield

    def write_to(self, out: Tile, fixed: dict[int, str] | None = None) -> str:
        """The element of `out` at the current slot (`fixed` overriding some), as an lvalue."""
        return f"{out.name}[{self.index(out.axes, fixed, out.run_local)}]"

    def _define(self, v: SSAValue, expr: str) -> None:
        name = self.fresh(v.name_hint)
        self.write(f"const {register_type(v.type)} {name} = {expr};")
        self.values[v] = name

    # ops

    def body(self) -> list[str]:
        """The kernel body's lines (after the parameters' constexprs)."""
        self.write("// this thread's place along each axis of the tile")
        for i, axis in enumerate(self.layout.axes):
            if axis.threads > 1:
                self.write(f"const int t{i} = {axis.thread_coordinate()};  // along {axis.name}")
        block = self.kernel.body.block
        tail = _streamable_tail(self, block)
        self.ops([op for op in block.ops if op not in tail])
        if tail:
            self._stream(tail)
        return self.lines

    def ops(self, ops: Block | Sequence[Operation]) -> None:
        for op in ops.ops if isinstance(ops, Block) else ops:
            if not isinstance(op, tile.ReturnOp | tile.YieldOp | scf.YieldOp):
                self.op(op)

    def _stream(self, tail: Sequence[Operation]) -> None:
        """Write `tail` run by run along the last axis (`_streamable_tail`): each run's loads, maps and
        stores together, its tiles a run long. Written tile by tile, a LayerNorm's weight, bias and
        output (32 elements a thread each) were all live at once: 125 registers, 62% of copy
        bandwidth in bf16 on the H200; run by run, 64 registers and 86% (benchmarks/NOTES.md)."""
        last = self.last_axis
        axis = self.layout.axes[last]
        self.write(f"// the rest run by run: {axis.vec} contiguous elements of {axis.name} at a time")
        with ExitStack() as loops:
            for a in range(last):
                if self.layout.axes[a].slots > 1:
                    loops.enter_context(self.slot_loop(a))
            self.write("#pragma unroll")
            loops.enter_context(
                self.block(f"for (int i{last} = 0; i{last} < {axis.slots}; i{last} += {axis.vec})")
            )
            self.streaming = True
            try:
                self.ops(tail)
            finally:
                self.streaming = False

    def op(self, op: Operation) -> None:
        if op not in self.live:  # nothing stored depends on it
            return
        handler = _HANDLERS.get(op.name)
        if handler is not None:
            handler(self, op)
        elif op.name in _STAYS_ON_TRITON:
            raise CudaEmitError(f"{op.name} in a {self.kernel.kind.data} kernel: {_STAYS_ON_TRITON[op.name]}")
        else:
            self._scalar(op)

    def _scalar(self, op: Operation) -> None:
        if isinstance(op, arith.ConstantOp):
            if not isinstance(op.value, FloatAttr | IntegerAttr):
                raise CudaEmitError(f"no CUDA lowering for arith.constant {op.value}")
            self.values[op.result] = literal(op.value)
            return
        if len(op.results) != 1 or isinstance(op.results[0].type, tile.BlockType | TensorType):
            raise CudaEmitError(f"no CUDA lowering for {op.name}")
        operands = [self.at(v) for v in op.operands]
        expr = scalar_expr(op, operands)
        if expr in operands:  # a cast that changes no register (bf16 -> f32): the same value
            self.values[op.results[0]] = expr
        else:
            self._define(op.results[0], expr)

    def _program_id(self, op: tile.ProgramIdOp) -> None:
        self._define(op.result, f"blockIdx.{'xyz'[op.axis.value.data]}")

    def _param(self, op: tile.ParamOp) -> None:
        self.values[op.result] = op.param.data

    def _arange(self, op: tile.ArangeOp) -> None:
        if op.result.type.dims == ("1",):
            self.values[op.result] = "0"
            return
        (axis,) = self.axes(op.result.type)
        out = self.new_tile(op.result, "tile.arange")
        if axis == self.last_axis:
            self.contiguous.add(op.result)
        with self.slot_loops([axis]):
            slot = f"i{axis}" if self.layout.axes[axis].slots > 1 else "0"
            slot = f"(i{axis} + j)" if self.streaming and axis == self.last_axis and slot != "0" else slot
            self.write(f"{self.write_to(out)} = {self.layout.axes[axis].coordinate(slot, f't{axis}')};")

    def _expand_dims(self, op: tile.ExpandDimsOp) -> None:
        self.values[op.result] = self.values[op.input]  # a size-1 dim is no axis: same registers
        if op.input in self.contiguous:
            self.contiguous.add(op.result)

    def _full(self, op: tile.FullOp) -> None:
        self.values[op.result] = literal(op.value)

    def _map(self, op: tile.MapOp) -> None:
        body = op.body.block
        yielded = body.last_op.value
        source = _passed_through(op)
        if source is not None and self.axes(source.type) == self.axes(op.result.type):
            self.values[op.result] = self.values[source]  # the same registers (a widening of bf16)
            return
        out = self.new_tile(op.result, "tile.map")
        if _steps_by_one(self, op):
            self.contiguous.add(op.result)
        looped = set(self.looped(out.axes))
        varying = {arg for arg, v in zip(body.args, op.inputs) if looped & set(self.axes(v.type))}
        for arg, operand in zip(body.args, op.inputs):
            if arg.uses and arg not in varying:
                self.values[arg] = self.at(operand)
        inner_ops = list(body.ops)[:-1]
        for inner in inner_ops:  # the same at every slot (a row's rsqrt(var / n + eps)) is written once
            scalar = _is_scalar(inner) or isinstance(inner, arith.ConstantOp)
            if not scalar or any(v in varying for v in inner.operands):
                varying.update(inner.results)
            else:
                self.op(inner)
        with self.slot_loops(out.axes):
            for arg, operand in zip(body.args, op.inputs):
                if arg.uses and arg in varying:
                    self.values[arg] = self.at(operand)
            for inner in (inner for inner in inner_ops if any(r in varying for r in inner.results)):
                if (
                    inner.results
                    and inner.results[0] is yielded
                    and yielded.has_one_use()
                    and _is_scalar(inner)
                ):
                    self.values[yielded] = scalar_expr(inner, [self.at(v) for v in inner.operands])
                else:  # the yielded value is written straight into the slot; the others get a name
                    self.op(inner)
            self.write(f"{self.write_to(out)} = {self.at(yielded)};")

    def _for(self, op: scf.ForOp) -> None:
        body = op.body.block
        iv, carried = body.args[0], body.args[1:]
        yielded = body.last_op.operands
        if any(v in carried and v is not arg for v, arg in zip(yielded, carried)):
            raise CudaEmitError("scf.for yields a carried value in another's place (a swap): not supported")
        for arg, init, result in zip(carried, op.iter_args, op.res):
            if isinstance(arg.type, tile.BlockType):
                value = self.new_tile(arg, "carried by scf.for")
                with self.slot_loops(value.axes):
                    self.write(f"{value.name}[{self.index(value.axes)}] = {self.at(init)};")
            else:
                name = self.fresh(arg.name_hint)
                self.write(f"{register_type(arg.type)} {name} = {self.at(init)};  // carried by scf.for")
                self.values[arg] = name
            self.values[result] = self.values[arg]
        index = self.fresh(iv.name_hint or "iteration")
        self.values[iv] = index
        lb, ub, step = (self.at(v) for v in (op.lb, op.ub, op.step))
        self.loop_depth += 1
        with self.block(f"for (int {index} = {lb}; {index} < {ub}; {index} += {step})"):
            self.ops(body)
            for arg, value in zip(carried, yielded):
                target = self.values[arg]
                if value is arg:
                    continue
                if isinstance(target, Tile):
                    with self.slot_loops(target.axes):
                        self.write(f"{target.name}[{self.index(target.axes)}] = {self.at(value)};")
                else:
                    self.write(f"{target} = {self.at(value)};")
        self.loop_depth -= 1


_STREAMABLE = (
    tile.LoadOp, tile.MapOp, tile.StoreOp, tile.ExpandDimsOp, tile.FullOp, tile.ArangeOp, tile.ProgramIdOp,
    tile.ParamOp, arith.ConstantOp,
)  # fmt: skip


def _streamable_tail(w: KernelWriter, block: Block) -> list[Operation]:
    """The ops at the end of `block` that can be written run by run along the last axis (`_stream`):
    loads, maps, stores and scalars after the kernel's last reduction or loop, where a thread's slots
    of the last axis come in runs of several contiguous elements and a store is among them. A store
    of a tile without the last axis (a row's statistic) ends it: it would be repeated every run."""
    last = w.last_axis
    if last < 0 or w.layout.axes[last].vec == 1 or w.layout.axes[last].slots % w.layout.axes[last].vec:
        return []
    tail: list[Operation] = []
    for op in reversed([op for op in block.ops if not isinstance(op, tile.ReturnOp | tile.YieldOp)]):
        streamable = isinstance(op, _STREAMABLE) or (
            _is_scalar(op) and not any(isinstance(r.type, tile.BlockType) for r in op.results)
        )
        if isinstance(op, tile.StoreOp) and last not in {a for i in op.indices for a in w.axes(i.type)}:
            streamable = False
        if not streamable:
            break
        tail.append(op)
    return tail[::-1] if any(isinstance(op, tile.StoreOp) for op in tail) else []


def _live_ops(kernel: tile.KernelOp) -> set[Operation]:
    """The ops a store depends on; the others are not written (nvcc would warn of unused arrays)."""
    live: set[Operation] = set()
    stack: list[Operation] = [op for op in kernel.walk() if isinstance(op, tile.StoreOp)]
    while stack:
        op = stack.pop()
        if op in live or op is kernel:
            continue
        live.add(op)
        operands = op.operands
        if isinstance(op, tile.MapOp):  # an operand whose scalar the body ignores is not needed
            operands = [v for v, arg in zip(op.inputs, op.body.block.args) if arg.uses]
        for v in operands:  # a block argument's value comes from the map or loop that owns it
            stack.append(v.owner if isinstance(v, OpResult) else v.owner.parent_op())
        stack.append(op.parent_op())
        stack.extend(region.block.last_op for region in op.regions)
    return live


def _is_scalar(op: Operation) -> bool:
    """An arith/math op written as one C expression (not a constant, which is inlined)."""
    return (
        op.name not in _HANDLERS and op.name not in _STAYS_ON_TRITON and not isinstance(op, arith.ConstantOp)
    )


def _passed_through(op: tile.MapOp) -> SSAValue | None:
    """The operand a map yields unchanged in registers (through casts that keep the register), if any."""
    value = op.body.block.last_op.value
    while not isinstance(value, BlockArgument):
        inner = value.owner
        if len(inner.operands) != 1 or not _is_scalar(inner) or scalar_expr(inner, ["x"]) != "x":
            return None
        value = inner.operands[0]
    return op.inputs[value.index]


def _steps_by_one(writer: KernelWriter, op: tile.MapOp) -> bool:
    """Whether the map adds to (or subtracts from) an index tile contiguous along the last axis a
    value constant along it: the result steps by one along the last axis too."""
    body = op.body.block
    inner = body.first_op
    if inner is not body.last_op.prev_op or inner.name not in ("arith.addi", "arith.subi"):
        return False
    if inner.results[0] is not body.last_op.value:
        return False
    sources = [op.inputs[v.index] if isinstance(v, BlockArgument) else None for v in inner.operands]
    varying = [s is not None and writer.last_axis in writer.axes(s.type) for s in sources]
    stepping = sources[:1] if inner.name == "arith.subi" else sources
    return sum(varying) == 1 and any(s in writer.contiguous for s in stepping if s is not None)


_HANDLERS: dict[str, Callable[[KernelWriter, Operation], None]] = {
    "tile.program_id": KernelWriter._program_id, "tile.param": KernelWriter._param,
    "tile.arange": KernelWriter._arange, "tile.expand_dims": KernelWriter._expand_dims,
    "tile.full": KernelWriter._full, "tile.map": KernelWriter._map, "scf.for": KernelWriter._for,
    "tile.load": write_load, "tile.store": write_store, "tile.reduce": write_reduce,
}  # fmt: skip
_STAYS_ON_TRITON = {
    "tile.dot": "tensor-core products stay on Triton (CUTLASS comes later)",
    "tile.grouped_order": "GEMM tile orders stay on Triton (CUTLASS comes later)",
}
