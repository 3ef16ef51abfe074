"""form-fusion-groups: decide which `ein` ops run together in one kernel.

Each op that computes gets an `ein.group = "kN"` attribute; ops of one group
become one `tile.kernel`. The decision is in the IR, so the dump shows which
op went where:

- **attention**: `contract → [scale/mask] → softmax → contract` (see
  flash_attention), one flash-attention kernel; matched before anything else.
- **gemm**: a contraction plus its chain of elementwise consumers (bias,
  activation, residual, scaling, cast, where/clamp), as long as each link has
  no other user and keeps the contraction's output shape. Two contractions
  whose results meet in the first map of the chain (SwiGLU:
  `silu(x@W1) * (x@W3)`) share one kernel with two accumulators. A row group
  over the output's N index (softmax, log-softmax, norms of the product) joins
  it when a tile can hold whole rows (N <= MAX_EPILOGUE_ROW), or when the row was
  split into chunks a tile holds (split-reduction: a reshape [.., N] -> [.., T, C]
  feeding the row group); other wide rows stay a GEMM plus a row kernel.
  The product may also be read after the row group (the residual stream h,
  when the epilogue ends with the residual add and the row group is the
  norm): the kernel then writes both. When the row is wider, a residual add
  in a GEMM's epilogue stays there: moving it into the norm's row kernel
  would cost the GEMM's output a write and a read more than writing `h` and
  reading it back.
- **row**: reductions over the same dims of the same shape, with the maps
  around them (full-shaped or row-shaped), whose intermediates are used only
  inside the group: softmax, log-softmax, LayerNorm, RMSNorm and chains of
  them read each row once and write it once. Only when a row (the reduced
  extent) fits in one tile (`MAX_ROW` elements). A value the group reads that
  is also read after it (a pre-norm block's residual stream `h = x + y`,
  which feeds the norm and is added to again later) joins the group as a
  second output: the kernel writes `h` and `norm(h)` and nobody reads `h`
  back. After norm-prologue the same rule puts the add into the kernel of
  the row statistics (it writes `h` and the sums the GEMM epilogues read).
  Maps of the statistics that nothing in the group reads (a training
  BatchNorm's running mean and variance, after the combine of its split
  statistics) are outputs of the group too, rather than kernels of their own.
- **reduction**: any other reduction plus the map that produces its input, if
  that map has no other user (a prologue: `sum(exp(x - m))` reads `x` once);
  a loop over the row in chunks. Reductions over one space (input shape and
  reduced dims) that read a tensor in common, or with no other kernel between
  them, share the loop with an accumulator each (a LayerNorm's weight and
  bias gradients).
- **scan**: a running sum or product (cumsum, cumprod) plus the map that
  produces its input, if that map has no other user (a masked cumsum reads
  `x` and the mask once), or else the chain of maps after it, each the only
  reader of the one before (`cumsum(x) * 2 + 1`); a row in one tile, or a
  loop over its chunks with a carry.
- **pointwise**: every other map, with the maps whose results only it reads
  (directly or through views and concatenations, at most as many elements as
  it writes): the kernel recomputes them at the indices it reads them, and
  they write nothing (RoPE's backward: slices of a product, one negated,
  concatenated with zeros, added). Pointwise groups of one shape that read a
  tensor in common are then one kernel writing each group's result (SwiGLU's
  backward: the gate's and the up projection's gradients), where neither reads
  the other's result; the kernel runs at the later group's place, or at the
  first's (the later maps moving up) when something reads the first's result
  in between. Groups of a small shape (a channel's running statistics) join
  without a tensor in common: their launches are their cost.

Views, splat constants, iotas, gathers and concatenations are not kernels:
kernels index through them (a concatenation's operands are each read where the
index falls in their range), and they are materialized only for a reader that
is not a kernel. A concatenation or gather a contraction reads gets a copy
kernel of its own first (`copy_contracted_operands`): operand tiles
stream from one buffer.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Block, Operation, SSAValue
from xdsl.passes import ModulePass

from ..ir import einsum as ein
from ..ir.builder import InsertingEinBuilder, read_by_contraction, single_user, widened_source
from ..ir.dtypes import dims_of, has_symbolic_sizes, is_float, is_static, is_symbolic, undecided_as
from ..ir.module import functions
from .flash_attention import match_attention
from .split_reduction import MAX_EPILOGUE_ROW, chunk_size

GROUP_ATTR = "ein.group"
# kernels read through them
VIRTUAL_OPS = (ein.ViewOp, ein.ConstantOp, ein.IotaOp, ein.GatherOp, ein.ConcatOp)
MAX_ROW = 16384  # reduced elements a row kernel holds in registers at once
# wider rows (a softmax over a vocabulary) are walked in chunks, a pass per reduction (lower_to_tile)
MAX_CHUNKED_ROW = 1 << 24


@dataclass
class FusionGroup:
    """The ops of one future kernel, in program order, and what kind of kernel it is."""

    name: str
    kind: str
    ops: list[Operation]

    @property
    def output(self) -> SSAValue:
        """The primary result: the last op's (the group runs where that op stands)."""
        return self.ops[-1].results[0]

    @cached_property
    def outputs(self) -> list[SSAValue]:
        """The results that leave the group, in program order, the primary one last: the last
        op's, and any member's that an op outside reads (a residual stream the group also
        normalizes). Derived from the IR, so groups read back from `ein.group` agree."""
        members = set(self.ops)
        extra = [r for op in self.ops[:-1] for r in op.results if not _read_inside(r, members)]
        return [*extra, self.output]


