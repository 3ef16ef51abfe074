"""Attention as one flash-attention kernel: the pattern in `ein`, and its `tile` lowering.

The pattern, as capture and canonicalization leave it (reshapes may sit between
the steps, e.g. the head-group split of grouped-query attention):

    s = contract(q, k)               one query, key and head-dim index each
    t = map(s, extras...)            optional: scale, causal/additive/boolean masks
    m = reduce max [last] keepdim t
    e = map(t, m)                    exp(t - m)
    l = reduce sum [last] keepdim e
    p = map(e, l)                    e / l, maybe a cast
    o = contract(p, v)

or PyTorch's safe softmax (SDPA's math path, which a fused SDPA kernel does not
take: query and key head counts that differ without `enable_gqa`, as Falcon's
multi-query attention calls it), whose rows with every key masked are zero:

    f = map(t)                       t != -inf
    a = reduce max [last] keepdim f  any key visible
    p = map(0, a, e, l)              select(not a, 0, e / l)

No intermediate may be used elsewhere. The kernel is the online-softmax loop
written with general `tile` ops: each program owns BLOCK_M query rows of one
(batch, head), keeps a running row max `m_i`, row sum `l_i` and an f32
accumulator, and for each block of BLOCK_N keys computes `s` with `tile.dot`,
applies `t`'s map, rescales by `exp(m_old - m_new)` (the `e` map's own body)
and accumulates `p @ v`; the division by `l` happens once at the end. When
`t` is recognisably causal (`select(key <= query, x, -inf)` on iotas, or
`select(key > query, -inf, x)` as `masked_fill` writes it), key blocks past
the diagonal are never visited. A safe softmax's row whose running max ends
at -inf (no visible key) is written as zeros. q and k that hold 16-bit values
widened to f32, maybe scaled (SDPA's math path widens q, k and v and scales q
and k by the square root of the softmax scale), are unscaled and rounded back
exactly to 16-bit dot operands, the scales applied to the f32 scores; in the
math path v is read as 16-bit too, p rounded once for its dot, as SDPA's fused
kernels do. Exact f32 dots would run on FMA units, ~10x slower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.dialects import arith, scf
from xdsl.dialects.arith import CMPF_COMPARISON_OPERATIONS
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, f32, i1, i32
from xdsl.ir import Attribute, Block, BlockArgument, Operation, Region, SSAValue

from ..ir import einsum as ein
from ..ir import tile
from ..ir.builder import inline_map_body, strip_casts, view_source, widened_source, yielded_value
from ..ir.dtypes import is_float, shape_of
from .tile_builder import Index, KernelBuilder, _is_zero

ATTENTION_PARAMS = ("BLOCK_M", "BLOCK_N", "BLOCK_D", "BLOCK_DV")


@dataclass
class AttentionPattern:
    """The ops of one attention, named by role (see the module docstring)."""

    scores: ein.ContractOp
    pre: ein.MapOp | None
    row_max: ein.ReduceOp
    exp: ein.MapOp
    row_sum: ein.ReduceOp
    normalize: ein.MapOp
    output: ein.ContractOp
    causal: bool
    upcasts: tuple[ein.MapOp | None, ein.MapOp | None] = (None, None)  # q, k read as 16-bit
    # a safe softmax's `t != -inf` map and its row `any` (max over booleans); None for a plain one
    safe: tuple[ein.MapOp, ein.ReduceOp] | None = None
    v_upcast: ein.MapOp | None = None  # v read as 16-bit (SDPA's math path widens it to f32)

    @property
    def ops(self) -> list[Operation]:
        ops = [*self.upcasts, self.scores, self.pre, self.row_max, self.exp, self.row_sum, *(self.safe or ())]
        return [op for op in [*ops, self.v_upcast] if op is not None] + [self.normalize, self.output]


def _source(value: SSAValue) -> SSAValue:
    """`value` with reshape views peeled off."""
    while isinstance(value.owner, ein.ViewOp) and value.owner.kind.data == "reshape":
        value = value.owner.input
    return value


def _readers(value: SSAValue) -> set[Operation]:
    """The ops reading `value`, looking through reshape views."""
    out: set[Operation] = set()
    for use in value.uses:
        op = use.operation
        if isinstance(op, ein.ViewOp) and op.kind.data == "reshape":
            out |= _readers(op.result)
        else:
            out.add(op)
    return out


def _is_binary_of_args(value: SSAValue, name: str, map_op: ein.MapOp) -> bool:
    """`value` is `name(arg0, arg1)` of `map_op`'s block arguments, casts allowed around them."""
    op = strip_casts(value).owner
    args = map_op.body.block.args
    return (
        isinstance(op, Operation) and op.name == name
        and [strip_casts(v) for v in op.operands] == [args[0], args[1]]
    )  # fmt: skip


