"""lower-to-tile: one `tile.kernel` per fusion group.

- gemm: program (pid_m, pid_n) in grouped order over cdiv(M, BLOCK_M) x
  cdiv(N, BLOCK_N), batch on grid axis 1; a K loop of masked tile loads and
  `tile.dot` into f32 accumulators (two for a SwiGLU group); then the
  epilogue maps on the accumulator tile, reading bias/residual tiles by the
  output's indices; one store.
- reduction: BLOCK_R rows a program, a loop over the reduced elements in
  chunks of BLOCK_C with the prologue map applied on the fly, masked lanes
  set to the reduction's neutral value, one store per row.
- row: BLOCK_R rows a program, each whole row in one tile of BLOCK_C >= C
  lanes: every map and reduction of the group evaluated on register tiles
  (rows' statistics as [BLOCK_R, 1] tiles), inputs loaded once, one store.
- pointwise: BLOCK elements a program over the flattened output.

Multi-dimensional M/N/K/rows are flattened and unravelled with index
arithmetic; operands are read through views (see tile_builder). A group this
pass cannot lower yet is reported with the reason, and runs op by op.
"""

from __future__ import annotations

import copy
import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from xdsl.context import Context
from xdsl.dialects import func, scf
from xdsl.dialects.builtin import (
    FloatAttr,
    IntegerAttr,
    IntegerType,
    ModuleOp,
    StringAttr,
    f32,
    f64,
    i1,
    i32,
    i64,
)
from xdsl.ir import Attribute, Block, Operation, OpResult, Region, SSAValue
from xdsl.passes import ModulePass

from ..ir import einsum as ein
from ..ir import tile
from ..ir.builder import ScalarBuilder, opmath_type, read_by_contraction, sums_in_i64
from ..ir.dtypes import (
    Dim,
    any_symbolic,
    concrete_by_name,
    dims_of,
    is_bool,
    is_float,
    is_static,
    is_symbolic,
    shape_of,
    size_text,
)
from ..ir.module import verify
from .flash_attention import ATTENTION_PARAMS, lower_attention, match_attention
from .fusion_groups import (
    GROUP_ATTR,
    MAX_ROW,
    VIRTUAL_OPS,
    FusionGroup,
    RowSpace,
    functions,
    math_functions,
    read_groups,
)
from .tile_builder import Index, KernelBuilder, LoweringUnsupported

GEMM_PARAMS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "PROGRAMS")
REDUCTION_PARAMS = ROW_PARAMS = ("BLOCK_R", "BLOCK_C")
POINTWISE_PARAMS = ("BLOCK",)
TILED_POINTWISE_PARAMS = ("BLOCK_X", "BLOCK_Y")


@dataclass
class LoweredGroup:
    """A fusion group and its kernel: the kernel's arguments are `inputs` then `outputs`."""

    group: FusionGroup
    kernel: tile.KernelOp | None
    inputs: list[SSAValue]
    problem: dict[str, int] = field(default_factory=dict)  # M/N/K, R/C or N: for the config heuristic
    # a kernel of symbolic sizes: its problem with the sizes as expressions (`problem` holds them at
    # the call's hints), for a config per size bucket (`autotune.buckets`); None for a static kernel
    symbolic_problem: dict | None = None
    error: str | None = None
    twin: LoweredGroup | None = None  # the group whose kernel this one's copies (`lower_function`)

    @property
    def outputs(self) -> list[SSAValue]:
        """The values the kernel writes, one argument each after the inputs; the primary one last."""
        return self.group.outputs

    @property
    def output(self) -> SSAValue:
        return self.group.output


def _materialized(value: SSAValue) -> bool:
    """A tensor a kernel reads from memory: not a view, splat or iota, nor a gather (a kernel
    loads the table at the positions its index tensors hold), nor a concatenation, except one a
    contraction reads: a GEMM's or attention's operand tiles stream from one buffer (a masked
    load per part and a select would sit in the inner loop), so that one is copied once (the
    fusion pass gives it a copy kernel: `copy_contracted_operands`, which copies a gather a
    contraction reads too, before this is asked)."""
    if isinstance(value.owner, ein.ConcatOp):
        return read_by_contraction(value)
    if merged_rows(value):
        return True
    return not isinstance(value.owner, VIRTUAL_OPS)


def merged_rows(value: SSAValue) -> bool:
    """Whether `value` is a reshape that merges the leading dims of a tensor in memory into one
    ([batch, tokens, features] -> [batch * tokens, features]) and that a contraction reads: the
    kernel reads the reshaped tensor, which the program makes as a torch view (the leading strides of
    a kernel's output nest, padded rows included), so a GEMM's operand is 2-d: its tile rows are one
    index (read through the reshape, each row's address was a div and a mod of its index), and where
    TMA is on (a tuned `USE_TMA`, `TILEFUSE_TMA=1`) a descriptor can load it. The weight-gradient
    GEMMs of GPT-2's backward read both operands this way (they read neither through TMA before)."""
    view = value.owner
    if not isinstance(view, ein.ViewOp) or view.kind.data != "reshape":
        return False
    source = view.input
    if isinstance(source.owner, VIRTUAL_OPS) or not (is_static(source.type) and is_static(value.type)):
        return False
    before, after = tuple(shape_of(source.type)), tuple(shape_of(value.type))
    lead = len(before) - len(after) + 1
    if not after or lead < 2 or before[lead:] != after[1:] or math.prod(before[:lead]) != after[0]:
        return False  # (a reshape to 0-d, a full reduction's total read by a pointwise map, merges nothing)
    return read_by_contraction(value)


def _multiply_add(sb: ScalarBuilder, acc: SSAValue, a: SSAValue, b: SSAValue) -> SSAValue:
    return sb.add(acc, sb.mul(sb.cast(a, f32), sb.cast(b, f32)))


def _classify(spec: str, sizes: dict[str, int]) -> tuple[str, str, str, str]:
    lhs, rhs, out = ein.parse_spec(spec)
    batch = "".join(c for c in out if c in lhs and c in rhs)
    m = "".join(c for c in out if c in lhs and c not in rhs)
    n = "".join(c for c in out if c in rhs and c not in lhs)
    k = "".join(c for c in lhs if c in rhs and c not in out)
    if set(lhs + rhs) - set(batch + m + n + k):
        raise LoweringUnsupported(f"{spec!r} sums an index of one operand only")
    if not (m and n and k):
        raise LoweringUnsupported(f"{spec!r} has no M, N or K index (a matrix-vector product)")
    return batch, m, n, k


def _letter_sizes(op: ein.ContractOp) -> dict[str, Dim]:
    lhs, rhs, _ = ein.parse_spec(op.spec.data)
    return dict(zip(lhs, dims_of(op.lhs.type))) | dict(zip(rhs, dims_of(op.rhs.type)))