def _read_inside(value: SSAValue, members: set[Operation]) -> bool:
    """Whether only `members` read `value`, directly or through views."""
    for use in value.uses:
        user = use.operation
        if user in members:
            continue
        if not isinstance(user, VIRTUAL_OPS) or not all(_read_inside(r, members) for r in user.results):
            return False
    return True


def _same_output_layout(a: ein.ContractOp, b: ein.ContractOp) -> bool:
    """Two contractions a dual-accumulator kernel can run together: same lhs, shapes and K."""
    if a.lhs is not b.lhs or a.result.type != b.result.type:
        return False
    (la, ra, oa), (lb, rb, ob) = ein.parse_spec(a.spec.data), ein.parse_spec(b.spec.data)
    return la == lb and len(oa) == len(ob) and ra == rb.translate(str.maketrans(ob, oa))


def _sibling_chain(
    value: SSAValue, contract: ein.ContractOp, taken: set[Operation], out_shape
) -> list[Operation]:
    """A sibling contraction and its single-use epilogue maps ending in `value`, if `value` is one.

    SwiGLU's `silu(x@W1) * (x@W3)`, also when each product first gets its own epilogue (the
    row scale of a folded norm): `silu(r * (x@W1')) * (r * (x@W3'))`.
    """
    chain: list[Operation] = []
    while True:
        op = value.owner
        if isinstance(op, ein.ContractOp):
            ok = op is not contract and op not in taken and _same_output_layout(contract, op)
            return [op, *chain] if ok and single_user(value) is not None else []
        if not isinstance(op, ein.MapOp) or op in taken or single_user(value) is None:
            return []
        if dims_of(op.result.type) != out_shape:
            return []
        inner = [
            v
            for v in op.inputs
            if dims_of(v.type) == out_shape and isinstance(v.owner, ein.MapOp | ein.ContractOp)
        ]
        if len(inner) != 1:
            return []
        chain.insert(0, op)
        value = inner[0]


# An epilogue runs after the last K step, unoverlapped with the MMA, on a whole accumulator tile:
# past this weight a separate pointwise kernel costs less than its place in the GEMM. Weight: one
# per float conversion (eager rounds every 16-bit op; Hopper converts at 16 a cycle per SM), four
# per math function. H200, bf16, 2048x1024x4096: the tanh GELU (weight ~22) in the epilogue took
# 55 us against 27.5 for the GEMM alone (Inductor: 40 for cuBLAS plus a pointwise kernel; 8192x4096
# x4096: 465 against 381); the erf GELU (6) 41 against 38.
MAX_EPILOGUE_WEIGHT = 16
_CONVERSIONS = ("arith.extf", "arith.truncf")
# math ops that are one instruction, not a function: `absf` (a sign-bit mask) weighs nothing, so the exact
# GELU (an exp and an abs since libdevice's erf went: lower_elementwise._gelu_erfc) weighs what it did
_CHEAP_MATH = ("math.absf",)


def math_functions(op: ein.MapOp) -> int:
    """How many math functions (erf, tanh, exp...) a map's body computes per element (`absf`, one
    instruction, is not one)."""
    return sum(_math_call(inner) for inner in op.body.walk())


def _math_call(op: Operation) -> bool:
    return op.name.startswith("math.") and op.name not in _CHEAP_MATH


def epilogue_weight(op: ein.MapOp) -> int:
    """What a map costs as a GEMM epilogue (see MAX_EPILOGUE_WEIGHT): the work done on every element.
    What only per-row or per-column operands feed (an eval BatchNorm's `rsqrt(var + eps)`, a bias's
    upcast) is computed on a row or column of the tile, once, and weighs nothing."""
    size = math.prod(dims_of(op.result.type))
    block = op.body.block
    operands = zip(block.args, op.inputs, strict=True)
    varying = {arg for arg, v in operands if math.prod(dims_of(v.type)) == size}
    weight = 0
    for inner in block.ops:
        if not any(operand in varying for operand in inner.operands):
            continue
        varying.update(inner.results)
        weight += 1 if inner.name in _CONVERSIONS else 4 if _math_call(inner) else 0
    return weight


def _gemm_group(contract: ein.ContractOp, taken: set[Operation]) -> list[Operation]:
    ops: list[Operation] = [contract]
    value = contract.result
    out_shape = dims_of(contract.result.type)
    has_sibling, weight = False, 0
    while (user := single_user(value)) is not None and isinstance(user, ein.MapOp):
        if user in taken or dims_of(user.result.type) != out_shape:
            break
        sibling: list[Operation] = []
        for other in user.inputs:
            if other is not value and not has_sibling and not sibling:
                sibling = _sibling_chain(other, contract, taken, out_shape)
        weight += epilogue_weight(user)
        if weight > MAX_EPILOGUE_WEIGHT and not sibling:  # the map joining two products always joins
            break
        if sibling:
            ops = sibling + ops
            has_sibling = True
        ops.append(user)
        value = user.result
    return ops


