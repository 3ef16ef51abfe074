"""aten contractions, views, reductions, norms, softmax and attention → `ein`.

Matrix products become `ein.contract`; `addmm`/`baddbmm` add their bias in
an `ein.map`. Normalizations and softmax are written out as reductions and
maps in f32 (what eager PyTorch computes in), so fusion passes see the math.
Attention (`scaled_dot_product_attention` in any of its aten forms) becomes
contract → scale → mask → softmax → contract; grouped-query heads are a
batch index of the contraction, not a copy.
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import dataclass

import torch
from torch.fx import Node
from xdsl.dialects.builtin import f32, i1, i64
from xdsl.ir import SSAValue

from ..ir.builder import EinBuilder, ScalarBuilder, opmath_type
from ..ir.dtypes import dims_of, shape_of, size_of, to_mlir_type
from .conv_layout import is_nchw_view, is_storage_view
from .lowering_table import (
    WINDOW_META,
    LoweringContext,
    bound_args,
    lowers,
    normalize_dims,
    only_first_output_read,
    target_name,
)

aten = torch.ops.aten

# --- contractions -------------------------------------------------------------------------------


def _contract(spec: str):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        return ctx.b.contract(spec, ctx.tensor(node.args[0]), ctx.tensor(node.args[1]))

    return lower


def _float_product(node: Node) -> str | None:
    """Products of integers stay in PyTorch: the kernels' dots take floating-point tiles (an int32
    mm failed at its first launch), and an f32 accumulator would round sums past 2^24."""
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor) and not val.dtype.is_floating_point:
        return f"a product of {val.dtype} runs in PyTorch (the kernels' dots are floating-point)"
    return None


lowers(aten.mm.default, check=_float_product)(_contract("mk,kn->mn"))
lowers(aten.bmm.default, check=_float_product)(_contract("bmk,bkn->bmn"))
lowers(aten.mv.default, check=_float_product)(_contract("mk,k->m"))
lowers(aten.dot.default, check=_float_product)(_contract("k,k->"))


def _biased(spec: str):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        a = bound_args(node)
        names = ("mat1", "mat2") if "mat1" in a else ("batch1", "batch2")
        acc = ctx.b.contract(spec, ctx.tensor(a[names[0]]), ctx.tensor(a[names[1]]))
        beta, alpha = a["beta"], a["alpha"]
        if beta == 0:  # the input is ignored, NaN and inf in it too (PyTorch's documented addmm)
            scaled = lambda sb, prod: sb.mul(prod, sb.const(alpha, prod.type))  # noqa: E731
            return ctx.b.map([acc], ctx.out_elem(node), scaled)

        def body(sb: ScalarBuilder, bias: SSAValue, prod: SSAValue) -> SSAValue:
            if beta != 1:
                bias = sb.mul(bias, sb.const(beta, bias.type))
            if alpha != 1:
                prod = sb.mul(prod, sb.const(alpha, prod.type))
            return sb.add(bias, prod)

        return ctx.b.map([ctx.tensor(a["self"]), acc], ctx.out_elem(node), body)

    return lower


lowers(aten.addmm.default, check=_float_product)(_biased("mk,kn->mn"))
lowers(aten.baddbmm.default, check=_float_product)(_biased("bmk,bkn->bmn"))

# --- views --------------------------------------------------------------------------------------


@lowers(aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
        aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.flatten.using_ints)  # fmt: skip
def lower_reshape(ctx: LoweringContext, node: Node) -> SSAValue:
    return ctx.b.reshape(ctx.tensor(node.args[0]), ctx.out_shape(node))


def _as_strided_check(node: Node) -> str | None:
    """An `as_strided` that reads a row-major input in order (offset 0, row-major strides, every
    element) is a reshape; any other one runs in PyTorch (it depends on the storage's layout)."""
    source, size, stride = node.args[0].meta.get("val"), list(node.args[1]), list(node.args[2])
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset", 0)
    row_major = source is not None and source.is_contiguous() and source.storage_offset() == 0
    if not row_major or offset not in (0, None):
        return "an as_strided view of a tensor that is not row-major from its start runs in PyTorch"
    if stride != list(torch.empty(size, device="meta").stride()) or math.prod(size) != source.numel():
        return "an as_strided view that is not a reshape (other strides, or a part) runs in PyTorch"
    return None


@lowers(aten.as_strided.default, check=_as_strided_check)
def lower_as_strided(ctx: LoweringContext, node: Node) -> SSAValue:
    """A reshape written as `as_strided` (group norm's decomposition views its statistics so)."""
    return ctx.b.reshape(ctx.tensor(node.args[0]), ctx.out_shape(node))


def _permute_check(node: Node) -> str | None:
    if is_storage_view(node):
        return "a channels-last convolution's result viewed as [N, H, W, C] runs in PyTorch (conv_layout.py)"
    if is_nchw_view(node):
        return (
            "a channels-last tensor (a convolution's input, a result), viewed as eager laid it out, "
            "runs in PyTorch (conv_layout.py)"
        )
    return None


@lowers(aten.permute.default, check=_permute_check)
def lower_permute(ctx: LoweringContext, node: Node) -> SSAValue:
    return ctx.b.permute(ctx.tensor(node.args[0]), node.args[1])


@lowers(aten.transpose.int, aten.t.default)
def lower_transpose(ctx: LoweringContext, node: Node) -> SSAValue:
    x = ctx.tensor(node.args[0])
    rank = len(dims_of(x.type))
    if rank < 2:
        return x
    d0, d1 = (node.args[1] % rank, node.args[2] % rank) if len(node.args) > 1 else (0, 1)
    perm = list(range(rank))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return ctx.b.permute(x, perm)


@lowers(aten.expand.default)
def lower_expand(ctx: LoweringContext, node: Node) -> SSAValue:
    return ctx.b.expand(ctx.tensor(node.args[0]), ctx.out_shape(node))


@lowers(aten.repeat.default)
def lower_repeat(ctx: LoweringContext, node: Node) -> SSAValue:
    """`x.repeat(r0, r1, ...)`: x viewed as [1, s0, 1, s1, ...] (new leading dims of size 1 first),
    expanded to [r0, s0, r1, s1, ...], reshaped to [r0*s0, r1*s1, ...]: kernels index through it."""
    x = ctx.tensor(node.args[0])
    repeats = [int(r) for r in node.args[1]]
    sizes = [1] * (len(repeats) - len(dims_of(x.type))) + list(shape_of(x.type))
    interleaved = ctx.b.reshape(x, [d for s in sizes for d in (1, s)])
    expanded = ctx.b.expand(interleaved, [d for r, s in zip(repeats, sizes) for d in (r, s)])
    return ctx.b.reshape(expanded, [r * s for r, s in zip(repeats, sizes)])


def _slice_bounds(size: int, start: object, end: object, step: object) -> tuple[int, int, int]:
    start, stop, step = slice(start, end, step or 1).indices(size)
    return start, max(start, stop), step


def _sliced(ctx: LoweringContext, a: dict) -> tuple[SSAValue, int, int, int, int]:
    """The tensor `a["self"]`, and the dim, start, stop and step of the slice `a` names (the
    arguments of a slice or of a slice_scatter)."""
    x = ctx.tensor(a["self"])
    shape = shape_of(x.type)
    dim = a["dim"] % len(shape)
    return x, dim, *_slice_bounds(shape[dim], a["start"], a["end"], a["step"])


@lowers(aten.slice.Tensor)
def lower_slice(ctx: LoweringContext, node: Node) -> SSAValue:
    x, dim, start, stop, step = _sliced(ctx, bound_args(node))
    return ctx.b.slice(x, dim, start, stop, step)


@lowers(aten.select.int)
def lower_select(ctx: LoweringContext, node: Node) -> SSAValue:
    x = ctx.tensor(node.args[0])
    shape = shape_of(x.type)
    dim = node.args[1] % len(shape)
    index = node.args[2] % shape[dim]
    return ctx.b.reshape(ctx.b.slice(x, dim, index, index + 1), ctx.out_shape(node))


@lowers(aten.split.Tensor, aten.split_with_sizes.default)
def lower_split(ctx: LoweringContext, node: Node) -> tuple[SSAValue, ...]:
    x = ctx.tensor(node.args[0])
    shape = shape_of(x.type)
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(shape)
    parts, start = [], 0
    for val in node.meta["val"]:
        size = int(val.shape[dim])
        parts.append(ctx.b.slice(x, dim, start, start + size))
        start += size
    return tuple(parts)


def _static_empty(val: torch.Tensor) -> bool:
    """A tensor of static sizes with no elements (a symbolic size is never read: reading it would guard)."""
    return 0 in [d for d in val.shape if isinstance(d, int)]


# the most parts a concatenation kernels read in place: a kernel reading it takes a masked load per part
# for every element (and a select per part after the first), so DenseNet's concatenation of every
# earlier layer's features (up to 49 parts in DenseNet-201) cost each of its norm's kernels 49 loads an
# element, and DenseNet-201's partitions measured 42 ms against 15 for PyTorch (H100). Past it
# PyTorch's cat copies each part once and kernels read one tensor.
MAX_CAT_PARTS = 8


def _cat_parts(node: Node) -> list[Node]:
    """A concatenation's parts less those statically empty (`_static_empty`): the parts it reads."""
    return [t for t in node.args[0] if not _static_empty(t.meta["val"])]


def _cat_parts_reason(node: Node) -> str | None:
    parts = _cat_parts(node)
    if len(parts) <= MAX_CAT_PARTS:
        return None
    return (
        f"a concatenation of {len(parts)} parts (more than {MAX_CAT_PARTS}): read in place, every element"
        " would take a load per part; PyTorch's cat copies each part once"
    )


@lowers(aten.cat.default, check=_cat_parts_reason)
def lower_cat(ctx: LoweringContext, node: Node) -> SSAValue:
    out = ctx.out_elem(node)
    xs = [ctx.b.cast(ctx.tensor(t), out) for t in _cat_parts(node)]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    return xs[0] if len(xs) == 1 else ctx.b.concat(xs, dim)


def _scatter_step_reason(node: Node) -> str | None:
    a = bound_args(node)
    step = a.get("step", 1) or 1
    size = a["self"].meta["val"].shape[a.get("dim", 0) % max(1, a["self"].meta["val"].dim())]
    if step == 1 or size % step == 0:
        return None
    return f"a slice_scatter with step {step} over a dim of {size} (not a multiple) runs in PyTorch"


@lowers(aten.slice_scatter.default, check=_scatter_step_reason)
def lower_slice_scatter(ctx: LoweringContext, node: Node) -> SSAValue:
    """`base` with `src` written over `base[start:end:step]` along `dim`: the concatenation of the
    slice of `base` before, `src`, and the slice after, which kernels read in place (the backward
    of a slice or a concatenation: rotate_half's, a fused QKV split's). A strided one (the backward of
    GPT-J's rotate-every-two, `x[..., ::2]`) views the dim as [size / step, step] and overwrites one
    phase of it the same way."""
    a = bound_args(node)
    base, dim, start, stop, step = _sliced(ctx, a)
    src = ctx.b.cast(ctx.tensor(a["src"]), base.type.get_element_type())
    if step == 1:
        return _overwrite(ctx, base, src, dim, start, stop)
    return _overwrite_strided(ctx, base, src, dim, start, len(range(start, stop, step)), step)


def _overwrite_strided(
    ctx: LoweringContext, base: SSAValue, src: SSAValue, dim: int, start: int, count: int, step: int
) -> SSAValue:
    """`base` with `src` (`count` long along `dim`) written at start, start + step, ...: the dim viewed
    as [size / step, step]; the column of phase start % step gets `src` from row start // step on."""
    shape = list(shape_of(base.type))
    rows = shape[dim] // step
    phase, first = start % step, start // step
    split = ctx.b.reshape(base, [*shape[:dim], rows, step, *shape[dim + 1 :]])
    column_shape = [*shape[:dim], rows, *shape[dim + 1 :]]
    column = ctx.b.reshape(ctx.b.slice(split, dim + 1, phase, phase + 1), column_shape)
    column = _overwrite(ctx, column, src, dim, first, first + count)
    column = ctx.b.reshape(column, [*shape[:dim], rows, 1, *shape[dim + 1 :]])
    return ctx.b.reshape(_overwrite(ctx, split, column, dim + 1, phase, phase + 1), shape)


@lowers(aten.select_scatter.default)
def lower_select_scatter(ctx: LoweringContext, node: Node) -> SSAValue:
    """`base` with `src` written over `base.select(dim, index)`: a slice_scatter of one row."""
    a = bound_args(node)
    base = ctx.tensor(a["self"])
    shape = shape_of(base.type)
    dim = a["dim"] % len(shape)
    index = a["index"] % shape[dim]
    row = [*shape[:dim], 1, *shape[dim + 1 :]]
    src = ctx.b.reshape(ctx.b.cast(ctx.tensor(a["src"]), base.type.get_element_type()), row)
    return _overwrite(ctx, base, src, dim, index, index + 1)


def _overwrite(
    ctx: LoweringContext, base: SSAValue, src: SSAValue, dim: int, start: int, stop: int
) -> SSAValue:
    size = shape_of(base.type)[dim]
    parts = [ctx.b.slice(base, dim, 0, start)] * (start > 0) + [src]
    parts += [ctx.b.slice(base, dim, stop, size)] * (stop < size)
    return ctx.b.concat(parts, dim) if len(parts) > 1 else src


def _one_hot_scatter_reason(node: Node) -> str | None:
    a = bound_args(node)
    base, index = a["self"].meta["val"], a["index"].meta["val"]
    dim = a["dim"] % max(1, base.dim())
    others = [d for d in range(base.dim()) if d != dim]
    if (
        index.dim() != base.dim()
        or index.shape[dim] != 1
        or any(index.shape[d] != base.shape[d] for d in others)
    ):
        return "a scatter other than one position along its dim per row (a one-hot) runs in PyTorch"
    src = a.get("src")
    if isinstance(src, Node) and tuple(src.meta["val"].shape) != tuple(index.shape):
        return "a scatter whose source is not shaped like its index runs in PyTorch"
    return None


@lowers(aten.scatter.value, aten.scatter.src, check=_one_hot_scatter_reason)
def lower_one_hot_scatter(ctx: LoweringContext, node: Node) -> SSAValue:
    """`base` with one element per row along `dim` replaced, at the position `index` holds (the
    backward of a cross-entropy loss writes -1 at each target): a map choosing the new value where
    the position along `dim` equals the row's index, so it fuses with what reads it."""
    a = bound_args(node)
    base = ctx.tensor(a["self"])
    shape = shape_of(base.type)
    dim = a["dim"] % len(shape)
    elem = base.type.get_element_type()
    positions = ctx.b.iota(dim, shape, i64)
    new = ctx.value(a["src"]) if node.target == aten.scatter.src else a["value"]

    def body(sb: ScalarBuilder, at: SSAValue, index: SSAValue, old: SSAValue, value: SSAValue) -> SSAValue:
        return sb.select(sb.cmp("eq", at, sb.cast(index, i64)), sb.cast(value, elem), old)

    return ctx.b.map(
        [positions, ctx.tensor(a["index"]), base, new], elem, body, compute_elem=elem, cast_inputs=False
    )


@lowers(aten.constant_pad_nd.default)
def lower_constant_pad(ctx: LoweringContext, node: Node) -> SSAValue:
    """Each padded dim: a slice where the padding is negative, a concatenation with splats of
    `value` where it is positive (pairs in `pad` start from the last dim)."""
    a = bound_args(node)
    x = ctx.tensor(a["self"])
    pad = list(a["pad"])
    for i in range(len(pad) // 2):
        x = _padded(ctx.b, x, len(dims_of(x.type)) - 1 - i, pad[2 * i], pad[2 * i + 1], a["value"])
    return x


def _padded(b: EinBuilder, x: SSAValue, dim: int, before: int, after: int, value: float) -> SSAValue:
    """`x` with `before` and `after` elements of `value` around dim `dim`: a slice where a width is
    negative, a concatenation with splats of `value` where it is positive (kernels read through it)."""
    size = shape_of(x.type)[dim]
    x = b.slice(x, dim, max(-before, 0), size - max(-after, 0))

    def splat(width: int) -> SSAValue:
        shape = list(shape_of(x.type))
        shape[dim] = width
        return b.constant(value, shape, x.type.get_element_type())

    parts = [splat(before)] * (before > 0) + [x] + [splat(after)] * (after > 0)
    return b.concat(parts, dim) if len(parts) > 1 else x


@lowers(aten.flip.default)
def lower_flip(ctx: LoweringContext, node: Node) -> SSAValue:
    """A view that reads index n-1-i along the flipped dims (kernels index through it; a copy where
    it is materialized, as PyTorch's flip is)."""
    a = bound_args(node)
    return ctx.b.flip(ctx.tensor(a["self"]), list(a["dims"]))


def _scan_check(node: Node) -> str | None:
    val = node.meta["val"]
    if val.dim() == 0:
        return f"{target_name(node)} of a 0-d tensor runs in PyTorch"
    if val.dtype.is_complex:
        return f"{target_name(node)} of {val.dtype} runs in PyTorch"
    return None


def _scan(kind: str):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        """A running sum/product over `dim`: one scan kernel walking each row in chunks with a
        carry (floats accumulate in f32, integers in int64, as torch promotes them)."""
        a = bound_args(node)
        x = ctx.b.cast(ctx.tensor(a["self"]), ctx.out_elem(node))
        return ctx.b.scan(kind, x, a["dim"])

    return lower


lowers(aten.cumsum.default, check=_scan_check)(_scan("sum"))
lowers(aten.cumprod.default, check=_scan_check)(_scan("prod"))


# --- gathers ------------------------------------------------------------------------------------


def _indexed_along(ctx: LoweringContext, index: Node, rank: int, at: int) -> SSAValue:
    """An index tensor viewed with rank `rank`, its dims starting at result dim `at`."""
    value = ctx.tensor(index)
    shape = shape_of(value.type)
    return ctx.b.reshape(value, [1] * at + list(shape) + [1] * (rank - at - len(shape)))


@lowers(aten.embedding.default)
def lower_embedding(ctx: LoweringContext, node: Node) -> SSAValue:
    a = bound_args(node)
    out = ctx.out_shape(node)
    ids = _indexed_along(ctx, a["indices"], len(out), 0)
    return ctx.b.gather(ctx.tensor(a["weight"]), [ids], [-1, len(out) - 1], out)


@lowers(aten.index_select.default)
def lower_index_select(ctx: LoweringContext, node: Node) -> SSAValue:
    a = bound_args(node)
    out = ctx.out_shape(node)
    dim = a["dim"] % max(len(out), 1)
    index = _indexed_along(ctx, a["index"], len(out), dim)
    return ctx.b.gather(ctx.tensor(a["self"]), [index], [-1 if k == dim else k for k in range(len(out))], out)


@lowers(aten.gather.default)
def lower_gather(ctx: LoweringContext, node: Node) -> SSAValue:
    a = bound_args(node)
    out = ctx.out_shape(node)
    dim = a["dim"] % max(len(out), 1)
    index_map = [-1 if k == dim else k for k in range(len(out))]
    return ctx.b.gather(ctx.tensor(a["self"]), [ctx.tensor(a["index"])], index_map, out)


def _advanced_index_check(node: Node) -> str | None:
    indices = node.args[1]
    if any(isinstance(i, Node) and i.meta["val"].dtype in (torch.bool, torch.uint8) for i in indices):
        return "indexing with a boolean mask has a data-dependent shape"
    return None


@lowers(aten.index.Tensor, check=_advanced_index_check)
def lower_index(ctx: LoweringContext, node: Node) -> SSAValue:
    """`x[..., idx, ...]` (numpy advanced indexing): the broadcast index tensors take the place of
    the dims they index when those are adjacent, else they come first."""
    x = ctx.tensor(node.args[0])
    rank = len(dims_of(x.type))
    indices = list(node.args[1]) + [None] * (rank - len(node.args[1]))
    indexed = [k for k, i in enumerate(indices) if i is not None]
    vals = [indices[k].meta["val"] for k in indexed]
    index_rank = len(torch.broadcast_shapes(*(tuple(v.shape) for v in vals)))
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1))
    at = indexed[0] if adjacent else 0
    out = ctx.out_shape(node)
    index_map, tensors, next_dim = [], [], 0
    for i in indices:
        if next_dim == at:
            next_dim += index_rank
        if i is None:
            index_map.append(next_dim)
            next_dim += 1
        else:
            pad = index_rank - len(i.meta["val"].shape)  # right-aligned within the broadcast dims
            tensors.append(_indexed_along(ctx, i, len(out), at + pad))
            index_map.append(-len(tensors))
    return ctx.b.gather(x, tensors, index_map, out)