def _is_last_dim_reduce(op: Operation | None, kind: str) -> bool:
    if not isinstance(op, ein.ReduceOp) or op.kind.data != kind or op.keepdim is None:
        return False
    return tuple(op.reduce_dims) == (len(op.input.type.get_shape()) - 1,)  # a rank: symbolic sizes too


def match_attention(output: ein.ContractOp) -> AttentionPattern | None:
    """The attention ending in contraction `output`, or None if `output` does not end one."""
    p = _source(output.lhs)
    normalize = p.owner
    if not (isinstance(normalize, ein.MapOp) and _readers(p) == {output}):
        return None
    if len(normalize.inputs) == 2:
        yielded = strip_casts(yielded_value(normalize))
        if not _is_binary_of_args(yielded, "arith.divf", normalize):
            return None
        (e, total), visible = normalize.inputs, None
    else:
        parts = _safe_normalize(normalize)
        if parts is None:
            return None
        e, total, visible = parts
    row_sum, exp = total.owner, e.owner
    if not (_is_last_dim_reduce(row_sum, "sum") and row_sum.input is e and isinstance(exp, ein.MapOp)):
        return None
    exp_value = strip_casts(yielded_value(exp))
    if not (
        isinstance(exp_value.owner, Operation) and exp_value.owner.name == "math.exp"
        and len(exp.inputs) == 2 and _is_binary_of_args(exp_value.owner.operands[0], "arith.subf", exp)
    ):  # fmt: skip
        return None
    t, m = exp.inputs
    row_max = m.owner
    if not (_is_last_dim_reduce(row_max, "max") and row_max.input is t):
        return None
    if _readers(e) != {row_sum, normalize} or _readers(total) != {normalize} or _readers(m) != {exp}:
        return None
    safe = None
    if visible is not None:
        if not (_is_last_dim_reduce(visible.owner, "max") and _readers(visible) == {normalize}):
            return None
        finite = visible.owner.input.owner
        if not (isinstance(finite, ein.MapOp) and list(finite.inputs) == [t]):
            return None
        if _readers(finite.result) != {visible.owner} or not _is_not_negative_infinity(finite):
            return None
        safe = (finite, visible.owner)
    if _readers(t) != {row_max, exp, *(safe[:1] if safe else ())}:
        return None
    pre = t.owner if isinstance(t.owner, ein.MapOp) else None
    if pre is not None:
        scores = [v for v in pre.inputs if isinstance(_source(v).owner, ein.ContractOp)]
        if len(scores) != 1 or _readers(_source(scores[0])) != {pre}:
            return None
        s = _source(scores[0])
    else:
        s = _source(t)
    contract = s.owner
    if not isinstance(contract, ein.ContractOp) or not _layouts_agree(contract, output, row_max):
        return None
    causal = pre is not None and _is_causal(pre)
    upcasts = (_upcast(contract.lhs, contract), _upcast(contract.rhs, contract))
    # SDPA's math path (a safe softmax) widens v too; p . v in 16 bits rounds p once, as SDPA's fused
    # kernels do. Attention a user wrote in f32 (a plain softmax) keeps its f32 p . v
    v_upcast = _upcast(output.rhs, output) if all(upcasts) and safe is not None else None
    return AttentionPattern(
        contract, pre, row_max, exp, row_sum, normalize, output, causal, upcasts, safe, v_upcast
    )