@dataclass(frozen=True)
class RowSpace:
    """The domain of a row group: tensors of `shape` reduced over `dims`, and the rows' statistics
    (`row_shape` with the reduced dims kept as 1, or `stat_shape` without them)."""

    shape: tuple[int, ...]
    dims: tuple[int, ...]

    @staticmethod
    def of(reduce: ein.ReduceOp) -> RowSpace:
        return RowSpace(tuple(dims_of(reduce.input.type)), tuple(reduce.reduce_dims))

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(1 if d in self.dims else s for d, s in enumerate(self.shape))

    @property
    def stat_shape(self) -> tuple[int, ...]:
        return tuple(s for d, s in enumerate(self.shape) if d not in self.dims)

    @property
    def row_size(self) -> int:
        return math.prod(self.shape[d] for d in self.dims)

    def is_stat_view(self, op: Operation | None) -> bool:
        """A reshape between the two statistics shapes (a reduction's keepdim added or dropped)."""
        shapes = {self.row_shape, self.stat_shape}
        return (
            isinstance(op, ein.ViewOp) and op.kind.data == "reshape"
            and {tuple(dims_of(op.input.type)), tuple(dims_of(op.result.type))} <= shapes
        )  # fmt: skip

    def holds(self, op: Operation) -> bool:
        """Whether `op` computes in this space: a map to one of its shapes, or a reduction like the
        seed's. A full- or row-shaped map may not read a computed statistic without keepdim:
        broadcasting would line it up with the trailing dims, not the rows."""
        if isinstance(op, ein.ReduceOp):
            return RowSpace.of(op) == self and is_float(op.result.type.get_element_type())
        if not isinstance(op, ein.MapOp):
            return False
        result = tuple(dims_of(op.result.type))
        if result == self.stat_shape:
            return True
        computed_stat = lambda v: (  # noqa: E731
            tuple(dims_of(v.type)) == self.stat_shape and isinstance(v.owner, ein.MapOp | ein.ReduceOp)
        )
        return result in (self.shape, self.row_shape) and (
            self.stat_shape in (self.shape, self.row_shape) or not any(map(computed_stat, op.inputs))
        )


def _users(op: Operation, space: RowSpace) -> list[Operation]:
    """The ops reading `op`'s results, looking through reshapes between statistics shapes."""
    users = []
    for result in op.results:
        for use in result.uses:
            user = use.operation
            users += _users(user, space) if space.is_stat_view(user) else [user]
    return users


def _producers(op: Operation, space: RowSpace) -> list[Operation]:
    owners = [v.owner for v in op.operands]
    return [o.input.owner if space.is_stat_view(o) else o for o in owners]


def _row_group(seed: ein.ReduceOp, order: list[Operation], taken: set[Operation]) -> list[Operation] | None:
    """The largest row group containing `seed` (see the module docstring), if any.

    The candidates are the ops of the seed's space connected to it; the output is the latest
    candidate whose backward closure holds the seed. The closure takes producers all of whose
    users are already in, and producers also read after the output (extra outputs).
    """
    space = RowSpace.of(seed)
    if seed.kind.data in ein.ARG_KINDS:
        return None
    # a row of a symbolic length is walked in chunks (`lower_to_tile._lower_row_in_chunks`)
    fits_a_kernel = is_symbolic(space.row_size) or 1 < space.row_size <= MAX_CHUNKED_ROW
    if not fits_a_kernel or len(space.dims) == len(space.shape):
        return None
    fits = lambda op: isinstance(op, Operation) and op not in taken and space.holds(op)  # noqa: E731
    component, stack = set(), [seed]
    while stack:
        op = stack.pop()
        if op not in component:
            component.add(op)
            stack += [o for o in _producers(op, space) + _users(op, space) if fits(o)]
    position = {op: i for i, op in enumerate(order)}
    if (whole := _closed_component(component, seed, space, position)) is not None:
        return whole
    users_of = {op: _users(op, space) for op in component}  # read once: the loop below revisits ops
    for output in sorted(component, key=position.__getitem__, reverse=True):
        members, grown = {output}, True
        while grown:
            grown = False
            for op in component - members:
                users = users_of[op]
                inside = users and all(u in members for u in users)
                if inside or _extra_output(op, users, members, space, position, position[output]):
                    members.add(op)
                    grown = True
        if seed in members:
            return sorted(members, key=position.__getitem__)
    return None