# --- reductions ---------------------------------------------------------------------------------


def _reduce(kind: str, dims_arg: str, default_keepdim: bool = False):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        a = bound_args(node)
        out = ctx.out_elem(node)
        x = ctx.b.cast(ctx.tensor(a["self"]), out)
        dims = normalize_dims(a.get(dims_arg), len(dims_of(x.type)))
        keepdim = bool(a.get("keepdim", default_keepdim))
        return ctx.b.reshape(ctx.b.reduce(kind, x, dims, keepdim), ctx.out_shape(node))

    return lower


lowers(aten.sum.dim_IntList, aten.sum.default)(_reduce("sum", "dim"))
lowers(aten.mean.dim, aten.mean.default)(_reduce("mean", "dim"))
lowers(aten.amax.default)(_reduce("max", "dim"))
lowers(aten.amin.default)(_reduce("min", "dim"))


def _float_prod_check(node: Node) -> str | None:
    if not node.meta["val"].dtype.is_floating_point:
        return "a product of integers runs in PyTorch"
    return None


lowers(aten.prod.dim_int, aten.prod.default, check=_float_prod_check)(_reduce("prod", "dim"))


# a flattened argmax is one program walking every element (an arg reduction is not split across
# programs): up to this many elements that costs less than a launch of PyTorch's
MAX_FLAT_ARG_ELEMENTS = 1 << 16


