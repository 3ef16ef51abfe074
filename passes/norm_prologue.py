"""norm-prologue: a normalization feeding a GEMM becomes row statistics plus a reparameterized GEMM.

For `y = norm(x)` whose only readers are contractions over y's last (normalized)
index, the map computing `y` is written as an affine form in `x`:

    y[m, k] = x[m, k] * R(m) * G(k) + sum_j C_j(k)

(RMSNorm: R = rstd, G = g, no constant terms; with a bias, C = b). Then,
algebraically,

    y @ W = R(m) * (x @ (G ∘ W)) + sum_j (C_j @ W)

so each contraction reads `x` itself against a folded weight `G ∘ W`, and its
epilogue applies the per-row scale and adds the vectors `C_j @ W`. The rewrite
applies only when W and the norm's weight and bias are module parameters:
folded weights and those vectors then depend on parameters only, and the
runtime computes them once and reuses them until a parameter changes (with
plain tensor arguments, folding would cost a pass over W per call, so the norm
stays a row kernel), and only when no product is more than MAX_FOLD_WIDTH times
wider than the rows (an LM head keeps its norm as a row kernel and its GEMM
plain, where cuBLAS can take it).

LayerNorm is not folded. Its form has a row term, `-mean(x) * rstd * g`, and
`rstd * (x @ (g∘W)) - mean * rstd * (g @ W)` subtracts two large numbers
wherever a row's mean is large next to its spread: a constant row of 1000.0
(eager: exactly the bias) came out 0.09 off on outputs of 0.18 in f32, and
with TF32 the GEMM rounds x itself to 10 bits before the mean comes off. Eager
subtracts the mean first. Measured on the H200 (benchmarks/RESULTS.md, "The
norm fold on and off"), the fold was worth at most 1-3% of a forward either
way (OPT 3% faster without it), so LayerNorm stays a row kernel (which takes
the residual add beside it) and its GEMM reads the normalized rows. A form
with any row term among its constant terms is refused for the same reason.

The row statistic the GEMM's epilogue needs (RMSNorm's mean square, re-derived
as `s2/K` from a row sum of `x²`) comes from a small reduction kernel that
reads `x` once, shared by every GEMM after the norm. (Accumulating the sum in
the GEMM's own K loop was measured wrong on Hopper with Triton 3.6 at the
pipelined default tiles, and was dropped.)

In a pre-norm block x is the residual stream `h = r + a`: the norm reads it
and a later add reads it again. This pass leaves that add alone, and
form-fusion-groups gives it to the kernel that reads x anyway: a standalone
add joins the statistics' kernel (which reads r and a and writes h and the
sum), so h is written once and never read back for its statistics.
An add that is a GEMM's epilogue (o_proj + residual) stays there: h is that
GEMM's output, and when a tile holds whole rows the sum joins its epilogue
too. Folding the add into the GEMMs that read x (x = r + a in their
prologue) was not chosen: every GEMM would read two tensors instead of one
per K tile, and h must still be written for the later add.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, f32
from xdsl.ir import Block, BlockArgument, Operation, Region, SSAValue
from xdsl.passes import ModulePass

from ..ir import einsum as ein
from ..ir.builder import FLOAT_CASTS, ScalarBuilder, erase_dead, view_source, widened_source, yielded_value
from ..ir.dtypes import has_symbolic_sizes, shape_of, tensor_type
from ..ir.module import parameter_args
from .fusion_groups import functions


class NotAffine(Exception):
    """The norm's map is not an affine form in x that this pass can split."""


@dataclass(frozen=True)
class Term:
    """sign * (product of row factors) * (product of column factors); factors are body values."""

    sign: int
    rows: tuple[SSAValue, ...] = ()
    cols: tuple[SSAValue, ...] = ()

    def times(self, other: Term) -> Term:
        return Term(self.sign * other.sign, self.rows + other.rows, self.cols + other.cols)


@dataclass
class Affine:
    """A body value as `x * sum(x_terms) + sum(constant_terms)`."""

    x_terms: list[Term] = field(default_factory=list)
    constant_terms: list[Term] = field(default_factory=list)

    def negated(self) -> Affine:
        flip = lambda ts: [Term(-t.sign, t.rows, t.cols) for t in ts]  # noqa: E731
        return Affine(flip(self.x_terms), flip(self.constant_terms))


