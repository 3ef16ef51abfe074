"""split-reduction: a reduction over a wide GEMM output row, computed per chunk in the GEMM's
epilogue and combined by a small second reduction (TVM's rfactor, Inductor's split reduction).

A GEMM tile can hold a whole output row only up to MAX_EPILOGUE_ROW columns. For a wider row
whose only use is a reduction, the row is viewed as T chunks of C columns (C a power of two
dividing N, at most MAX_EPILOGUE_ROW): one GEMM tile is one chunk, and its epilogue reduces it
to one partial per row. The [.., T] partials go to a row kernel that combines them. The GEMM
never writes its [.., N] output; the partials are N/C times smaller.

    r = reduce{sum,max,min,mean} [-1] f(contract(..))       f elementwise on the product
      -> p = reduce [-1] reshape(f(..), [.., T, C]);  r = reduce [-1] p
    logsumexp over N (max, exp(y - max), sum, log + max)
      -> p = logsumexp over C of the chunks;  r = logsumexp over T of p

Partials are kept in f32. Where the product is needed again after the reduction (softmax,
log_softmax, a norm's output), the row is not split: the GEMM writes the row anyway, and the
one-pass row kernel after it moves the same bytes as partials plus a combine kernel would,
with one launch fewer. Rows whose N has no power-of-two divisor C >= MIN_CHUNK stay unsplit.

Column reductions are split the same way (`_split_columns`): a reduction over the leading dims
of a tall tensor into few outputs (a norm weight's or a bias's gradient, summed over the tokens)
gets one program per few output columns walking every row, which leaves the GPU idle; its rows
are viewed as T chunks of c, reduced to [T, ..] f32 partials by many programs, then combined.

    r = reduce{sum,max,min,mean} [0..j) f(x)                 x: [C.., K..], few K outputs
      -> p = reduce [1] f(x viewed [T, c, K..]) in f32;  r = reduce [0] p

Full reductions (a loss's mean, a norm of a whole tensor) have no row to give a program, so they
are reduced as rows (`_split_full`): N elements viewed as [T, c] (c a power of two, or the trailing
dims when none divides N), T partials in f32 by many programs, then one program over the partials
viewed [1, T]. Few elements are one row, [1, N]: one program, one launch.

    r = reduce{sum,max,min,mean} [all] f(x)                  x: N elements
      -> p = reduce [1] f(x viewed [T, c]) in f32;  r = reduce [1] (p viewed [1, T])

Few wide rows (a softmax over 16 rows of 262144, a norm over a wide feature dim) would get one program
per row, most SMs idle (`_split_wide_rows`): their reductions read the rows as [.., T, C] chunks, a
map producing the reduced value applied to the chunks, and combine the partials.

    r = reduce{sum,max,min,mean} [N..] f(x, s..)            x: [R.., N..], few rows, N.. wide
      -> p = reduce [-1] f(x viewed [R.., T, C], s viewed [R.., 1, 1]) in f32;  r = reduce [-1] p

The K of a linear layer's GEMM is split the same way (`_split_k`, split-K) where its output tiles
would leave most SMs idle (short prompts, decoding through deep K): S partial GEMMs over K/S in f32
as one batched contraction, summed by a pointwise map of the S slices, which the GEMM's epilogue
then joins.

    y = contract "mk,nk->mn" (a, w)                          few output tiles, deep K
      -> p = contract "msk,nsk->smn" (a viewed [M, S, K/S], w viewed [N, S, K/S]) in f32
         y = p[0] + p[1] + ... + p[S-1]
"""

from __future__ import annotations

import functools
import math
import os
import string
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, f32, i64
from xdsl.ir import SSAValue
from xdsl.passes import ModulePass

from ..autotune.heuristics import SMALL_GRID_MAX_K
from ..ir import einsum as ein
from ..ir.builder import (
    EinBuilder,
    InsertingEinBuilder,
    ScalarBuilder,
    erase_dead,
    inline_map_body,
    single_user,
    strip_casts,
    sums_in_i64,
    yielded_value,
)
from ..ir.dtypes import has_symbolic_sizes, is_float, shape_of, tensor_type
from ..ir.module import functions

MAX_EPILOGUE_ROW = 256  # output columns a GEMM tile can hold whole (f32 accumulators in registers)
MIN_CHUNK = 64  # narrower chunks would leave GEMM tiles too thin to run near peak


def chunk_size(n: int) -> int | None:
    """The columns of one chunk of a row of `n`: the widest power of two <= MAX_EPILOGUE_ROW
    dividing `n`, or None when the row fits one tile or has no such divisor."""
    if n <= MAX_EPILOGUE_ROW:
        return None
    c = MAX_EPILOGUE_ROW
    while c >= MIN_CHUNK and n % c:
        c //= 2
    return c if c >= MIN_CHUNK else None


def _product_row(value: SSAValue) -> bool:
    """Whether `value` is a contraction's output, or elementwise maps of it of the same shape,
    each link read only by the next, with the contraction's N index last (see `chunk_size`)."""
    shape = tuple(shape_of(value.type))
    while isinstance(value.owner, ein.MapOp):
        full = [v for v in value.owner.inputs if tuple(shape_of(v.type)) == shape]
        if len(full) != 1 or single_user(full[0]) is not value.owner:
            return False
        value = full[0]
    op = value.owner
    if not isinstance(op, ein.ContractOp):
        return False
    lhs, rhs, out = ein.parse_spec(op.spec.data)
    return out[-1] in rhs and out[-1] not in lhs and is_float(value.type.get_element_type())


