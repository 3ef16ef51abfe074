"""Helpers for writing `tile.kernel` bodies: scalar and tile index arithmetic, views as indexing.

`KernelBuilder` appends ops to a kernel body. Index arithmetic on i32 scalars
becomes plain `arith` ops; as soon as a tile is involved it becomes a
`tile.map`. `load` follows `ein.view`/`ein.gather`/`ein.constant`/`ein.iota`
producers back to a tensor the kernel actually reads, turning each view into
index arithmetic and each gather into a load of its positions, so a permuted,
sliced, broadcast, reshaped or embedded operand is read in place, never copied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import sympy
from xdsl.dialects import arith
from xdsl.dialects.builtin import IntegerAttr, i32
from xdsl.ir import Attribute, Block, Operation, Region, SSAValue

from ..ir import einsum as ein
from ..ir import tile
from ..ir.builder import ScalarBuilder, inline_map_body
from ..ir.dtypes import Dim, dims_of, is_symbolic, shape_of, simplify_size, size_text


class LoweringUnsupported(Exception):
    """This group cannot become a kernel yet; it runs op by op instead."""


Index = SSAValue  # an i32 scalar or an i32 tile
# `poison` pushes an index out of bounds by adding `bad` while `bad` is below this: a few chained
# poisons of one index then stay far inside int32
POISON_BY_SUM_LIMIT = 1 << 26


class KernelBuilder:
    """Appends ops to one kernel body and tracks the tensors it reads."""

    def __init__(self, materialized: Callable[[SSAValue], bool]):
        self.kernel_block = self.block = Block()
        self.inputs: list[SSAValue] = []  # ein values, one per leading kernel argument
        self._args: dict[SSAValue, SSAValue] = {}
        self._outputs: dict[SSAValue, SSAValue] = {}  # ein value -> the argument the kernel writes it to
        self._cache: dict[tuple[Block, object], SSAValue] = {}
        self.materialized = materialized
        # maps of the group computed where they are read, at the reader's indices (a pointwise
        # group's producers read through views: see fusion_groups, "pointwise")
        self.recomputed: dict[SSAValue, ein.MapOp] = {}
        # block * PARAM + arange(PARAM) tiles: (block, PARAM, axis it was expanded along or None)
        self.block_index: dict[SSAValue, tuple[SSAValue, str, int | None]] = {}
        # index tiles known to stay below a bound (arange of a parameter bound to an exact extent)
        self.bounded: dict[SSAValue, int] = {}
        self.exact: dict[str, int] = {}  # PARAM -> the extent it must equal
        # PARAM -> extents it must divide: a K block then never crosses an index it is split into
        self.divisors: dict[str, set[int]] = {}

    @contextmanager
    def inside(self, block: Block) -> Iterator[None]:
        """Emit into `block` (a loop body) for the duration of the `with`."""
        outer, self.block = self.block, block
        try:
            yield
        finally:
            self.block = outer

    def _cached(self, key: object, make: Callable[[], SSAValue]) -> SSAValue:
        # values made in the kernel body are visible inside loops, not the other way round
        for block in (self.block, self.kernel_block):
            if (block, key) in self._cache:
                return self._cache[(block, key)]
        value = make()
        self._cache[(self.block, key)] = value
        return value

    def emit(self, op: Operation) -> Operation:
        self.block.add_op(op)
        return op

    def argument(self, value: SSAValue) -> SSAValue:
        """The kernel argument holding the ein tensor `value` (added on first use)."""
        if value not in self._args:
            arg = self.kernel_block.insert_arg(value.type, len(self.kernel_block.args))
            if value.name_hint:
                arg.name_hint = value.name_hint
            self._args[value] = arg
            self.inputs.append(value)
        return self._args[value]

    def output_argument(self, value: SSAValue) -> SSAValue:
        """The kernel argument the ein tensor `value` is written to (added on first use)."""
        if value not in self._outputs:
            arg = self.kernel_block.insert_arg(value.type, len(self.kernel_block.args))
            arg.name_hint = "out"
            self._outputs[value] = arg
        return self._outputs[value]

    def arrange_arguments(self, outputs: Sequence[SSAValue]) -> None:
        """Put the kernel's arguments in launch order: the inputs as first read, then `outputs` in
        the order given (a launch passes `inputs` then the group's outputs). A body that writes an
        output before it reads its last input (a looped row kernel storing its statistics before
        the pass that loads the norm's weight) added them interleaved."""
        if set(self._outputs) != set(outputs) or len(outputs) != len(self._outputs):
            raise ValueError(f"the kernel writes {len(self._outputs)} tensor(s), the group {len(outputs)}")
        block = self.kernel_block
        order = [self._args[v] for v in self.inputs] + [self._outputs[v] for v in outputs]
        if list(block.args) == order:
            return
        for old in order:  # appended afresh in launch order, the old ones then erased
            new = block.insert_arg(old.type, len(block.args))
            new.name_hint = old.name_hint
            old.replace_all_uses_with(new)
            block.erase_arg(old)
        self._args = {v: block.args[i] for i, v in enumerate(self.inputs)}
        self._outputs = {v: block.args[len(self.inputs) + i] for i, v in enumerate(outputs)}

    def param(self, name: str) -> SSAValue:
        return self._cached(("param", name), lambda: self.emit(tile.ParamOp(name)).result)

    def const(self, value: Dim) -> SSAValue:
        """An i32 index constant; a symbolic size is a `tile.size` (the kernel takes its symbols)."""
        value = simplify_size(value)
        if is_symbolic(value):
            try:
                text = size_text(value)
            except ValueError as e:
                raise LoweringUnsupported(str(e)) from None
            return self._cached(("size", text), lambda: self.emit(tile.SizeOp(text)).result)
        make = lambda: self.emit(arith.ConstantOp(IntegerAttr(value, i32))).result  # noqa: E731
        return self._cached(("const", value), make)

    def program_id(self, axis: int) -> SSAValue:
        return self.emit(tile.ProgramIdOp(axis)).result

    def arange(self, size: str) -> SSAValue:
        result = self.emit(tile.ArangeOp(size)).result
        if size in self.exact:
            self.bounded[result] = self.exact[size]
        return result

    def expand(self, x: SSAValue, axis: int) -> SSAValue:
        result = self.emit(tile.ExpandDimsOp(x, axis)).result
        if x in self.block_index and self.block_index[x][2] is None:
            self.block_index[result] = (*self.block_index[x][:2], axis)
        if x in self.bounded:
            self.bounded[result] = self.bounded[x]
        return result

    def map(
        self, inputs: Sequence[SSAValue], out_elem: Attribute,
        body: Callable[..., SSAValue],
    ) -> SSAValue:  # fmt: skip
        """A `tile.map` over tiles and scalars; `body(sb, *scalars)` returns the element."""
        dims = tile.broadcast_dims(*(tile.block_dims(v.type) for v in inputs))
        block = Block(arg_types=[tile.element_type(v.type) for v in inputs])
        result = body(ScalarBuilder(block), *block.args)
        block.add_op(tile.YieldOp(result))
        return self.emit(tile.MapOp(list(inputs), tile.BlockType(dims, out_elem), Region(block))).result

    def full_tile(self, value: SSAValue, indices: Sequence[Index]) -> SSAValue:
        """`value` broadcast to the tile its `indices` span. A load may come back narrower where
        an index is dropped on the way to memory: a row read through a gather of one token, or
        through a view that only moves a size-1 dim (decode's one query, viewed from [1, H, 1, D]
        to [H, 1, D]), is one row for every row of the tile, and `tile.dot` takes full tiles."""
        dims = tile.block_dims(value.type)
        full = tile.broadcast_dims(dims, *(tile.block_dims(i.type) for i in indices))
        if full is None or full == dims:
            return value
        return self.map([value, *indices], tile.element_type(value.type), lambda sb, v, *_: v)

    def index_op(self, name: str, a: Index, b: Index | Dim) -> Index:
        """a `name` b on i32 indices (add, sub, mul, div, rem): arith on scalars, tile.map on tiles."""
        b_val = b if isinstance(b, SSAValue) else self.const(b)
        if isinstance(a.type, tile.BlockType) or isinstance(b_val.type, tile.BlockType):
            result = self.map([a, b_val], i32, lambda sb, x, y: sb.binary(name, x, y))
        else:
            result = ScalarBuilder(self.block).binary(name, a, b_val)
        bound = self._bound_of(name, a, b_val)
        if bound is not None:
            self.bounded[result] = bound
        return result

    def _upper(self, v: Index) -> int | None:
        """An exclusive upper bound of index `v`, where known (aranges of exact tiles, constants)."""
        if v in self.bounded:
            return self.bounded[v]
        if isinstance(v.owner, arith.ConstantOp) and isinstance(v.owner.value, IntegerAttr):
            value = v.owner.value.value.data
            return value + 1 if value >= 0 else None
        return None

    def _bound_of(self, name: str, a: Index, b: Index) -> int | None:
        """A bound of `a name b` from its operands' (see `poison`): a head's columns h * 64 + d, with
        h = pid % 16 and d an exact 64-wide arange, stay under 1024, so a slice of them needs no select,
        which would hide the index's contiguity from Triton (GPT-2's q/k/v read from the fused QKV
        product: 4x slower attention)."""
        ua, ub = self._upper(a), self._upper(b)
        c = ub - 1 if ub is not None and isinstance(b.owner, arith.ConstantOp) else None  # b as a constant
        if name == "add" and ua is not None and ub is not None:
            return ua + ub - 1
        if name == "mul" and ua is not None and c is not None and c > 0:
            return (ua - 1) * c + 1
        if name == "rem" and c is not None and c > 0:  # indices here are never negative
            return min(c, ua) if ua is not None else c
        if name == "div" and ua is not None and c is not None and c > 0:
            return (ua - 1) // c + 1
        return None

    def cdiv(self, n: int, param: str) -> SSAValue:
        size = self.param(param)
        return self.index_op("div", self.index_op("add", self.const(n), self.index_op("sub", size, 1)), size)

    def block_start(self, block_index: SSAValue, param: str) -> SSAValue:
        """block_index * PARAM: the first index of a block (made once per scope)."""
        make = lambda: self.index_op("mul", block_index, self.param(param))  # noqa: E731
        return self._cached(("start", block_index, param), make)

    def offsets(self, block_index: SSAValue, param: str) -> SSAValue:
        """block_index * PARAM + arange(PARAM): the 1-d index tile of one program's block."""
        start = self.block_start(block_index, param)
        tile_ = self.index_op("add", self.arange(param), start)
        self.block_index[tile_] = (block_index, param, None)
        return tile_

    def unravel_block(self, flat: Index, sizes: Sequence[int]) -> list[Index] | None:
        """`unravel` of a K block (start + arange(BLOCK_K)) that stays inside the innermost index:
        the start is split once and the innermost index stays start % size + arange, which
        Triton sees as contiguous. None where that does not apply; otherwise BLOCK_K is
        required to divide the innermost size."""
        if flat not in self.block_index or len(sizes) < 2 or any(map(is_symbolic, sizes)) or sizes[-1] % 16:
            return None
        block, param, axis = self.block_index[flat]
        if param != "BLOCK_K":  # K loop blocks never run past the end of K: no mask to keep
            return None
        self.divisors.setdefault(param, set()).add(sizes[-1])
        # block b of the innermost index's size/BLOCK_K blocks: start (b % n) * BLOCK_K keeps its
        # divisibility by BLOCK_K visible to Triton, so `< size` masks stay uniform per vector
        per_index = self.index_op("div", self.const(sizes[-1]), self.param(param))
        outer = self.unravel(self.index_op("div", block, per_index), sizes[:-1])
        start = self.index_op("mul", self.index_op("rem", block, per_index), self.param(param))
        inner = self.index_op("add", self.arange(param), start)
        return outer + [inner if axis is None else self.expand(inner, axis)]

    def unravel(self, flat: Index, sizes: Sequence[Dim]) -> list[Index]:
        """Row-major multi-index of a flat index. The outermost index is not wrapped, so a flat
        index past the end stays out of bounds (and masked) instead of aliasing a valid element."""
        indices = []
        for j in range(len(sizes)):
            inner = simplify_size(math.prod(sizes[j + 1 :]))
            idx = self.index_op("div", flat, inner) if inner != 1 else flat
            indices.append(self.index_op("rem", idx, sizes[j]) if j > 0 else idx)
        return indices

    def linearize(self, indices: Sequence[Index], sizes: Sequence[Dim]) -> Index:
        flat = None
        for j, idx in enumerate(indices):
            stride = simplify_size(math.prod(sizes[j + 1 :]))
            term = self.index_op("mul", idx, stride) if stride != 1 else idx
            flat = term if flat is None else self.index_op("add", flat, term)
        return flat if flat is not None else self.const(0)

    def broadcast_indices(
        self, value: SSAValue, out_shape: Sequence[Dim], out_idx: Sequence[Index]
    ) -> list[Index]:
        """Indices into `value` (numpy-broadcast to `out_shape`) for the output element at `out_idx`."""
        shape = dims_of(value.type)
        offset = len(out_shape) - len(shape)
        return [
            self.const(0) if d == 1 and out_shape[offset + j] != 1 else out_idx[offset + j]
            for j, d in enumerate(shape)
        ]

    def load(
        self, value: SSAValue, indices: Sequence[Index], block_offsets: Sequence[Index] = ()
    ) -> SSAValue:
        """The elements of ein value `value` at `indices` (one per dim), read through views.

        `block_offsets` (scalars) say the indices form a dense block starting there; they
        reach the `tile.load` only when `value` is read directly, not through a view.
        """
        owner = value.owner
        if value in self.recomputed:
            producer, shape = self.recomputed[value], dims_of(value.type)
            make = lambda: self.apply_map(producer, {}, shape, list(indices))  # noqa: E731
            return self._cached(("recomputed", value, *indices), make)
        if self.materialized(value):
            return self.emit(tile.LoadOp(self.argument(value), list(indices), list(block_offsets))).result
        if isinstance(owner, ein.ConstantOp):
            return self.emit(arith.ConstantOp(owner.value)).result
        if isinstance(owner, ein.IotaOp):
            idx = indices[owner.dim.value.data]
            elem = value.type.get_element_type()
            return self.map([idx], elem, lambda sb, i: sb.cast(i, elem))
        if isinstance(owner, ein.ViewOp):
            return self.load(owner.input, self._view_source_indices(owner, list(indices)))
        if isinstance(owner, ein.GatherOp):
            return self.load(owner.table, self._gather_source_indices(owner, list(indices)))
        if isinstance(owner, ein.ConcatOp):
            return self._load_concat(owner, list(indices))
        raise LoweringUnsupported(f"cannot read {owner.name if owner else 'argument'} inside a kernel")

    def apply_map(
        self, op: ein.MapOp, known: dict[SSAValue, SSAValue], out_shape: Sequence[int], out_idx: list[Index]
    ) -> SSAValue:
        """`op`'s body on its operands at `out_idx` of `out_shape` (broadcast): those in `known` as
        they are, the others read (a recomputed producer: evaluated there in turn)."""
        operands = [
            known[v] if v in known else self.load(v, self.broadcast_indices(v, out_shape, out_idx))
            for v in op.inputs
        ]
        elem = op.result.type.get_element_type()
        return self.map(operands, elem, lambda sb, *args: inline_map_body(op, args, sb.block))

    def _load_concat(self, concat: ein.ConcatOp, idx: list[Index]) -> SSAValue:
        """The elements of a concatenation, read in place: each operand is loaded where the index
        falls in its range (elsewhere its index is out of bounds, so that load is masked), and the
        operand whose range holds the index is picked. RoPE's rotate_half (`cat(-x2, x1)`) and Phi's
        partial rotary then cost no copy kernel."""
        dim = concat.dim.value.data
        at = idx[dim]
        value, start = None, 0
        # zero padding (constant_pad_nd): where every other operand reads zero out of its bounds, a
        # zero piece is what the others' masked loads give there: no select (a depthwise stencil's
        # taps, `compiler/depthwise_conv.py`, would pay several per load)
        padding = self.zero_outside(concat.result) and any(not _is_zero(v) for v in concat.inputs)
        for operand in concat.inputs:
            size = shape_of(operand.type)[dim]
            if padding and _is_zero(operand):
                start += size
                continue
            # the first operand's index is the concatenation's: past its end the load's bound masks it
            source = at if start == 0 else self._shifted_index(at, start, size)
            part = self.load(operand, [*idx[:dim], source, *idx[dim + 1 :]])
            if value is not None:
                begin = self.const(start)
                part = self.map(
                    [at, begin, part, value], tile.element_type(part.type),
                    lambda sb, i, b, new, old: sb.select(sb.cmp("ge", i, b), new, old),
                )  # fmt: skip
            value, start = part, start + size
        return value

    def zero_outside(self, value: SSAValue) -> bool:
        """Whether reading `value` at an index out of its bounds gives zero: a tensor in memory (a
        masked load), read through views that keep such an index out of bounds, or a concatenation
        of such tensors and zeros. (A reshape with a size-1 dim drops that dim's index.)"""
        owner = value.owner
        if value in self.recomputed:
            return False
        if self.materialized(value):
            return True
        if isinstance(owner, ein.ViewOp):
            if owner.kind.data == "reshape" and 1 in dims_of(owner.result.type):
                return False
            return self.zero_outside(owner.input)
        if isinstance(owner, ein.ConcatOp):
            return all(_is_zero(v) or self.zero_outside(v) for v in owner.inputs)
        return False

    def _shifted_index(self, at: Index, start: int, size: int) -> Index:
        """`at - start` where `at >= start`; `size` (out of bounds: masked) below it."""

        def body(sb: ScalarBuilder, i: SSAValue, begin: SSAValue, bad: SSAValue) -> SSAValue:
            return sb.select(sb.cmp("lt", i, begin), bad, sb.sub(i, begin))

        operands = [at, self.const(start), self.const(size)]
        if isinstance(at.type, tile.BlockType):
            return self.map(operands, i32, body)
        return body(ScalarBuilder(self.block), *operands)

    def _view_source_indices(self, view: ein.ViewOp, idx: list[Index]) -> list[Index]:
        """Source indices of a view. An index out of bounds for the view is kept out of bounds
        for the source (poisoned), so load masks stay exact: a K loop's tail must read zeros."""
        kind, p = view.kind.data, view.view_params
        src, dst = dims_of(view.input.type), dims_of(view.result.type)
        if (is_symbolic(math.prod(src)) or is_symbolic(math.prod(dst))) and kind not in SYMBOLIC_VIEWS:
            raise LoweringUnsupported(f"a {kind} view of symbolic sizes is not read inside a kernel yet")
        if kind == "permute":
            out: list[Index] = [self.const(0)] * len(src)
            for i, source_dim in enumerate(p):
                out[source_dim] = idx[i]
            return out
        if kind == "expand":
            return [
                self.poison(self.const(0), i, d, 1) if s == 1 and d != 1 else i
                for s, d, i in zip(src, dst, idx)
            ]
        if kind == "flip":  # index size-1-i along the flipped dims; past the end stays past the end
            for d in p:
                mirrored = self.index_op("sub", self.const(src[d] - 1), idx[d])
                idx[d] = self.poison(mirrored, idx[d], src[d], src[d], nonnegative=False)
            return idx
        if kind == "slice":
            dim, start, _, step = p
            scaled = self.index_op("mul", idx[dim], step) if step != 1 else idx[dim]
            shifted = self.index_op("add", scaled, start) if start else scaled
            idx[dim] = self.poison(shifted, idx[dim], dst[dim], src[dim])
            return idx
        if [d for d in src if d != 1] == [d for d in dst if d != 1]:  # only size-1 dims move
            kept = iter(i for i, d in zip(idx, dst) if d != 1)
            return [self.const(0) if d == 1 else next(kept) for d in src]
        groups = _reshape_groups(src, dst)
        if groups is None:
            groups = [((0, len(src)), (0, len(dst)))]
        out: list[Index] = []
        for (s0, s1), (d0, d1) in groups:
            if s1 - s0 == 1 and d1 - d0 == 1:  # a dim the reshape keeps: its index as it is
                out.append(idx[d0])
                continue
            # dims split or merged: index arithmetic on this group only, so a dim left alone
            # keeps a plain (contiguous, vectorizable) index
            if d1 - d0 == 1 and (split := self.unravel_block(idx[d0], src[s0:s1])) is not None:
                out += split
                continue
            flat = self.linearize(idx[d0:d1], dst[d0:d1])
            for i, d in zip(idx[d0:d1], dst[d0:d1]):
                flat = self.poison(flat, i, d, math.prod(src[s0:s1]))
            out += self.unravel(flat, src[s0:s1])
        return out

    def _gather_source_indices(self, gather: ein.GatherOp, idx: list[Index]) -> list[Index]:
        """Table indices of a gather: result indices, or positions loaded from its index tensors
        (negative ones wrapped). A position read for a result index out of bounds is poisoned, as
        the index tensor's masked load would otherwise hand back a valid row."""
        out, table = shape_of(gather.result.type), shape_of(gather.table.type)
        source: list[Index] = []
        for k, m in enumerate(gather.sources):
            if m >= 0:
                source.append(self.poison(idx[m], idx[m], out[m], table[k]) if out[m] < table[k] else idx[m])
                continue
            index_tensor = gather.indices[-1 - m]
            at = self.broadcast_indices(index_tensor, out, idx)
            size = self.const(table[k])
            position = self.map(
                [self.cast(self.load(index_tensor, at), i32), size], i32,
                lambda sb, p, n: sb.select(sb.cmp("lt", p, sb.const(0, i32)), sb.add(p, n), p),
            )  # fmt: skip
            varying = shape_of(index_tensor.type)[::-1]
            for j, (i, d) in enumerate(zip(idx[::-1], out[::-1])):
                if j < len(varying) and varying[j] != 1:
                    position = self.poison(position, i, d, table[k])
            source.append(position)
        return source

    def poison(self, value: Index, guard: Index, bound: int, bad: int, nonnegative: bool = True) -> Index:
        """`value` where `guard < bound`, else an index at least `bad` (out of bounds for the reader).

        A `nonnegative` value is pushed out as `value + (guard >= bound) * bad`: Triton's axis
        analysis keeps the sum's contiguity (the comparison is uniform over aligned runs of a
        contiguous guard), where a select against a constant hides it and every load through the
        index goes one element at a time (a reshaped loss's reduction, 4096 x 8192 bf16: 28% of copy
        bandwidth on the H200). Chained poisons add `bad` again, so the sum is kept for `bad` far
        below int32's range; otherwise, and for a value that may be negative, a select."""
        if not isinstance(guard.type, tile.BlockType):
            return value  # scalar indices come from the grid and are in bounds
        if is_symbolic(bound) or is_symbolic(bad):  # the bound is the kernel's size argument
            return self.map(
                [guard, value, self.const(bad), self.const(bound)], i32,
                lambda sb, g, v, b, n: sb.select(sb.cmp("lt", g, n), v, b),
            )  # fmt: skip
        if self.bounded.get(guard, bound + 1) <= bound:
            return value  # nothing to poison: the guard never reaches its bound
        if nonnegative and bad < POISON_BY_SUM_LIMIT:
            return self.map(
                [guard, value, self.const(bad)], i32,
                lambda sb, g, v, b: sb.add(v, sb.mul(sb.cast(sb.cmp("ge", g, sb.const(bound, i32)), i32), b)),
            )  # fmt: skip
        return self.map(
            [guard, value, self.const(bad)], i32,
            lambda sb, g, v, b: sb.select(sb.cmp("lt", g, sb.const(bound, i32)), v, b),
        )  # fmt: skip

    def store(self, output: SSAValue, indices: Sequence[Index], value: SSAValue) -> None:
        self.emit(tile.StoreOp(output, list(indices), value))

    def cast(self, x: SSAValue, elem: Attribute) -> SSAValue:
        if tile.element_type(x.type) == elem:
            return x
        if not isinstance(x.type, tile.BlockType):
            sb = ScalarBuilder(self.block)
            return sb.cast(x, elem)
        return self.map([x], elem, lambda sb, v: sb.cast(v, elem))


# views read inside a kernel whose sizes may be symbolic (others raise LoweringUnsupported)
SYMBOLIC_VIEWS = ("permute", "expand", "reshape")


def _divides(a: Dim, b: Dim) -> bool:
    """Whether `a` divides `b` for every value of their symbols, and `a != b` (a grows toward b)."""
    if not (is_symbolic(a) or is_symbolic(b)):
        return a < b
    _, denominator = sympy.fraction(sympy.cancel(sympy.sympify(b) / a))
    return denominator == 1 and simplify_size(sympy.sympify(b) - a) != 0


def _differ(a: Dim, b: Dim) -> bool:
    if not (is_symbolic(a) or is_symbolic(b)):
        return a != b
    return simplify_size(sympy.sympify(a) - b) != 0


def _reshape_groups(
    src: Sequence[Dim], dst: Sequence[Dim]
) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """Consecutive dims of `src` and `dst` with equal products: [(src range, dst range)].

    None when a group would be empty on one side (size-1 or zero-size dims at the end),
    where the reshape is handled as one group. A symbolic size joins a group only where it
    divides the other side's product (s0, s1 -> s0*s1); otherwise the reshape is one group.
    """
    groups = []
    i = j = 0
    while i < len(src) and j < len(dst):
        i0, j0 = i, j
        ps, pd = src[i], dst[j]
        i, j = i + 1, j + 1
        while _differ(ps, pd):
            if _divides(ps, pd) and i < len(src):
                ps, i = ps * src[i], i + 1
            elif _divides(pd, ps) and j < len(dst):
                pd, j = pd * dst[j], j + 1
            else:
                return None
        groups.append(((i0, i), (j0, j)))
    if i != len(src) or j != len(dst) or 0 in src:
        return None
    return groups


def _is_zero(value: SSAValue) -> bool:
    """An `ein.constant` zero tensor."""
    owner = value.owner
    return isinstance(owner, ein.ConstantOp) and owner.value.value.data == 0