def decompose(y: ein.MapOp, x_arg: SSAValue, row_args: set[SSAValue], col_args: set[SSAValue]) -> Affine:
    """`y`'s yielded value as an affine form in `x_arg` (see the module docstring)."""
    side: dict[SSAValue, str] = {}  # "row", "col" or "const" for values that do not involve x
    forms: dict[SSAValue, Affine] = {x_arg: Affine(x_terms=[Term(1)])}
    for arg in y.body.block.args:
        if arg in row_args:
            side[arg] = "row"
        elif arg in col_args:
            side[arg] = "col"
    for op in y.body.block.ops:
        if isinstance(op, ein.YieldOp):
            break
        result = op.results[0]
        if all(v in side for v in op.operands):
            sides = {side[v] for v in op.operands} - {"const"}
            if len(sides) <= 1:
                side[result] = sides.pop() if sides else "const"
                continue
        forms[result] = _combine(op, [_form(v, side, forms) for v in op.operands])
    return _form(yielded_value(y), side, forms)


def _form(value: SSAValue, side: dict[SSAValue, str], forms: dict[SSAValue, Affine]) -> Affine:
    if value in forms:
        return forms[value]
    if value not in side:
        raise NotAffine(f"{value} depends on x in a way this pass does not split")
    kind = side[value]
    return Affine(
        constant_terms=[Term(1, (value,) if kind != "col" else (), (value,) if kind == "col" else ())]
    )


def _combine(op: Operation, forms: list[Affine]) -> Affine:
    if op.name in FLOAT_CASTS:
        return forms[0]
    if op.name == "arith.negf":
        return forms[0].negated()
    if op.name in ("arith.addf", "arith.subf"):
        b = forms[1] if op.name == "arith.addf" else forms[1].negated()
        return Affine(forms[0].x_terms + b.x_terms, forms[0].constant_terms + b.constant_terms)
    if op.name == "arith.mulf":
        a, b = forms
        if a.x_terms and b.x_terms:
            raise NotAffine("x times x")
        x_terms = [s.times(t) for s in a.x_terms for t in b.constant_terms]
        x_terms += [s.times(t) for s in a.constant_terms for t in b.x_terms]
        return Affine(x_terms, [s.times(t) for s in a.constant_terms for t in b.constant_terms])
    raise NotAffine(f"{op.name} of an x-dependent value")


def _upcast_source(value: SSAValue) -> SSAValue:
    """The tensor `value` widens, else `value`."""
    return widened_source(value) or value


@dataclass
class Contraction:
    """A reader of y: `contract(y, W)` with y's last index contracted against W's `k_dim`."""

    op: ein.ContractOp
    k_dim: int
    lhs_shape: tuple[int, ...] | None = None  # y reshaped to this before the contraction


# A contraction whose N is more than this many times the norm's K (an LM head over a vocabulary) is
# not folded: the fold saves one write of the normalized rows (M x K) and adds a correction to every
# output element (M x N) of a compute-bound GEMM, which then cannot run on cuBLAS either. H200, bf16,
# OPT's LM head (2048 x 2048 x 50272): the folded kernel 612 us, its split path 663, cuBLAS on the
# normalized rows 520 plus a row kernel of ~5 (benchmarks/NOTES.md). MLP up-projections (N = 4K or
# less) keep the fold (A/B within 1-3% of the forward either way).
MAX_FOLD_WIDTH = 4


def _width(reader: Contraction) -> int:
    """N of a reader: W's extent along the index that is not contracted."""
    return shape_of(reader.op.rhs.type)[1 - reader.k_dim]


def _strip_view(value: SSAValue) -> SSAValue:
    return value.owner.input if isinstance(value.owner, ein.ViewOp) else value


def _readers(y: ein.MapOp) -> list[Contraction] | None:
    shape = shape_of(y.result.type)
    if not shape:
        return None
    readers = []
    for use in y.result.uses:
        op, lhs_shape = use.operation, None
        if isinstance(op, ein.ViewOp) and op.kind.data == "reshape" and len(list(op.result.uses)) == 1:
            # rows flattened for a 2-d GEMM (nn.Linear on a 3-d input): the last index stays
            lhs_shape = shape_of(op.result.type)
            if not lhs_shape or lhs_shape[-1] != shape[-1]:  # a 0-d view (var() of all) has no row
                return None
            op = next(iter(op.result.uses)).operation
        if (
            not isinstance(op, ein.ContractOp)
            or op.lhs.type.get_shape() != (lhs_shape or shape)
            or op.rhs is y.result
        ):
            return None
        if _strip_view(op.lhs) is not y.result:
            return None
        lhs, rhs, out = ein.parse_spec(op.spec.data)
        k = lhs[-1]
        if len(rhs) != 2 or k not in rhs or k in out or any(c not in out for c in lhs[:-1]):
            return None
        n = rhs.replace(k, "")
        if out != lhs[:-1] + n or len(shape) < 2:
            return None
        readers.append(Contraction(op, rhs.index(k), lhs_shape))
    return readers or None