def lower_gemm(kb: KernelBuilder, group: FusionGroup, allow_tf32: bool) -> tuple[list[str], dict[str, int]]:
    contracts = [op for op in group.ops if isinstance(op, ein.ContractOp)]
    first = contracts[0]
    sizes = _letter_sizes(first)
    batch, m, n, k = _classify(first.spec.data, sizes)
    M, N, K = (math.prod(sizes[c] for c in s) for s in (m, n, k))
    B = math.prod(sizes[c] for c in batch)
    # at most PROGRAMS programs, each looping over output tiles: persistent when PROGRAMS is below
    # the tile count (one wave that stays resident), one tile a program otherwise
    tiles = kb.index_op("mul", kb.cdiv(M, "BLOCK_M"), kb.cdiv(N, "BLOCK_N"))
    programs = kb.index_op("min", tiles, kb.param("PROGRAMS"))
    outer = Block(arg_types=[i32])
    with kb.inside(outer):
        pid_m, pid_n = kb.emit(tile.GroupedOrderOp(
            outer.args[0], kb.cdiv(M, "BLOCK_M"), kb.cdiv(N, "BLOCK_N"), kb.param("GROUP_M")
        )).results  # fmt: skip
        at: dict[str, Index] = {}
        if batch:
            at |= dict(zip(batch, kb.unravel(kb.program_id(1), [sizes[c] for c in batch])))
        rows = kb.unravel(kb.offsets(pid_m, "BLOCK_M"), [sizes[c] for c in m])
        cols = kb.unravel(kb.offsets(pid_n, "BLOCK_N"), [sizes[c] for c in n])
        at |= {c: kb.expand(i, 1) for c, i in zip(m, rows)} | {c: kb.expand(i, 0) for c, i in zip(n, cols)}

        out_letters = ein.parse_spec(first.spec.data)[2]
        zero = tile.BlockType(["BLOCK_M", "BLOCK_N"], f32)
        inits = [_filled(kb, 0.0, zero) for _ in contracts]
        # a plain 2-d operand block may be read with a tensor descriptor (see tile.load block_at)
        # K of one: an outer product (a symbolic size is at least 2: Dynamo specializes 0 and 1)
        outer_product = not is_symbolic(K) and K == 1
        dense_blocks = not batch and len(m) == len(n) == len(k) == 1 and not outer_product
        start = {
            m: kb.block_start(pid_m, "BLOCK_M"),
            n: kb.block_start(pid_n, "BLOCK_N"),
        }
        trips = kb.cdiv(K, "BLOCK_K")
        body = Block(arg_types=[i32] + [zero] * len(contracts))
        with kb.inside(body):
            flat_k = kb.offsets(body.args[0], "BLOCK_K")
            k_sizes = [sizes[c] for c in k]
            # several K indices (a head-merged operand): K blocks inside the innermost one index it
            # as start + arange, which Triton sees as contiguous
            ks = kb.unravel_block(flat_k, k_sizes) or kb.unravel(flat_k, k_sizes)
            k_cols = {c: kb.expand(i, 0) for c, i in zip(k, ks)}  # [1, BLOCK_K] for the lhs tile
            k_rows = {c: kb.expand(i, 1) for c, i in zip(k, ks)}  # [BLOCK_K, 1] for the rhs tile
            if outer_product:  # RoPE's inv_freq x positions: tiles [.., 1] x [1, ..]
                k_cols = k_rows = {c: kb.const(0) for c in k}
            start[k] = kb.block_start(body.args[0], "BLOCK_K")
            accs = []
            loaded: dict[SSAValue, SSAValue] = {}
            for op, acc in zip(contracts, body.args[1:]):
                lhs, rhs, out = ein.parse_spec(op.spec.data)
                names = dict(zip(out, out_letters))  # a sibling contraction may name its indices differently
                block = {c: start[names.get(c, c)] for c in lhs + rhs} if dense_blocks else {}
                if op.lhs not in loaded:
                    a_index = [k_cols[c] if c in k else at[names[c]] for c in lhs]
                    a_tile = kb.load(op.lhs, a_index, [block[c] for c in lhs if block])
                    loaded[op.lhs] = a_tile if outer_product else kb.full_tile(a_tile, a_index)
                b_index = [k_rows[c] if c in k else at[names[c]] for c in rhs]
                b_tile = kb.load(op.rhs, b_index, [block[c] for c in rhs if block])
                b_tile = b_tile if outer_product else kb.full_tile(b_tile, b_index)
                tf32 = allow_tf32 and op.lhs.type.get_element_type() == f32
                if outer_product:  # a view may have dropped the size-1 K axis of a tile: multiply, no dot
                    accs.append(kb.map([acc, loaded[op.lhs], b_tile], f32, _multiply_add))
                    continue
                accs.append(kb.emit(tile.DotOp(loaded[op.lhs], b_tile, acc, tf32)).result)
            kb.emit(scf.YieldOp(*accs))
        loop = kb.emit(scf.ForOp(kb.const(0), trips, kb.const(1), inits, Region(body)))

        out_shape = dims_of(first.result.type)
        out_idx = [at[c] for c in out_letters]
        known = {
            op.result: kb.cast(acc, op.result.type.get_element_type())
            for op, acc in zip(contracts, loop.results)
        }
        epilogue = [op for op in group.ops if not isinstance(op, ein.ContractOp)]
        reductions = [op for op in epilogue if isinstance(op, ein.ReduceOp)]
        problem: dict = {}
        if not reductions:
            for op in epilogue:
                known[op.result] = kb.apply_map(op, known, out_shape, out_idx)
        elif (space := RowSpace.of(reductions[0])).shape == tuple(out_shape):
            # a row reduction over the output's N index: this tile holds whole rows (BLOCK_N >= N)
            (n_letter,) = n
            in_range = kb.map([at[n_letter]], i1, lambda sb, c: sb.cmp("lt", c, sb.const(N, i32)))
            known, at_shape = evaluate_row_ops(kb, epilogue, space, out_idx, in_range, known)
            problem["whole"] = {"BLOCK_N": N}
        else:
            # chunks of a wide row (split-reduction): the [.., N] product is viewed as [.., T, C]
            # and this tile is chunk pid_n (BLOCK_N = C); the row ops reduce it to one partial a row
            chunk = space.shape[-1]
            kb.exact["BLOCK_N"] = chunk
            product = [op for op in epilogue if tuple(shape_of(op.result.type)) == tuple(out_shape)]
            for op in product:
                known[op.result] = kb.apply_map(op, known, out_shape, out_idx)
            (view,) = {use.operation for use in (product[-1] if product else first).results[0].uses}
            known[view.result] = known[view.input]
            lanes = kb.expand(kb.arange("BLOCK_N"), 0)
            in_range = kb.map([lanes], i1, lambda sb, c: sb.cmp("lt", c, sb.const(chunk, i32)))
            rest = [op for op in epilogue if op not in product]
            known, at_shape = evaluate_row_ops(
                kb, rest, space, [*out_idx[:-1], pid_n, lanes], in_range, known
            )
            problem |= {"whole": {"BLOCK_N": chunk}, "exact": {"BLOCK_N": chunk}}
        if not reductions:
            at_shape = {tuple(out_shape): out_idx}
        for out in group.outputs:  # the product itself too, when it is read after a row epilogue
            kb.store(kb.output_argument(out), at_shape[tuple(dims_of(out.type))], known[out])
        kb.emit(scf.YieldOp())
    kb.emit(scf.ForOp(kb.program_id(0), tiles, programs, [], Region(outer)))
    elem_bytes = first.lhs.type.get_element_type().bitwidth // 8
    problem |= {"M": M, "N": N, "K": K, "B": B, "elem_bytes": elem_bytes, "rhs_operands": len(contracts)}
    if elem_bytes == 4 and allow_tf32:  # one TF32 pass a dot; exact f32 dots run 3xTF32 (heuristics)
        problem["tf32"] = 1
    # math functions per element (erf, tanh, exp...): their temporaries take registers
    problem["epilogue_math"] = sum(math_functions(op) for op in group.ops if isinstance(op, ein.MapOp))
    tiles = f"cdiv({size_text(M)}, BLOCK_M) * cdiv({size_text(N)}, BLOCK_N)"  # sizes: expressions of symbols
    return [f"min({tiles}, PROGRAMS)", size_text(B)], problem


_NEUTRAL = {"sum": 0.0, "mean": 0.0, "prod": 1.0, "max": float("-inf"), "min": float("inf")}


def _any_or_all(elem: Attribute, kind: str) -> bool:
    """A max or min of booleans: any/all (a safe softmax asks whether each row has a key)."""
    return is_bool(elem) and kind in ("max", "min")


def _accumulator_type(elem: Attribute, kind: str) -> Attribute:
    """The type a `kind` reduction of `elem` accumulates in: any/all reduce 0s and 1s in f32,
    whose infinities are the neutral values a boolean has none of; integer sums in i64."""
    if sums_in_i64(kind, elem):
        return i64
    return f32 if _any_or_all(elem, kind) else opmath_type(elem)


def _neutral(kind: str, acc_elem: Attribute) -> float | int:
    """The value a `kind` reduction accumulating in `acc_elem` starts from (integer sums: 0)."""
    return _NEUTRAL[kind] if is_float(acc_elem) else 0


def _filled(kb: KernelBuilder, value: float | int, block: tile.BlockType) -> SSAValue:
    """A tile of `block`'s shape holding `value` (an accumulator's starting value)."""
    elem = block.element_type
    attr = FloatAttr(float(value), elem) if is_float(elem) else IntegerAttr(int(value), elem)
    return kb.emit(tile.FullOp(attr, block)).result