def _arg_check(node: Node) -> str | None:
    a = bound_args(node)
    if a.get("dim") is None and node.args[0].meta["val"].numel() > MAX_FLAT_ARG_ELEMENTS:
        return (
            f"{target_name(node)} over the flattened tensor of more than {MAX_FLAT_ARG_ELEMENTS} elements "
            "runs in PyTorch (one program would walk them all)"
        )
    dtype = node.args[0].meta["val"].dtype
    if dtype.is_complex or not (dtype.is_floating_point or dtype.is_signed):  # bool, unsigned
        return f"{target_name(node)} of a {dtype} tensor runs in PyTorch"
    if node.args[0].meta["val"].dim() == 0:
        return f"{target_name(node)} of a 0-d tensor runs in PyTorch"
    return None


def _arg_reduce(kind: str):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        a = bound_args(node)
        x = ctx.tensor(a["self"])
        if a.get("dim") is None:  # the flattened tensor: one row of every element, in order
            flat = ctx.b.reshape(x, [1, math.prod(shape_of(x.type))])
            return ctx.b.reshape(ctx.b.reduce(kind, flat, [1], False), ctx.out_shape(node))
        found = ctx.b.reduce(kind, x, [a["dim"]], bool(a.get("keepdim", False)))
        return ctx.b.reshape(found, ctx.out_shape(node))

    return lower