def _closed_component(
    component: set[Operation], seed: ein.ReduceOp, space: RowSpace, position: dict
) -> list[Operation] | None:
    """The most of `component` one kernel can compute at its last op, when that holds `seed` and
    reads nothing of the component it leaves out; else None (`_row_group` then grows a group back
    from one output). Unlike that growth this keeps several results nobody in the group reads (a
    BatchNorm's two running statistics, each a map of a statistic): each is one more output. An op
    leaves while one of its results is read too early (`_written_in_time`), except through a
    statistics reshape read only after the end: such a view moves to just after the kernel's last op."""
    end = max(position[op] for op in component)
    members = set(component)
    late_views: set[Operation] = set()
    left = True
    while left:
        late_views.clear()
        left = [
            op for op in members
            if not all(_written_in_time(r, members, space, position, end, late_views) for r in op.results)
        ]  # fmt: skip
        members.difference_update(left)
    left_out = component - members
    if seed not in members or any(p in left_out for op in members for p in _producers(op, space)):
        return None
    ordered = sorted(members, key=position.__getitem__)
    for view in sorted(late_views, key=position.__getitem__, reverse=True):
        view.detach()
        ordered[-1].parent.insert_op_after(view, ordered[-1])
    return ordered


def _written_in_time(
    value: SSAValue, members: set[Operation], space: RowSpace, position: dict, end: int,
    late_views: set[Operation] | None = None,
) -> bool:  # fmt: skip
    """Whether a group of `members` ending at `end` may write `value`: every reader outside the group
    comes after that op, where the kernel has written it. Before that point only a statistics
    reshape read by members may read it (the kernel keeps both in registers); through any other
    view the kernel would load what it has not stored yet. Where `late_views` is given, a
    statistics reshape read only after the end passes too, and is collected there (to be moved)."""
    for use in value.uses:
        user = use.operation
        if user in members or position[user] > end:
            continue
        if not space.is_stat_view(user):
            return False
        if late_views is not None and all(position[u.operation] > end for r in user.results for u in r.uses):
            late_views.add(user)
        elif not all(_read_inside(r, members) for r in user.results):
            return False
    return True


def _extra_output(
    op: Operation, users: list[Operation], members: set[Operation], space: RowSpace, position: dict, end: int
) -> bool:
    """Whether `op` can join a group ending at `end` as an extra output: it feeds the group and the
    kernel writes its results in time (`_written_in_time`)."""
    feeds = any(u in members for u in users)
    return feeds and all(_written_in_time(r, members, space, position, end) for r in op.results)


def form_groups(fn: func.FuncOp) -> list[FusionGroup]:
    """Partition the computing ops of `fn` into fusion groups (see the module docstring)."""
    ops = list(fn.body.block.ops)
    taken: set[Operation] = set()
    groups: list[tuple[int, str, list[Operation]]] = []
    # over symbolic sizes, a comparison sympy cannot order means the choice that fuses nothing more
    decided = undecided_as if has_symbolic_sizes(fn) else lambda f, _: f
    match_attention_, gemm_group, row_group = (
        decided(match_attention, lambda op: None), decided(_gemm_group, lambda op, taken: [op]),
        decided(_row_group, lambda op, ops, taken: None),
    )  # fmt: skip
    scan_epilogue, pointwise_group = (
        decided(_scan_epilogue, lambda op, taken: []),
        decided(_pointwise_group, lambda op, taken: [op]),
    )
    merges = [decided(m, lambda groups, ops: groups) for m in (
        _merge_row_epilogues, _merge_sibling_pointwise, _absorb_shared_producers,
        _merge_sibling_reductions)]  # fmt: skip

    def add(kind: str, members: list[Operation]) -> None:
        taken.update(members)
        groups.append((max(ops.index(m) for m in members), kind, members))

    for op in ops:
        if isinstance(op, ein.ContractOp) and (attention := match_attention_(op)):
            add("attention", sorted(attention.ops, key=ops.index))
    for op in ops:
        if isinstance(op, ein.ContractOp) and op not in taken:
            add("gemm", sorted(gemm_group(op, taken), key=ops.index))
    for op in ops:
        if isinstance(op, ein.ReduceOp) and op not in taken and (row := row_group(op, ops, taken)):
            add("row", row)
    for op in ops:
        if isinstance(op, ein.ReduceOp) and op not in taken:
            producer = op.input.owner
            prologue = (
                isinstance(producer, ein.MapOp) and producer not in taken
                and single_user(op.input) is op and producer.result.type == op.input.type
            )  # fmt: skip
            add("reduction", [producer, op] if prologue else [op])
    for op in ops:
        if isinstance(op, ein.ScanOp):
            producer = op.input.owner
            prologue = (
                isinstance(producer, ein.MapOp) and producer not in taken and single_user(op.input) is op
            )
            add("scan", [producer] * prologue + [op] + scan_epilogue(op, taken))
    for op in reversed(ops):  # a consumer first: it takes in the producers only it reads
        if isinstance(op, ein.MapOp) and op not in taken:
            add("pointwise", sorted(pointwise_group(op, taken), key=ops.index))
    for merge in merges:
        groups = merge(groups, ops)
    groups.sort(key=lambda g: g[0])
    return [FusionGroup(f"k{i}", kind, members) for i, (_, kind, members) in enumerate(groups)]


MAX_RECOMPUTED_MAPS = 8  # producer maps a pointwise kernel takes in (each a load and a body more)