def _combine(sb: ScalarBuilder, kind: str, acc: SSAValue, v: SSAValue) -> SSAValue:
    """One step of a `kind` reduction: the accumulator with one more value."""
    if kind in ("sum", "mean"):
        return sb.add(acc, v)
    return sb.mul(acc, v) if kind == "prod" else sb.binary(kind, acc, v)


def reduction_parts(group: FusionGroup) -> list[tuple[ein.MapOp | None, ein.ReduceOp]]:
    """A reduction group's reductions, each with its prologue map (the group's map it reduces) or
    None: one, or several siblings over the same space (`fusion_groups._merge_sibling_reductions`)."""
    members = set(group.ops)
    parts = []
    for op in group.ops:
        if isinstance(op, ein.ReduceOp):
            producer = op.input.owner
            parts.append((producer if producer in members else None, op))
    return parts


def _read_with_prologue(
    kb: KernelBuilder, part: tuple[ein.MapOp | None, ein.ReduceOp], shape, idx: list[Index]
) -> SSAValue:
    """What a reduction reads at `idx` (its row dims already set, `_reduced_columns`): its prologue
    map applied, or its input loaded."""
    prologue, reduce = part
    if prologue is not None:
        return kb.apply_map(prologue, {}, shape, idx)
    return kb.load(reduce.input, idx)


def _reduced_columns(
    kb: KernelBuilder, parts: list[tuple[ein.MapOp | None, ein.ReduceOp]], step: SSAValue,
    row_dims: list[int], rows: list[Index],
) -> tuple[SSAValue, list[SSAValue], SSAValue]:  # fmt: skip
    """Inside a reduction's loop: the flat reduced positions of chunk `step` ([1, BLOCK_C]), the
    values each of the group's reductions (`reduction_parts`) reduces there ([BLOCK_R, BLOCK_C],
    through its prologue) and the mask of those in range."""
    reduce = parts[-1][1]
    shape, dims = dims_of(reduce.input.type), reduce.reduce_dims
    C = math.prod(shape[d] for d in dims)
    flat_c = kb.offsets(step, "BLOCK_C")
    cols = kb.unravel(flat_c, [shape[d] for d in dims])
    idx: list[Index] = [kb.const(0)] * len(shape)
    for d, i in zip(dims, cols):
        idx[d] = kb.expand(i, 0)
    for d, i in zip(row_dims, rows):
        idx[d] = kb.expand(i, 1)
    values = [_read_with_prologue(kb, part, shape, list(idx)) for part in parts]
    flat_c = kb.expand(flat_c, 0)
    if is_symbolic(C):  # the reduced extent is the kernel's size argument
        return flat_c, values, kb.map([flat_c, kb.const(C)], i1, lambda sb, c, n: sb.cmp("lt", c, n))
    in_range = kb.map([flat_c], i1, lambda sb, c: sb.cmp("lt", c, sb.const(C, i32)))
    return flat_c, values, in_range


def _reduction_output_index(
    kb: KernelBuilder, reduce: ein.ReduceOp, row_dims: list[int], rows: list[Index]
) -> list[Index]:
    """Where a reduction's rows are stored: the kept dims' indices, 0 for the reduced dims kept as 1."""
    out_idx: list[Index] = []
    for d in range(len(dims_of(reduce.input.type))):
        if d in row_dims:
            out_idx.append(rows[row_dims.index(d)])
        elif reduce.keepdim is not None:
            out_idx.append(kb.const(0))
    return out_idx


def lower_reduction(kb: KernelBuilder, group: FusionGroup) -> tuple[list[str], dict[str, int]]:
    """A reduction (or sibling reductions over one space, each with its accumulator) walked in chunks
    of BLOCK_C along the reduced dims, BLOCK_R kept positions a program."""
    reduce = group.ops[-1]
    assert isinstance(reduce, ein.ReduceOp)
    parts = reduction_parts(group)
    if set(group.outputs) != {part.result for _, part in parts}:
        raise LoweringUnsupported("a reduction kernel writes its reductions' results and nothing else")
    shape, dims = dims_of(reduce.input.type), reduce.reduce_dims
    for _, part in parts:
        elem, kind = part.result.type.get_element_type(), part.kind.data
        arg = kind in ein.ARG_KINDS
        if arg and len(parts) > 1:
            raise LoweringUnsupported(f"an {kind} kernel computes one reduction")
        if arg and not is_static(part.input.type):
            raise LoweringUnsupported(f"an {kind} kernel takes static sizes (this group's are symbolic)")
        if arg and is_bool(part.input.type.get_element_type()):
            raise LoweringUnsupported(f"{kind} over {part.input.type.get_element_type()} runs op by op")
        if not (arg or is_float(elem) or _any_or_all(elem, kind) or sums_in_i64(kind, elem)):
            raise LoweringUnsupported(f"{kind} reductions over {elem} run op by op")
    row_dims = [d for d in range(len(shape)) if d not in dims]
    if not row_dims:
        raise LoweringUnsupported("a reduction to a single element runs op by op")
    R, C = math.prod(shape[d] for d in row_dims), math.prod(shape[d] for d in dims)
    rows = kb.unravel(kb.offsets(kb.program_id(0), "BLOCK_R"), [shape[d] for d in row_dims])
    problem = {"R": R, "C": C}
    if len(shape) - 1 not in dims:  # the kept index is the contiguous one: wide in R, short in C
        problem["column"] = 1
    if reduce.kind.data in ein.ARG_KINDS:
        _lower_arg_reduction(kb, group, row_dims, rows)
        return [f"cdiv({R}, BLOCK_R)"], problem
    grid = [f"cdiv({size_text(R)}, BLOCK_R)"]
    kinds = [part.kind.data for _, part in parts]
    acc_elems = [
        _accumulator_type(part.result.type.get_element_type(), k) for (_, part), k in zip(parts, kinds)
    ]
    acc_types = [tile.BlockType(["BLOCK_R", "BLOCK_C"], e) for e in acc_elems]
    neutrals = [_neutral(k, e) for k, e in zip(kinds, acc_elems)]
    inits = [_filled(kb, n, t) for n, t in zip(neutrals, acc_types)]
    trips = kb.cdiv(C, "BLOCK_C")
    body = Block(arg_types=[i32, *acc_types])
    with kb.inside(body):
        _, values, in_range = _reduced_columns(kb, parts, body.args[0], row_dims, rows)
        steps = []
        for value, acc, kind, acc_elem, neutral in zip(values, body.args[1:], kinds, acc_elems, neutrals):

            def step(sb, ok, v, a, kind=kind, acc_elem=acc_elem, neutral=neutral):
                v = sb.select(ok, sb.cast(v, acc_elem), sb.const(neutral, acc_elem))
                return _combine(sb, kind, a, v)

            steps.append(kb.map([in_range, value, acc], acc_elem, step))
        kb.emit(scf.YieldOp(*steps))
    loop = kb.emit(scf.ForOp(kb.const(0), trips, kb.const(1), inits, Region(body)))
    for (_, part), kind, acc_elem, carried in zip(parts, kinds, acc_elems, loop.results):
        combined = kb.emit(tile.ReduceOp("sum" if kind == "mean" else kind, carried, 1)).result
        if kind == "mean" and is_symbolic(C):  # divided by the size argument
            count = kb.const(C)
            combined = kb.map(
                [combined, count], acc_elem, lambda sb, s, n, e=acc_elem: sb.div(s, sb.cast(n, e))
            )
        elif kind == "mean":
            combined = kb.map(
                [combined], acc_elem, lambda sb, s, e=acc_elem: sb.div(s, sb.const(float(C), e))
            )
        out_idx = _reduction_output_index(kb, part, row_dims, rows)
        elem = part.result.type.get_element_type()
        kb.store(kb.output_argument(part.result), out_idx, kb.cast(combined, elem))
    return grid, problem