def _safe_normalize(normalize: ein.MapOp) -> tuple[SSAValue, SSAValue, SSAValue] | None:
    """(e, l, a) where `normalize` is a safe softmax's last map, `select(not a, 0, e / l)` (or
    `select(a, e / l, 0)`) over its four inputs e, l, a (booleans) and a splat of zero; else None."""
    if len(normalize.inputs) != 4:
        return None
    select = strip_casts(yielded_value(normalize)).owner
    if not isinstance(select, arith.SelectOp):
        return None
    cond, when_true, when_false = select.cond, strip_casts(select.lhs), strip_casts(select.rhs)
    negated = _negation_of(cond)
    if negated is not None:
        cond, when_true, when_false = negated, when_false, when_true
    # now: select(a, e / l, 0)
    division = when_true.owner
    if not (isinstance(cond, BlockArgument) and isinstance(when_false, BlockArgument)):
        return None
    if not (isinstance(division, arith.DivfOp) and isinstance(strip_casts(division.lhs), BlockArgument)):
        return None
    e_arg, l_arg = strip_casts(division.lhs), strip_casts(division.rhs)
    if not isinstance(l_arg, BlockArgument) or len({cond, when_false, e_arg, l_arg}) != 4:
        return None
    if any(arg.block is not normalize.body.block for arg in (cond, when_false, e_arg, l_arg)):
        return None
    if not _is_zero(normalize.inputs[when_false.index]) or cond.type != i1:
        return None
    return normalize.inputs[e_arg.index], normalize.inputs[l_arg.index], normalize.inputs[cond.index]


def _negation_of(value: SSAValue) -> SSAValue | None:
    """x where `value` is `xori(x, true)` (PyTorch's logical_not), else None."""
    op = value.owner
    if not isinstance(op, arith.XOrIOp):
        return None
    for x, other in ((op.lhs, op.rhs), (op.rhs, op.lhs)):
        owner = other.owner
        if isinstance(owner, arith.ConstantOp) and other.type == i1 and owner.value.value.data in (1, -1):
            return x
    return None


def _is_not_negative_infinity(finite: ein.MapOp) -> bool:
    """The one-input map `finite` yields `x != -inf` of its argument x: `not (x == -inf)` or
    `x une -inf`/`x one -inf`."""
    (x,), value = finite.body.block.args, yielded_value(finite)
    negated = _negation_of(value)
    compare, predicates = (negated, ("oeq", "ueq")) if negated is not None else (value, ("une", "one"))
    op = compare.owner
    if not isinstance(op, arith.CmpfOp):
        return False
    if CMPF_COMPARISON_OPERATIONS[op.predicate.value.data] not in predicates:
        return False
    operands = [strip_casts(v) for v in op.operands]
    return x in operands and negative_infinity(operands[1 - operands.index(x)], finite)


def _narrowed(value: SSAValue) -> tuple[Attribute, float] | None:
    """(t, c) where `value` holds 16-bit float values of type t times the constant c: maps that
    end in `extf(y)` of a 16-bit y, maybe scaled (`* c`: SDPA's math path scales its widened q and k
    by the square root of the softmax scale; the widening may have merged into the map computing y,
    a rotary embedding), read through views (the path reshapes and expands them). Dividing such a
    value by c and rounding to t gives y back exactly (the f32 product's error is far below t's half
    ulp). None otherwise."""
    scale = 1.0
    for _ in range(8):
        value = view_source(value)
        op = value.owner
        if not isinstance(op, ein.MapOp):
            return None
        inner = yielded_value(op)
        if isinstance(inner.owner, arith.MulfOp):
            lhs, rhs = inner.owner.operands
            constant = rhs if isinstance(rhs.owner, arith.ConstantOp) else lhs
            if not isinstance(constant.owner, arith.ConstantOp):
                return None
            scale *= constant.owner.value.value.data
            inner = lhs if constant is rhs else rhs
        if isinstance(inner, BlockArgument) and inner.block is op.body.block:
            value = op.inputs[inner.index]  # a map of an f32 tensor: follow it
            continue
        if not isinstance(inner.owner, arith.ExtFOp):
            return None
        narrow = inner.owner.operands[0].type
        if not (is_float(narrow) and narrow.bitwidth == 16 and math.isfinite(scale) and scale != 0.0):
            return None
        return narrow, scale
    return None