lowers(aten.argmax.default, check=_arg_check)(_arg_reduce("argmax"))
lowers(aten.argmin.default, check=_arg_check)(_arg_reduce("argmin"))


def _first_output_shape(node: Node) -> tuple[int, ...]:
    return tuple(int(d) for d in node.meta["val"][0].shape)


def _extreme_dim_check(node: Node) -> str | None:
    if not node.meta["val"][0].dtype.is_floating_point:
        return f"an integer {target_name(node)} runs in PyTorch"
    if node.args[0].meta["val"].dim() == 0:
        return f"{target_name(node)} of a 0-d tensor runs in PyTorch"
    return None


def _extreme_dim(kind: str):
    """`torch.max(x, dim)` / `torch.min(x, dim)`: the values' reduction; where the indices are read,
    the arg reduction (the first index of the extreme, NaN winning, as torch returns them) and the
    values gathered at those indices (a read of one element a row, not a second pass over x)."""

    def lower(ctx: LoweringContext, node: Node) -> tuple[SSAValue, SSAValue | None]:
        a = bound_args(node)
        x = ctx.tensor(a["self"])
        rank = len(dims_of(x.type))
        dims = normalize_dims(a["dim"], rank)
        shape = _first_output_shape(node)
        if only_first_output_read(node):
            return ctx.b.reshape(ctx.b.reduce(kind, x, dims, bool(a.get("keepdim", False))), shape), None
        (dim,) = dims
        at = ctx.b.reduce(f"arg{kind}", x, [dim], keepdim=True)
        kept = list(shape_of(at.type))
        values = ctx.b.gather(x, [at], [-1 if k == dim else k for k in range(rank)], kept)
        return ctx.b.reshape(values, shape), ctx.b.reshape(at, shape)

    return lower