def _lower_arg_reduction(
    kb: KernelBuilder, group: FusionGroup, row_dims: list[int], rows: list[Index]
) -> None:
    """argmax/argmin: each lane keeps the best value it has seen and its position, replaced only by
    a strictly better one (so the first of equals stays), a NaN beating any number (torch's rule);
    then the rows' best value, and the smallest position holding it."""
    reduce = group.ops[-1]
    kind = reduce.kind.data
    acc_elem = opmath_type(reduce.input.type.get_element_type())
    if is_float(acc_elem):
        worst = float("-inf") if kind == "argmax" else float("inf")
    else:  # integers (CLIP pools at the argmax of its token ids): the type's extreme; NaN checks are false
        bits = acc_elem.bitwidth
        worst = -(1 << (bits - 1)) if kind == "argmax" else (1 << (bits - 1)) - 1
    beats = "gt" if kind == "argmax" else "lt"
    best_type = tile.BlockType(["BLOCK_R", "BLOCK_C"], acc_elem)
    at_type = tile.BlockType(["BLOCK_R", "BLOCK_C"], i32)
    best0 = _filled(kb, worst, best_type)
    at0 = _filled(kb, 0, at_type)
    C = math.prod(shape_of(reduce.input.type)[d] for d in reduce.reduce_dims)
    body = Block(arg_types=[i32, best_type, at_type])
    with kb.inside(body):
        parts = reduction_parts(group)
        flat_c, (value,), in_range = _reduced_columns(kb, parts, body.args[0], row_dims, rows)
        best, at = body.args[1], body.args[2]

        def better(sb, ok, v, b):
            v = sb.cast(v, acc_elem)
            nan_first = sb.logical("and", sb.cmp("ne", v, v), sb.cmp("eq", b, b))
            return sb.logical("and", ok, sb.logical("or", sb.cmp(beats, v, b), nan_first))

        wins = kb.map([in_range, value, best], i1, better)
        new_best = kb.map(
            [wins, value, best], acc_elem, lambda sb, w, v, b: sb.select(w, sb.cast(v, acc_elem), b)
        )
        new_at = kb.map([wins, flat_c, at], i32, lambda sb, w, c, a: sb.select(w, c, a))
        kb.emit(scf.YieldOp(new_best, kb.full_tile(new_at, [new_best])))
    loop = kb.emit(scf.ForOp(kb.const(0), kb.cdiv(C, "BLOCK_C"), kb.const(1), [best0, at0], Region(body)))
    best, at = loop.results
    top = kb.expand(kb.emit(tile.ReduceOp("max" if kind == "argmax" else "min", best, 1)).result, 1)

    def holder(sb, b, t, a):
        same = sb.logical("or", sb.cmp("eq", b, t), sb.logical("and", sb.cmp("ne", b, b), sb.cmp("ne", t, t)))
        return sb.select(same, a, sb.const(C, i32))

    first = kb.emit(tile.ReduceOp("min", kb.map([best, top, at], i32, holder), 1)).result
    out_idx = _reduction_output_index(kb, reduce, row_dims, rows)
    kb.store(kb.output_argument(group.output), out_idx, kb.cast(first, i64))


MAX_WHOLE_SCAN = 4096  # a row up to this long is scanned in one tile (no loop, no carry)


def lower_scan(kb: KernelBuilder, group: FusionGroup) -> tuple[list[str], dict[str, int]]:
    """A running sum/product along one dim; each program owns BLOCK_R rows. A row of up to
    MAX_WHOLE_SCAN elements is one tile, scanned in registers (Inductor's persistent scan). A longer
    one is walked in BLOCK_C chunks (from the end when reversed), each scanned and combined with
    the carry of the chunks before: the scanned chunk's last lane (lanes past the row hold the
    neutral value, so the last lane is the row's running total)."""
    (scan,) = [op for op in group.ops if isinstance(op, ein.ScanOp)]
    at = group.ops.index(scan)
    prologue, epilogue = group.ops[:at], group.ops[at + 1 :]
    elem = scan.result.type.get_element_type()
    shape, dim, kind = shape_of(scan.input.type), scan.scan_dim, scan.kind.data
    reverse = scan.reverse is not None
    # integers of any width accumulate in i64 and store in their own type: the low bits of an i64 sum
    # (or product) are the wrapped i32 one, as `cumsum(x, 0, dtype=torch.int32)` gives (Mixtral's expert
    # offsets: a scan of 8 counts, which ran as two PyTorch calls a layer)
    if is_bool(elem) or not (is_float(elem) or isinstance(elem, IntegerType)):
        raise LoweringUnsupported(f"a {kind} scan over {elem} runs op by op")
    # f32 rows accumulate in f64: a memory-bound kernel pays nothing for it on a GPU with full-rate
    # f64 (Hopper), and a running sum over thousands of elements then rounds once, not per chunk
    acc_elem = (f32 if elem.bitwidth < 32 else f64) if is_float(elem) else i64
    neutral = 0 if kind == "sum" else 1
    row_dims = [d for d in range(len(shape)) if d != dim]
    R, C = math.prod(shape[d] for d in row_dims), shape[dim]
    exact = {"BLOCK_R": 1} if not row_dims else {}  # one row: a [1, BLOCK_C] tile
    whole = C <= MAX_WHOLE_SCAN
    if whole:
        exact["BLOCK_C"] = 1 << max(C - 1, 15).bit_length()  # a power of two >= C, at least 16
    kb.exact.update(exact)
    row_block = kb.offsets(kb.program_id(0), "BLOCK_R")
    rows = kb.unravel(row_block, [shape[d] for d in row_dims])

    def chunk_scan(chunk: SSAValue, carry: SSAValue | None) -> SSAValue:
        """Scan chunk `chunk` of the rows, offset by `carry`; store it; return the tile."""
        cols = kb.expand(kb.offsets(chunk, "BLOCK_C"), 0)
        if not row_dims:  # the column index spans the whole [1, BLOCK_C] tile
            cols = kb.full_tile(cols, [kb.expand(row_block, 1)])
        idx: list[Index] = [cols] * len(shape)
        for d, i in zip(row_dims, rows):
            idx[d] = kb.expand(i, 1)
        value = kb.apply_map(prologue[0], {}, shape, idx) if prologue else kb.load(scan.input, idx)
        in_range = kb.map([cols], i1, lambda sb, c: sb.cmp("lt", c, sb.const(C, i32)))
        lanes = kb.map(
            [in_range, value], acc_elem,
            lambda sb, ok, v: sb.select(ok, sb.cast(v, acc_elem), sb.const(neutral, acc_elem)),
        )  # fmt: skip
        lanes = kb.full_tile(lanes, [kb.expand(row_block, 1)])
        total = kb.emit(tile.ScanOp(kind, lanes, 1, reverse)).result
        if carry is not None:
            total = kb.map([total, kb.expand(carry, 1)], acc_elem, lambda sb, v, c: _combine(sb, kind, v, c))
        known = {scan.result: kb.cast(total, elem)}
        for op in epilogue:  # cumsum(x) * 2 + 1: applied before the store
            known[op.result] = kb.apply_map(op, known, shape, idx)
        kb.store(kb.output_argument(group.output), idx, known[group.output])
        return total

    problem: dict = {"R": R, "C": C} | ({"exact": exact} if exact else {})
    if whole:
        chunk_scan(kb.const(0), None)
        return [f"cdiv({R}, BLOCK_R)"], problem
    carry_type = tile.BlockType(["BLOCK_R"], acc_elem)
    init = _filled(kb, neutral, carry_type)
    trips = kb.cdiv(C, "BLOCK_C")
    body = Block(arg_types=[i32, carry_type])
    with kb.inside(body):
        step, carry = body.args
        chunk = kb.index_op("sub", kb.index_op("sub", trips, 1), step) if reverse else step
        total = chunk_scan(chunk, carry)
        edge = kb.const(0) if reverse else kb.index_op("sub", kb.param("BLOCK_C"), 1)
        lane = kb.expand(kb.arange("BLOCK_C"), 0)
        at_edge = kb.map(
            [lane, edge, total], acc_elem,
            lambda sb, i, e, t: sb.select(sb.cmp("eq", i, e), t, sb.const(0, acc_elem)),
        )  # fmt: skip
        kb.emit(scf.YieldOp(kb.emit(tile.ReduceOp("sum", at_edge, 1)).result))
    kb.emit(scf.ForOp(kb.const(0), trips, kb.const(1), [init], Region(body)))
    return [f"cdiv({R}, BLOCK_R)"], problem