def _upcast(value: SSAValue, reader: Operation) -> ein.MapOp | None:
    """The map widening a 16-bit float tensor to f32 for `reader` alone (SDPA's math path for
    half inputs), which the kernel folds away: a dot of 16-bit operands with f32 accumulation
    forms the same exact products."""
    source = widened_source(value)
    if source is None or _readers(value) != {reader}:
        return None
    narrow = source.type.get_element_type()
    return value.owner if is_float(narrow) and narrow.bitwidth == 16 else None


def classify(contract: ein.ContractOp) -> tuple[str, str, str, str] | None:
    """(grid, row, col, reduced) index letters of a contraction with one col and one reduced index.

    The row index is the lhs-only output index nearest the end; other output indices (batch, and
    lhs-only ones such as the head group of grouped-query attention) index the programs' grid.
    """
    lhs, rhs, out = ein.parse_spec(contract.spec.data)
    m = [c for c in out if c in lhs and c not in rhs]
    n = "".join(c for c in out if c in rhs and c not in lhs)
    k = "".join(c for c in lhs if c in rhs and c not in out)
    if not m or len(n) != 1 or len(k) != 1 or set(lhs + rhs) - set(out + k):
        return None
    q = m[-1]
    return "".join(c for c in out if c not in (q, n)), q, n, k


def _layouts_agree(scores: ein.ContractOp, output: ein.ContractOp, row_max: ein.ReduceOp) -> bool:
    """Scores are (batch..., query, key) with the key last; `output` contracts that key and keeps
    the query and batch positions; the softmax runs over the key."""
    first, second = classify(scores), classify(output)
    if first is None or second is None or shape_of(output.lhs.type) != shape_of(scores.result.type):
        return False
    _, q, key, _ = first
    _, q2, _, key2 = second
    out1 = ein.parse_spec(scores.spec.data)[2]
    lhs2 = ein.parse_spec(output.spec.data)[0]
    softmax_shape = shape_of(row_max.input.type)
    return (
        out1[-1] == key and lhs2.index(key2) == out1.index(key) and lhs2.index(q2) == out1.index(q)
        and softmax_shape[-1] == shape_of(scores.result.type)[-1]
        and all(is_float(v.type.get_element_type()) for v in (scores.lhs, scores.rhs, output.rhs))
    )  # fmt: skip


# arith.cmpi predicates: eq ne slt sle sgt sge ult ule ugt uge = 0..9, and each one's negation
NEGATED_PREDICATE = {0: 1, 1: 0, 2: 5, 3: 4, 4: 3, 5: 2, 6: 9, 7: 8, 8: 7, 9: 6}


def splat_value(value: SSAValue, mapped: ein.MapOp) -> float | int | None:
    """`value`'s scalar where it is constant in `mapped`'s body: an arith constant, or an argument that
    reads a splat (`ein.constant`); else None."""
    owner = value.owner
    if isinstance(value, BlockArgument):
        if value.block is not mapped.body.block:
            return None
        owner = mapped.inputs[value.index].owner
        if not isinstance(owner, ein.ConstantOp):
            return None
    elif not isinstance(owner, arith.ConstantOp):
        return None
    attr = owner.value
    return attr.value.data if isinstance(attr, FloatAttr | IntegerAttr) else None


def negative_infinity(value: SSAValue, pre: ein.MapOp) -> bool:
    """`value` is -inf in `pre`'s body: a constant, or an argument that reads a splat of -inf."""
    return splat_value(value, pre) == float("-inf")


def _causal_select_op(pre: ein.MapOp) -> arith.SelectOp | None:
    """The select `pre` yields, float casts around it looked through (a bf16 model's softmax reads
    `extf(select(...))`: the upcast merged into the map)."""
    select = strip_casts(yielded_value(pre)).owner
    return select if isinstance(select, arith.SelectOp) else None