lowers(aten.max.dim, check=_extreme_dim_check)(_extreme_dim("max"))
lowers(aten.min.dim, check=_extreme_dim_check)(_extreme_dim("min"))


def _full_extreme_check(node: Node) -> str | None:
    if not node.meta["val"].dtype.is_floating_point:
        return f"an integer {target_name(node)} runs in PyTorch"
    return None


# `torch.max(x)`: the maximum over every element (a full reduction: split across programs)
lowers(aten.max.default, check=_full_extreme_check)(_reduce("max", "dim"))
lowers(aten.min.default, check=_full_extreme_check)(_reduce("min", "dim"))


# --- adaptive pooling whose output sizes divide the input's: fixed windows that tile it ------------

_ADAPTIVE = {  # op -> (reduction, spatial dims, returns indices)
    aten._adaptive_avg_pool2d.default: ("mean", 2, False),
    aten._adaptive_avg_pool3d.default: ("mean", 3, False),
    aten.adaptive_max_pool2d.default: ("max", 2, True), aten.adaptive_max_pool3d.default: ("max", 3, True),
}  # fmt: skip


def _adaptive_check(node: Node) -> str | None:
    _, n, with_indices = _ADAPTIVE[node.target]
    if with_indices and not only_first_output_read(node):
        return f"{target_name(node)} with its indices used (a backward) runs in PyTorch"
    if not node.args[0].meta["val"].dtype.is_floating_point:
        return f"an integer {target_name(node)} runs in PyTorch"
    sizes = list(node.args[0].meta["val"].shape[-n:])
    out = _as_list(bound_args(node)["output_size"], n)
    if any(o <= 0 or s % o for s, o in zip(sizes, out)):
        return (
            f"{target_name(node)} from {sizes} to {out}: windows of varying size (an output size that "
            "does not divide the input's) run in PyTorch"
        )
    return None