def _reduce_row_tile(
    kb: KernelBuilder, op: ein.ReduceOp, value: SSAValue, in_range: SSAValue, C: int
) -> SSAValue:
    """`op` over axis 1 of a [rows, BLOCK_C] tile whose lanes past `C` are masked off."""
    elem, kind = op.result.type.get_element_type(), op.kind.data
    acc_elem = _accumulator_type(elem, kind)
    neutral = _NEUTRAL[kind]
    lanes = kb.map(
        [in_range, value], acc_elem,
        lambda sb, ok, v: sb.select(ok, sb.cast(v, acc_elem), sb.const(neutral, acc_elem)),
    )  # fmt: skip
    total = kb.emit(tile.ReduceOp("sum" if kind == "mean" else kind, lanes, 1)).result
    if kind == "mean":
        total = kb.map([total], acc_elem, lambda sb, s: sb.div(s, sb.const(float(C), acc_elem)))
    return kb.cast(total, elem)


def lower_row(kb: KernelBuilder, group: FusionGroup) -> tuple[list[str], dict[str, int]]:
    reductions = [op for op in group.ops if isinstance(op, ein.ReduceOp)]
    space = RowSpace.of(reductions[0])
    R, C = math.prod(space.stat_shape), space.row_size
    rows = kb.unravel(kb.offsets(kb.program_id(0), "BLOCK_R"), list(space.stat_shape))
    if is_symbolic(C) or C > MAX_ROW:  # a row of a symbolic length is walked in chunks too
        _lower_row_in_chunks(kb, group, space, rows)
        return [f"cdiv({size_text(R)}, BLOCK_R)"], {"R": R, "C": C, "chunked": 1}
    full_idx, in_range = _row_chunk(kb, space, rows, kb.arange("BLOCK_C"))
    computed, at = evaluate_row_ops(kb, group.ops, space, full_idx, in_range, {})
    for out in group.outputs:  # a residual stream the group also normalizes is written too
        kb.store(kb.output_argument(out), at[tuple(dims_of(out.type))], computed[out])
    return [f"cdiv({size_text(R)}, BLOCK_R)"], {"R": R, "C": C}


def _row_chunk(
    kb: KernelBuilder, space: RowSpace, rows: list[Index], flat_c: SSAValue
) -> tuple[list[Index], SSAValue]:
    """The indices of a [BLOCK_R, BLOCK_C] tile of the rows `rows` at flat row positions `flat_c`,
    and the mask of the lanes within the row."""
    shape, dims = space.shape, space.dims
    cols = iter(kb.unravel(flat_c, [shape[d] for d in dims]))
    row_at = iter(kb.expand(i, 1) for i in rows)
    full_idx = [kb.expand(next(cols), 0) if d in dims else next(row_at) for d in range(len(shape))]
    C = space.row_size
    if is_symbolic(C):  # the row's length is the kernel's size argument
        lanes = [kb.expand(flat_c, 0), kb.const(C)]
        return full_idx, kb.map(lanes, i1, lambda sb, c, n: sb.cmp("lt", c, n))
    in_range = kb.map([kb.expand(flat_c, 0)], i1, lambda sb, c: sb.cmp("lt", c, sb.const(C, i32)))
    return full_idx, in_range


def _lower_row_in_chunks(kb: KernelBuilder, group: FusionGroup, space: RowSpace, rows: list[Index]) -> None:
    """A row wider than a tile holds (a softmax over a vocabulary): one loop over the row's chunks
    per reduction, each recomputing the maps before it from the inputs and the statistics already
    made (a row's earlier passes are in L2 while the program walks it), accumulating lane-wise in
    f32 and reducing the lanes once after the loop; then one loop writes the outputs."""
    maps = [op for op in group.ops if isinstance(op, ein.MapOp)]
    stats: dict[SSAValue, SSAValue] = {}
    trips = kb.cdiv(space.row_size, "BLOCK_C")
    online = _online_softmax_pairs(group, space)
    for op in group.ops:
        if not isinstance(op, ein.ReduceOp) or op.result in stats:
            continue
        if op in online:
            _online_max_and_sum(kb, group, space, rows, op, online[op], stats, trips)
            continue
        elem, kind = op.result.type.get_element_type(), op.kind.data
        acc_elem = _accumulator_type(elem, kind)
        acc_type = tile.BlockType(["BLOCK_R", "BLOCK_C"], acc_elem)
        init = _filled(kb, _NEUTRAL[kind], acc_type)
        body = Block(arg_types=[i32, acc_type])
        with kb.inside(body):
            value, in_range = _reduced_chunk(kb, group, space, rows, body.args[0], op, stats)

            def step(sb, ok, v, a, kind=kind, acc_elem=acc_elem):
                v = sb.select(ok, sb.cast(v, acc_elem), sb.const(_NEUTRAL[kind], acc_elem))
                return _combine(sb, kind, a, v)

            kb.emit(scf.YieldOp(kb.map([in_range, value, body.args[1]], acc_elem, step)))
        loop = kb.emit(scf.ForOp(kb.const(0), trips, kb.const(1), [init], Region(body)))
        total = kb.emit(tile.ReduceOp("sum" if kind == "mean" else kind, loop.results[0], 1)).result
        if kind == "mean" and is_symbolic(space.row_size):  # divided by the size argument
            count = kb.const(space.row_size)
            total = kb.map([total, count], acc_elem, lambda sb, t, n, e=acc_elem: sb.div(t, sb.cast(n, e)))
        elif kind == "mean":
            width = float(space.row_size)
            total = kb.map([total], acc_elem, lambda sb, t, n=width, e=acc_elem: sb.div(t, sb.const(n, e)))
        stats[op.result] = kb.expand(kb.cast(total, elem), 1)
    full = tuple(space.shape)
    wide = [out for out in group.outputs if tuple(dims_of(out.type)) == full]
    narrow = [out for out in group.outputs if out not in wide]
    if narrow:  # statistics (a logsumexp): from the statistics alone, written once
        full_idx, in_range = _row_chunk(kb, space, rows, kb.arange("BLOCK_C"))
        small = [m for m in maps if tuple(dims_of(m.result.type)) != full]
        computed, at = evaluate_row_ops(kb, small, space, full_idx, in_range, stats)
        for out in narrow:
            kb.store(kb.output_argument(out), at[tuple(dims_of(out.type))], computed[out])
    if wide:
        body = Block(arg_types=[i32])
        with kb.inside(body):
            full_idx, in_range = _row_chunk(kb, space, rows, kb.offsets(body.args[0], "BLOCK_C"))
            computed, at = evaluate_row_ops(kb, maps, space, full_idx, in_range, stats)
            for out in wide:
                kb.store(kb.output_argument(out), at[full], computed[out])
            kb.emit(scf.YieldOp())
        kb.emit(scf.ForOp(kb.const(0), trips, kb.const(1), [], Region(body)))


def _reduced_chunk(
    kb: KernelBuilder, group: FusionGroup, space: RowSpace, rows: list[Index], chunk: SSAValue,
    reduce: ein.ReduceOp, stats: dict[SSAValue, SSAValue],
) -> tuple[SSAValue, SSAValue]:  # fmt: skip
    """Inside a loop over a row's chunks: the tile `reduce` reduces at chunk `chunk`, recomputed by
    the maps before it from the inputs and `stats`, and the mask of the lanes within the row."""
    full_idx, in_range = _row_chunk(kb, space, rows, kb.offsets(chunk, "BLOCK_C"))
    before = [m for m in group.ops[: group.ops.index(reduce)] if isinstance(m, ein.MapOp)]
    computed, at = evaluate_row_ops(kb, before, space, full_idx, in_range, stats)
    value = computed.get(reduce.input)
    if value is None:
        value = kb.load(reduce.input, kb.broadcast_indices(reduce.input, space.shape, at[space.shape]))
    return value, in_range


def _online_softmax_pairs(group: FusionGroup, space: RowSpace) -> dict[ein.ReduceOp, ein.ReduceOp]:
    """Each f32 max reduction whose row also feeds a sum of `exp(x - max)` (softmax, log-softmax),
    mapped to that sum: the two take one pass over the row (Milakov and Gimelshein's online
    softmax) instead of two."""
    reductions = [op for op in group.ops if isinstance(op, ein.ReduceOp)]
    pairs = {}
    for peak in reductions:
        if peak.kind.data != "max" or peak.result.type.get_element_type() != f32:
            continue
        sums = (r for r in reductions if r.kind.data == "sum" and _exp_shifted(r.input, peak, space))
        total = next(sums, None)
        if total is not None:
            pairs[peak] = total
    return pairs