def _body_op(v: SSAValue, name: str) -> list[SSAValue] | None:
    """The operands (casts stripped) of `v`'s defining op if it is `name`."""
    v = strip_casts(v)
    if v.owner is None or getattr(v.owner, "name", "") != name:
        return None
    return [strip_casts(o) for o in v.owner.operands]


@dataclass
class _LogSumExp:
    """max, stabilizer, exp(y - m), sum, log(s) + m over the last dim of `y`, as matched."""

    y: SSAValue
    result: ein.MapOp


def _match_logsumexp(mx: ein.ReduceOp) -> _LogSumExp | None:
    """`log(sum(exp(y - m~))) + m~` with m~ any row-shaped map of m = max(y) (a stabilizer:
    the value does not depend on it), nothing else reading m, m~, the exp or the sum."""
    y = mx.input
    if mx.kind.data != "max" or mx.keepdim is None:
        return None
    stab = mx.result
    if (user := single_user(stab)) is not None and isinstance(user, ein.MapOp):
        if tuple(shape_of(user.result.type)) == tuple(shape_of(stab.type)) and len(user.inputs) <= 2:
            others = [v for v in user.inputs if v is not stab]
            if all(isinstance(v.owner, ein.ConstantOp) for v in others):
                stab = user.result
    readers = {u.operation for u in stab.uses}
    exp = next((r for r in readers if isinstance(r, ein.MapOp) and y in r.inputs), None)
    if exp is None or {u.operation for u in y.uses} != {mx, exp} or len(exp.inputs) != 2:
        return None
    args = dict(zip(exp.inputs, exp.body.block.args))
    inner = _body_op(yielded_value(exp), "math.exp")
    if inner is None or _body_op(inner[0], "arith.subf") != [args[y], args[stab]]:
        return None
    total = single_user(exp.result)
    if not (
        isinstance(total, ein.ReduceOp) and total.kind.data == "sum" and total.reduce_dims == mx.reduce_dims
    ):
        return None
    final = single_user(total.result)
    views = readers - {exp}
    if len(views) != 1 or not isinstance(final, ein.MapOp):
        return None
    (view,) = views
    m_in = view.result if isinstance(view, ein.ViewOp) and view.kind.data == "reshape" else stab
    if view is not final and (single_user(view.result) is not final):
        return None
    if set(final.inputs) != {total.result, m_in} or len(final.inputs) != 2:
        return None
    fargs = dict(zip(final.inputs, final.body.block.args))
    terms = _body_op(yielded_value(final), "arith.addf")
    if terms is None or fargs[m_in] not in terms:
        return None
    log = _body_op(terms[1 - terms.index(fargs[m_in])], "math.log")
    if log != [fargs[total.result]]:
        return None
    return _LogSumExp(y, final)


def _logsumexp(b: EinBuilder, x: SSAValue, out_elem) -> SSAValue:
    """logsumexp of `x` over its last dim, computed in f32: max, an infinite max replaced by 0
    (so rows of -inf give -inf, not NaN), exp(x - m), sum, log(s) + m."""
    m = b.reduce("max", x, [-1], keepdim=True)
    inf = float("inf")
    m = b.map(
        [m],
        f32,
        lambda sb, v: sb.select(sb.cmp("eq", sb.unary("abs", v), sb.const(inf, f32)), sb.const(0.0, f32), v),
    )
    e = b.map([x, m], f32, lambda sb, v, s: sb.unary("exp", sb.sub(v, s)))
    s = b.reduce("sum", e, [-1], keepdim=False)
    m_row = b.reshape(m, shape_of(s.type))
    return b.map([s, m_row], out_elem, lambda sb, t, s_: sb.add(sb.unary("log", t), s_))


def _peel(x: SSAValue) -> tuple[SSAValue, list[ein.MapOp]]:
    """`x` = maps(reshapes(y)) with each map reading one tensor (others 0-d constants) and each
    reshape keeping the last dim, each link read only by the next: (y, the maps, first first).
    A linear on a 3-d input reshapes its [B*S, N] product to [B, S, N] before the activation."""
    maps = []
    while True:
        op = x.owner
        if isinstance(op, ein.MapOp):
            scalars = [v for v in op.inputs if not shape_of(v.type)]
            if len(op.inputs) - len(scalars) != 1:
                break
            (source,) = [v for v in op.inputs if shape_of(v.type)]
            if shape_of(source.type) != shape_of(x.type):
                break
            maps.append(op)
        elif isinstance(op, ein.ViewOp) and op.kind.data == "reshape":
            if shape_of(op.input.type)[-1:] != shape_of(x.type)[-1:]:
                break
            source = op.input
        else:
            break
        if single_user(source) is not op:
            break
        x = source
    return x, maps[::-1]