def _inline_visible(pre: ein.MapOp, args: list[SSAValue], block: Block) -> SSAValue:
    """`pre`'s body cloned into `block` with its causal select taking the visible value (below the
    diagonal), the casts after it kept; the clone of the yielded value."""
    select, kept = _causal_select_op(pre), causal_select(pre)
    mapping: dict[SSAValue, SSAValue] = dict(zip(pre.body.block.args, args))
    for inner in pre.body.block.ops:
        if isinstance(inner, ein.YieldOp):
            return mapping[inner.value]
        if inner is select:
            mapping[select.result] = mapping[kept]
            continue
        clone = inner.clone(value_mapper=mapping)
        block.add_op(clone)
        mapping.update(zip(inner.results, clone.results))
    raise ValueError("ein.map body has no ein.yield")


def causal_select(pre: ein.MapOp) -> SSAValue | None:
    """The value `pre` yields where a query sees its key, when `pre` yields the causal mask on it:
    `select(key <= query, x, -inf)`, or `select(key > query, -inf, x)` (`masked_fill(k > q, -inf)`),
    key and query from iotas over the last two dims (any comparison spelling the same), float casts
    after the select allowed; else None."""
    select = _causal_select_op(pre)
    if select is None or not isinstance(select.cond.owner, arith.CmpiOp):
        return None
    cmp = select.cond.owner
    pred = cmp.predicate.value.data
    if negative_infinity(select.rhs, pre):
        kept = select.lhs
    elif negative_infinity(select.lhs, pre):
        kept, pred = select.rhs, NEGATED_PREDICATE[pred]  # hidden where the comparison holds
    else:
        return None
    rank = len(shape_of(pre.result.type))
    a, b = iota_dim(pre, cmp.lhs), iota_dim(pre, cmp.rhs)
    key, query = rank - 1, rank - 2
    # sle = 3, sge = 5, ule = 7, uge = 9: visible where key <= query
    causal = (pred in (3, 7) and (a, b) == (key, query)) or (pred in (5, 9) and (a, b) == (query, key))
    return kept if causal else None


def _is_causal(pre: ein.MapOp) -> bool:
    return causal_select(pre) is not None


def iota_dim(pre: ein.MapOp, v: SSAValue) -> int | None:
    """The scores' dim that `v` (an argument of `pre`'s body) counts along, where it reads an iota."""
    if not isinstance(v, BlockArgument) or v.block is not pre.body.block:
        return None
    src = pre.inputs[v.index].owner
    if not isinstance(src, ein.IotaOp):
        return None
    return len(shape_of(pre.result.type)) - len(shape_of(src.result.type)) + src.dim.value.data


def causal_window(pre: ein.MapOp) -> int | None:
    """`w` where the value `pre`'s causal select keeps is itself `select(query - key < w, x, -inf)`
    (a sliding window, as `lower_structured._attention_mask` writes it, key and query from iotas):
    every key more than `w - 1` before its query is hidden, so key blocks wholly before a query
    block's window need not be visited; else None."""
    kept = causal_select(pre)
    select = strip_casts(kept).owner if kept is not None else None
    if not isinstance(select, arith.SelectOp) or not negative_infinity(select.rhs, pre):
        return None
    cmp = select.cond.owner
    if not isinstance(cmp, arith.CmpiOp) or cmp.predicate.value.data != 2:  # slt
        return None
    diff, width = cmp.lhs.owner, cmp.rhs.owner
    if not isinstance(diff, arith.SubiOp) or not isinstance(width, arith.ConstantOp):
        return None
    rank = len(shape_of(pre.result.type))
    if (iota_dim(pre, diff.lhs), iota_dim(pre, diff.rhs)) != (rank - 2, rank - 1):
        return None
    value = width.value.value.data if isinstance(width.value, IntegerAttr) else None
    return value if isinstance(value, int) and value >= 1 else None