def _exp_shifted(value: SSAValue, peak: ein.ReduceOp, space: RowSpace) -> bool:
    """Whether `value` is `exp(x - m)`, x the row `peak` reduces and m its result: one map
    (subtract, exp) or two (subtract; exp)."""

    def is_peak(v: SSAValue) -> bool:
        return v is peak.result or (space.is_stat_view(v.owner) and v.owner.input is peak.result)

    def body(op: object) -> list:
        return list(op.body.block.ops) if isinstance(op, ein.MapOp) else []

    def subtracts(op: ein.MapOp, ops: list) -> bool:  # ops[0] is arg0 - arg1 of x - m
        args = op.body.block.args
        return (len(op.inputs) == 2 and op.inputs[0] is peak.input and is_peak(op.inputs[1])
                and ops[0].name == "arith.subf" and tuple(ops[0].operands) == (args[0], args[1]))  # fmt: skip

    op = value.owner
    ops = body(op)
    if [o.name for o in ops] == ["arith.subf", "math.exp", "ein.yield"]:
        chained = ops[1].operands[0] is ops[0].results[0] and ops[2].operands[0] is ops[1].results[0]
        return subtracts(op, ops) and chained
    if [o.name for o in ops] == ["math.exp", "ein.yield"] and len(op.inputs) == 1:
        inner = op.inputs[0].owner
        inner_ops = body(inner)
        return (
            [o.name for o in inner_ops] == ["arith.subf", "ein.yield"] and subtracts(inner, inner_ops)
            and inner_ops[1].operands[0] is inner_ops[0].results[0]
            and ops[0].operands[0] is op.body.block.args[0] and ops[1].operands[0] is ops[0].results[0]
        )  # fmt: skip
    return False


def _online_max_and_sum(
    kb: KernelBuilder, group: FusionGroup, space: RowSpace, rows: list[Index], peak: ein.ReduceOp,
    total: ein.ReduceOp, stats: dict[SSAValue, SSAValue], trips: SSAValue,
) -> None:  # fmt: skip
    """`peak` (max of x) and `total` (sum of exp(x - max)) in one pass: each lane keeps its running
    max m and its sum s relative to it, rescaled by exp(m - m') when the max grows; after the loop
    the lanes' sums are rescaled to the row's max and added. Lanes that saw only -inf keep s = 0."""
    acc_type = tile.BlockType(["BLOCK_R", "BLOCK_C"], f32)
    m0 = _filled(kb, float("-inf"), acc_type)
    s0 = _filled(kb, 0.0, acc_type)
    body = Block(arg_types=[i32, acc_type, acc_type])
    with kb.inside(body):
        x, in_range = _reduced_chunk(kb, group, space, rows, body.args[0], peak, stats)
        m, s = body.args[1], body.args[2]
        inf = float("-inf")

        def masked(sb, ok, v):
            return sb.select(ok, sb.cast(v, f32), sb.const(inf, f32))

        v = kb.map([in_range, x], f32, masked)
        grown = kb.map([m, v], f32, lambda sb, a, b: sb.binary("max", a, b))

        def rescaled(sb, old, new, value, acc):
            empty = sb.cmp("eq", new, sb.const(inf, f32))  # nothing but -inf yet: exp(-inf - -inf) is nan
            scale = sb.select(empty, sb.const(1.0, f32), sb.unary("exp", sb.sub(old, new)))
            term = sb.select(empty, sb.const(0.0, f32), sb.unary("exp", sb.sub(value, new)))
            return sb.add(sb.mul(acc, scale), term)

        summed = kb.map([m, grown, v, s], f32, rescaled)
        kb.emit(scf.YieldOp(grown, summed))
    loop = kb.emit(scf.ForOp(kb.const(0), trips, kb.const(1), [m0, s0], Region(body)))
    lanes_max, lanes_sum = loop.results
    row_max = kb.emit(tile.ReduceOp("max", lanes_max, 1)).result
    at_max = kb.expand(row_max, 1)

    def to_row_max(sb, lane_max, top, acc):
        empty = sb.cmp("eq", lane_max, sb.const(float("-inf"), f32))
        return sb.select(empty, sb.const(0.0, f32), sb.mul(acc, sb.unary("exp", sb.sub(lane_max, top))))

    row_sum = kb.emit(tile.ReduceOp("sum", kb.map([lanes_max, at_max, lanes_sum], f32, to_row_max), 1)).result
    stats[peak.result] = at_max
    stats[total.result] = kb.expand(kb.cast(row_sum, total.result.type.get_element_type()), 1)


def evaluate_row_ops(
    kb: KernelBuilder, ops: list, space: RowSpace, full_idx: list[Index], in_range: SSAValue,
    computed: dict[SSAValue, SSAValue],
) -> tuple[dict[SSAValue, SSAValue], dict[tuple[int, ...], list[Index]]]:  # fmt: skip
    """Evaluate the maps and reductions `ops` of a row space on tiles whose lanes along the
    reduced dims are whole rows (`in_range` masks the lanes past the row's end).

    `computed` holds the tiles of values already made (a GEMM's accumulator); rows'
    statistics become [rows, 1] tiles. Returns every value's tile and each shape's indices.
    """
    shape, dims = space.shape, space.dims
    at = {  # the indices of each shape of the space; statistics are [rows, 1] tiles in both
        shape: full_idx,
        space.row_shape: [kb.const(0) if d in dims else i for d, i in enumerate(full_idx)],
        space.stat_shape: [i for d, i in enumerate(full_idx) if d not in dims],
    }
    computed = dict(computed)
    loaded: dict[tuple[SSAValue, tuple[int, ...]], SSAValue] = {}  # each input is read once

    def value_of(v: SSAValue, out_shape: tuple[int, ...]) -> SSAValue:
        if space.is_stat_view(v.owner) and v.owner.input in computed:
            v = v.owner.input
        if v in computed:
            return computed[v]
        if (v, out_shape) not in loaded:
            loaded[(v, out_shape)] = kb.load(v, kb.broadcast_indices(v, out_shape, at[out_shape]))
        return loaded[(v, out_shape)]

    for op in ops:
        if isinstance(op, ein.MapOp):
            out_shape = tuple(dims_of(op.result.type))
            operands = {v: value_of(v, out_shape) for v in op.inputs}
            computed[op.result] = kb.apply_map(op, operands, out_shape, at[out_shape])
        elif isinstance(op, ein.ReduceOp):
            total = _reduce_row_tile(kb, op, value_of(op.input, shape), in_range, space.row_size)
            computed[op.result] = kb.expand(total, 1)
    return computed, at


def lower_pointwise(kb: KernelBuilder, group: FusionGroup) -> tuple[list[str], dict[str, int]]:
    """One map, or a chain of maps of one shape (a GEMM's epilogue run after a library GEMM, see
    group_selection.split_path): each evaluated on the tile of the ones before it, every output
    that leaves the group stored. Members read only inside the group through views (a slice, a
    concatenation: RoPE's rotate-half in a backward graph) are recomputed at their readers' indices."""
    shape = dims_of(group.output.type)
    if not shape:
        raise LoweringUnsupported("0-d results run op by op")
    if any(not isinstance(op, ein.MapOp) for op in group.ops):
        raise LoweringUnsupported("a pointwise kernel evaluates maps")
    if any(dims_of(out.type) != shape for out in group.outputs):
        raise LoweringUnsupported("a pointwise kernel writes outputs of one shape")
    kb.recomputed.update({op.result: op for op in group.ops if op.result not in group.outputs})
    same_shape = [op for op in group.ops if dims_of(op.result.type) == shape]
    symbolic = any(map(is_symbolic, shape))
    # smaller members (an eval BatchNorm's rsqrt(var + eps) over channels) are recomputed at the
    # 2-d tile's indices as at the flat ones: with them in the group the NHWC result of a
    # convolution was read back flat, a row apart per thread (ResNet-50 bf16 on the H200: 184 µs
    # kernels where the tiled copy takes ~40)
    split = None if symbolic else _transposed_split(group, shape)
    if split is None and not symbolic and len(same_shape) == len(group.ops):
        split = _stencil_split(group, shape)
    if split is None:
        idx = kb.unravel(kb.offsets(kb.program_id(0), "BLOCK"), shape)
    else:  # rows Y (the operand's contiguous dim among them) by columns X (the output's)
        ys = kb.unravel(kb.offsets(kb.program_id(1), "BLOCK_Y"), shape[:split])
        xs = kb.unravel(kb.offsets(kb.program_id(0), "BLOCK_X"), shape[split:])
        idx = [kb.expand(i, 1) for i in ys] + [kb.expand(i, 0) for i in xs]
    known: dict[SSAValue, SSAValue] = {}
    for op in same_shape:
        known[op.result] = kb.apply_map(op, known, shape, idx)
    for out in group.outputs:
        kb.store(kb.output_argument(out), idx, known[out])
    if split is None:
        problem = {"N": math.prod(shape)}
        taps = _window_taps(kb)
        if taps >= WINDOW_TAPS:
            problem["window"] = taps
        return [f"cdiv({size_text(math.prod(shape))}, BLOCK)"], problem
    y, x = math.prod(shape[:split]), math.prod(shape[split:])
    return [f"cdiv({x}, BLOCK_X)", f"cdiv({y}, BLOCK_Y)"], {"N": x * y, "X": x, "Y": y, "tiled": 1}