def _pointwise_group(consumer: ein.MapOp, taken: set[Operation]) -> list[Operation]:
    """`consumer` and the maps whose results only it reads, directly or through views and
    concatenations (Inductor's inlining of pointwise producers): the kernel recomputes them at
    the indices it reads them (lower_to_tile.lower_pointwise), and they write nothing. RoPE's
    backward (a product, sliced in halves, one half negated, the halves concatenated with zeros
    and added) was five kernels and four buffers a layer. A producer with more elements than the
    consumer (read broadcast or in part) stays a kernel of its own: its work would repeat."""
    members: list[Operation] = [consumer]
    size = math.prod(dims_of(consumer.result.type))
    frontier = [consumer]
    while frontier and len(members) <= MAX_RECOMPUTED_MAPS:
        op = frontier.pop()
        for producer in _map_sources(op):
            if producer in taken or producer in members or widened_source(producer.result) is not None:
                continue
            if math.prod(dims_of(producer.result.type)) > size:
                continue
            if _read_inside(producer.result, set(members)):
                members.append(producer)
                frontier.append(producer)
    return members


MAX_SIBLINGS = 3  # pointwise groups one kernel evaluates side by side
# elements under which a pointwise kernel costs its launch, not its memory traffic: groups of such a shape
# become one kernel whether or not they read a tensor in common (a training BatchNorm's running-statistic
# updates and saved statistics, three kernels of a channel's size a layer: 159 launches in ResNet-50's step)
SMALL_SIBLING = 1 << 16


def _merge_sibling_pointwise(groups: list, order: list[Operation]) -> list:
    """Pointwise groups of one shape that read a tensor in common become one kernel writing each
    group's result (Inductor's horizontal fusion of nodes sharing reads): the shared tensor is read
    once, and one launch goes. SwiGLU's backward reads the up projection and the gate into two
    maps, one per gradient. Groups of a small shape (`SMALL_SIBLING`) join without a tensor in
    common where no other kernel runs between them: their launches are their cost. The kernel runs
    at the later group's place where nothing outside reads the first's results before it; else at
    the first's place, where every tensor the later group reads is computed by then (its maps move
    up in the function to run there). The later group must not read the first's results."""
    position = {op: i for i, op in enumerate(order)}
    pointwise = sorted((g for g in groups if g[1] == "pointwise"), key=lambda g: g[0])
    # where the other kernels run: small groups join only with no other kernel between them (a layer's
    # statistics updates, side by side), not across a model's layers
    barriers = sorted(position[op] for g in groups if g[1] != "pointwise" for op in g[2])
    return _merge_siblings(
        groups, pointwise, position, "pointwise", lambda a, b: _sibling_place(a, b, position, barriers)
    )


def _merge_siblings(groups: list, candidates: list, position: dict, kind: str, place_of: Callable) -> list:
    """Merge `candidates` (groups sorted by place) pairwise in order, up to MAX_SIBLINGS a kernel, where
    `place_of(current, later)` says where the two run as one (`_sibling_place`: "later", or the views to
    move up with the later group's ops to the first's place) or None; the merged groups are of `kind`."""
    absorbed: set[int] = set()
    result: dict[int, tuple] = {id(g): g for g in groups}
    for i, first in enumerate(candidates):
        if id(first) in absorbed:
            continue
        current, joined = first, 1
        for later in candidates[i + 1 :]:
            if joined >= MAX_SIBLINGS:
                break
            if id(later) in absorbed:
                continue
            place = place_of(current, later)
            if place is None:
                continue
            if place != "later":  # the later group's ops, and the views they read, move up after the first's
                anchor = current[2][-1]
                moved = sorted(place + later[2], key=position.__getitem__)
                for op in reversed(moved):
                    op.detach()
                    anchor.parent.insert_op_after(op, anchor)
                at = current[0]
            else:
                at = later[0]
            members = sorted(current[2] + later[2], key=position.__getitem__)
            combined = (at, kind, members)
            for g in (current, later):
                result.pop(id(g), None)
                absorbed.add(id(g))
            result[id(combined)] = combined
            current, joined = combined, joined + 1
    return list(result.values())


def _merge_sibling_reductions(groups: list, order: list[Operation]) -> list:
    """Reduction groups over one space (the same input shape, the same reduced dims) that read a tensor
    in common become one kernel, a loop with an accumulator each (Inductor fuses reductions over the
    same ranges): a LayerNorm's weight and bias gradients, `sum(dy * xhat)` and `sum(dy)` over the
    tokens, were two launches each reading dy. Reductions with no tensor in common join where no
    other kernel runs between them (the product `dy * xhat` written by the norm's backward row kernel
    beside dy: one launch less). Float reductions only (not argmax/argmin), with kept
    dims (not a reduction to one element). The kernel runs at the later group's place where nothing
    outside reads the first's results before it, else at the first's (the later's ops moving up);
    the later group must not read the first's results. At most MAX_SIBLINGS a kernel."""
    position = {op: i for i, op in enumerate(order)}

    def space(group: tuple) -> RowSpace | None:
        # (a reduction and its prologue may have been formed as a row group: `_kind` reads it back as one)
        if group[1] not in ("reduction", "row") or _kind(group[2]) != "reduction":
            return None
        reduce = group[2][-1]
        kept = len(reduce.reduce_dims) < len(dims_of(reduce.input.type))
        float_ = is_float(reduce.result.type.get_element_type())
        return RowSpace.of(reduce) if kept and float_ and reduce.kind.data not in ein.ARG_KINDS else None

    candidates = sorted((g for g in groups if space(g) is not None), key=lambda g: g[0])
    # where the other kernels run: reductions with no tensor in common join only with none between them
    barriers = sorted(position[op] for g in groups if space(g) is None for op in g[2])

    def place_of(current: tuple, later: tuple) -> str | list[Operation] | None:
        if space(later) != space(current):
            return None
        place = _sibling_place(current, later, position, barriers, shape=space(current).shape)
        joined = sorted(current[2] + later[2], key=position.__getitem__)
        return place if place is not None and _sibling_reductions(joined) else None

    return _merge_siblings(groups, candidates, position, "reduction", place_of)