def lower_attention(kb: KernelBuilder, pattern: AttentionPattern, allow_tf32: bool) -> tuple[list[str], dict]:
    """The flash-attention kernel of `pattern` (see the module docstring). Returns grid and problem."""
    scores, output = pattern.scores, pattern.output
    batch, q, key, d = classify(scores)
    batch2, q2, dv, key2 = classify(output)
    lhs1, rhs1, out1 = ein.parse_spec(scores.spec.data)
    lhs2, rhs2, out2 = ein.parse_spec(output.spec.data)
    sizes = dict(zip(out1, shape_of(scores.result.type))) | dict(zip(lhs1, shape_of(scores.lhs.type)))
    Nq, Nk, D = sizes[q], sizes[key], sizes[d]
    Dv = dict(zip(rhs2, shape_of(output.rhs.type)))[dv]
    batch_sizes = [sizes[c] for c in batch]

    for param, extent in (("BLOCK_D", D), ("BLOCK_DV", Dv)):
        if extent >= 16 and extent & (extent - 1) == 0:  # a power of two: the tile is the head dim
            kb.exact[param] = extent
    at: dict[str, Index] = dict(zip(batch, kb.unravel(kb.program_id(1), batch_sizes)))
    pid_m = kb.program_id(0)
    rows = kb.offsets(pid_m, "BLOCK_M")
    at[q] = kb.expand(rows, 1)
    at[d] = kb.expand(kb.arange("BLOCK_D"), 0)
    q_up, k_up = pattern.upcasts
    q_src = q_up.inputs[0] if q_up else scores.lhs
    k_src = k_up.inputs[0] if k_up else scores.rhs
    q_index = [at[c] for c in lhs1]
    q_tile = kb.full_tile(kb.load(q_src, q_index), q_index)  # [BLOCK_M, BLOCK_D], read once
    dot_elem = q_src.type.get_element_type()
    if dot_elem != k_src.type.get_element_type():  # only one side was widened: widen it here
        dot_elem = scores.lhs.type.get_element_type()
        q_tile = kb.cast(q_tile, dot_elem)
    q_narrow, k_narrow = _narrowed(scores.lhs), _narrowed(scores.rhs)
    score_scale = 1.0
    if q_up is None and k_up is None and q_narrow and k_narrow and q_narrow[0] == k_narrow[0]:
        # both widened (and scaled) 16-bit values, read through views: unscaled and rounded back
        # (exactly) for a 16-bit dot, whose f32 products are exact; the scales multiply the dot
        dot_elem, score_scale = q_narrow[0], q_narrow[1] * k_narrow[1]
        q_tile = _unscaled(kb, q_tile, q_narrow)
    else:
        k_narrow = None

    acc_type = tile.BlockType(["BLOCK_M", "BLOCK_DV"], f32)
    stat_type = tile.BlockType(["BLOCK_M", "1"], f32)
    neg_inf = FloatAttr(float("-inf"), f32)
    inits = [
        kb.emit(tile.FullOp(neg_inf, stat_type)).result,
        kb.emit(tile.FullOp(FloatAttr(0.0, f32), stat_type)).result,
        kb.emit(tile.FullOp(FloatAttr(0.0, f32), acc_type)).result,
    ]
    size = kb.param("BLOCK_N")
    key_end = kb.const(Nk)
    full_blocks = kb.index_op("div", key_end, size)  # blocks with no key past the end
    key_start = kb.const(0)
    if pattern.causal:  # keys past the block's last query are all masked; none before its first
        first_row = kb.index_op("mul", pid_m, kb.param("BLOCK_M"))
        key_end = kb.index_op("min", key_end, kb.index_op("add", first_row, kb.param("BLOCK_M")))
        full_blocks = kb.index_op("min", full_blocks, kb.index_op("div", first_row, size))
        window = causal_window(pattern.pre)
        if window is not None:  # and a sliding window hides every key before the first query's window
            lowest = kb.index_op("max", kb.index_op("sub", first_row, window - 1), 0)
            key_start = kb.index_op("div", lowest, size)
    trips = kb.index_op("div", kb.index_op("add", key_end, kb.index_op("sub", size, 1)), size)
    key_of = dict(zip(lhs2, out1))  # the output contraction's letters, named as in the scores
    # a widened 16-bit v (not scaled) in SDPA's math path: p . v in 16 bits, p rounded once, as SDPA's
    # fused kernels run it (`v_upcast` above)
    v_found = _narrowed(output.rhs) if dot_elem != f32 and pattern.safe is not None else None
    v_narrow = v_found[0] if v_found is not None and v_found[1] == 1.0 else None

    def key_blocks(start: SSAValue, end: SSAValue, state: list[SSAValue], masked: bool) -> list[SSAValue]:
        """One scf.for over key blocks [start, end); unmasked blocks skip the causal and bounds masks."""
        body = Block(arg_types=[i32, stat_type, stat_type, acc_type])
        j, m_i, l_i, acc = body.args
        with kb.inside(body):
            keys = kb.offsets(j, "BLOCK_N")
            k_at = at | {key: kb.expand(keys, 0), d: kb.expand(kb.arange("BLOCK_D"), 1)}
            k_index = [k_at[c] for c in rhs1]
            k_tile = kb.full_tile(kb.load(k_src, k_index), k_index)  # [BLOCK_D, BLOCK_N]
            k_tile = _unscaled(kb, k_tile, k_narrow) if k_narrow else kb.cast(k_tile, dot_elem)
            zero = kb.emit(
                tile.FullOp(FloatAttr(0.0, f32), tile.BlockType(["BLOCK_M", "BLOCK_N"], f32))
            ).result
            dot = kb.emit(tile.DotOp(q_tile, k_tile, zero, allow_tf32 and dot_elem == f32)).result
            if score_scale != 1.0:
                dot = kb.map([dot], f32, lambda sb, x: sb.mul(x, sb.const(score_scale, f32)))
            s = kb.cast(dot, scores.result.type.get_element_type())
            s_at = {c: at[c] for c in batch} | {q: at[q], key: kb.expand(keys, 0)}
            t = kb.cast(_pre_softmax(kb, pattern, s, [s_at[c] for c in out1], masked), f32)
            if masked:
                in_range = kb.map([kb.expand(keys, 0)], i1, lambda sb, c: sb.cmp("lt", c, sb.const(Nk, i32)))
                t = kb.map(
                    [in_range, t], f32, lambda sb, ok, v: sb.select(ok, v, sb.const(float("-inf"), f32))
                )
            # a NaN score makes its row NaN through exp and the sums: the max need not propagate it
            block_max = kb.expand(kb.emit(tile.ReduceOp("maxnum", t, 1)).result, 1)
            m_new = kb.map([m_i, block_max], f32, lambda sb, a, b: sb.maxnum(a, b))
            # a row with no unmasked key yet keeps m = -inf; exp(-inf - -inf) would be NaN
            m_use = kb.map(
                [m_new], f32,
                lambda sb, m: sb.select(sb.cmp("eq", m, sb.const(float("-inf"), f32)), sb.const(0.0, f32), m),
            )  # fmt: skip
            e = _exp_map(kb, pattern.exp, t, m_use)
            alpha = kb.cast(_exp_map(kb, pattern.exp, m_i, m_use), f32)
            row_sum = kb.expand(kb.emit(tile.ReduceOp("sum", kb.cast(e, f32), 1)).result, 1)
            l_new = kb.map([l_i, alpha, row_sum], f32, lambda sb, a, b, c: sb.add(sb.mul(a, b), c))
            # p's dot: in the probabilities' type, or where v is a widened 16-bit tensor (SDPA's math
            # path for half inputs), in v's own type, as a flash kernel runs (p rounded once): an f32 dot
            # would run on FMA units (exact f32: no tensor cores in an attention kernel)
            v_src = pattern.v_upcast.inputs[0] if pattern.v_upcast is not None else output.rhs
            p_elem = v_src.type.get_element_type() if pattern.v_upcast is not None else v_narrow
            p = kb.cast(e, p_elem or pattern.normalize.result.type.get_element_type())
            v_at = {c: at[key_of[c]] for c in batch2} | {
                key2: kb.expand(keys, 1),
                dv: kb.expand(kb.arange("BLOCK_DV"), 0),
            }
            v_index = [v_at[c] for c in rhs2]
            v_tile = kb.full_tile(kb.load(v_src, v_index), v_index)  # [BLOCK_N, BLOCK_DV]
            if v_narrow is not None and pattern.v_upcast is None:  # exact: v's values are 16-bit ones
                v_tile = kb.cast(v_tile, v_narrow)
            scaled = kb.map([acc, alpha], f32, lambda sb, a, b: sb.mul(a, b))
            tf32 = allow_tf32 and v_src.type.get_element_type() == f32
            kb.emit(scf.YieldOp(m_new, l_new, kb.emit(tile.DotOp(p, v_tile, scaled, tf32)).result))
        return list(kb.emit(scf.ForOp(start, end, kb.const(1), state, Region(body))).results)

    state = key_blocks(key_start, full_blocks, inits, masked=False)
    loop_results = key_blocks(full_blocks, trips, state, masked=True)
    m_end, l_end, acc_end = loop_results
    result = kb.map([acc_end, l_end], f32, lambda sb, a, b: sb.div(a, b))
    if pattern.safe is not None:  # no visible key in the row (its max is still -inf): zeros
        result = kb.map(
            [m_end, result], f32,
            lambda sb, m, r: sb.select(sb.cmp("eq", m, sb.const(float("-inf"), f32)), sb.const(0.0, f32), r),
        )  # fmt: skip
    o_at = {c: at[key_of[c]] for c in batch2} | {q2: at[q], dv: kb.expand(kb.arange("BLOCK_DV"), 0)}
    kb.store(
        kb.output_argument(output.result),
        [o_at[c] for c in out2],
        kb.cast(result, output.result.type.get_element_type()),
    )
    B = math.prod(batch_sizes)
    problem = {
        "M": Nq,
        "N": Nk,
        "D": D,
        "DV": Dv,
        "B": B,
        "causal": int(pattern.causal),
        "elem_bytes": dot_elem.bitwidth // 8,
        "exact": dict(kb.exact),
    }
    return [f"cdiv({Nq}, BLOCK_M)", str(B)], problem