@dataclass
class RowStat:
    """How a row input of y follows from the row sum s2 = Σx² (None: read it as it is)."""

    build: Callable[..., SSAValue] | None  # (sb, s2, K) -> the statistic


def _row_stat(value: SSAValue, x: SSAValue) -> RowStat:
    """Recognise mean/sum(x²) over the last index."""
    reduce = value.owner
    last = len(shape_of(x.type)) - 1
    if not (
        isinstance(reduce, ein.ReduceOp)
        and reduce.keepdim is not None
        and tuple(reduce.reduce_dims) == (last,)
    ):
        return RowStat(None)
    kind = reduce.kind.data
    if kind not in ("sum", "mean"):
        return RowStat(None)
    body_map = reduce.input.owner
    if not isinstance(body_map, ein.MapOp) or _upcast_source(body_map.inputs[0]) is not _upcast_source(x):
        return RowStat(None)
    ops = [op for op in body_map.body.block.ops if not isinstance(op, ein.YieldOp)]
    if not ops or len(body_map.inputs) != 1:
        return RowStat(None)
    names = [op.name for op in ops]
    args = body_map.body.block.args
    widened = args[0] if names[:-1] == [] else ops[0].results[0] if names[:-1] == ["arith.extf"] else None
    if names[-1] == "arith.mulf" and ops[-1].operands[0] is ops[-1].operands[1] is widened:
        if kind == "mean":
            return RowStat(lambda sb, s2, n: sb.div(s2, n))
        return RowStat(lambda sb, s2, n: s2)
    return RowStat(None)


