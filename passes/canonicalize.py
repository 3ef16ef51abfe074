"""canonicalize: put an `ein` graph in the shape fusion expects.

Captured graphs spell a linear layer as `reshape → contract "mk,kn->mn" →
reshape` with a permuted weight, and an activation as a chain of one-op maps.
These patterns undo that, each an exact rewrite (no change to the numbers):

- a permute feeding a contraction folds into the spec (`"mk,nk->mn"`);
- a reshape that flattens leading batch dims into M, undone by a reshape of
  the result, folds into the spec (`"bsk,nk->bsn"`);
- a batched product (a `bmm`) whose result is reshaped or permuted back before a map reads it
  becomes one contract over the dims its operands and readers see (each letter split into those
  factors), so the map is its epilogue: a decomposed `torch.einsum`, BigBird's block attention;
- a slice of a map with at most one math function slices the map's operands instead, where they
  are no more bytes than the slice (a mask computed as an outer product is never written in full);
- a map of one operand read only by two or three maps of its shape, cheap to recompute, merges
  into each of them (no buffer written and read back, one kernel fewer);
- a map whose only user is another map merges into it (one body), except a
  pure widening (`extf`) read by a contraction: it stays a map of its own, so
  the contraction reads the 16-bit producer and its dot runs on 16-bit
  operands (tensor cores) with f32 accumulation, the same exact products
  (a RoPE'd bf16 query merged into its widening made an f32 query, and an
  attention kernel 100x slower on the H200);
- reshape∘reshape, permute∘permute, flip∘flip and identity views collapse;
- `arange(n)` (a map `0 + i * 1` of an iota) is the iota, and a reshape of an iota that only adds
  or drops unit dims is an iota of the new shape: `arange(t)[None, :] > arange(t)[:, None]` then
  compares two iotas in the map that reads it, which the attention pattern recognises as the
  causal mask (no kernel writes the positions, no key block past the diagonal is visited);
- a flip of a scan along its dim becomes a reverse scan of the flipped input;
- a view of a widening cast (`x.float()` reshaped, sliced) becomes the cast of the view of the
  16-bit tensor: its readers then take the cast in (a row kernel, a gather) and read 16 bits a
  value, not a widened copy written in full;
- a gather reading at most half of a map's result gathers the map's operands instead (as does a
  gather reading all of a cheap map it alone reads: a mixture of experts' permutation back to token
  order), and a reshape splitting such a map's dims splits its gathers' index tensors instead;
- a reshape of a GEMM's result (or its bias add) that splits leading dims
  (M x N → B x S x N) sinks below the map reading it, so the GEMM's epilogue
  chain reaches that map (of a row kernel's result too, where the map's readers
  flatten it back, or only return it besides);
- ops whose results are unused are removed.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import AnyFloat, Float16Type, IntegerAttr, IntegerType, ModuleOp, i64
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

from ..ir import einsum as ein
from ..ir.builder import (
    inline_map_body,
    read_by_contraction,
    single_user,
    strip_casts,
    view_source,
    widened_source,
    yielded_value,
)
from ..ir.dtypes import dims_of, has_symbolic_sizes, tensor_type, to_torch_dtype, undecided_as
from ..ir.module import computed_from_parameters, parameter_args
from .flash_attention import NEGATED_PREDICATE, iota_dim, match_attention, splat_value
from .fusion_groups import math_functions


class FoldPermuteIntoContract(RewritePattern):
    """contract(permute(x), y) → contract(x, y) with the operand's indices permuted."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ContractOp, rewriter: PatternRewriter) -> None:
        lhs_idx, rhs_idx, out_idx = ein.parse_spec(op.spec.data)
        operands, indices = [op.lhs, op.rhs], [lhs_idx, rhs_idx]
        changed = False
        for i, value in enumerate(operands):
            view = value.owner
            if isinstance(view, ein.ViewOp) and view.kind.data == "permute":
                perm = view.view_params
                source = [""] * len(perm)
                for j, p in enumerate(perm):
                    source[p] = indices[i][j]
                operands[i], indices[i] = view.input, "".join(source)
                changed = True
        if changed:
            spec = f"{indices[0]},{indices[1]}->{out_idx}"
            rewriter.replace(op, ein.ContractOp(spec, operands[0], operands[1], op.result.type))


class FoldPermuteIntoAttentionOutput(RewritePattern):
    """permute(contract(probs, v)) → contract(probs, v) writing the permuted order, where the
    contraction ends an attention (`flash_attention.match_attention`) and the permute is its only
    reader. Transformers models lay attention out [batch, heads, tokens, dim] and transpose its
    result back to [batch, tokens, heads, dim] for the output projection; SDPA's fused kernels
    (the library path) write that order in memory, so an output kept in [batch, heads, ...] row-major
    cost a copy a layer, and the generated kernel writes either order at the same cost."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ViewOp, rewriter: PatternRewriter) -> None:
        contract = op.input.owner
        if op.kind.data != "permute" or not isinstance(contract, ein.ContractOp):
            return
        if single_user(contract.result) is not op or match_attention(contract) is None:
            return
        lhs, rhs, out = ein.parse_spec(contract.spec.data)
        spec = f"{lhs},{rhs}->{''.join(out[p] for p in op.view_params)}"
        rewriter.replace(op, ein.ContractOp(spec, contract.lhs, contract.rhs, op.result.type))
        rewriter.erase(contract)


class FoldBatchFlattenIntoContract(RewritePattern):
    """reshape(contract(reshape(x: AxBxK → (AB)xK), w)) back to AxBxN → one batched contract."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ContractOp, rewriter: PatternRewriter) -> None:
        flatten = op.lhs.owner
        unflatten = single_user(op.result)
        if not (_is_reshape(flatten) and _is_reshape(unflatten)):
            return
        lhs_idx, rhs_idx, out_idx = ein.parse_spec(op.spec.data)
        src, flat = dims_of(flatten.input.type), dims_of(op.lhs.type)
        merged = len(src) - len(flat) + 1  # leading source dims folded into lhs dim 0
        if merged < 2 or src[merged:] != flat[1:] or math.prod(src[:merged]) != flat[0]:
            return
        m = lhs_idx[0]
        if m in rhs_idx or not out_idx.startswith(m):
            return
        out_shape = dims_of(op.result.type)
        target = dims_of(unflatten.result.type)
        if target != src[:merged] + out_shape[1:]:
            return
        fresh = [c for c in string.ascii_letters if c not in lhs_idx + rhs_idx + out_idx][:merged]
        if len(fresh) < merged:
            return
        batch = "".join(fresh)
        spec = f"{batch}{lhs_idx[1:]},{rhs_idx}->{batch}{out_idx[1:]}"
        new = ein.ContractOp(spec, flatten.input, op.rhs, unflatten.result.type)
        rewriter.insert(new, InsertPoint.before(op))
        rewriter.replace(unflatten, [], [new.result])
        rewriter.erase(op)