# a flat pointwise kernel that reads one operand at this many places or more reads a window of it (a
# pool's taps): its config is a window's (autotune/heuristics.py), its problem says how many taps.
# Rotary embeddings' rotate-half reads q or k at three places (itself, the two halves): not a window
WINDOW_TAPS = 4


def _window_taps(kb: KernelBuilder) -> int:
    """The most places (distinct indices) a kernel built so far loads any one of its operands at."""
    loads = {
        (inner.tensor, tuple(inner.indices))
        for op in kb.kernel_block.ops
        for inner in op.walk()
        if isinstance(inner, tile.LoadOp)
    }
    return max(Counter(tensor for tensor, _ in loads).values(), default=0)


MIN_TILED_EXTENT = 16  # rows or columns fewer than a tile edge: the flat kernel does as well
MAX_GRID_Y = 65535  # CUDA's limit on the second grid dim (in blocks of at least MIN_TILED_EXTENT rows)


def _transposed_split(group: FusionGroup, shape: tuple[int, ...]) -> int | None:
    """Where a pointwise group's output dims split into rows and columns of a 2-d tile, or None
    for the flat kernel. An operand read through a permute that moves its innermost (contiguous)
    dim to output dim j < last (an NCHW <-> NHWC conversion, `compiler/conv_layout.py`) is read
    with a stride along the flat index: consecutive threads touch addresses a row apart, and a
    [16, 64, 128, 128] bf16 conversion took ~200 µs on the H200 against ~18 in tiles. Split after
    dim j instead: loads coalesce along the rows (dims ..j), stores along the columns."""
    inside = {op.result for op in group.ops}
    for op in group.ops:
        for v in op.inputs:
            view = v.owner
            if v in inside or not isinstance(view, ein.ViewOp) or view.kind.data != "permute":
                continue
            if view.input in inside:  # a member recomputed at permuted indices: no load of its own
                continue
            if tuple(shape_of(v.type)) != tuple(shape):
                continue
            perm = list(view.view_params)
            j = perm.index(len(perm) - 1)
            y, x = math.prod(shape[: j + 1]), math.prod(shape[j + 1 :])
            if j < len(perm) - 1 and min(x, y) >= MIN_TILED_EXTENT and y <= MAX_GRID_Y * MIN_TILED_EXTENT:
                return j + 1
    return None


# the depthwise-stencil experiment's switch, read by compiler/depthwise_conv.py (the rewrite) and here
# (its stencils' 2-d tiles); the lower layer holds it so both read one name
DEPTHWISE_ENV, DEPTHWISE_STENCIL = "TILEFUSE_DEPTHWISE", "stencil"


def _stencil_split(group: FusionGroup, shape: tuple[int, ...]) -> int | None:
    """Rows by the last dim for a stencil: a group reading one tensor through several slices (the
    taps of a depthwise convolution, `compiler/depthwise_conv.py`). Flat, every element computes
    each tap's indices and bounds from its own; in 2-d tiles those are a row's or a column's, and
    the columns are consecutive elements of a row. (Columns over all the spatial dims, the row's
    div/mod in them, measured 4-11x slower than cuDNN on the H200: the loads' contiguity is lost.)
    Only with the stencil experiment on: pools are stencils too, and in these tiles they ran 3-5x
    slower than flat on the H200 (bf16 2x2 max pool over 16x64x256x256: 278 µs against 73)."""
    if os.environ.get(DEPTHWISE_ENV) != DEPTHWISE_STENCIL:
        return None
    inside = {op.result for op in group.ops}
    roots: dict[SSAValue, set[SSAValue]] = {}
    for op in group.ops:
        for v in op.inputs:
            if v in inside or shape_of(v.type) != shape:
                continue
            root = v
            while isinstance(root.owner, ein.ViewOp) and root.owner.kind.data == "slice":
                root = root.owner.input
            if root is not v:
                roots.setdefault(root, set()).add(v)
    if not any(len(taps) >= 2 for taps in roots.values()):
        return None
    y, x = math.prod(shape[:-1]), shape[-1]
    if len(shape) < 2 or min(x, y) < MIN_TILED_EXTENT or y > MAX_GRID_Y * MIN_TILED_EXTENT:
        return None
    return len(shape) - 1


def lower_group(
    group: FusionGroup, name: str, allow_tf32: bool = False, check: bool = True,
    hints: dict[str, int] | None = None,
) -> LoweredGroup:  # fmt: skip
    """The kernel (named `name`) of one fusion group, or the reason it has none.

    `check=False` leaves verifying the kernel to the caller (the compiler verifies one
    kernel of each set of structurally identical ones). A group of symbolic sizes (`SYMBOLIC_KINDS`)
    gets a kernel that takes them as arguments; its problem sizes are given the symbols' `hints`
    (name -> size).
    """
    kb = KernelBuilder(_materialized)
    try:
        if group.kind not in SYMBOLIC_KINDS and not all(is_static(v.type) for v in _group_values(group)):
            raise LoweringUnsupported(f"a {group.kind} kernel takes static sizes (this group's are symbolic)")
        if len(group.outputs) > 1 and group.kind not in ("gemm", "row", "pointwise", "reduction"):
            raise LoweringUnsupported(f"a {group.kind} kernel writes one output")
        if group.kind == "gemm":
            (grid, problem), params = lower_gemm(kb, group, allow_tf32), GEMM_PARAMS
        elif group.kind == "attention":
            pattern = match_attention(group.ops[-1])
            if pattern is None or set(pattern.ops) != set(group.ops):
                raise LoweringUnsupported("the attention group no longer matches the attention pattern")
            (grid, problem), params = lower_attention(kb, pattern, allow_tf32), ATTENTION_PARAMS
        elif group.kind == "row":
            (grid, problem), params = lower_row(kb, group), ROW_PARAMS
        elif group.kind == "reduction":
            (grid, problem), params = lower_reduction(kb, group), REDUCTION_PARAMS
        elif group.kind == "scan":
            (grid, problem), params = lower_scan(kb, group), REDUCTION_PARAMS
        else:
            grid, problem = lower_pointwise(kb, group)
            params = TILED_POINTWISE_PARAMS if problem.get("tiled") else POINTWISE_PARAMS
        kb.emit(tile.ReturnOp())
        if set(kb.inputs) & {r for op in group.ops for r in op.results}:
            # a value the kernel computes read back from memory (through a view): before it is written
            raise LoweringUnsupported(
                "the kernel would read a value it writes (a group reading its own result)"
            )
        kb.arrange_arguments(group.outputs)
        kernel = tile.KernelOp(name, group.kind, params, grid, Region(kb.kernel_block))
        if check:
            verify(kernel, f"tile kernel {name}")
    except LoweringUnsupported as e:
        return LoweredGroup(group, None, [], error=str(e))
    except Exception as e:  # one group's lowering bug costs that group its kernel, not the graph
        return LoweredGroup(group, None, [], error=f"lowering failed: {type(e).__name__}: {e}")
    if kb.divisors:
        problem["divisors"] = {p: sorted(sizes) for p, sizes in kb.divisors.items()}
    if len(group.outputs) > 1:  # elements written besides the primary output (the tuner's byte counts)
        problem["extra_out_elems"] = sum(math.prod(dims_of(v.type)) for v in group.outputs[:-1])
    # a constraint (`whole`, `exact`, `divisors`) may hold sizes too
    symbolic = problem if any_symbolic(problem) else None
    problem = _hinted(problem, hints)
    return LoweredGroup(group, kernel, kb.inputs, problem, symbolic)