class _Rewriter:
    """Rewrites one norm map `y` and its contractions in place."""

    def __init__(self, y: ein.MapOp, readers: list[Contraction], params: set[SSAValue]):
        self.y, self.readers = y, readers
        self.shared_sums: dict[tuple[int, ...] | None, SSAValue] = {}
        self.shape = shape_of(y.result.type)
        self.k_size = self.shape[-1]
        full = [v for v in y.inputs if shape_of(v.type) == self.shape]
        if len(full) != 1:
            raise NotAffine("y must read exactly one full-shaped tensor")
        self.x = full[0]
        self.x_source = _upcast_source(self.x)
        args = dict(zip(y.inputs, y.body.block.args))
        self.rows = [v for v in y.inputs if v is not self.x and self._is_row(v)]
        self.cols = [v for v in y.inputs if v is not self.x and self._is_col(v)]
        if len(self.rows) + len(self.cols) + 1 != len(y.inputs):
            raise NotAffine("an input of y is neither a row nor a column vector")
        self.arg_of = args
        if any(_width(r) > MAX_FOLD_WIDTH * self.k_size for r in readers):
            raise NotAffine("a product much wider than the norm's rows (an LM head) stays on its own GEMM")
        weights = [r.op.rhs for r in readers] + self.cols
        if not all(_from_parameters(v, params) for v in weights):
            raise NotAffine(
                "folding costs a pass over W per call unless W and the norm's weight are parameters"
            )
        form = decompose(y, args[self.x], {args[v] for v in self.rows}, {args[v] for v in self.cols})
        for reader in readers:
            w_elem = reader.op.rhs.type.get_element_type()
            if w_elem not in (self.x_source.type.get_element_type(), self.x.type.get_element_type()):
                raise NotAffine("x and W have different element types")
        if any(t.rows for t in form.constant_terms):
            raise NotAffine(
                "a row term beside x (LayerNorm's -mean * rstd * g) would be subtracted after the GEMM, "
                "which cancels where a row's mean is large next to its spread"
            )
        col_sets = {t.cols for t in form.x_terms}
        if len(col_sets) != 1:
            raise NotAffine("x is scaled by more than one column factor")
        self.form = form

    def _is_row(self, v: SSAValue) -> bool:
        s = shape_of(v.type)
        return (not s or s[-1] == 1) and len(s) <= len(self.shape)

    def _is_col(self, v: SSAValue) -> bool:
        s = shape_of(v.type)
        return bool(s) and s[-1] == self.k_size and all(d == 1 for d in s[:-1])

    def run(self) -> None:
        stats = {v: _row_stat(v, self.x) for v in self.rows}
        use_sums = bool(stats) and all(s.build is not None for s in stats.values())
        full_rows = (*self.shape[:-1], 1)
        if not use_sums and any(r.lhs_shape for r in self.readers):
            if any(tuple(shape_of(v.type)) != full_rows for v in self.rows):
                raise NotAffine("broadcast row statistics cannot follow the rows' reshape")
        for reader in self.readers:
            self._rewrite(reader, stats)

    def _insert(self, before: Operation, op: Operation) -> SSAValue:
        before.parent_block().insert_op_before(op, before)
        return op.results[0]

    def _column_map(self, reader: Contraction, factors: tuple[SSAValue, ...], out_elem) -> SSAValue:
        """W scaled along its contracted index by the product of column `factors`."""
        w = reader.op.rhs
        w_shape = shape_of(w.type)
        used = [v for v in self.cols if self.arg_of[v] in _closure(factors)]
        inputs = [w]
        for v in used:
            vec = [1] * len(w_shape)
            vec[reader.k_dim] = self.k_size
            view = ein.ViewOp("reshape", v, tensor_type(vec, v.type.get_element_type()))
            inputs.append(self._insert(reader.op, view))
        block = Block(arg_types=[t.type.get_element_type() for t in inputs])
        sb = ScalarBuilder(block)
        mapping = {self.arg_of[v]: a for v, a in zip(used, block.args[1:])}
        value = sb.cast(block.args[0], f32)
        for f in factors:
            value = sb.mul(value, sb.cast(_clone_value(f, mapping, block), f32))
        block.add_op(ein.YieldOp(sb.cast(value, out_elem)))
        return self._insert(reader.op, ein.MapOp(inputs, tensor_type(w_shape, out_elem), Region(block)))

    def _row_sum_of_squares(self, before: Operation, src: SSAValue) -> SSAValue:
        """A fresh row sum of `src`² over its last index (f32)."""
        shape = shape_of(src.type)
        block = Block(arg_types=[src.type.get_element_type()])
        sb = ScalarBuilder(block)
        v = sb.cast(block.args[0], f32)
        block.add_op(ein.YieldOp(sb.mul(v, v)))
        squares = self._insert(before, ein.MapOp([src], tensor_type(shape, f32), Region(block)))
        row_type = tensor_type([*shape[:-1], 1], f32)
        return self._insert(before, ein.ReduceOp("sum", [len(shape) - 1], True, squares, row_type))

    def _rewrite(self, reader: Contraction, stats: dict[SSAValue, RowStat]) -> None:
        c = reader.op
        w_elem = c.rhs.type.get_element_type()
        x_cols = self.form.x_terms[0].cols
        w_folded = self._column_map(reader, x_cols, w_elem) if x_cols else c.rhs
        lhs = self.x_source if self.x_source.type.get_element_type() == w_elem else self.x
        if reader.lhs_shape is not None:
            lhs = self._insert(
                c, ein.ViewOp("reshape", lhs, tensor_type(reader.lhs_shape, lhs.type.get_element_type()))
            )
        acc_type = tensor_type(shape_of(c.result.type), f32)  # f32 accumulators, scaled before rounding
        acc = self._insert(c, ein.ContractOp(c.spec.data, lhs, w_folded, acc_type))
        groups: dict[tuple[SSAValue, ...], list[Term]] = {}
        for t in self.form.constant_terms:
            groups.setdefault(t.cols, []).append(t)
        vectors = []
        for cols in groups:
            if cols == x_cols:  # a bias scaled like x (y = (x + 1) * g): g ∘ W as the GEMM reads it
                scaled = self._cast_map(c, w_folded, f32)
            else:
                scaled = self._column_map(reader, cols, f32) if cols else self._cast_map(c, c.rhs, f32)
            n_shape = [d for i, d in enumerate(shape_of(c.rhs.type)) if i != reader.k_dim]
            vectors.append(
                self._insert(c, ein.ReduceOp("sum", [reader.k_dim], False, scaled, tensor_type(n_shape, f32)))
            )
        use_sums = all(s.build is not None for s in stats.values()) and bool(stats)
        if use_sums:
            key = reader.lhs_shape  # one row sum for all the GEMMs reading y
            if key not in self.shared_sums:
                src = self.x_source if self.x_source.type.get_element_type() == w_elem else self.x
                before = self.y.next_op
                s2 = self._row_sum_of_squares(before, src)
                if reader.lhs_shape is not None:
                    # the sum over x's own rows, viewed as the GEMM's flattened rows: it then shares
                    # x's shape with the residual add that makes x, which can join its kernel
                    stat_type = tensor_type([*reader.lhs_shape[:-1], 1], f32)
                    s2 = self._insert(before, ein.ViewOp("reshape", s2, stat_type))
                self.shared_sums[key] = s2
            row_inputs = [self.shared_sums[key]]
        elif reader.lhs_shape is not None:  # the statistics as they are, rows flattened like y's
            stat_type = lambda v: tensor_type([*reader.lhs_shape[:-1], 1], v.type.get_element_type())  # noqa: E731
            row_inputs = [self._insert(c, ein.ViewOp("reshape", v, stat_type(v))) for v in self.rows]
        else:
            row_inputs = list(self.rows)
        inputs = [acc, *row_inputs, *vectors]
        block = Block(arg_types=[t.type.get_element_type() for t in inputs])
        sb = ScalarBuilder(block)
        acc_arg, rest = block.args[0], block.args[1:]
        row_args, vec_args = rest[: len(row_inputs)], rest[len(row_inputs) :]
        if use_sums:
            n = sb.const(float(self.k_size), f32)
            mapping = {self.arg_of[v]: stats[v].build(sb, row_args[0], n) for v in self.rows}
        else:
            mapping = {self.arg_of[v]: a for v, a in zip(self.rows, row_args)}
        value = sb.mul(sb.cast(acc_arg, f32), _row_product(sb, self.form.x_terms, mapping, block))
        for vec, terms in zip(vec_args, groups.values()):
            value = sb.add(value, sb.mul(_row_product(sb, terms, mapping, block), sb.cast(vec, f32)))
        block.add_op(ein.YieldOp(sb.cast(value, c.result.type.get_element_type())))
        out = self._insert(c, ein.MapOp(inputs, c.result.type, Region(block)))
        c.result.replace_all_uses_with(out)
        c.detach()
        c.erase()

    def _cast_map(self, before: Operation, value: SSAValue, elem) -> SSAValue:
        block = Block(arg_types=[value.type.get_element_type()])
        sb = ScalarBuilder(block)
        block.add_op(ein.YieldOp(sb.cast(block.args[0], elem)))
        return self._insert(
            before, ein.MapOp([value], tensor_type(shape_of(value.type), elem), Region(block))
        )