class FoldBatchUnflattenIntoContract(RewritePattern):
    """reshape(contract(x', y')) where the result's reshape splits the shared batch dim (the first of
    x', y' and the result: a `bmm` over `[B * H * blocks, ...]`) into leading dims P → one contract
    over P x ..., reading x' and y' reshaped to P x ... (views: `CollapseViews` joins them to the
    views they were flattened from). The result then has the shape its readers have, so a map after
    the product joins its epilogue: BigBird's band scores (`[720, 64, 192]` reshaped to
    `[1, 12, 60, 64, 192]`, then scaled and masked) went through a kernel of their own, one more
    write and read of every score."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ContractOp, rewriter: PatternRewriter) -> None:
        unflatten = single_user(op.result)
        if not _is_reshape(unflatten):
            return
        lhs_idx, rhs_idx, out_idx = ein.parse_spec(op.spec.data)
        b = out_idx[0]
        if lhs_idx[0] != b or rhs_idx[0] != b:
            return
        out_shape, target = dims_of(op.result.type), dims_of(unflatten.result.type)
        n = len(target) - len(out_shape) + 1  # the leading dims the batch dim splits into
        if n < 2 or target[n:] != out_shape[1:] or math.prod(target[:n]) != out_shape[0]:
            return
        fresh = [c for c in string.ascii_letters if c not in lhs_idx + rhs_idx + out_idx][:n]
        if len(fresh) < n:
            return
        operands = []
        for value in (op.lhs, op.rhs):
            shape = [*target[:n], *dims_of(value.type)[1:]]
            view = ein.ViewOp("reshape", value, tensor_type(shape, value.type.get_element_type()))
            rewriter.insert(view, InsertPoint.before(op))
            operands.append(view.result)
        batch = "".join(fresh)
        spec = f"{batch}{lhs_idx[1:]},{batch}{rhs_idx[1:]}->{batch}{out_idx[1:]}"
        new = ein.ContractOp(spec, operands[0], operands[1], unflatten.result.type)
        rewriter.insert(new, InsertPoint.before(op))
        rewriter.replace(unflatten, [], [new.result])
        rewriter.erase(op)


class _Atom:
    """A factor of a dim followed through reshapes and permutes (`_traced`): a reshape may split it
    into a major and a minor piece."""

    __slots__ = ("pieces", "size")

    def __init__(self, size: int):
        self.size, self.pieces = size, None

    def leaves(self) -> list[_Atom]:
        return [self] if self.pieces is None else [leaf for p in self.pieces for leaf in p.leaves()]


def _regroup(groups: list[list[_Atom]], sizes: Sequence[int]) -> list[list[_Atom]] | None:
    """A reshape to `sizes` of a tensor whose dims hold `groups` of atoms (major first): the atoms
    in order, split where a new dim's boundary falls inside one; None where it cannot be said so."""
    queue = [leaf for group in groups for atom in group for leaf in atom.leaves()][::-1]
    out = []
    for size in sizes:
        group, left = [], size
        while left > 1:
            if not queue:
                return None
            atom = queue.pop()
            if atom.size <= left:
                if left % atom.size:
                    return None
                group.append(atom)
                left //= atom.size
            else:
                if atom.size % left:
                    return None
                atom.pieces = [_Atom(left), _Atom(atom.size // left)]
                group.append(atom.pieces[0])
                queue.append(atom.pieces[1])
                left = 1
        out.append(group)
    return out if not queue else None


def _traced(groups: list[list[_Atom]], views: list[ein.ViewOp]) -> list[list[_Atom]] | None:
    for view in views:
        if view.kind.data == "permute":
            groups = [groups[p] for p in view.view_params]
        else:
            groups = _regroup(groups, dims_of(view.result.type))
            if groups is None:
                return None
    return groups


def _atoms(value: SSAValue) -> list[list[_Atom]]:
    return [[_Atom(d)] if d != 1 else [] for d in dims_of(value.type)]


def _refined(factorizations: list[list[int]]) -> list[int] | None:
    """The coarsest factorization (major first) that refines every one of `factorizations` of the
    same size (each listed major first), or None where none does (6 x 10 against 4 x 15)."""
    strides = {1}
    for sizes in factorizations:
        stride = 1
        for size in reversed(sizes):
            stride *= size
            strides.add(stride)
    ordered = sorted(strides, reverse=True)
    if any(a % b for a, b in zip(ordered, ordered[1:])):
        return None
    return [a // b for a, b in zip(ordered, ordered[1:])]


class FoldViewsIntoBatchedContract(RewritePattern):
    """A batched product (a letter shared by both operands and the result: a `bmm`) that reads its
    operands through reshapes and permutes and whose result goes through reshapes and permutes to its
    reader → one contract over the dims of the views' ends: each letter split into the factors its
    operands and result see, the result in its readers' shape (unit dims a size-1 letter of the left
    operand). A map after the views then joins the product's epilogue. `torch.einsum` and
    hand-written block attention reach the graph this way: BigBird's band scores (`bmm` over
    `[heads * 60 blocks, 64, 192]`, reshaped back to `[1, heads, 60, 64, 192]`) and its first and last
    key blocks (`[heads, 60 * 64, 64]`, a permute between) each went through a pointwise kernel of
    their own, one more write and read of every score. A contracted letter split in two (a K loop
    over an unravelled index) is left as it is. A reshape that only splits the batch dim is
    `FoldBatchUnflattenIntoContract`'s first, whatever reads it: attention's second product then
    keeps the first's layout, which the flash-attention matcher pairs them by."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ContractOp, rewriter: PatternRewriter) -> None:
        lhs_idx, rhs_idx, out_idx = ein.parse_spec(op.spec.data)
        if not any(c in lhs_idx and c in rhs_idx for c in out_idx):
            return
        views, end = [], op.result
        while (user := single_user(end)) is not None and _is_reshape_or_permute(user):
            views.append(user)
            end = user.result
        if not views or not any(isinstance(use.operation, ein.MapOp) for use in end.uses):
            return  # (a map reading the views' end is the gain: it becomes the epilogue)
        values = [op.lhs, op.rhs, op.result, end]
        if any(not all(isinstance(d, int) for d in dims_of(v.type)) for v in values):
            return
        operands = []  # per operand: its source and the atoms of its dims
        for value in (op.lhs, op.rhs):
            chain = []
            while _is_reshape_or_permute(value.owner) and all(
                isinstance(d, int) for d in dims_of(value.owner.input.type)
            ):
                chain.append(value.owner)
                value = value.owner.input
            source = _atoms(value)
            groups = _traced(source, chain[::-1])
            if groups is None:
                return
            operands.append((value, source, groups))
        result = _atoms(op.result)
        target = _traced(result, views)
        if target is None:
            return
        # each letter's factors, as the operands and the result's readers see them
        seen: dict[str, list[list[int]]] = {}
        for idx, groups in ((lhs_idx, operands[0][2]), (rhs_idx, operands[1][2]), (out_idx, result)):
            for c, group in zip(idx, groups):
                seen.setdefault(c, []).append([leaf.size for atom in group for leaf in atom.leaves()])
        pieces = {}
        for c, factorizations in seen.items():
            refined = _refined(factorizations)
            if refined is None or (c not in out_idx and len(refined) > 1):
                return
            pieces[c] = refined
        fresh = iter(c for c in string.ascii_letters)
        letters = {c: [next(fresh) for _ in sizes] for c, sizes in pieces.items()}
        size_of = {name: size for c in pieces for name, size in zip(letters[c], pieces[c])}

        def spelled(idx: str, groups: list[list[_Atom]]) -> dict[_Atom, list[str]] | None:
            """Each leaf atom of `groups` -> the letters of the pieces it spans."""
            out = {}
            for c, group in zip(idx, groups):
                at, names = 0, letters[c]
                for leaf in (leaf for atom in group for leaf in atom.leaves()):
                    span, size = at, 1
                    while size < leaf.size:
                        size *= pieces[c][at]
                        at += 1
                    if size != leaf.size:
                        return None
                    out[leaf] = names[span:at]
            return out

        result_letters = spelled(out_idx, result)
        if result_letters is None:
            return
        out_spec, units = "", []
        for group in target:
            leaves = [leaf for atom in group for leaf in atom.leaves()]
            if not leaves:
                units.append(next(fresh))
                out_spec += units[-1]
            elif len(leaves) == 1 and len(result_letters[leaves[0]]) == 1:
                out_spec += result_letters[leaves[0]][0]
            else:
                return  # a result dim over several factors: the readers' shape needs a reshape
        # the result's unit dims: letters of the left operand (in place of its own unit dims, where it
        # has as many), and of the right one too where both have as many (a size-1 batch dim)
        unit_dims = [sum(1 for group in source if not group) for _, source, _ in operands]
        shared = all(count == len(units) for count in unit_dims)
        specs, new_ops = [], []
        for (value, source, groups), idx, extra, own_units in (
            (operands[0], lhs_idx, units, unit_dims[0]),
            (operands[1], rhs_idx, units if shared else [], unit_dims[1]),
        ):
            spelling = spelled(idx, groups)
            if spelling is None:
                return
            spec, shape = "", []
            in_place = own_units == len(extra)
            extra = list(extra)
            for group in source:
                if not group and in_place and extra:
                    spec += extra.pop(0)
                    shape.append(1)
                for leaf in (leaf for atom in group for leaf in atom.leaves()):
                    for name in spelling[leaf]:
                        spec += name
                        shape.append(size_of[name])
            spec += "".join(extra)
            shape += [1] * len(extra)
            specs.append((spec, value, tuple(shape)))
        (lhs_spec, _, _), (rhs_spec, _, _) = specs
        k = [c for c in lhs_spec if c in rhs_spec and c not in out_spec]
        m = [c for c in out_spec if c in lhs_spec and c not in rhs_spec]
        n = [c for c in out_spec if c in rhs_spec and c not in lhs_spec]
        if not (k and m and n):
            return
        # the views are made only now that the rewrite happens: an op made and dropped would keep a
        # use of its operand (a Jamba decode step's fusion read such a dangling reshape and failed)
        operands_now = []
        for _, value, shape in specs:
            if shape != tuple(dims_of(value.type)):
                view = ein.ViewOp("reshape", value, tensor_type(list(shape), value.type.get_element_type()))
                new_ops.append(view)
                value = view.result
            operands_now.append(value)
        lhs, rhs = operands_now
        new = ein.ContractOp(f"{lhs_spec},{rhs_spec}->{out_spec}", lhs, rhs, end.type)
        for view_op in new_ops + [new]:
            rewriter.insert(view_op, InsertPoint.before(op))
        rewriter.replace(views[-1], [], [new.result])
        for view_op in reversed(views[:-1]):
            rewriter.erase(view_op)
        rewriter.erase(op)


def _is_reshape_or_permute(op: Operation | None) -> bool:
    return isinstance(op, ein.ViewOp) and op.kind.data in ("reshape", "permute")


def _is_reshape(op: Operation | None) -> bool:
    return isinstance(op, ein.ViewOp) and op.kind.data == "reshape"


class CollapseViews(RewritePattern):
    """reshape∘reshape → reshape, permute∘permute → permute, flip∘flip → input, identity views →
    their input."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ViewOp, rewriter: PatternRewriter) -> None:
        kind = op.kind.data
        if kind in ("reshape", "expand") and op.input.type == op.result.type:
            rewriter.replace(op, [], [op.input])
            return
        inner = op.input.owner
        if not isinstance(inner, ein.ViewOp) or inner.kind.data != kind:
            return
        if kind == "flip" and inner.view_params == op.view_params:
            rewriter.replace(op, [], [inner.input])
        elif kind == "reshape":
            rewriter.replace(op, ein.ViewOp("reshape", inner.input, op.result.type))
        elif kind == "permute":
            first, second = inner.view_params, op.view_params
            perm = [first[p] for p in second]
            if perm == list(range(len(perm))):
                rewriter.replace(op, [], [inner.input])
            else:
                rewriter.replace(op, ein.ViewOp("permute", inner.input, op.result.type, perm))


def _identity_index(value: SSAValue, arg: SSAValue) -> bool:
    """Whether `value` is `arg` up to `+ 0` and `* 1` on integers (arange's `start + i * step`)."""
    while value is not arg:
        op = value.owner
        if not isinstance(op, arith.AddiOp | arith.MuliOp):
            return False
        neutral = 0 if isinstance(op, arith.AddiOp) else 1
        constants = [v for v in (op.lhs, op.rhs) if isinstance(v.owner, arith.ConstantOp)]
        if len(constants) != 1 or constants[0].owner.value.value.data != neutral:
            return False
        value = op.rhs if constants[0] is op.lhs else op.lhs
    return True


class FoldArangeOfIota(RewritePattern):
    """map(iota) computing `0 + i * 1` (how `arange(n)` is imported) → the iota."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.MapOp, rewriter: PatternRewriter) -> None:
        if len(op.inputs) != 1 or not isinstance(op.inputs[0].owner, ein.IotaOp):
            return
        if op.inputs[0].type != op.result.type:
            return
        if _identity_index(yielded_value(op), op.body.block.args[0]):
            rewriter.replace(op, [], [op.inputs[0]])


class ReshapeIota(RewritePattern):
    """reshape(iota) → iota of the reshaped type, where the reshape only adds or drops unit dims
    (`arange(t)[:, None]`): the index dim keeps its size, so each element keeps its value."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ViewOp, rewriter: PatternRewriter) -> None:
        iota = op.input.owner
        if op.kind.data != "reshape" or not isinstance(iota, ein.IotaOp):
            return
        src, dst = dims_of(op.input.type), dims_of(op.result.type)
        dim = iota.dim.value.data
        if src[dim] == 1 or [d for d in src if d != 1] != [d for d in dst if d != 1]:
            return
        rank = sum(1 for d in src[:dim] if d != 1)  # the index dim's place among the non-unit dims
        new_dim = [i for i, d in enumerate(dst) if d != 1][rank]
        rewriter.replace(op, ein.IotaOp(new_dim, op.result.type))


def _unflatten_split(inner: tuple[int, ...], outer: tuple[int, ...]) -> int | None:
    """For a reshape `inner` → `outer` that splits leading dims and keeps the trailing ones (M x N
    → B x S x N, or S x N → 1 x S x N), the number of kept trailing dims; else None."""
    if len(outer) <= len(inner):
        return None
    kept = 0
    while kept < len(inner) - 1 and inner[-1 - kept] == outer[-1 - kept]:
        kept += 1
    if kept == 0:  # the features themselves are split (heads of a QK-norm): rows change meaning
        return None
    return kept if math.prod(inner[: len(inner) - kept]) == math.prod(outer[: len(outer) - kept]) else None


class SinkGatherIntoMap(RewritePattern):
    """gather(map(a, b), idx) → map(gather(a, idx), gather(b, idx)) when the gather reads at most half
    of the map's elements: the map is computed where it is read, not written in full and read back.
    Cross-entropy's log-softmax is gathered at one label a row: the row kernel then writes only its
    statistics, not a [tokens, vocabulary] tensor. A broadcast operand is read at index 0 along its
    size-1 dims; the map stays for its other readers. A map with at most one math function that only
    the gather reads moves too, where the gather reads no more than all of it: a mixture of experts
    scales the experts' rows by their routing weights and puts them back in token order (a
    permutation) before summing each token's two; the scaled rows were written in f32 (34 MB a layer
    in Mixtral at 4 x 512 tokens) and read back (with `SplitReshapeOfGatheredMap`, the sum reads the
    experts' rows through the permutation)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.GatherOp, rewriter: PatternRewriter) -> None:
        mapped = op.table.owner
        if not isinstance(mapped, ein.MapOp):
            return
        table, out = dims_of(op.table.type), dims_of(op.result.type)
        # read only by this gather, a cheap map is computed where it is read, even where the gather
        # reads all of it (a permutation)
        alone = single_user(mapped.result) is op and math_functions(mapped) <= 1
        if 2 * math.prod(out) > math.prod(table) and not (alone and math.prod(out) <= math.prod(table)):
            return
        new_ops: list[Operation] = []
        zero: SSAValue | None = None
        gathered = []
        for v in mapped.inputs:
            shape = dims_of(v.type)
            if not shape:
                gathered.append(v)
                continue
            if len(shape) < len(table):  # numpy broadcast from the right: leading 1s
                shape = (1,) * (len(table) - len(shape)) + tuple(shape)
                view = ein.ViewOp("reshape", v, tensor_type(shape, v.type.get_element_type()))
                new_ops.append(view)
                v = view.result
            indices, sources = list(op.indices), []
            for k, m in enumerate(op.sources):
                if shape[k] == table[k]:
                    sources.append(m)
                    continue
                if zero is None:  # index 0 along a broadcast dim, for every result element
                    const = ein.ConstantOp(IntegerAttr(0, i64), tensor_type([1] * len(out), i64))
                    new_ops.append(const)
                    zero = const.result
                if zero not in indices:
                    indices.append(zero)
                sources.append(-1 - indices.index(zero))
            gather = ein.GatherOp(v, indices, sources, tensor_type(out, v.type.get_element_type()))
            new_ops.append(gather)
            gathered.append(gather.result)
        block = Block(arg_types=[v.type.get_element_type() for v in gathered])
        block.add_op(ein.YieldOp(inline_map_body(mapped, list(block.args), block)))
        new_ops.append(ein.MapOp(gathered, op.result.type, Region(block)))
        rewriter.replace(op, new_ops)


def _split_groups(old: Sequence[int], new: Sequence[int]) -> list[list[int]] | None:
    """For a reshape `old` -> `new` that only splits dims (no unit dims on either side), the new dims
    each old dim becomes; else None."""
    if not all(isinstance(d, int) and d > 1 for d in (*old, *new)):
        return None
    groups, at = [], 0
    for size in old:
        group, product = [], 1
        while product < size and at < len(new):
            group.append(at)
            product *= new[at]
            at += 1
        if product != size:
            return None
        groups.append(group)
    return groups if at == len(new) else None


def _split_shape(
    shape: Sequence[int], old: Sequence[int], new: Sequence[int], groups: list[list[int]]
) -> list[int] | None:
    """`shape` (broadcasting to `old`, same rank) split as `old` splits into `new`; None where a dim
    is neither whole nor 1, or the ranks differ."""
    if len(shape) != len(old):
        return None
    out = []
    for d, size, group in zip(shape, old, groups):
        if d == size:
            out += [new[g] for g in group]
        elif d == 1:
            out += [1] * len(group)
        else:
            return None
    return out


class SplitReshapeOfGatheredMap(RewritePattern):
    """reshape(map(gather(..), ..)) → map(gather'(..), ..) for a reshape that splits dims, of a map
    read only there whose operands are gathers (or scalars): each gather produces the split shape
    directly (its index tensors reshaped), so a reduction over a split dim reads the map as its own
    prologue. Mixtral's sum of each token's two experts reads `[tokens * 2, hidden]` as `[tokens, 2,
    hidden]` (`SinkGatherIntoMap`'s case)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ViewOp, rewriter: PatternRewriter) -> None:
        mapped = op.input.owner
        if not _is_reshape(op) or not isinstance(mapped, ein.MapOp) or single_user(mapped.result) is not op:
            return
        old, new = dims_of(op.input.type), dims_of(op.result.type)
        groups = _split_groups(old, new)
        if groups is None:
            return
        plans = []
        for x in mapped.inputs:
            if not dims_of(x.type):
                plans.append(None)
                continue
            gather = x.owner
            if not isinstance(gather, ein.GatherOp) or len(dims_of(x.type)) != len(old):
                return
            shapes = [_split_shape(dims_of(i.type), old, new, groups) for i in gather.indices]
            sources = [m if m < 0 else groups[m][0] if len(groups[m]) == 1 else None for m in gather.sources]
            if any(shape is None for shape in shapes) or None in sources:
                return
            plans.append((gather, shapes, sources))
        new_ops: list[Operation] = []
        inputs = []
        for x, plan in zip(mapped.inputs, plans):
            if plan is None:
                inputs.append(x)
                continue
            gather, shapes, sources = plan
            indices = []
            for index, shape in zip(gather.indices, shapes):
                view = ein.ViewOp("reshape", index, tensor_type(shape, index.type.get_element_type()))
                new_ops.append(view)
                indices.append(view.result)
            elem = x.type.get_element_type()
            new_ops.append(ein.GatherOp(gather.table, indices, sources, tensor_type(new, elem)))
            inputs.append(new_ops[-1].result)
        new_ops.append(ein.MapOp(inputs, op.result.type, mapped.body.clone()))
        rewriter.replace(op, new_ops)


class SinkSliceIntoMap(RewritePattern):
    """slice(map(a, b)) → map(slice(a), slice(b)) for a map with at most one math function whose
    sliced operands are fewer bytes than the slice of its result (as many, where the slice is its only
    reader): the slice's readers compute the map where they read it; the map stays for its other
    readers (and goes with the last). A broadcast operand (size 1 along the sliced dim, or without
    it) is read as it is. A slice returned (or a view of it) stays a view. BigBird's
    random-block mask, an outer product of two small masks (f32, 62 blocks x 64 x 192 a head, 37 MB
    a layer at 12 heads), was written in full and read back through three slices. Views a
    contraction reads are left alone, as in `SinkViewBelowWidening`.

    Where every reader of the map is such a slice and the slices do not overlap, the map goes
    whatever its math and its broadcast operands' bytes: nothing is computed twice, and the result
    is not written and read back. Mixtral's experts: `where(mask, 0, gate_up)` (a routing mask over
    the experts' first product, bf16 [tokens x 2, 2 x 2816]) split into the gate and the up halves
    before SiLU: a kernel of its own and 92 MB of traffic a layer, now read by the SiLU's kernel. Not
    a map of a product (its epilogue, which the attention and GEMM matchers expect where it is)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ViewOp, rewriter: PatternRewriter) -> None:
        mapped = op.input.owner
        if op.kind.data != "slice" or not isinstance(mapped, ein.MapOp) or read_by_contraction(op.result):
            return
        covering = _covering_slices(mapped)
        if math_functions(mapped) > 1 and not covering:
            return
        dim, start, stop, step = op.view_params
        rank, size = len(dims_of(op.input.type)), dims_of(op.result.type)[dim]
        plans = []  # per operand: the dim to slice, or None (read as it is)
        read = 0  # bytes the sliced operands hold
        for v in mapped.inputs:
            shape = dims_of(v.type)
            at = dim - (rank - len(shape))  # numpy broadcast from the right
            at = None if at < 0 or shape[at] == 1 else at
            plans.append(at)
            elements = math.prod(shape) if at is None else math.prod(shape) // shape[at] * size
            read += elements * to_torch_dtype(v.type.get_element_type()).itemsize
        # (no more bytes; with other readers, fewer: a unary map read elsewhere too stays one kernel)
        alone = single_user(mapped.result) is op
        if not covering and (read > _bytes(op.result) or (read == _bytes(op.result) and not alone)):
            return
        if covering and read > 2 * _bytes(op.result):
            return  # broadcast operands larger than the slice: read again by every slice
        if _returned_as_view(op.result):
            return  # an output that is a view of another keeps sharing its memory, as PyTorch's does
        new_ops: list[Operation] = []
        sliced = []
        for v, at in zip(mapped.inputs, plans):
            if at is None:
                sliced.append(v)
                continue
            out = list(dims_of(v.type))
            out[at] = size
            elem = v.type.get_element_type()
            view = ein.ViewOp("slice", v, tensor_type(out, elem), [at, start, stop, step])
            new_ops.append(view)
            sliced.append(view.result)
        new_ops.append(ein.MapOp(sliced, op.result.type, mapped.body.clone()))
        rewriter.replace(op, new_ops)


def _covering_slices(mapped: ein.MapOp) -> bool:
    """Whether every reader of `mapped` is a slice that `SinkSliceIntoMap` takes (not read by a
    contraction, not returned), of unit step along one dim, no two overlapping; and `mapped` reads
    no product (it is not an epilogue)."""
    if any(isinstance(view_source(v).owner, ein.ContractOp) for v in mapped.inputs):
        return False
    taken: list[tuple[int, int]] = []
    dims = set()
    for use in mapped.result.uses:
        view = use.operation
        if not (isinstance(view, ein.ViewOp) and view.kind.data == "slice"):
            return False
        if read_by_contraction(view.result) or _returned_as_view(view.result):
            return False
        dim, start, stop, step = view.view_params
        if step != 1:
            return False
        dims.add(dim)
        taken.append((start, stop))
    taken.sort()
    return len(dims) == 1 and all(a[1] <= b[0] for a, b in zip(taken, taken[1:]))


def _returned_as_view(value: SSAValue) -> bool:
    """Whether `value`, or a view of it, is returned."""
    for use in value.uses:
        user = use.operation
        if isinstance(user, func.ReturnOp):
            return True
        if isinstance(user, ein.ViewOp) and _returned_as_view(user.result):
            return True
    return False


class SinkViewBelowWidening(RewritePattern):
    """view(widen(x)) → widen(view(x)) for a pure widening cast (`extf`): the view's readers take
    the cast in and read the 16-bit tensor. Training's LM loss widens the bf16 logits, flattens
    them to [tokens, vocabulary] and reads them in a row kernel (the log-sum-exp) and a gather (the
    label's logit): behind the reshape the cast was a kernel of its own, writing the logits again
    in f32 (twice their bytes) for both to read back, and again in the backward. The widening stays
    for its other readers. Views a contraction reads are left alone (the contraction folds them,
    and reads a widening of its operand as the 16-bit tensor)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ViewOp, rewriter: PatternRewriter) -> None:
        widening = op.input.owner
        source = widened_source(op.input)
        if source is None or read_by_contraction(op.result):
            return
        if _is_reshape(op) and _gemm_epilogue_value(op.input):
            if _unflatten_split(tuple(dims_of(op.input.type)), tuple(dims_of(op.result.type))) is not None:
                return  # SinkUnflattenBelowMap's case: the map below joins the GEMM's epilogue
        narrow = tensor_type(dims_of(op.result.type), source.type.get_element_type())
        view = ein.ViewOp(op.kind.data, source, narrow, op.view_params)
        widened = ein.MapOp([view.result], op.result.type, widening.body.clone())
        rewriter.replace(op, [view, widened])


class FlipScan(RewritePattern):
    """flip_d(scan_d(x)) → reverse-scan_d(flip_d(x)): the flip moves to the scan's input, where a
    flip before it cancels (a reverse cumsum, `cumsum(x.flip(d), d).flip(d)`, is one kernel)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ViewOp, rewriter: PatternRewriter) -> None:
        scan = op.input.owner
        if op.kind.data != "flip" or not isinstance(scan, ein.ScanOp) or op.view_params != (scan.scan_dim,):
            return
        if single_user(scan.result) is not op:
            return
        flipped = ein.ViewOp("flip", scan.input, scan.input.type, op.view_params)
        reverse = ein.ScanOp(scan.kind.data, scan.scan_dim, flipped.result, reverse=scan.reverse is None)
        rewriter.replace(op, [flipped, reverse])


class SinkUnflattenBelowMap(RewritePattern):
    """map(reshape(v), ...) → reshape(map(v, ...)), where the reshape splits leading dims of `v`
    (M x N → B x S x N) and keeps the rest: a GEMM's epilogue chain then reaches the map.
    (`nn.Linear` with a bias on a 3-d input is captured as a 2-d addmm whose result is reshaped
    back to 3-d before the activation; the activation was a kernel of its own, one more write and
    read of the GEMM's output: Phi's and GPT-2's MLPs.) Every other input must broadcast over the
    whole split prefix (a bias, a scale); a map that also reads a full tensor (a residual add)
    keeps its shape, unless every reader of the map flattens it back. The map moves to the
    flatter shape only, so the rewrite terminates."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.MapOp, rewriter: PatternRewriter) -> None:
        if widened_source(op.result) is not None:
            return  # a dot operand's widening stays next to its dot (see MergeMaps)
        out_shape = tuple(dims_of(op.result.type))
        for value in op.inputs:
            view = value.owner
            if not _is_reshape(view) or tuple(dims_of(value.type)) != out_shape:
                continue
            if not _gemm_epilogue_value(view.input):
                continue
            inner_shape = tuple(dims_of(view.input.type))
            kept = _unflatten_split(inner_shape, out_shape)
            if kept is None:
                continue
            # a map whose readers flatten its result back (the loss's logit gradient, added to the
            # logits' own, then read by the LM head's backward GEMMs), and at most return it besides,
            # may take a full tensor to the flat space with it: no kernel reads through a reshape it
            # did not have (a map only returned keeps its shape: the CUDA GEMM's [batch, tokens] M)
            flattens = [
                _is_reshape(use.operation) and tuple(dims_of(use.operation.result.type)) == inner_shape
                for use in op.result.uses
            ]
            returns = [isinstance(use.operation, func.ReturnOp) for use in op.result.uses]
            flat_readers = any(flattens) and all(f or r for f, r in zip(flattens, returns))
            plan = [_in_flat_space(x, out_shape, inner_shape, kept, flat_readers) for x in op.inputs]
            if any(p is False for p in plan):
                continue
            inputs = []
            for x, how in zip(op.inputs, plan):
                if isinstance(how, SSAValue):
                    inputs.append(how)
                elif how is None:
                    inputs.append(x)
                else:
                    flat = ein.ViewOp("reshape", x, tensor_type(how, x.type.get_element_type()))
                    rewriter.insert(flat, InsertPoint.before(op))
                    inputs.append(flat.result)
            elem = op.result.type.get_element_type()
            new = ein.MapOp(inputs, tensor_type(inner_shape, elem), op.body.clone())
            back = ein.ViewOp("reshape", new.result, op.result.type)
            rewriter.replace(op, [new, back], [back.result])
            return


def _gemm_epilogue_value(value: SSAValue) -> bool:
    """A computed 2-d value (rows x features: a linear layer's result, its bias add, a map of it).
    Batched products (attention's scores) and head views keep their own shapes: the attention
    matcher reads them."""
    return isinstance(value.owner, ein.ContractOp | ein.MapOp) and len(dims_of(value.type)) == 2


def _in_flat_space(
    x: SSAValue, outer: tuple[int, ...], inner: tuple[int, ...], kept: int, flat_readers: bool = False
) -> SSAValue | tuple[int, ...] | None | bool:
    """How map input `x` reads in `inner`'s space: None (as it is), a shape to reshape it to, the
    flat value it is a reshape of, or False (not expressible, or not wanted)."""
    shape = tuple(dims_of(x.type))
    if len(shape) <= kept:
        return None  # broadcast over every leading dim, in both spaces
    if _is_reshape(x.owner) and tuple(dims_of(x.owner.input.type)) == inner:
        return x.owner.input  # another value of the same flat space (GELU reads x three times)
    prefix = (1,) * (len(outer) - len(shape)) + shape[: len(shape) - kept]
    if all(d == 1 for d in prefix) and math.prod(shape) < math.prod(outer):
        return shape[len(shape) - kept :]  # the leading 1s dropped (kept >= 1: the feature dims)
    # a genuinely 3-d full tensor (a residual) would follow the GEMM into its flat space, and the
    # norm reading the sum after it would see a reshape between: Llama at batch 2 lost its
    # residual+norm row kernels that way (kernel counts); not where every reader flattens it anyway
    return inner if flat_readers and shape == outer else False


# arith.cmpi's eq ne slt sle sgt sge (0-5): `a - b` against 0 reads as `a` against `b` (not the unsigned ones)
_SIGNED_PREDICATES = range(6)


class SimplifyMaskInMap(RewritePattern):
    """A mask spelled as SDPA's math decomposition spells it, in a map's body, rewritten to the select
    the attention matcher reads (`flash_attention.causal_select`): `andi(c, true)` -> `c` (booleans),
    `xori(cmpi p, true)` -> `cmpi !p`, `cmpi p (a - b), 0` -> `cmpi p a, b` (signed predicates, a and b
    positions), `x + select(c, -inf, 0)` -> `select(c, -inf, x)` (and the mirrored select). CUDA's
    trace of a float32 SDPA with grouped heads is that decomposition: its causal mask
    `scores + where(!(tril(ones) & true), -inf, 0)` read as an additive bias before (the SDPA call then
    got a dense bias and no `is_causal`: 3x the causal time). Where x is NaN or +inf, a hidden score is
    -inf instead of NaN: softmax gives it no weight."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.MapOp, rewriter: PatternRewriter) -> None:
        for inner in list(op.body.block.ops):
            if self._rewrite(op, inner, rewriter):
                return

    def _rewrite(self, mapped: ein.MapOp, inner: Operation, rewriter: PatternRewriter) -> bool:
        if isinstance(inner, arith.AndIOp) and inner.result.type == IntegerType(1):  # (not `x & 255`)
            for this, other in ((inner.lhs, inner.rhs), (inner.rhs, inner.lhs)):
                if splat_value(this, mapped) not in (None, 0):
                    rewriter.replace(inner, [], [other])
                    return True
        elif isinstance(inner, arith.XOrIOp):
            for this, other in ((inner.lhs, inner.rhs), (inner.rhs, inner.lhs)):
                cmp = other.owner
                if splat_value(this, mapped) not in (None, 0) and isinstance(cmp, arith.CmpiOp):
                    predicate = NEGATED_PREDICATE[cmp.predicate.value.data]
                    rewriter.replace(inner, arith.CmpiOp(cmp.lhs, cmp.rhs, predicate))
                    return True
        elif isinstance(inner, arith.CmpiOp):
            sub = inner.lhs.owner
            # (positions only: their difference cannot wrap around)
            if (
                isinstance(sub, arith.SubiOp) and splat_value(inner.rhs, mapped) == 0
                and inner.predicate.value.data in _SIGNED_PREDICATES
                and iota_dim(mapped, sub.lhs) is not None and iota_dim(mapped, sub.rhs) is not None
            ):  # fmt: skip
                rewriter.replace(inner, arith.CmpiOp(sub.lhs, sub.rhs, inner.predicate.value.data))
                return True
        elif isinstance(inner, arith.AddfOp):
            for this, other in ((inner.lhs, inner.rhs), (inner.rhs, inner.lhs)):
                select = this.owner
                if not isinstance(select, arith.SelectOp):
                    continue
                a, b = splat_value(select.lhs, mapped), splat_value(select.rhs, mapped)
                if a == float("-inf") and b == 0:
                    rewriter.replace(inner, arith.SelectOp(select.cond, select.lhs, other))
                    return True
                if a == 0 and b == float("-inf"):
                    rewriter.replace(inner, arith.SelectOp(select.cond, other, select.rhs))
                    return True
        return False


def _constant_scale(mapped: ein.MapOp) -> float | None:
    """c where `mapped` is `x * c` or `x / c` elementwise: one operand x of the map's own type, c a
    finite nonzero constant in the body, float casts looked through; else None."""
    if len(mapped.inputs) != 1 or mapped.inputs[0].type != mapped.result.type:
        return None
    if not isinstance(mapped.result.type.get_element_type(), AnyFloat):
        return None
    arg = mapped.body.block.args[0]
    product = strip_casts(yielded_value(mapped)).owner
    if not isinstance(product, arith.MulfOp | arith.DivfOp):
        return None
    lhs, rhs = strip_casts(product.lhs), strip_casts(product.rhs)
    pairs = [(lhs, rhs)] + ([(rhs, lhs)] if isinstance(product, arith.MulfOp) else [])
    for this, other in pairs:
        c = splat_value(other, mapped) if this is arg else None
        if isinstance(c, float) and c != 0.0 and math.isfinite(c):
            return c
    return None


def _from_parameters(op: Operation, value: SSAValue) -> bool:
    """Whether `value` is computed from parameters alone (in the function that holds `op`): the
    runtime computes such a scaled weight once, so the scale costs nothing where it stands."""
    fn = op.parent_op()
    while fn is not None and not isinstance(fn, func.FuncOp):
        fn = fn.parent_op()
    return fn is not None and computed_from_parameters(value, set(parameter_args(fn)))


class ScaleAfterContract(RewritePattern):
    """contract(x * a, y * b) → contract(x, y) * a * b, for constant scales a and b (or divisions by
    constants) of operands that only the contraction reads: the scale becomes the contraction's
    epilogue (merged into the map that reads its result, or fused into its kernel) instead of a
    pointwise kernel per operand writing a scaled copy. SDPA's math decomposition, which is what CUDA
    traces for a float32 SDPA with grouped heads, scales q and the repeated keys by d^-1/4 each before
    `q @ k^T`: two kernels and a copy of the repeated keys ahead of the attention; after the rewrite
    the scale is the pre-softmax map's and the keys are read through their views. Exact in real
    arithmetic; in floating point the product is scaled once where each operand's elements were (as
    SDPA's fused kernels scale the scores). Each operand's own map body (its casts) is applied to the
    product, so the rounding to the result's type is the operands' own. Not for a float16 product
    scaled down (its unscaled values could overflow). A scaled weight (an operand
    computed from parameters alone) stays: the runtime computes it once, and the product keeps no
    epilogue."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.ContractOp, rewriter: PatternRewriter) -> None:
        result_type = op.result.type
        if op.lhs is op.rhs or not isinstance(result_type.get_element_type(), AnyFloat):
            return
        operands, scales, product = [op.lhs, op.rhs], [], 1.0
        for i, value in enumerate(operands):
            mapped = value.owner
            if not isinstance(mapped, ein.MapOp) or single_user(value) is not op:
                continue
            if mapped.result.type.get_element_type() != result_type.get_element_type():
                continue
            c = _constant_scale(mapped)
            if c is not None and not _from_parameters(op, mapped.inputs[0]):
                operands[i] = mapped.inputs[0]
                scales.append(mapped)
                product *= c
        # float16 overflows at 65504: scores `q @ k^T` unscaled may where the scaled ones do not (why
        # SDPA's math path scales both operands); a scale of 1 or more makes the product no larger
        if not scales or (isinstance(result_type.get_element_type(), Float16Type) and abs(product) < 1):
            return
        contract = ein.ContractOp(op.spec.data, operands[0], operands[1], result_type)
        rewriter.insert(contract, InsertPoint.before(op))
        block = Block(arg_types=[result_type.get_element_type()])
        value = block.args[0]
        for mapped in scales:
            value = inline_map_body(mapped, [value], block)
        block.add_op(ein.YieldOp(value))
        rewriter.replace(op, ein.MapOp([contract.result], result_type, Region(block)))
        for mapped in scales:
            rewriter.erase(mapped)


class MergeMaps(RewritePattern):
    """map(..., map(a, b), ...) → one map, when the inner map has no other user."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.MapOp, rewriter: PatternRewriter) -> None:
        if widened_source(op.result) is not None and any(
            isinstance(use.operation, ein.ContractOp) for use in op.result.uses
        ):
            return  # keep a dot operand's widening apart: the dot reads the narrow tensor
        for position, value in enumerate(op.inputs):
            producer = value.owner
            if isinstance(producer, ein.MapOp) and single_user(value) is op:
                rewriter.replace(op, _compose(op, {position}, producer))
                rewriter.erase(producer)
                return


MAX_INLINED_READERS = 3


class InlineCheapMap(RewritePattern):
    """A map of one operand (a cast, a sigmoid) read only by maps of its shape (two or three), at
    most one math function and no wider than its result, composed into each of them (Inductor
    inlines such pointwise producers into every reader): each reader reads the operand instead of
    the result, no more bytes, and the map's buffer and launch go. SwiGLU's backward computed its
    gate in f32 and the gate's sigmoid as kernels of their own, each read by two maps: two
    launches a layer and f32 round trips. A reduction or a contraction among the readers keeps the
    map whole (a softmax's exponentials, a dot operand); so does a map of several operands (a
    pre-norm block's residual add: the statistics' row kernel writes it, norm-prologue folds the
    norm of that one tensor into the GEMMs)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: ein.MapOp, rewriter: PatternRewriter) -> None:
        readers = list(dict.fromkeys(use.operation for use in op.result.uses))
        shape = dims_of(op.result.type)
        if not 2 <= len(readers) <= MAX_INLINED_READERS or any(
            not isinstance(r, ein.MapOp) or dims_of(r.result.type) != shape for r in readers
        ):
            return
        if math_functions(op) > 1:
            return
        operands = set(op.inputs)
        if len(operands) != 1 or _bytes(operands.pop()) > _bytes(op.result):
            return
        if any(widened_source(r.result) is not None and read_by_contraction(r.result) for r in readers):
            return  # a dot operand's widening stays a map of its own (MergeMaps' rule)
        for reader in readers:
            positions = {i for i, v in enumerate(reader.inputs) if v == op.result}
            rewriter.replace(reader, _compose(reader, positions, op))
        rewriter.erase(op)


def _bytes(value: SSAValue) -> int:
    return math.prod(dims_of(value.type)) * to_torch_dtype(value.type.get_element_type()).itemsize


def _compose(outer: ein.MapOp, positions: set[int], inner: ein.MapOp) -> ein.MapOp:
    """One map computing `outer` with its operands at `positions` replaced by `inner`'s body."""
    operands = list(dict.fromkeys(
        [v for i, v in enumerate(outer.inputs) if i not in positions] + list(inner.inputs)
    ))  # fmt: skip
    block = Block(arg_types=[v.type.get_element_type() for v in operands])
    arg_of = dict(zip(operands, block.args))
    inner_value = inline_map_body(inner, [arg_of[v] for v in inner.inputs], block)
    outer_args = [inner_value if i in positions else arg_of[v] for i, v in enumerate(outer.inputs)]
    result = inline_map_body(outer, outer_args, block)
    block.add_op(ein.YieldOp(result))
    return ein.MapOp(operands, outer.result.type, Region(block))


class EraseUnused(RewritePattern):
    """Remove pure `ein` ops whose results nobody reads."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if op.name.startswith("ein.") and op.results and all(not r.uses for r in op.results):
            rewriter.erase(op)


PATTERNS: tuple[type[RewritePattern], ...] = (
    FoldPermuteIntoContract,
    FoldPermuteIntoAttentionOutput,
    FoldBatchFlattenIntoContract,
    FoldBatchUnflattenIntoContract,
    FoldViewsIntoBatchedContract,
    CollapseViews,
    FoldArangeOfIota,
    ReshapeIota,
    FlipScan,
    SinkViewBelowWidening,
    SinkGatherIntoMap,
    SplitReshapeOfGatheredMap,
    SinkSliceIntoMap,
    SinkUnflattenBelowMap,
    ScaleAfterContract,
    MergeMaps,
    InlineCheapMap,
    SimplifyMaskInMap,
    EraseUnused,
)


def collapse_views(fn: func.FuncOp) -> None:
    """`CollapseViews` alone over `fn`, for a later pass that leaves a view of a view: split-reduction
    reshapes a reduction's new result back to the old one's shape, in front of the reshape that read the
    old one (`std(x, 0).sum()`, SigLIP's `logit_scale` gradient); a kernel that reads a group member
    through two views took it for a tensor nobody wrote, and its partition failed at its first call."""
    _rewrite_alone(fn, CollapseViews())


def merge_maps(fn: func.FuncOp) -> None:
    """`MergeMaps` alone over `fn`, for a later pass that leaves a map with one reader where it had
    several: split-reduction moves a reduction's reads of a map onto its chunks, and the map that
    remains (a LayerNorm's f32 cast of its bf16 input, read by the normalization) was written out in
    f32 by a kernel of its own and read back."""
    _rewrite_alone(fn, MergeMaps())


def _rewrite_alone(fn: func.FuncOp, pattern: RewritePattern) -> None:
    applier = GreedyRewritePatternApplier([pattern])
    PatternRewriteWalker(applier, walk_regions_first=False).rewrite_region(fn.body)


@dataclass(frozen=True)
class Canonicalize(ModulePass):
    """Apply the canonical `ein` rewrites until nothing changes."""

    name = "canonicalize"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        patterns = [p() for p in PATTERNS]
        if has_symbolic_sizes(op):
            patterns = [_Undecided(p) for p in patterns]
        applier = GreedyRewritePatternApplier(patterns)
        PatternRewriteWalker(applier, walk_regions_first=False).rewrite_module(op)


class _Undecided(RewritePattern):
    """A pattern over symbolic sizes: where it compares sizes sympy cannot order (before it rewrites
    anything), it does not apply."""

    def __init__(self, pattern: RewritePattern):
        self.decided = undecided_as(pattern.match_and_rewrite, lambda op, rewriter: None)

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        self.decided(op, rewriter)