# kinds of kernels lowered with symbolic sizes (their sizes are the kernel's runtime arguments); a
# GEMM's contraction reaches a partition of symbolic sizes only where the partitioner lets it
# (`partition.SYMBOLIC_GEMM_ENV`)
SYMBOLIC_KINDS = ("pointwise", "reduction", "row", "gemm")
# the least size a symbol stands for in a symbolic kernel's problem (its config's input; `_hinted`)
NOMINAL_SIZE = 1024


def _group_values(group: FusionGroup) -> list[SSAValue]:
    return [v for op in group.ops for v in (*op.operands, *op.results)]


def _hinted(value: object, hints: dict[str, int] | None) -> object:
    """A problem (or a size in it) with its symbols given their hints (the sizes of the call that compiled
    the graph), each at least NOMINAL_SIZE: a symbolic kernel's default config is chosen for them, and
    runs every size. A config for large sizes costs little at small ones (a block's tail is masked, one
    program may do), where one for a small size (a decode step's one row) splits a large one into
    programs too small to keep the memory busy. The configs a program launches are chosen per size
    bucket (`autotune.buckets`, from `LoweredGroup.symbolic_problem`); this one is the report's, and
    serves a kernel of more size symbols than are bucketed."""
    hints = hints or {}
    return concrete_by_name(value, lambda symbol: max(hints.get(symbol, 0), NOMINAL_SIZE))


REUSE_CHECK_ENV = "TILEFUSE_CHECK_REUSE"  # "1": lower every reused group afresh too, and compare (tests)


def lower_function(
    fn: func.FuncOp, allow_tf32: bool = False, check: bool = True, hints: dict[str, int] | None = None
) -> list[LoweredGroup]:
    """Lower every fusion group recorded in `fn` (see form-fusion-groups).

    A group structurally identical to one lowered before (`group_signature`: one per layer of a
    model) gets a copy of that kernel, its arguments the group's own values, instead of a lowering
    of its own (a Llama config on a 2-core CPU: 0.18 s of lowering a layer before; 16 layers now
    lower 21 of their 246 groups). `TILEFUSE_CHECK_REUSE=1` lowers each copied group too and
    raises if the copy differs.
    """
    lowered: list[LoweredGroup] = []
    seen: dict[str, tuple[LoweredGroup, dict[str, SSAValue]]] = {}
    checking = os.environ.get(REUSE_CHECK_ENV) == "1"
    for g in read_groups(fn):
        name = f"{fn.sym_name.data}_{g.name}"
        signature, values = group_signature(g, allow_tf32)
        reused = _reuse(seen[signature], g, name, values) if signature in seen else None
        if reused is not None and checking:
            _check_reuse(reused, lower_group(g, name, allow_tf32, check, hints))
        if reused is None:
            reused = lower_group(g, name, allow_tf32, check, hints)
            seen.setdefault(signature, (reused, values))
        lowered.append(reused)
    return lowered


def group_signature(group: FusionGroup, allow_tf32: bool) -> tuple[str, dict[str, SSAValue]]:
    """Everything the lowering of `group` reads, as text: its kind, its ops (attributes, types,
    regions; operands by position) and, outside it, the views, constants, iotas, gathers and
    concatenations it reads through (as `_materialized` decides, which may look at their readers)
    down to the tensors it loads (by type, numbered by first use, so that a tensor read twice
    is one argument). Two groups with one signature lower to one kernel up to its arguments; the
    names of those tensors in the text map to each group's own values."""
    members = {op: i for i, op in enumerate(group.ops)}
    names: dict[SSAValue, str] = {}
    values: dict[str, SSAValue] = {}
    lines = [f"{group.kind} tf32={allow_tf32}"]

    def ref(v: SSAValue) -> str:
        if isinstance(v, OpResult) and v.owner in members:
            return f"m{members[v.owner]}.{v.index}"
        if v not in names:
            described = (
                f"arg : {v.type}" if _materialized(v) or not isinstance(v, OpResult)
                else f"{_describe(v.owner, ref)} #{v.index}"
            )  # fmt: skip
            name = names[v] = f"x{len(values)}"
            values[name] = v
            lines.append(f"{name} = {described}")
        return names[v]

    for i, op in enumerate(group.ops):
        lines.append(f"m{i} = {_describe(op, ref)}")
    lines.append("outputs " + " ".join(ref(v) for v in group.outputs))
    return "\n".join(lines), values


def _describe(op: Operation, ref: Callable[[SSAValue], str]) -> str:
    """`op` as one line: name, operands (`ref`), properties and attributes (not its group's name),
    result types, and its regions' ops (block arguments and inner results numbered locally)."""
    attributes = {**op.properties, **{k: v for k, v in op.attributes.items() if k != GROUP_ATTR}}
    text = [op.name, "(" + ", ".join(ref(v) for v in op.operands) + ")"]
    text += [f"{k}={attributes[k]}" for k in sorted(attributes)]
    text.append(": " + ", ".join(str(r.type) for r in op.results))
    for region in op.regions:
        local: dict[SSAValue, str] = {}
        inner = partial(_local_or_outer, local, ref)
        for block in region.blocks:
            for arg in block.args:
                local[arg] = f"b{len(local)}"
            text.append("{" + " ".join(f"{local[a]}:{a.type}" for a in block.args))
            for nested in block.ops:
                text.append(_describe(nested, inner) + ";")
                for r in nested.results:
                    local[r] = f"r{len(local)}"
            text.append("}")
    return " ".join(text)


def _local_or_outer(local: dict[SSAValue, str], ref: Callable[[SSAValue], str], v: SSAValue) -> str:
    return local.get(v) or ref(v)


def _reuse(
    template: tuple[LoweredGroup, dict[str, SSAValue]], group: FusionGroup, name: str,
    values: dict[str, SSAValue],
) -> LoweredGroup | None:  # fmt: skip
    """The kernel of `template`'s group for `group`, whose signature is the same: a copy named
    `name`, reading `group`'s own tensors; None where a kernel input is not among the tensors the
    signature names (then `group` is lowered itself)."""
    lowered, template_values = template
    if lowered.kernel is None:
        return LoweredGroup(group, None, [], error=lowered.error, twin=lowered)
    position = {v: n for n, v in template_values.items()}
    if any(v not in position for v in lowered.inputs):
        return None
    inputs = [values[position[v]] for v in lowered.inputs]
    kernel = lowered.kernel.clone()
    kernel.sym_name = StringAttr(name)
    for arg, value in zip(kernel.body.block.args, inputs):  # the argument names KernelBuilder gives
        arg.name_hint = value.name_hint
    problem, symbolic = copy.deepcopy(lowered.problem), copy.deepcopy(lowered.symbolic_problem)
    return LoweredGroup(group, kernel, inputs, problem, symbolic, twin=lowered)


def _check_reuse(reused: LoweredGroup, fresh: LoweredGroup) -> None:
    """`REUSE_CHECK_ENV`: a reused kernel must be the one `lower_group` writes for its group."""
    same = (
        reused.error == fresh.error and reused.inputs == fresh.inputs and reused.problem == fresh.problem
        and str(reused.kernel) == str(fresh.kernel)
    )  # fmt: skip
    if not same:
        raise AssertionError(
            f"group {reused.group.name}: the reused kernel differs from its own lowering\n"
            f"reused: {reused.error} {reused.inputs} {reused.problem}\n{reused.kernel}\n"
            f"fresh: {fresh.error} {fresh.inputs} {fresh.problem}\n{fresh.kernel}"
        )


@dataclass(frozen=True)
class LowerToTile(ModulePass):
    """Append a `tile.kernel` for each fusion group of each function."""

    name = "lower-to-tile"
    allow_tf32: bool = False

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        kernels = []
        for fn in list(functions(op)):
            kernels += [g.kernel for g in lower_function(fn, self.allow_tf32) if g.kernel is not None]
        op.body.block.add_ops(kernels)