def _readers(value: SSAValue) -> set[Operation] | None:
    """The ops that read `value`, through views and concatenations; None where anything else
    virtual (a gather) or the function's return reads it."""
    found: set[Operation] = set()
    for use in value.uses:
        user = use.operation
        if isinstance(user, ein.ViewOp | ein.ConcatOp):
            inner = _readers(user.result)
            if inner is None:
                return None
            found |= inner
        elif isinstance(user, VIRTUAL_OPS) or not isinstance(user, ein.MapOp):
            return None
        else:
            found.add(user)
    return found


def _absorb_shared_producers(groups: list, order: list[Operation]) -> list:
    """A pointwise group that only one other pointwise group reads is recomputed inside it, as
    `_pointwise_group` recomputes a producer only one map reads. Siblings merged above can share a
    producer that none of them took in alone: a training graph's ReLU output and its backward's
    mask (`relu(y) + b` and `relu(y) <= 0`) both read `y`, a convolution's NHWC result copied back
    with its bias, which was written as a tensor of its own and read back (two kernels where
    Inductor has one: KernelBench's conv + ReLU + bias with gradients enabled, 436 µs on the H200
    against torch.compile's 280)."""
    position = {op: i for i, op in enumerate(order)}
    live = {id(g): g for g in groups}
    owner = {op: g for g in groups if g[1] == "pointwise" for op in g[2]}
    changed = True
    while changed:  # a merged group may be another's sole reader in turn: until nothing changes
        changed = False
        for producer in [g for g in live.values() if g[1] == "pointwise"]:
            if id(producer) not in live:
                continue  # merged earlier in this pass
            consumer = _sole_reader_group(producer, owner)
            if consumer is None or any(widened_source(op.result) is not None for op in producer[2]):
                continue
            size = math.prod(dims_of(consumer[2][-1].result.type))
            if any(math.prod(dims_of(op.result.type)) > size for op in producer[2]):
                continue  # read broadcast or in part: its work would repeat
            if len(producer[2]) + len(consumer[2]) > MAX_RECOMPUTED_MAPS + MAX_SIBLINGS:
                continue
            merged = (consumer[0], "pointwise", sorted(producer[2] + consumer[2], key=position.__getitem__))
            del live[id(producer)], live[id(consumer)]
            live[id(merged)] = merged
            owner.update({op: merged for op in merged[2]})
            changed = True
    return list(live.values())


def _sole_reader_group(producer: tuple, owner: dict[Operation, tuple]) -> tuple | None:
    """The one pointwise group (not `producer`) that reads `producer`'s results, or None."""
    members, readers = set(producer[2]), set()
    for result in (r for op in producer[2] for r in op.results):
        outside = _readers(result)
        if outside is None:  # the function returns it, or a gather reads it
            return None
        readers |= outside - members
    consumers = {id(g): g for g in map(owner.get, readers)}  # readers are not members: not `producer`
    return next(iter(consumers.values())) if len(consumers) == 1 else None


def _small(group: tuple) -> bool:
    return math.prod(dims_of(group[2][-1].result.type)) <= SMALL_SIBLING


def _sibling_place(
    first: tuple, later: tuple, position: dict[Operation, int], barriers: list[int],
    shape: Sequence[int] | None = None,
) -> str | list[Operation] | None:  # fmt: skip
    """Where two pointwise groups can run as one kernel: "later" (the later group's place), the
    views to move up with the later group's maps (the first's place), or None. Small groups
    without a tensor in common only where no other kernel's op (`barriers`, sorted positions) lies
    between them. `shape`: the shape the groups' inputs share (reductions': their input's; else the
    groups' results')."""
    if shape is None:
        shape = dims_of(first[2][-1].result.type)
        if dims_of(later[2][-1].result.type) != shape:
            return None
    first_ops, later_ops = set(first[2]), set(later[2])

    def inputs(ops: set[Operation]) -> set[SSAValue]:
        return {v for op in ops for v in op.operands if v.owner not in ops}

    def same_shape(values: set[SSAValue]) -> set[SSAValue]:
        return {v for v in values if dims_of(v.type) == shape}

    if not same_shape(inputs(first_ops)) & same_shape(inputs(later_ops)):
        if not _small(first):
            return None
        end, start = max(position[op] for op in first_ops), min(position[op] for op in later_ops)
        if bisect.bisect_right(barriers, end) != bisect.bisect_left(barriers, start):
            return None  # another kernel runs between them
    outputs = [r for op in first[2] for r in op.results if not _read_inside(r, first_ops)]
    readers = {use.operation for r in outputs for use in r.uses} - first_ops
    if _through_views(outputs) & later_ops:
        # the later group reads the first's results, directly or through a view (a transposed read
        # of a result the kernel also writes would read it before it is written)
        return None
    if all(position.get(r, -1) > later[0] for r in readers):
        return "later"
    return _views_to_move(later, first[0], position)