def _closure(values: tuple[SSAValue, ...]) -> set[SSAValue]:
    """`values` and every body value they are computed from."""
    seen: set[SSAValue] = set()
    stack = list(values)
    while stack:
        v = stack.pop()
        if v not in seen:
            seen.add(v)
            if not isinstance(v, BlockArgument):
                stack += list(v.owner.operands)
    return seen


def _clone_value(value: SSAValue, mapping: dict[SSAValue, SSAValue], block: Block) -> SSAValue:
    """Clone the ops computing body `value` into `block`, its arguments bound by `mapping`."""
    if value in mapping:
        return mapping[value]
    if isinstance(value, BlockArgument):
        raise NotAffine("a factor reads an input that is not available here")
    op = value.owner
    operands = [_clone_value(v, mapping, block) for v in op.operands]
    clone = op.clone(value_mapper=dict(zip(op.operands, operands)))
    block.add_op(clone)
    mapping[value] = clone.results[0]
    return clone.results[0]


def _row_product(sb: ScalarBuilder, terms: list[Term], mapping: dict, block: Block) -> SSAValue:
    """Σ sign * Π row factors over `terms`, in f32."""
    total = None
    for t in terms:
        value = sb.const(float(t.sign), f32)
        for f in t.rows:
            value = sb.mul(value, sb.cast(_clone_value(f, mapping, block), f32))
        total = value if total is None else sb.add(total, value)
    return total


def _from_parameters(value: SSAValue, params: set[SSAValue]) -> bool:
    """`value` is a parameter argument (or a view or splat of one): the runtime folds it once."""
    value = view_source(value)
    return value in params or isinstance(value.owner, ein.ConstantOp)


def rewrite_function(fn: func.FuncOp) -> int:
    """Apply the rewrite to every norm-before-GEMM in `fn`; returns how many norms were rewritten."""
    params = set(parameter_args(fn))
    count = 0
    for op in list(fn.body.block.ops):
        if not isinstance(op, ein.MapOp) or op.parent is None:
            continue
        readers = _readers(op)
        if readers is None:
            continue
        try:
            rewriter = _Rewriter(op, readers, params)
        except NotAffine:
            continue
        try:
            rewriter.run()
        except NotAffine:  # raised before anything is rewritten
            continue
        count += 1
    if count:
        erase_dead(fn)
    return count


@dataclass(frozen=True)
class NormPrologue(ModulePass):
    """Split RMSNorm-like maps feeding contractions into a row statistic and folded weights."""

    name = "norm-prologue"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in functions(op):
            # an optimization (a norm's weight folded into the GEMM that reads it) for static sizes only
            if not has_symbolic_sizes(fn):
                rewrite_function(fn)