def _lower_adaptive(ctx: LoweringContext, node: Node) -> SSAValue | tuple[SSAValue, None]:
    """Adaptive pooling whose output size divides the input size in every spatial dim (a global
    average pool to 1x1, 8x8 -> 4x4): windows of `input / output` that tile the input, so a reshape
    [.., H, W] -> [.., oH, kH, oW, kW] and a reduction over the window dims."""
    kind, n, with_indices = _ADAPTIVE[node.target]
    x = ctx.tensor(node.args[0])
    out = _as_list(bound_args(node)["output_size"], n)
    kernel = [size // o for o, size in zip(out, shape_of(x.type)[-n:])]
    values = ctx.b.reshape(_tiling_windows(ctx, x, kind, out, kernel),
                           _first_output_shape(node) if with_indices else ctx.out_shape(node))  # fmt: skip
    return (values, None) if with_indices else values


def _tiling_windows(
    ctx: LoweringContext, x: SSAValue, kind: str, out: list[int], kernel: list[int]
) -> SSAValue:
    """`kind` over windows of `kernel` that tile the last len(kernel) dims of `x` into `out` windows
    (a partial last window dropped, as floor mode does): a reshape [.., H, W] -> [.., oH, kH, oW, kW]
    and a reduction over the window dims."""
    n = len(kernel)
    lead = len(dims_of(x.type)) - n
    for i, (o, k) in enumerate(zip(out, kernel)):
        x = ctx.b.slice(x, lead + i, 0, o * k)
    windowed = list(shape_of(x.type)[:lead]) + [e for o, k in zip(out, kernel) for e in (o, k)]
    return ctx.b.reduce(kind, ctx.b.reshape(x, windowed), [lead + 2 * i + 1 for i in range(n)], keepdim=False)


lowers(*_ADAPTIVE, check=_adaptive_check)(_lower_adaptive)


# --- pooling over windows that tile the input: strided slices of one map, or a reduction ---------

MAX_UNROLLED_WINDOW = 27  # window elements a pooling reads as strided slices of one map (3x3x3)
_POOLS = {  # op -> (reduction, spatial dims, returns indices)
    aten.avg_pool2d.default: ("mean", 2, False), aten.avg_pool3d.default: ("mean", 3, False),
    aten.max_pool2d_with_indices.default: ("max", 2, True),
    aten.max_pool3d_with_indices.default: ("max", 3, True),
    aten.max_pool2d.default: ("max", 2, False), aten.max_pool3d.default: ("max", 3, False),
}  # fmt: skip


def _as_list(value: object, n: int) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    return values * n if len(values) == 1 else values


@dataclass(frozen=True)
class _PoolGeometry:
    """Per spatial dim: window, stride, padding, dilation, and the output size PyTorch computed
    (ceil mode included); `count_pad`: an average counts the padding (count_include_pad)."""

    kernel: list[int]
    stride: list[int]
    padding: list[int]
    dilation: list[int]
    out: list[int]
    count_pad: bool
    divisor: int | None  # divisor_override

    @property
    def tiles(self) -> bool:
        """Windows that tile the input: stride = kernel, no padding or dilation, nothing left over."""
        return self.stride == self.kernel and not any(self.padding) and all(d == 1 for d in self.dilation)


def _pool_geometry(node: Node) -> _PoolGeometry | str:
    """The windows of a pooling, or why it runs in PyTorch."""
    kind, n, _ = _POOLS[node.target]
    a = bound_args(node)
    kernel = _as_list(a["kernel_size"], n)
    geometry = _PoolGeometry(
        kernel=kernel,
        stride=_as_list(a.get("stride") or kernel, n),
        padding=_as_list(a.get("padding", 0), n),
        dilation=_as_list(a.get("dilation", 1), n),
        out=list((_first_output_shape(node) if _POOLS[node.target][2] else node.meta["val"].shape)[-n:]),
        count_pad=bool(a.get("count_include_pad", True)),
        divisor=a.get("divisor_override"),
    )
    shape = node.args[0].meta["val"].shape[-n:]
    inside = all(o * k <= size for o, k, size in zip(geometry.out, kernel, shape))  # no partial window
    if geometry.tiles and inside and math.prod(kernel) > MAX_UNROLLED_WINDOW:
        return geometry  # a reshape and a reduction
    if math.prod(kernel) > MAX_UNROLLED_WINDOW:
        return (
            f"{target_name(node)} over windows of {math.prod(kernel)} > {MAX_UNROLLED_WINDOW} elements "
            "that do not tile the input runs in PyTorch"
        )
    return geometry


def _pool_check(node: Node) -> str | None:
    if _POOLS[node.target][2] and not only_first_output_read(node):
        return f"{target_name(node)} with its indices used (a backward) runs in PyTorch"
    geometry = _pool_geometry(node)
    return geometry if isinstance(geometry, str) else None


def _lower_pool(ctx: LoweringContext, node: Node) -> SSAValue | tuple[SSAValue, None]:
    """Max and average pooling. Windows of up to MAX_UNROLLED_WINDOW elements: one map over a strided
    slice of the padded input per window offset (the padding a concatenation with -inf or 0 splats;
    kernels read through both), so the pooling is a pointwise kernel over the output; an average
    whose windows are clipped divides by the count it computes from the output's indices. Larger
    windows that tile the input: a reshape [.., H, W] -> [.., H/k, k, W/k, k] and a reduction."""
    kind, n, with_indices = _POOLS[node.target]
    g = _pool_geometry(node)
    x = ctx.tensor(node.args[0])
    shape = list(shape_of(x.type))
    lead = len(shape) - n
    out_shape = _first_output_shape(node) if with_indices else ctx.out_shape(node)
    elem = x.type.get_element_type()
    if math.prod(g.kernel) > MAX_UNROLLED_WINDOW:  # tiling windows (checked): reshape and reduce
        values = ctx.b.reshape(_tiling_windows(ctx, x, kind, g.out, g.kernel), out_shape)
        return (values, None) if with_indices else values
    fill = float("-inf") if kind == "max" else 0.0
    for i in range(n):  # pad each spatial dim to the extent the windows reach
        reach = (g.out[i] - 1) * g.stride[i] + (g.kernel[i] - 1) * g.dilation[i] + 1
        after = max(0, reach - g.padding[i] - shape[lead + i])
        x = _padded(ctx.b, x, lead + i, g.padding[i], after, fill)
    slices = []
    for offsets in itertools.product(*(range(k) for k in g.kernel)):
        v = x
        for i, o in enumerate(offsets):
            start = o * g.dilation[i]
            v = ctx.b.slice(v, lead + i, start, start + (g.out[i] - 1) * g.stride[i] + 1, g.stride[i])
        slices.append(v)
    spatial = list(shape[:lead]) + list(g.out)
    counted = kind == "mean" and g.divisor is None and not _fixed_window_count(g, shape[lead:])
    positions = [ctx.b.iota(lead + i, spatial, f32) for i in range(n)] if counted else []
    taps = len(slices)
    compute = opmath_type(elem)

    def body(sb, *vs):
        total = vs[0]
        for v in vs[1:taps]:
            total = sb.binary("max" if kind == "max" else "add", total, v)
        if kind == "max":
            return total
        if not counted:
            return sb.div(total, sb.const(float(g.divisor or math.prod(g.kernel)), total.type))
        count = None
        for i, o in enumerate(vs[taps:]):
            c = lambda v: sb.const(float(v), compute)  # noqa: E731
            start = sb.sub(sb.mul(sb.cast(o, compute), c(g.stride[i])), c(g.padding[i]))
            end = sb.binary("min", sb.add(start, c(g.kernel[i])), c(shape[lead + i] + g.padding[i]))
            if not g.count_pad:
                start = sb.binary("max", start, c(0))
                end = sb.binary("min", end, c(shape[lead + i]))
            width = sb.sub(end, start)
            count = width if count is None else sb.mul(count, width)
        return sb.div(total, count)

    pooled = ctx.b.map(slices + positions, elem, body, compute_elem=compute)
    values = ctx.b.reshape(pooled, out_shape)
    return (values, None) if with_indices else values


def _fixed_window_count(g: _PoolGeometry, sizes: list[int]) -> bool:
    """Whether every window of an average counts kernel elements: none is clipped by the input's
    end (ceil mode) or, without count_include_pad, by its padding."""
    for k, s, p, o, size in zip(g.kernel, g.stride, g.padding, g.out, sizes):
        if (o - 1) * s - p + k > size + p or (p and not g.count_pad):
            return False
    return True


for _pool in _POOLS:
    lowers(_pool, check=_pool_check)(_lower_pool)

lowers(aten.any.dim, aten.any.dims, aten.any.default)(_reduce("max", "dim"))
lowers(aten.all.dim, aten.all.dims, aten.all.default)(_reduce("min", "dim"))


# a vector norm of order ord: (reduction, what is reduced, what the result goes through)
_VECTOR_NORMS = {1: ("sum", "abs", None), 2: ("sum", "square", "sqrt"),
                 math.inf: ("max", "abs", None), -math.inf: ("min", "abs", None)}  # fmt: skip


def _vector_norm_check(node: Node) -> str | None:
    a = bound_args(node)
    if a.get("ord", 2) not in _VECTOR_NORMS:
        return f"a vector norm of order {a.get('ord')} runs in PyTorch (orders 1, 2 and ±inf lower)"
    if not node.args[0].meta["val"].dtype.is_floating_point:
        return "a vector norm of a non-float tensor runs in PyTorch"
    if a.get("dtype") not in (None, torch.float32, torch.bfloat16, torch.float16):
        return f"a vector norm with dtype={a.get('dtype')} runs in PyTorch"
    return None


@lowers(aten.linalg_vector_norm.default, check=_vector_norm_check)
def lower_vector_norm(ctx: LoweringContext, node: Node) -> SSAValue:
    """`torch.linalg.vector_norm` (and `torch.norm`, F.normalize's norm) of order 1, 2 or ±inf: a
    map, a sum/max/min in the opmath type, then the square root for order 2."""
    a = bound_args(node)
    kind, reduced, then = _VECTOR_NORMS[a.get("ord", 2)]
    out = ctx.out_elem(node)
    compute = opmath_type(out)
    x = ctx.tensor(a["self"])
    if a.get("dtype") is not None:  # the input cast to `dtype` first, as PyTorch does (a weight norm's f32)
        x = ctx.b.cast(x, out)
    if reduced == "abs":
        x = ctx.b.map([x], compute, lambda sb, v: sb.unary("abs", v))
    else:
        x = ctx.b.map([x], compute, lambda sb, v: sb.mul(v, v))
    dims = normalize_dims(a.get("dim"), len(dims_of(x.type)))
    r = ctx.b.reduce(kind, x, dims, bool(a.get("keepdim", False)))
    r = ctx.b.map([r], out, lambda sb, v: sb.unary("sqrt", v)) if then else ctx.b.cast(r, out)
    return ctx.b.reshape(r, ctx.out_shape(node))


def _variance(b: EinBuilder, x: SSAValue, dims: list[int], correction: float) -> tuple[SSAValue, SSAValue]:
    """(variance, mean) over `dims`, both keepdim, in the type of `x`."""
    shape = dims_of(x.type)
    count = math.prod(shape[d] for d in dims)
    mean = b.reduce("mean", x, dims, keepdim=True)
    sq = b.map([x, mean], x.type.get_element_type(), ScalarBuilder.squared_difference)
    total = b.reduce("sum", sq, dims, keepdim=True)
    divisor = max(count - correction, 0)
    var = b.map([total, float(divisor)], x.type.get_element_type(), lambda sb, s, n: sb.div(s, n))
    return var, mean


@lowers(aten.var.correction, aten.var_mean.correction)
def lower_var(ctx: LoweringContext, node: Node) -> SSAValue | tuple[SSAValue, SSAValue]:
    a = bound_args(node)
    out = ctx.out_elem(node)
    x = ctx.tensor(a["self"])
    dims = normalize_dims(a["dim"], len(dims_of(x.type)))
    correction = 1 if a["correction"] is None else a["correction"]
    var, mean = _variance(ctx.b, ctx.b.cast(x, opmath_type(out)), dims, correction)
    shape = ctx.out_shape(node)
    var = ctx.b.reshape(ctx.b.cast(var, out), shape)
    if node.target == aten.var_mean.correction:
        return var, ctx.b.reshape(ctx.b.cast(mean, out), shape)
    return var


# --- softmax and norms --------------------------------------------------------------------------


def softmax(b: EinBuilder, x: SSAValue, dim: int, log: bool = False) -> SSAValue:
    """Numerically stable (log-)softmax over `dim`, in the type of `x`."""
    elem = x.type.get_element_type()
    peak = b.reduce("max", x, [dim], keepdim=True)
    shifted = b.map([x, peak], elem, lambda sb, v, m: sb.sub(v, m))
    e = b.map([shifted], elem, lambda sb, v: sb.unary("exp", v))
    total = b.reduce("sum", e, [dim], keepdim=True)
    if log:
        return b.map([shifted, total], elem, lambda sb, v, s: sb.sub(v, sb.unary("log", s)))
    return b.map([e, total], elem, lambda sb, v, s: sb.div(v, s))


def _softmax(log: bool):
    def lower(ctx: LoweringContext, node: Node) -> SSAValue:
        x = ctx.tensor(node.args[0])
        dim = node.args[1] % max(len(dims_of(x.type)), 1)
        y = softmax(ctx.b, ctx.b.cast(x, f32), dim, log=log)
        return ctx.b.cast(y, ctx.out_elem(node))

    return lower


lowers(aten._softmax.default)(_softmax(log=False))
lowers(aten._log_softmax.default)(_softmax(log=True))


@lowers(aten.native_layer_norm.default)
def lower_layer_norm(ctx: LoweringContext, node: Node) -> tuple[SSAValue, SSAValue, SSAValue]:
    a = bound_args(node)
    b = ctx.b
    x = ctx.tensor(a["input"])
    rank = len(dims_of(x.type))
    dims = list(range(rank - len(a["normalized_shape"]), rank))
    xf = b.cast(x, f32)
    var, mean = _variance(b, xf, dims, correction=0)
    rstd = b.map([var, a["eps"]], f32, lambda sb, v, eps: sb.unary("rsqrt", sb.add(v, eps)))
    y = b.map([xf, mean, rstd], f32, lambda sb, v, m, r: sb.mul(sb.sub(v, m), r))
    if a["weight"] is not None:
        y = b.map([y, ctx.tensor(a["weight"])], f32, lambda sb, v, w: sb.mul(v, w))
    if a["bias"] is not None:
        y = b.map([y, ctx.tensor(a["bias"])], f32, lambda sb, v, c: sb.add(v, c))
    vals = node.meta["val"]
    outs = []
    for value, meta in zip((y, mean, rstd), vals):
        elem = ctx.b.cast(value, to_mlir_type(meta.dtype))
        outs.append(b.reshape(elem, tuple(size_of(d) for d in meta.shape)))
    return tuple(outs)


# --- attention ----------------------------------------------------------------------------------

_ATTENTION_OPS = {
    aten.scaled_dot_product_attention.default: "attn_mask",
    aten._scaled_dot_product_flash_attention_for_cpu.default: "attn_mask",
    aten._scaled_dot_product_flash_attention.default: None,
    aten._scaled_dot_product_efficient_attention.default: "attn_bias",
    aten._scaled_dot_product_cudnn_attention.default: "attn_bias",
}


def _attention_check(node: Node) -> str | None:
    a = bound_args(node)
    if a.get("dropout_p", 0.0) != 0.0:
        return "attention with dropout runs in PyTorch"
    if not only_first_output_read(node):
        return "attention's auxiliary outputs (logsumexp, seeds) are used; runs in PyTorch"
    q, k = (node.args[i].meta["val"] for i in (0, 1))
    if q.dim() < 3 or q.dim() != k.dim():
        return "attention expects (..., heads, seq, dim) query and key of equal rank"
    if q.shape[-3] % k.shape[-3] != 0:
        return f"query heads {q.shape[-3]} are not a multiple of key heads {k.shape[-3]}"
    exact_f32 = q.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
    if exact_f32 and q.device.type == "cuda":
        return EXACT_F32_ATTENTION
    return None


# An exact-f32 flash kernel has no tensor cores (3xTF32 dots in it faulted with Triton 3.6): GPT-2's
# (4 x 512 tokens, 12 heads of 64) took 0.76 ms a layer on the H200, several times PyTorch's SDPA.
EXACT_F32_ATTENTION = (
    "float32 attention at matmul precision 'highest' runs as PyTorch's SDPA: faster than an exact-f32 "
    "flash kernel, which has no tensor cores"
)


def _attention_mask(
    b: EinBuilder, scores: SSAValue, mask: SSAValue | None, causal: bool, window: int | None = None
) -> SSAValue:
    """`scores` with `mask` applied (boolean: hidden where false; else added), and the causal mask
    where `causal`; with `window`, only the `window` keys up to each query's own are seen (a
    sliding window, written before the causal select so that the attention pattern finds the
    causal one outermost: `passes/flash_attention.causal_select`)."""
    shape = shape_of(scores.type)
    if causal:
        rows = b.iota(0, shape[-2:], i64)
        cols = b.iota(1, shape[-2:], i64)
        if window is not None:

            def window_body(sb: ScalarBuilder, s: SSAValue, r: SSAValue, c: SSAValue) -> SSAValue:
                near = sb.cmp("lt", sb.sub(r, c), sb.const(window, i64))
                return sb.select(near, s, sb.const(float("-inf"), s.type))

            scores = b.map([scores, rows, cols], f32, window_body, cast_inputs=False)

        def causal_body(sb: ScalarBuilder, s: SSAValue, r: SSAValue, c: SSAValue) -> SSAValue:
            return sb.select(sb.cmp("le", c, r), s, sb.const(float("-inf"), s.type))

        scores = b.map([scores, rows, cols], f32, causal_body, cast_inputs=False)
    if mask is None:
        return scores
    if mask.type.get_element_type() == i1:

        def bool_body(sb: ScalarBuilder, s: SSAValue, m: SSAValue) -> SSAValue:
            return sb.select(m, s, sb.const(float("-inf"), s.type))

        return b.map([scores, mask], f32, bool_body, cast_inputs=False)
    return b.map([scores, mask], f32, lambda sb, s, m: sb.add(s, m))


def _zero_fully_masked_rows(
    ctx: LoweringContext, out: SSAValue, mask: SSAValue, causal: bool, queries: int, keys: int
) -> SSAValue:
    """`out` with the rows of queries that the mask leaves no key zeroed, as PyTorch's SDPA returns
    them (its safe softmax): the softmax of a row of -inf is 0/0, and a NaN there would spread to
    every token of the sequence through the next layer (left padding with a causal mask makes such
    rows). Whether a row has a key is computed from the mask alone: one small reduction."""
    b = ctx.b
    memo_key = ("rows with a key", mask, causal, queries, keys)
    if memo_key not in ctx.memo:
        ctx.memo[memo_key] = _rows_with_a_key(b, mask, causal, queries, keys)
    has_key = ctx.memo[memo_key]
    elem = out.type.get_element_type()

    def zeroed(sb: ScalarBuilder, o: SSAValue, h: SSAValue) -> SSAValue:
        return sb.select(sb.cmp("gt", h, sb.const(0.0, f32)), o, sb.const(0.0, elem))

    return b.map([out, has_key], elem, zeroed, cast_inputs=False)


def _rows_with_a_key(b: EinBuilder, mask: SSAValue, causal: bool, queries: int, keys: int) -> SSAValue:
    """1.0 where a query row of `mask` (and the causal order) leaves some key, else 0.0 (keepdim)."""
    mask_shape = list(shape_of(mask.type))
    rows = queries if causal or len(mask_shape) < 2 else mask_shape[-2]
    shape = [*mask_shape[:-2], rows, keys]
    boolean = mask.type.get_element_type() == i1

    def kept(sb: ScalarBuilder, m: SSAValue, *rc: SSAValue) -> SSAValue:
        ok = m if boolean else sb.cmp("gt", m, sb.const(float("-inf"), m.type))
        if causal:
            ok = sb.logical("and", ok, sb.cmp("le", rc[1], rc[0]))
        return sb.select(ok, sb.const(1.0, f32), sb.const(0.0, f32))

    inputs = [b.reshape(mask, [1] * (len(shape) - len(mask_shape)) + mask_shape)]
    if causal:
        inputs += [b.iota(0, shape[-2:], i64), b.iota(1, shape[-2:], i64)]
    return b.reduce("max", b.map(inputs, f32, kept, cast_inputs=False), [len(shape) - 1], keepdim=True)


def lower_attention(ctx: LoweringContext, node: Node) -> tuple[SSAValue, ...]:
    a = bound_args(node)
    b = ctx.b
    q, k, v = (ctx.tensor(a[n]) for n in ("query", "key", "value"))
    mask_name = _ATTENTION_OPS[node.target]
    mask = ctx.tensor(a[mask_name]) if mask_name and a.get(mask_name) is not None else None
    causal, window = bool(a.get("is_causal")), node.meta.get(WINDOW_META)
    if window is not None:  # a constant sliding-window mask: written from aranges, causal (no mask read)
        mask, causal = None, True
    qs, ks = shape_of(q.type), shape_of(k.type)
    scale = a.get("scale") or 1.0 / math.sqrt(qs[-1])
    batch = string.ascii_uppercase[: len(qs) - 3]
    hq, hk = (qs[-3], ks[-3]) if len(qs) >= 3 else (1, 1)
    group = hq // hk
    if group > 1:  # grouped-query attention: query head h reads kv head h // group
        q = b.reshape(q, (*qs[:-3], hk, group, qs[-2], qs[-1]))
        q_idx, kv_idx, s_idx = batch + "hgqd", batch + "hkd", batch + "hgqk"
    else:
        q_idx, kv_idx, s_idx = batch + "hqd", batch + "hkd", batch + "hqk"
    scores = b.contract(f"{q_idx},{kv_idx}->{s_idx}", b.cast(q, f32), b.cast(k, f32))
    scores = b.reshape(scores, (*qs[:-1], ks[-2]))
    scores = b.map([scores, scale], f32, lambda sb, s, c: sb.mul(s, c))
    scores = _attention_mask(b, scores, mask, causal, window)
    probs = softmax(b, scores, len(qs) - 1)
    probs = b.cast(probs, v.type.get_element_type())
    if group > 1:
        probs = b.reshape(probs, (*qs[:-3], hk, group, qs[-2], ks[-2]))
        p_idx, v_idx, o_idx = batch + "hgqk", batch + "hkv", batch + "hgqv"
    else:
        p_idx, v_idx, o_idx = batch + "hqk", batch + "hkv", batch + "hqv"
    out = b.contract(f"{p_idx},{v_idx}->{o_idx}", probs, v)
    out = b.reshape(out, ctx.out_shape(node))
    if mask is not None:
        out = _zero_fully_masked_rows(ctx, out, mask, causal, qs[-2], ks[-2])
    if node.target == aten.scaled_dot_product_attention.default:
        return out
    return (out,)


for _target in _ATTENTION_OPS:
    lowers(_target, check=_attention_check)(lower_attention)