def _through_views(values: list[SSAValue]) -> set[Operation]:
    """The ops that read `values`, directly or through views and other virtual ops."""
    found: set[Operation] = set()
    pending = list(values)
    while pending:
        for use in pending.pop().uses:
            found.add(use.operation)
            if isinstance(use.operation, VIRTUAL_OPS):
                pending.extend(use.operation.results)
    return found


def _views_to_move(group: tuple, place: int, position: dict[Operation, int]) -> list[Operation] | None:
    """The views after `place` that `group` reads (each reading what is computed by `place`), in
    program order, where everything else `group` reads is computed by `place`; else None."""
    members, views = set(group[2]), []

    def available(value: SSAValue) -> bool:
        owner = value.owner
        if isinstance(owner, Block) or owner in members or position.get(owner, len(position)) < place:
            return True
        if isinstance(owner, ein.ViewOp) and available(owner.input):  # a view is pure: it can run earlier
            views.append(owner)
            return True
        return False

    if not all(available(v) for op in group[2] for v in op.operands):
        return None
    return sorted(set(views), key=position.__getitem__)


def _map_sources(op: Operation) -> list[ein.MapOp]:
    """The maps `op` reads, directly or through views and concatenations."""
    found, stack = [], list(op.operands)
    while stack:
        owner = stack.pop().owner
        if isinstance(owner, ein.MapOp):
            found.append(owner)
        elif isinstance(owner, ein.ViewOp | ein.ConcatOp):
            stack.extend(owner.operands)
    return found


def _scan_epilogue(scan: ein.ScanOp, taken: set[Operation]) -> list[Operation]:
    """The maps after a scan that its kernel applies before storing (`cumsum(x) * 2 + 1`): each the
    only reader of the value before it, of the scan's shape."""
    chain, value = [], scan.result
    while (
        isinstance(user := single_user(value), ein.MapOp) and user not in taken
        and dims_of(user.result.type) == dims_of(scan.result.type)
    ):  # fmt: skip
        chain.append(user)
        value = user.result
    return chain


def _merge_row_epilogues(groups: list, order: list[Operation]) -> list:
    """A row group over a GEMM's output rows (softmax, norms over N) joins the GEMM when one
    tile can own whole rows: N <= MAX_EPILOGUE_ROW and the output's other readers, if any,
    come after the row group (the GEMM then writes its output too)."""
    absorbed: list[tuple] = []
    result = []
    position = {op: i for i, op in enumerate(order)}
    for group in groups:
        pos, kind, members = group
        row = _row_epilogue_of(group, groups, position) if kind == "gemm" else None
        if row is None:
            result.append(group)
            continue
        absorbed.append(row)
        result.append((max(pos, row[0]), "gemm", sorted(members + row[2], key=order.index)))
    return [g for g in result if not any(g is a for a in absorbed)]


def _row_epilogue_of(gemm: tuple, groups: list, position: dict) -> tuple | None:
    """The row group over `gemm`'s output rows that can join it, if any. Readers of the
    product outside that group are allowed after it (the product becomes a second output)."""
    members = gemm[2]
    out = members[-1].results[0]
    first = next(op for op in members if isinstance(op, ein.ContractOp))
    lhs, rhs, letters = ein.parse_spec(first.spec.data)
    n = [c for c in letters if c in rhs and c not in lhs]
    readers = {use.operation for use in out.uses}
    if len(n) != 1 or not readers:
        return None
    space = RowSpace(tuple(dims_of(out.type)), (letters.index(n[0]),))
    (reader,) = readers if len(readers) == 1 else (None,)
    chunked = _is_chunk_view(reader, space)
    if chunked:  # chunks of a wide row (split-reduction): one tile a chunk
        readers = {use.operation for use in reader.result.uses}
        space = RowSpace(tuple(dims_of(reader.result.type)), (len(space.shape),))
    if space.row_size > MAX_EPILOGUE_ROW:
        return None
    for group in groups:
        row = set(group[2])
        if group[1] != "row" or not readers & row:
            continue
        reduce = next(op for op in group[2] if isinstance(op, ein.ReduceOp))
        if RowSpace.of(reduce) != space:
            return None
        later = not chunked and _extra_output(members[-1], list(readers), row, space, position, group[0])
        return group if readers <= row or later else None
    return None


def _is_chunk_view(op: Operation | None, space: RowSpace) -> bool:
    """A reshape of [.., N] (N the last dim) to [.., T, C] chunks, C = chunk_size(N)."""
    if not (
        isinstance(op, ein.ViewOp) and op.kind.data == "reshape" and space.dims == (len(space.shape) - 1,)
    ):
        return False
    shape = tuple(dims_of(op.result.type))
    # only split-reduction's own chunking: a head split [T, H*D] -> [T, H, D] is not one
    chunked = shape[-1] == chunk_size(space.shape[-1])
    return chunked and shape[:-2] == space.shape[:-1] and shape[-2] * shape[-1] == space.shape[-1]