def _unscaled(kb: KernelBuilder, x: SSAValue, narrow: tuple[Attribute, float]) -> SSAValue:
    """A tile of `_narrowed` values back in their 16-bit type: divided by the scale, rounded."""
    elem, scale = narrow
    if scale != 1.0:
        x = kb.map([x], f32, lambda sb, v: sb.div(v, sb.const(scale, f32)))
    return kb.cast(x, elem)


def _pre_softmax(
    kb: KernelBuilder, pattern: AttentionPattern, s: SSAValue, s_idx: list[Index], masked: bool
) -> SSAValue:
    """`t` on a block of scores; extra inputs are read at the scores' indices, carried through the
    reshape between the scores and the softmax (the key index stays last)."""
    pre = pattern.pre
    if pre is None:
        return s
    shape = shape_of(pre.result.type)
    scores_shape = shape_of(pattern.scores.result.type)
    if shape == scores_shape:
        idx = s_idx
    else:
        flat = kb.linearize(s_idx[:-1], scores_shape[:-1])
        idx = kb.unravel(flat, shape[:-1]) + [s_idx[-1]]
    operands = []
    for v in pre.inputs:
        if _source(v) is pattern.scores.result:
            operands.append(s)
            continue
        operands.append(kb.load(v, kb.broadcast_indices(v, shape, idx)))
    elem = pre.result.type.get_element_type()
    if masked or not pattern.causal:
        return kb.map(operands, elem, lambda sb, *args: inline_map_body(pre, args, sb.block))
    # below the diagonal the causal select always takes its visible value
    return kb.map(operands, elem, lambda sb, *args: _inline_visible(pre, list(args), sb.block))


def _exp_map(kb: KernelBuilder, exp: ein.MapOp, t: SSAValue, m: SSAValue) -> SSAValue:
    """The softmax's own `exp(t - m)` body on tiles, inputs cast to the types it was written for."""
    t_elem, m_elem = (v.type.get_element_type() for v in exp.inputs)
    operands = [kb.cast(t, t_elem), kb.cast(m, m_elem)]
    elem = exp.result.type.get_element_type()
    return kb.map(operands, elem, lambda sb, *args: inline_map_body(exp, args, sb.block))