def _chunks(b: EinBuilder, x: SSAValue) -> SSAValue | None:
    """`x` (a GEMM product's row, see `_peel`) viewed as [.., T, C] chunks in f32, or None when
    it is not such a row or N has no chunk size. Maps between the product and `x` that only
    read constants are applied to the chunks, so the view sits right on the GEMM's output."""
    y, maps = _peel(x)
    shape = list(shape_of(y.type))
    c = chunk_size(shape[-1]) if shape else None
    if c is None or not _product_row(y):
        return None
    chunks = b.reshape(y, [*shape[:-1], shape[-1] // c, c])
    for op in maps:
        inputs = [chunks if shape_of(v.type) else v for v in op.inputs]
        result = tensor_type(shape_of(chunks.type), op.result.type.get_element_type())
        chunks = b._emit(ein.MapOp(inputs, result, op.body.clone()))
    return b.cast(chunks, f32)


def _split_plain(reduce: ein.ReduceOp) -> bool:
    """r = reduce(f(product)) over the last dim -> reduce of the per-chunk partials."""
    x, kind = reduce.input, reduce.kind.data
    shape = shape_of(x.type)
    if kind not in ("sum", "max", "min", "mean") or reduce.reduce_dims != (len(shape) - 1,):
        return False
    b = InsertingEinBuilder(reduce, "split")
    if single_user(x) is not reduce or (chunks := _chunks(b, x)) is None:
        return False
    partial = b.reduce(kind, chunks, [-1], keepdim=False)
    total = b.reduce(kind, partial, [-1], keepdim=False)
    result = reduce.result
    result.replace_all_uses_with(
        b.reshape(b.cast(total, result.type.get_element_type()), shape_of(result.type))
    )
    return True


def _split_logsumexp(mx: ein.ReduceOp) -> bool:
    match = _match_logsumexp(mx)
    if match is None or mx.reduce_dims != (len(shape_of(mx.input.type)) - 1,):
        return False
    b = InsertingEinBuilder(match.result, "split")
    if (chunks := _chunks(b, match.y)) is None:
        return False
    result = match.result.result
    total = _logsumexp(b, _logsumexp(b, chunks, f32), result.type.get_element_type())
    result.replace_all_uses_with(b.reshape(total, shape_of(result.type)))
    return True


# Column reductions: a sum over the leading dims of a tall tensor into few outputs (a norm weight's or a
# bias's gradient: [tokens, features] summed over the tokens). One program per few output columns
# walks every row: few programs, and rows read a few lanes wide (4 lanes of 2048: 40 µs on the H200
# for a bf16 [2048, 2048] sum, where the bytes take 4). Split as Inductor does: T chunks of rows
# reduced to [T, ..] partials in f32 by many programs, then the partials.
# A bias of few features gets few programs even at modest sizes: Qwen2's key and value biases ([2048
# tokens, 256]) were 4 programs of 2048 rows, ~45 µs each on the H200 (torch.compile ~12).
MIN_COLUMN_ELEMENTS = 1 << 18  # smaller sums fit the GPU as they are
MAX_COLUMN_OUTPUTS = 16384  # more outputs than this keep the GPU busy without the split
COLUMN_CHUNKS = (256, 512, 128, 64)  # rows a partial reduces, in order of preference
COLUMN_TILE = 64  # output columns a column reduction's program keeps (heuristics: BLOCK_R)
COLUMN_PROGRAMS = 64  # partial programs to aim for: half of an H100/H200's SMs or more


def column_chunk(rows: int, outputs: int) -> int | None:
    """The rows a partial of a column split reduces: the first of COLUMN_CHUNKS that divides `rows` into
    at least 4 chunks and gives COLUMN_PROGRAMS programs, else the smallest that divides; None where
    none divides."""
    fits = [c for c in COLUMN_CHUNKS if rows % c == 0 and rows // c >= 4]
    tiles = max(1, outputs // COLUMN_TILE)
    busy = [c for c in fits if rows // c * tiles >= COLUMN_PROGRAMS]
    return busy[0] if busy else min(fits, default=None)


def _split_columns(reduce: ein.ReduceOp) -> bool:
    """r = reduce over the leading dims of x [C.., K..] -> reduce over the chunks of partials
    reduce(x viewed [T, c, K..]) over c; a map producing x for this reduce only (its prologue) is
    applied to the chunks, so the reduction still reads x's operands once."""
    x, kind = reduce.input, reduce.kind.data
    shape = shape_of(x.type)
    j = len(reduce.reduce_dims)
    elem = x.type.get_element_type()
    if kind not in ("sum", "max", "min", "mean") or not (is_float(elem) or sums_in_i64(kind, elem)):
        return False
    if reduce.reduce_dims != tuple(range(j)) or not 0 < j <= len(shape):
        return False
    if j == len(shape):
        return _split_full(reduce)
    if not is_float(elem):
        return False  # integer column sums: left whole
    kept = list(shape[j:])
    rows, outputs = math.prod(shape[:j]), math.prod(kept)
    if outputs > MAX_COLUMN_OUTPUTS or rows * outputs < MIN_COLUMN_ELEMENTS:
        return False
    c = column_chunk(rows, outputs)
    if c is None:
        return False
    view = [rows // c, c, *kept]
    producer = x.owner
    prologue = isinstance(producer, ein.MapOp) and single_user(x) is reduce
    if prologue and not all(_chunkable(v, shape, j) for v in producer.inputs):
        return False  # viewing the map's result would cost it its place in the reduction
    if prologue and not any(_spans_rows(v, shape, j) for v in producer.inputs):
        return False  # every operand broadcast over the rows: nothing to chunk
    b = InsertingEinBuilder(reduce, "split")
    if prologue:
        # the map on the chunks, widened to f32 in its own body: one map, so still the reduction's prologue
        inputs = [_chunk_operand(b, v, shape, j, view) for v in producer.inputs]
        body = lambda sb, *args: inline_map_body(producer, args, sb.block)  # noqa: E731
        chunks = b.map(inputs, f32, body, cast_inputs=False)
    else:
        chunks = b.cast(b.reshape(x, view), f32)
    partial = b.reduce(kind, chunks, [1], keepdim=False)
    total = b.reduce(kind, partial, [0], keepdim=False)  # a mean of equal chunks' means is the mean
    _replace_result(b, reduce, total)
    return True


FULL_CHUNKS = (4096, 2048, 1024, 512, 256)  # elements a partial reduces, in order of preference
MIN_FULL_SPLIT = 1 << 16  # fewer elements are one row: one program, one launch
MIN_FULL_ROW = 64  # trailing dims narrower than this make too many partials


def full_view(shape: tuple[int, ...]) -> list[int]:
    """The rows of c elements a reduction of all of `shape` runs as, as a view of `shape`: the last
    dim split [.., n/c, c] by a power-of-two c from FULL_CHUNKS that divides it (each row then lies
    in one row of the input, so its loads stay contiguous: a [T, c] view across the input's rows
    made every index a div and a mod and took 2x torch.compile's time on the H200); else [N/c, c]
    with c dividing N; else the narrowest trailing dims of at least MIN_FULL_ROW elements, else
    [1, N] (few elements, or nothing divides them)."""
    n = math.prod(shape)
    if n >= MIN_FULL_SPLIT:
        if shape and (c := next((c for c in FULL_CHUNKS if shape[-1] % c == 0), None)) is not None:
            return [*shape[:-1], shape[-1] // c, c]
        if (c := next((c for c in FULL_CHUNKS if n % c == 0), None)) is not None:
            return [n // c, c]
        for k in range(len(shape) - 1, 0, -1):
            if (c := math.prod(shape[k:])) >= MIN_FULL_ROW:
                return [n // c, c]
    return [1, n]


def _split_full(reduce: ein.ReduceOp) -> bool:
    """r = reduce over every dim of x -> rows of partials (see `full_view`) and their combine. A
    map producing x for this reduce only, whose operands are x-shaped or scalars, is applied to
    the rows, so it stays the reduction's prologue; any other producer writes x first."""
    x, kind = reduce.input, reduce.kind.data
    shape = tuple(shape_of(x.type))
    view = full_view(shape)
    b = InsertingEinBuilder(reduce, "split")
    acc = i64 if sums_in_i64(kind, x.type.get_element_type()) else f32  # the partials' type
    producer = x.owner
    whole = lambda v: tuple(shape_of(v.type)) == shape or math.prod(shape_of(v.type)) == 1  # noqa: E731
    if isinstance(producer, ein.MapOp) and single_user(x) is reduce and all(map(whole, producer.inputs)):
        rows_of = lambda v: view if tuple(shape_of(v.type)) == shape else [1] * len(view)  # noqa: E731
        inputs = [b.reshape(v, rows_of(v)) if shape_of(v.type) else v for v in producer.inputs]
        body = lambda sb, *args: inline_map_body(producer, args, sb.block)  # noqa: E731
        rows = b.map(inputs, acc, body, cast_inputs=False)
    else:
        rows = b.cast(b.reshape(x, view), acc)
    total = b.reduce(kind, rows, [len(view) - 1], keepdim=False)  # a mean of equal rows' means is the mean
    if (partials := math.prod(view[:-1])) > 1:
        total = b.reduce(kind, b.reshape(total, [1, partials]), [1], keepdim=False)
    _replace_result(b, reduce, total)
    return True


def _replace_result(b: InsertingEinBuilder, reduce: ein.ReduceOp, total: SSAValue) -> None:
    """Readers of `reduce` read the split's `total` (cast back, reshaped to the result's shape). A
    map of a 0-d result alone (a bf16 loss's cast back from f32, a scale) joins the combine as its
    epilogue: after the reshape to 0-d it was a group of its own, a PyTorch op after the last
    kernel (huber loss: two glue ops where mse had one)."""
    out = reduce.result
    total = b.cast(total, out.type.get_element_type())
    user = single_user(out)
    if isinstance(user, ein.MapOp) and not shape_of(out.type) and list(user.inputs) == [out]:
        elem = user.result.type.get_element_type()
        mapped = b.map([total], elem, lambda sb, v: inline_map_body(user, [v], sb.block), cast_inputs=False)
        user.result.replace_all_uses_with(b.reshape(mapped, []))
    else:
        out.replace_all_uses_with(b.reshape(total, shape_of(out.type)))


def _operand_dims(v: SSAValue, shape: tuple[int, ...], j: int) -> tuple[list[int], list[int]]:
    """A map operand's sizes (numpy-broadcast to `shape`) split into those aligned with the `j`
    reduced leading dims and those aligned with the kept dims."""
    sizes = list(shape_of(v.type))
    cut = max(0, len(sizes) - (len(shape) - j))
    return sizes[:cut], sizes[cut:]


def _chunkable(v: SSAValue, shape: tuple[int, ...], j: int) -> bool:
    """Whether a map operand can be viewed over [T, c, kept..]: it spans the leading dims whole,
    or none of them."""
    lead, _ = _operand_dims(v, shape, j)
    return not lead or lead == list(shape[:j]) or all(d == 1 for d in lead)


def _spans_rows(v: SSAValue, shape: tuple[int, ...], j: int) -> bool:
    return _operand_dims(v, shape, j)[0] == list(shape[:j])


def _chunk_operand(b: EinBuilder, v: SSAValue, shape: tuple[int, ...], j: int, view: list[int]) -> SSAValue:
    lead, tail = _operand_dims(v, shape, j)
    if not lead:
        return v  # broadcast over the kept dims only: it still aligns with [T, c, kept..]
    return b.reshape(v, [*view[:2], *tail] if lead == list(shape[:j]) else [1, 1, *tail])


# Split-K: a linear layer's GEMM whose output tiles leave most SMs idle (a short prompt's projections:
# M = 128 rows, N = 2048 is 16 tiles of 128 x 128 on 132 SMs, each walking all of K) is computed as S
# GEMMs over K/S each, [S, M, N] partials in f32, summed by a pointwise kernel that also runs the
# epilogue (bias, activation, residual, the norm fold's correction). Deterministic: a fixed order of S
# partial sums, no atomics. H200, bf16, kernel time (benchmarks/NOTES.md): 128 x 8192 -> 2048 + bias +
# residual 49.0 us whole, 15.7 in eight splits (cuBLAS alone 15.4); 1 x 8192 -> 2048 15.5 -> 7.7
# (cuBLAS 10.3); 128 x 65536 -> 256 387 -> 22.7. SPLIT_K_ENV = "0" turns it off, an integer forces
# that S wherever K divides (experiments).
SPLIT_K_ENV = "TILEFUSE_SPLIT_K"
SPLIT_K_PROGRAMS = 132  # a wave of programs on an H100/H200 (SMs): the split stops before exceeding it
MIN_SPLIT_DEPTH = 512  # K each split keeps (8 steps of a 64-deep K tile)
# decode-sized M (<= 32 rows) streams the weight: up to two waves of programs, splits of at least
# MIN_DECODE_SPLIT_DEPTH, and only K deeper than MIN_DECODE_SPLIT_K (H200, M = 1, N = 2048: K = 8192
# 15.5 us unsplit, 11.7 in two splits, 8.6 in four, cuBLAS 10.7; K = 2048 4.5 unsplit, 5.1 in four)
MIN_DECODE_SPLIT_DEPTH = 1024
MIN_DECODE_SPLIT_K = 4096
# 128 x 128 tiles past which a split no longer pays for its partials (H200, bf16, M = 128, K = 2048:
# N = 6144 (48 tiles) 12.1 us whole, 11.4 in two splits; N = 8192 (64 tiles) 15.0 whole, 15.3 in two)
MAX_SPLIT_TILES = 32
SPLIT_K_STEP = 64  # each split's K is a multiple of a K tile (no masked tail in every split)
MAX_SLICED_SPLITS = 16  # up to this many partials are summed by a pointwise map of their slices


def split_k_factor(m: int, n: int, k: int, forced: str | None = None) -> int:
    """How many K splits a GEMM of M x K @ K x N gets (1: none). The programs it would have are
    estimated as the GEMM heuristic lays tiles: 128 x 128 (64 x 64 on a half-wave grid of at least
    256 rows and columns, where the heuristic already quadruples them), decode-sized M as narrow
    tiles up to half a wave."""
    if forced is not None and forced not in ("", "auto"):
        if not forced.isdigit():
            raise ValueError(f"{SPLIT_K_ENV}={forced!r}: expected 0 (off), auto, or a number of splits")
        s = int(forced)
        return s if s > 1 and k % (s * SPLIT_K_STEP) == 0 else 1
    decode = m <= 32
    tiles = math.ceil(m / 128) * math.ceil(n / 128)
    if not decode and tiles > MAX_SPLIT_TILES:
        return 1
    if decode and k <= MIN_DECODE_SPLIT_K:
        return 1
    if decode:
        return _splits(max(tiles, min(math.ceil(n / 32), SPLIT_K_PROGRAMS // 2)), k, decode)
    if min(m, n) >= 256 and tiles <= SPLIT_K_PROGRAMS // 2:
        s = _splits(math.ceil(m / 64) * math.ceil(n / 64), k, decode)
        # the heuristic keeps 128 x 128 tiles on a split deeper than SMALL_GRID_MAX_K: counted as 64 x 64,
        # 256 x 131072 @ 131072 x 256 got 8 splits of 16384 and ran 32 programs (H200, bf16: 128 us
        # against cuBLAS's 48)
        if k // s <= SMALL_GRID_MAX_K:
            return s
    return _splits(tiles, k, decode)


def _splits(tiles: int, k: int, decode: bool) -> int:
    """The most splits (a power of two) that keep `tiles` x splits programs within a wave (two for
    decode-sized M), each split a multiple of SPLIT_K_STEP and at least the minimum depth deep."""
    depth = MIN_DECODE_SPLIT_DEPTH if decode else MIN_SPLIT_DEPTH
    programs = SPLIT_K_PROGRAMS * (2 if decode else 1)
    s = 1
    while tiles * s * 2 <= programs and k % (2 * s * SPLIT_K_STEP) == 0 and k // (2 * s) >= depth:
        s *= 2
    return s


def _split_k(op: ein.ContractOp) -> bool:
    """contract(a, w) of a linear layer (w two-dimensional: one N index, one K index; a's other
    indices M) -> the S slices of contract(a viewed [.., S, K/S], w viewed likewise) in f32 summed,
    cast back. Batched contractions (attention's) are never split: their batch fills the grid, and
    the attention patterns read their contractions whole."""
    lhs, rhs, out = ein.parse_spec(op.spec.data)
    contracted = [c for c in lhs if c in rhs and c not in out]
    elem = op.lhs.type.get_element_type()
    if len(contracted) != 1 or len(rhs) != 2 or not is_float(elem) or any(c in rhs for c in out if c in lhs):
        return False
    (k,) = contracted
    sizes = dict(zip(lhs, shape_of(op.lhs.type))) | dict(zip(rhs, shape_of(op.rhs.type)))
    m = math.prod(sizes[c] for c in out if c in lhs)
    (n_index,) = [c for c in rhs if c != k]
    s = split_k_factor(m, sizes[n_index], sizes[k], os.environ.get(SPLIT_K_ENV))
    if s == 1:
        return False
    split = next(c for c in string.ascii_letters if c not in lhs + rhs + out)
    b = InsertingEinBuilder(op, "split_k")

    def view(x: SSAValue, idx: str) -> SSAValue:
        shape = list(shape_of(x.type))
        at = idx.index(k)
        return b.reshape(x, [*shape[:at], s, sizes[k] // s, *shape[at + 1 :]])

    spec = f"{lhs.replace(k, split + k)},{rhs.replace(k, split + k)}->{split}{out}"
    partials = b.contract(spec, view(op.lhs, lhs), view(op.rhs, rhs), f32)
    out_shape = shape_of(op.result.type)
    if s <= MAX_SLICED_SPLITS:
        # the partials summed as S slices by one pointwise map (the epilogue then merges into it):
        # every load a contiguous [M, N] slice. As a reduction over the leading dim the sum became a
        # row kernel of rows S long and M*N apart: 81 us for OPT's fc2 partials on the H200.
        parts = [b.reshape(b.slice(partials, 0, i, i + 1), out_shape) for i in range(s)]
        total = b.map(parts, f32, lambda sb, *xs: functools.reduce(sb.add, xs), cast_inputs=False)
    else:
        total = b.reduce("sum", partials, [0], keepdim=False)
    op.result.replace_all_uses_with(b.cast(total, op.result.type.get_element_type()))
    return True


# Few wide rows: a reduction over the last dim of [R.., N] gets one program per row (the row kernel walks
# a long row in chunks), so a softmax over 16 rows of 262144 ran on 16 of the H200's 132 SMs: 68 µs, eager's
# time, where its bytes take ~6. Such rows are reduced as chunks instead: R*T programs reduce a chunk of C
# each to f32 partials, and a small reduce combines them.
WIDE_ROW = 1 << 15  # rows at least this long...
FEW_ROWS = 264  # ...fewer than this (two per SM of an H100/H200) are split: KernelBench's GroupNorm, 128 rows
# of 524288, took 392 µs on 128 programs for its statistics (one program an SM streams ~0.7 TB/s in all)
WIDE_CHUNKS = (4096, 2048, 1024)  # elements a partial reduces, in order of preference
PROLOGUE_MAPS = 3  # maps producing the reduced value that are applied to the chunks, at most


def _split_wide_rows(reduce: ein.ReduceOp) -> bool:
    """r = reduce over the trailing dims of x [R.., N..] with few rows and N = prod(N..) wide -> reduce
    of the partials reduce(x viewed [R.., T, C]) over C. Maps producing x (a softmax's exp(x - max),
    a norm's squared deviations) are applied to the chunks (`_chunked`), their row statistics
    ([R.., 1..]) and other operands viewed to match; where those maps have other readers (the
    softmax's division) they keep them whole, and the fusion pass gives them their own kernel. A
    norm over several trailing dims (a LayerNorm over [C, H, W]) is one such row a sample. Reduced
    dims before the trailing run (a BatchNorm's batch dim, of [N, C, H, W] over N, H, W) are reduced
    with the chunks' T in the combine (`_RowSplit`)."""
    kind = reduce.kind.data
    if kind not in ("sum", "max", "min", "mean") or (made := _split_rows(reduce, pair=False)) is None:
        return False
    b, chunks, split = made
    partial = split.partials(b, b.reduce(kind, chunks, [-1], keepdim=False))
    total = b.reduce(kind, partial, split.combined, keepdim=False)  # equal chunks: a mean of their means
    _replace_result(b, reduce, total)
    return True


@dataclass(frozen=True)
class _RowSplit:
    """How a reduction over few wide rows is split: the trailing run of `k` reduced dims is read as
    [T, c] chunks; the partials [lead.., T] (lead = the dims before the run), viewed [lead.., T, 1..]
    (`partials`), are combined over `combined`: the reduced dims before the run, T and those 1s."""

    k: int
    c: int
    combined: tuple[int, ...]
    elements: int  # reduced per output

    def partials(self, b: EinBuilder, v: SSAValue) -> SSAValue:
        """Partials [lead.., T] viewed with x's rank, [lead.., T, 1..] (T where the run began), the
        shape `combined` indexes: the combine's statistics then have the shapes of the reduction's
        own (its keepdim views), so the maps after it (a BatchNorm's variance scaled by its count,
        its running statistics) compute in the combine's kernel rather than in kernels of their own."""
        return v if self.k == 1 else b.reshape(v, [*shape_of(v.type), *[1] * (self.k - 1)])


MIN_RUN_CHUNK = 256  # a trailing run no chunk divides is one chunk (or its trailing dims are) from this long


def _wide_row_split(reduce: ein.ReduceOp, pair: bool = False) -> _RowSplit | None:
    """How `_split_wide_rows` reads a reduction's rows, or None where it does not apply: a float
    reduction of not all dims whose last dim is reduced, fewer than FEW_ROWS outputs of at least
    WIDE_ROW elements each, and a chunk of WIDE_CHUNKS dividing the trailing run of reduced dims (or,
    where none divides it, the run or its trailing dims as one chunk of MIN_RUN_CHUNK to MAX_ROW
    elements, the reduced dims before that chunk combined with the partials). A `pair`
    of statistics from one pass (`_split_variance`) is split however many its rows where they
    are wider than a row kernel holds (MAX_ROW): that kernel reads such a row once a statistic, the
    chunks once for both (KernelBench's InstanceNorm, 1024 rows of 65536: 0.79x torch.compile). Not
    a softmax's: the row kernel computes its max and sum in one online pass already
    (`lower_to_tile._online_max_and_sum`)."""
    x = reduce.input
    shape = tuple(shape_of(x.type))
    dims = tuple(sorted(reduce.reduce_dims))
    if not shape or not 0 < len(dims) < len(shape) or dims[-1] != len(shape) - 1:
        return None
    if not is_float(x.type.get_element_type()):
        return None
    k = 1
    while k < len(dims) and dims[-k - 1] == len(shape) - k - 1:
        k += 1
    outer = dims[: len(dims) - k]
    n = math.prod(shape[d] for d in dims)
    from .fusion_groups import MAX_ROW  # fusion_groups imports this module

    few_wide = n >= WIDE_ROW and math.prod(shape) // n < FEW_ROWS
    if not (few_wide or (pair and n > MAX_ROW)):
        return None
    run = math.prod(shape[-k:])
    c = next((c for c in WIDE_CHUNKS if run % c == 0), None)
    if c is None and (outer or k > 1):
        # no chunk divides the run (a ragged feature map: 126 x 126 after a 3x3 convolution): a chunk is
        # the whole run, or its trailing dims, as long as a row kernel holds it (at most MAX_ROW), and
        # the reduced dims before it join the combine
        for kk in range(k, 0, -1):
            inner = math.prod(shape[-kk:])
            if inner < MIN_RUN_CHUNK:
                break
            if inner <= MAX_ROW and inner < n:  # the whole row as one chunk splits nothing
                c, outer, k = inner, dims[: len(dims) - kk], kk
                break
    if c is None:
        return None
    return _RowSplit(k, c, (*outer, *range(len(shape) - k, len(shape))), n)


def _match_variance(total: ein.ReduceOp) -> ein.ReduceOp | None:
    """The mean's reduction m = mean(v) where `total` is sum or mean of (v - m)^2 over the same dims (a
    variance, as `lower_structured._variance` writes it), the squares read by `total` alone; else None."""
    sq = total.input.owner
    if total.kind.data not in ("sum", "mean") or not isinstance(sq, ein.MapOp) or len(sq.inputs) != 2:
        return None
    if single_user(sq.result) is not total:
        return None
    mean = next(
        (
            m.owner for m in sq.inputs
            if isinstance(m.owner, ein.ReduceOp) and m.owner.kind.data == "mean"
            and m.owner.keepdim is not None and m.owner.reduce_dims == total.reduce_dims
            and set(sq.inputs) == {m.owner.input, m}
        ),
        None,
    )  # fmt: skip
    if mean is None:
        return None
    args = dict(zip(sq.inputs, sq.body.block.args))
    square = _body_op(yielded_value(sq), "arith.mulf")
    if square is None or square[0] is not square[1]:
        return None
    if _body_op(square[0], "arith.subf") != [args[mean.input], args[mean.result]]:
        return None
    return mean


def _split_rows(first: ein.ReduceOp, pair: bool) -> tuple[InsertingEinBuilder, SSAValue, _RowSplit] | None:
    """The input of `first` (a reduction, or the first of a pair of statistics split together) over
    [lead.., T, c] chunks in f32, built before `first`, with the builder and the split; None where
    `_wide_row_split` does not apply."""
    if (split := _wide_row_split(first, pair)) is None:
        return None
    x = first.input
    shape = tuple(shape_of(x.type))
    b = InsertingEinBuilder(first, "split")
    chunks = b.cast(_chunked(b, x, shape, split.k, split.c, PROLOGUE_MAPS), f32)
    return b, chunks, split


def _split_variance(total: ein.ReduceOp) -> bool:
    """A variance over few wide rows in one pass over the data (Chan et al.'s pairwise update, as
    Inductor's split Welford reduction): each chunk's mean and sum of squared deviations from it in one
    partial kernel, then per row m = mean of the chunk means and M2 = sum(M2_t + C (mean_t - m)^2).
    `_split_wide_rows` alone splits the mean and the squares apart, and the squares read the row again
    after the mean's combine: a LayerNorm over [64, 256, 256] read its input three times."""
    mean = _match_variance(total)
    if mean is None or (split := _split_rows(mean, pair=True)) is None:
        return False
    b, chunks, rows = split
    c, combined = rows.c, rows.combined
    chunk_mean = b.reduce("mean", chunks, [-1], keepdim=True)  # [lead.., T, 1]
    deviations = b.map([chunks, chunk_mean], f32, ScalarBuilder.squared_difference)
    chunk_m2 = b.reduce("sum", deviations, [-1], keepdim=False)
    chunk_mean = rows.partials(b, b.reshape(chunk_mean, shape_of(chunk_m2.type)))
    chunk_m2 = rows.partials(b, chunk_m2)
    row_mean = b.reduce("mean", chunk_mean, combined, keepdim=True)  # equal chunks: the mean of their means
    pairs = b.map(
        [chunk_m2, chunk_mean, row_mean], f32,
        lambda sb, m2, mt, mu: sb.add(m2, sb.mul(sb.squared_difference(mt, mu), sb.const(float(c), f32))),
    )  # fmt: skip
    m2 = b.reduce("sum", pairs, combined, keepdim=False)
    if total.kind.data == "mean":
        m2 = b.map([m2, float(rows.elements)], f32, lambda sb, s, count: sb.div(s, count))
    _replace_result(b, mean, row_mean)
    _replace_result(b, total, m2)
    return True


def _match_softmax_sum(total: ein.ReduceOp) -> ein.ReduceOp | None:
    """The max's reduction m = max(x) where `total` is the sum over the same dims of exp(x - m): one map,
    or the exp of a map x - m (log-softmax keeps the difference for its output); else None."""
    e = total.input.owner
    if total.kind.data != "sum" or not isinstance(e, ein.MapOp):
        return None
    inner = _body_op(yielded_value(e), "math.exp")
    if inner is None:
        return None
    owner = e
    diff = _body_op(inner[0], "arith.subf")
    if diff is None and len(e.inputs) == 1 and inner[0] is e.body.block.args[0]:
        owner = e.inputs[0].owner  # exp of the differences' map
        if not isinstance(owner, ein.MapOp):
            return None
        diff = _body_op(yielded_value(owner), "arith.subf")
    if diff is None or len(owner.inputs) != 2:
        return None
    args = dict(zip(owner.inputs, owner.body.block.args))
    for m in owner.inputs:
        mx = m.owner
        if not (
            isinstance(mx, ein.ReduceOp) and mx.kind.data == "max" and mx.keepdim is not None
            and mx.reduce_dims == total.reduce_dims and set(owner.inputs) == {mx.input, m}
        ):  # fmt: skip
            continue
        if diff == [args[mx.input], args[m]]:
            return mx
    return None


def _split_softmax_sum(total: ein.ReduceOp) -> bool:
    """A softmax's max and sum of exponentials over few wide rows in one pass over the data (the online
    softmax's statistics): each chunk's max m_t and s_t = sum(exp(x - m_t)) in one partial kernel, then
    per row m = max(m_t) and s = sum(s_t exp(m_t - m)). `_split_wide_rows` alone splits the max and the
    sum apart, the sum reading the row again after the max's combine: five kernels and three reads of a
    log-softmax's input where these are three kernels and two. A chunk of -inf only shifts by 0: its
    s_t is 0, not exp(-inf + inf)."""
    mx = _match_softmax_sum(total)
    if mx is None or (split := _split_rows(mx, pair=False)) is None:
        return False
    b, chunks, rows = split
    chunk_max = b.reduce("max", chunks, [-1], keepdim=True)  # [lead.., T, 1]
    inf = float("inf")

    def shifted_exp(sb, v, m):
        safe = sb.select(sb.cmp("eq", m, sb.const(-inf, f32)), sb.const(0.0, f32), m)
        return sb.unary("exp", sb.sub(v, safe))

    chunk_sum = b.reduce("sum", b.map([chunks, chunk_max], f32, shifted_exp), [-1], keepdim=False)
    chunk_max = rows.partials(b, b.reshape(chunk_max, shape_of(chunk_sum.type)))
    chunk_sum = rows.partials(b, chunk_sum)
    row_max = b.reduce("max", chunk_max, rows.combined, keepdim=True)
    scaled = b.map(
        [chunk_sum, chunk_max, row_max], f32, lambda sb, s_, mt, m: sb.mul(s_, sb.unary("exp", sb.sub(mt, m)))
    )
    _replace_result(b, mx, row_max)
    _replace_result(b, total, b.reduce("sum", scaled, rows.combined, keepdim=False))
    return True


def _chunked(b: EinBuilder, v: SSAValue, shape: tuple[int, ...], k: int, c: int, maps: int) -> SSAValue:
    """`v` over [.., T, C] chunks (`_row_chunks`); where it is made by a map of chunkable operands
    (up to `maps` deep: log-softmax's exp of x - max), that map applied to the chunks of its operands,
    so the reduction reads x rather than a map's result written out for it."""
    producer = v.owner
    spans = tuple(shape_of(v.type)) == shape
    if not (spans and maps and isinstance(producer, ein.MapOp)):
        return _row_chunks(b, v, shape, k, c)
    if not all(_row_chunkable(u, shape, k) for u in producer.inputs):
        return _row_chunks(b, v, shape, k, c)
    inputs = [_chunked(b, u, shape, k, c, maps - 1) for u in producer.inputs]
    body = lambda sb, *args: inline_map_body(producer, args, sb.block)  # noqa: E731
    return b.map(inputs, producer.result.type.get_element_type(), body, cast_inputs=False)


def _row_chunkable(v: SSAValue, shape: tuple[int, ...], k: int) -> bool:
    """Whether a map operand over rows of x's last `k` dims (x of `shape`) spans them whole (it is
    split into the chunks), spans none of them (a row statistic, broadcast), or is a scalar."""
    own = tuple(shape_of(v.type))
    if not own:
        return True
    return len(own) == len(shape) and (own[-k:] == shape[-k:] or all(d == 1 for d in own[-k:]))


def _row_chunks(b: EinBuilder, v: SSAValue, shape: tuple[int, ...], k: int, c: int) -> SSAValue:
    """`v` viewed over [.., T, C] chunks of rows of x's last `k` dims: those dims split into T x C
    where it spans them, or made [1, 1] where it is broadcast over them."""
    own = list(shape_of(v.type))
    if not own:
        return v
    n = math.prod(shape[-k:])
    spans = tuple(own[-k:]) == tuple(shape[-k:]) and n != 1
    return b.reshape(v, [*own[:-k], n // c, c] if spans else [*own[:-k], 1, 1])


def rewrite_function(fn: func.FuncOp) -> int:
    """Split every wide reduction of a GEMM's output, every tall column reduction, every reduction over
    few wide rows, and the K of every GEMM whose tiles underfill the GPU, in `fn`; returns how many were
    split."""
    count = 0
    if os.environ.get(SPLIT_K_ENV) != "0":
        for op in list(fn.body.block.ops):
            if isinstance(op, ein.ContractOp) and op.parent is not None:
                count += _split_k(op)
    for op in list(fn.body.block.ops):
        if isinstance(op, ein.ReduceOp) and op.parent is not None:
            count += _split_variance(op) or _split_softmax_sum(op)
    for op in list(fn.body.block.ops):
        if isinstance(op, ein.ReduceOp) and op.parent is not None:
            count += _split_logsumexp(op) or _split_plain(op) or _split_columns(op) or _split_wide_rows(op)
    if count:
        from .canonicalize import collapse_views, merge_maps  # canonicalize imports this module's neighbours

        collapse_views(fn)  # a split's result reshaped back in front of the reshape that read it: one view
        erase_dead(fn)
        merge_maps(fn)  # a map the split left with one reader joins it
        erase_dead(fn)
    return count


@dataclass(frozen=True)
class SplitReduction(ModulePass):
    """Reductions over wide GEMM output rows become per-chunk partials and a combine."""

    name = "split-reduction"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in functions(op):
            # an optimization (a long reduction split across programs) for static sizes only
            if not has_symbolic_sizes(fn):
                rewrite_function(fn)