def annotate(groups: list[FusionGroup]) -> None:
    for g in groups:
        for op in g.ops:
            op.attributes[GROUP_ATTR] = StringAttr(g.name)


def read_groups(fn: func.FuncOp) -> list[FusionGroup]:
    """The groups recorded in `fn`'s `ein.group` attributes, in program order of their outputs."""
    members: dict[str, list[Operation]] = {}
    for op in fn.body.block.ops:
        if GROUP_ATTR in op.attributes:
            members.setdefault(op.attributes[GROUP_ATTR].data, []).append(op)
    groups = [FusionGroup(name, _kind(ops), ops) for name, ops in members.items()]
    order = list(fn.body.block.ops)
    return sorted(groups, key=lambda g: order.index(g.ops[-1]))


def _kind(ops: list[Operation]) -> str:
    contracts = [op for op in ops if isinstance(op, ein.ContractOp)]
    if contracts:
        # over symbolic sizes, a comparison sympy cannot order is not an attention (as form_groups)
        match = undecided_as(match_attention, lambda op: None)
        attention = match(ops[-1]) if isinstance(ops[-1], ein.ContractOp) else None
        return "attention" if attention is not None and set(attention.ops) == set(ops) else "gemm"
    if any(isinstance(op, ein.ScanOp) for op in ops):
        return "scan"
    reductions = [op for op in ops if isinstance(op, ein.ReduceOp)]
    prologue_inside = all(_read_inside(r, set(ops)) for op in ops[:-1] for r in op.results)
    if len(reductions) == 1 and ops[-1] is reductions[0] and len(ops) <= 2 and prologue_inside:
        return "reduction"  # a reduction and at most its prologue map (a chunked loop, one output)
    if len(reductions) > 1 and ops[-1] in reductions and _sibling_reductions(ops):
        return "reduction"  # several over one space, each with at most its prologue (one loop)
    if reductions:
        return "row"
    return "pointwise"


def _sibling_reductions(ops: list[Operation]) -> bool:
    """Whether `ops` are reductions over one space that read nothing of each other, each with at most
    a prologue map only it reads (`_merge_sibling_reductions`' groups): one loop, an accumulator each."""
    members = set(ops)
    reductions = [op for op in ops if isinstance(op, ein.ReduceOp)]
    if len({RowSpace.of(r) for r in reductions}) != 1 or any(
        r.kind.data in ein.ARG_KINDS for r in reductions
    ):
        return False
    prologues = set()
    for r in reductions:
        if _through_views([r.result]) & members:
            return False
        producer = r.input.owner
        if producer in members:
            if not isinstance(producer, ein.MapOp) or single_user(r.input) is not r:
                return False
            if producer.result.type != r.input.type or _through_views([r.result]) & {producer}:
                return False
            prologues.add(producer)
    return len(prologues) + len(reductions) == len(ops)


@dataclass(frozen=True)
class FormFusionGroups(ModulePass):
    """Annotate every computing `ein` op with the kernel (`ein.group`) it will run in."""

    name = "form-fusion-groups"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in functions(op):
            copy_contracted_operands(fn)
            annotate(form_groups(fn))


def copy_contracted_operands(fn: func.FuncOp) -> int:
    """Give each concatenation or gather a contraction reads a copy (an identity map: a pointwise
    kernel that reads the parts or the table's rows in place and writes one buffer) for the
    contraction to read; returns how many. A GEMM's or attention's operand tiles stream from one
    buffer: read in place, a key block of Phi's partial-rotary attention took two masked loads and a
    select (64.7 against 31 us a layer on the H200), and `torch.cat` of its strided parts 21 us a
    copy; BigBird's random key blocks, gathered by an index tensor inside the GEMM's K loop (the
    index loaded and its address computed for every element of every B tile), took 120 us a layer
    where the same product over a copied operand took 23 (H100, bf16, 4096 tokens)."""
    copied = 0
    for op in list(fn.walk()):
        if not (isinstance(op, (ein.ConcatOp, ein.GatherOp)) and read_by_contraction(op.result)):
            continue
        if isinstance(op, ein.GatherOp) and not _worth_copying(op.result):
            continue
        builder = InsertingEinBuilder(op, "copy", after=True)
        copy = builder.copy(op.result)
        op.result.replace_uses_with_if(copy, lambda use, reader=copy.owner: use.operation is not reader)
        copied += 1
    return copied


# a gather a contraction reads is copied from this many elements on: below, the operand's per-element
# index loads cost less than a launch (a decode step's one embedded token, whose norm-folded GEMM reads
# it through the table), and a graph of symbolic sizes (decode steps of a dynamic cache) is left as is
COPIED_GATHER_MIN_ELEMENTS = 1 << 16


def _worth_copying(value: SSAValue) -> bool:
    return is_static(value.type) and math.prod(dims_of(value.type)) >= COPIED_GATHER_MIN_ELEMENTS
