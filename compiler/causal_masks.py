"""Attention masks that are the causal mask, turned into `is_causal=True` (a pass on the aten graph).

`transformers` (5.x, `masking_utils`) builds a decoder's attention mask as a tensor even when
the batch has no padding: `kv_idx <= q_idx` on two aranges, and-ed with a packed-sequence test
on position ids that are themselves an arange. Traced, that is a chain of aten ops that reads
no graph input, so its value is known when the graph compiles, and it is the causal mask. Given
as a tensor, SDPA reads it for every block of scores (PyTorch's memory-efficient kernel: 705 µs
against 446 µs with `is_causal=True` for GPT-2's fp32 attention on the H200), and a generated
attention kernel loads it and cannot skip the blocks above the diagonal.

For every attention op whose mask reads no graph input (no placeholder, no parameter, nothing
random among its ancestors) and is small enough to evaluate, the mask is evaluated on the CPU
when the graph compiles; where it equals the causal mask SDPA means by `is_causal=True` (query
`i` sees keys `0..i`, as a boolean mask or as 0 / -inf (or a large negative number, as
transformers and PyTorch write -inf for half precision)), for every batch and head it broadcasts
over, the op takes `is_causal=True` and no mask, and the mask's ops that nothing else reads go.
Any other mask (padding, a sliding window, a causal mask offset by a KV cache, a finite bias) is
left as it is: the comparison is exact, so the rewrite changes no score a query sees, only which
kernel skips the hidden ones (a hidden key adds nothing to the softmax either way: `_allowed`).

A mask that reads no graph input but is not the causal mask (Mistral's sliding window) is
still a constant: its value, computed once, becomes a buffer of the graph module that the op
reads (`get_attr`), and the ops that built it every call go (12 PyTorch ops a call for Mistral,
whose host time showed: 2.6 ms a call against 1.8 of GPU time on the H200). The buffer is kept
on the mask's device in the mask's dtype; the graph is specialized to its shapes anyway. Where that
constant is, by value, a sliding-window causal mask (query `i` sees keys `i - w + 1 .. i`: Mistral's,
Gemma's local layers, while the sequence is longer than the window), the op is also marked with its
window (`WINDOW_META`): PyTorch's paths still read the buffer, but tilefuse's import writes the band
from two aranges inside a causal select, so the attention kernel reads no mask and skips the key
blocks past the diagonal like any causal attention's, and those before each block's window
(`passes/flash_attention.causal_window`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import operator
from collections.abc import Callable

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.fx import GraphModule, Node

from .duplicate_ops import functional
from .lowering_table import WINDOW_META, bound_args
from .partition import call_with_value

log = logging.getLogger("tilefuse")
aten = torch.ops.aten

# the attention ops that take a mask, and the name of their mask argument
MASKED_ATTENTION = {
    aten.scaled_dot_product_attention.default: "attn_mask",
    aten._scaled_dot_product_flash_attention_for_cpu.default: "attn_mask",
    aten._scaled_dot_product_efficient_attention.default: "attn_bias",
    aten._scaled_dot_product_cudnn_attention.default: "attn_bias",
}
MAX_MASK_ELEMENTS = 1 << 25  # 8 x 2048 x 2048; larger masks are not evaluated at compile time
MASKED_BIAS = -32768.0  # an additive bias at or below this hides its key (`_allowed`)


CONSTANT_MASK_PREFIX = "_tilefuse_constant_mask"


def fold_causal_masks(gm: GraphModule) -> tuple[int, int]:
    """Give `is_causal=True` and no mask to each attention op of `gm` whose mask is, by value, the
    causal mask, and a precomputed buffer to each whose mask is another constant; returns how many
    ops were rewritten each way."""
    graph = gm.graph
    values: dict[Node, object] = {}
    position = {n: i for i, n in enumerate(graph.nodes)}  # ancestors are evaluated in graph order
    constants: dict[Node, Node] = {}  # a constant mask -> the get_attr node of its buffer
    rewritten = 0
    for node in list(graph.nodes):
        name = MASKED_ATTENTION.get(node.target) if node.op == "call_function" else None
        if name is None:
            continue
        args = bound_args(node)
        mask = args.get(name)
        if not isinstance(mask, Node) or args.get("is_causal") or args.get("dropout_p", 0.0) != 0.0:
            continue
        queries, keys = node.args[0], node.args[1]
        try:
            # real tensors: the compiler may be called inside the tracer's fake-tensor mode
            with unset_fake_temporarily():
                value = _constant_value(mask, values, position)
                scores = _shape(queries)
                seen = None if value is None else _seen_window(value, scores, _shape(keys))
                causal = seen is not None and seen == scores[-2]
                window = None if causal else seen  # a sliding window, or None
        except Exception as e:  # a mask we cannot evaluate is left as it is
            log.debug("tilefuse: mask %s of %s not evaluated: %s", mask.name, node.name, e)
            value, causal, window = None, False, None
        if not causal:
            if isinstance(value, torch.Tensor) and mask.op == "call_function":
                constant = constants.get(mask) or _as_buffer(gm, mask, value, len(constants), position)
                if constant is not None:
                    constants[mask] = constant
                    node.replace_input_with(mask, constant)
                    if window is not None:  # the import writes the band from aranges (see WINDOW_META)
                        node.meta[WINDOW_META] = window
            continue
        args = {**args, name: None, "is_causal": True}
        schema = node.target._schema.arguments
        node.args = tuple(args[a.name] for a in schema if not a.kwarg_only)
        node.kwargs = {a.name: args[a.name] for a in schema if a.kwarg_only}
        rewritten += 1
    if rewritten or constants:
        graph.eliminate_dead_code()
        graph.lint()
        gm.recompile()
    return rewritten, len(constants)


def _as_buffer(
    gm: GraphModule, mask: Node, value: torch.Tensor, index: int, position: dict[Node, int]
) -> Node | None:
    """A `get_attr` node reading `value` (the mask's value, computed on the CPU) as a buffer of `gm`
    on the mask's device and in its dtype, placed before the mask's first reader; None where the
    mask's metadata does not say where it lives or the value does not match it."""
    val = mask.meta.get("val")
    if not isinstance(val, torch.Tensor) or tuple(val.shape) != tuple(value.shape):
        return None
    name = f"{CONSTANT_MASK_PREFIX}{index}"
    with unset_fake_temporarily():
        gm.register_buffer(name, value.to(device=val.device, dtype=val.dtype).contiguous())
    first_reader = min(mask.users, key=position.__getitem__)  # the graph's nodes before any insertion
    with mask.graph.inserting_before(first_reader):
        attr = mask.graph.get_attr(name)
    attr.meta["val"] = val
    return attr


def _shape(node: object, key: str = "val") -> tuple[int, ...] | None:
    """The static shape of `node`'s value (Dynamo's graphs keep it as "example_value")."""
    val = node.meta.get(key) if isinstance(node, Node) else None
    if not isinstance(val, torch.Tensor) or any(not isinstance(d, int) for d in val.shape):
        return None
    return tuple(val.shape)


def _constant_value(node: Node, values: dict[Node, object], position: dict[Node, int]) -> torch.Tensor | None:
    """`node`'s value, computed on the CPU from its ancestors, when none of them is a graph input,
    a parameter or random, and every tensor on the way is at most MAX_MASK_ELEMENTS; else None."""
    order: list[Node] = []
    seen: set[Node] = set()
    stack = [node]
    while stack:  # the ancestors, each once
        current = stack.pop()
        if current in seen or current in values:
            continue
        seen.add(current)
        if current.op != "call_function" or not _evaluable(current):
            return None
        order.append(current)
        stack.extend(current.all_input_nodes)
    _evaluate(order, values, position)
    return values[node] if isinstance(values[node], torch.Tensor) else None


def _evaluate(nodes: list[Node], values: dict[Node, object], position: dict[Node, int]) -> None:
    """Compute `nodes` (calls whose inputs are in `values` or among them) on the CPU in graph
    order, into `values`: a device argument becomes the CPU, and so does a `.to(device)`."""
    for current in sorted(nodes, key=position.__getitem__):
        args, kwargs = torch.fx.node.map_arg((current.args, current.kwargs), lambda n: values[n])
        kwargs = dict(kwargs)
        if "device" in kwargs:
            kwargs["device"] = torch.device("cpu")
        if current.op == "call_method":
            if current.target == "to":  # no device moves: the value stays on the CPU
                args = tuple(a for a in args if not isinstance(a, torch.device | str))
            values[current] = getattr(args[0], current.target)(*args[1:], **kwargs)
        else:
            values[current] = current.target(*args, **kwargs)


def _evaluable(node: Node) -> bool:
    """An aten op (or `getitem`) that computes the same value at compile time as at run time: not
    random, not mutating, its tensors of static shapes no larger than MAX_MASK_ELEMENTS."""
    if node.target is operator.getitem:
        return True
    if not functional(node):
        return False
    val = node.meta.get("val")
    if val is None:
        return False  # a graph without shapes: its sizes are unknown
    for v in val if isinstance(val, (tuple, list)) else [val]:
        if isinstance(v, torch.Tensor) and (
            any(not isinstance(d, int) for d in v.shape) or v.numel() > MAX_MASK_ELEMENTS
        ):
            return False
    return True


def _allowed(mask: torch.Tensor) -> torch.Tensor | None:
    """Where `mask` lets a query see a key (boolean masks as they are; additive ones where 0), or
    None for an additive mask with other biases (more than a mask). An additive mask hides a key
    with -inf or with a large negative number (transformers' `finfo(dtype).min`; -65536 in the bf16
    graphs PyTorch hands to cuDNN on the H200): at or below MASKED_BIAS, whose exp underflows to 0
    in float32 against any score within 32768 of its row's largest."""
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        return None
    allowed = mask == 0
    return allowed if bool((allowed | (mask <= MASKED_BIAS)).all()) else None


def _seen_window(
    mask: torch.Tensor, queries: tuple[int, ...] | None, keys: tuple[int, ...] | None
) -> int | None:
    """`w` where `mask`, broadcast to the square scores `(..., L, L)`, lets query `i` see exactly keys
    `i - w + 1 .. i` for every batch and head: `w == L` is SDPA's `is_causal=True` mask (keys
    `0..i`), a smaller `w` a sliding window (Mistral's, Gemma's local layers); else None. Only square
    scores: with fewer queries than keys, kernels differ in where they put the diagonal."""
    if queries is None or keys is None or mask.dim() < 2 or mask.dim() > len(queries):
        return None
    rows, cols = queries[-2], keys[-2]
    if rows != cols or mask.shape[-2] not in (1, rows) or mask.shape[-1] not in (1, cols):
        return None
    allowed = _allowed(mask)
    if allowed is None:
        return None
    if rows == 0:
        return 0  # empty scores: every mask is the causal one
    allowed = allowed.expand(*allowed.shape[:-2], rows, cols)
    window = int(allowed.reshape(-1, rows, cols)[0, -1].sum())  # the last query sees exactly w keys
    if not 1 <= window <= rows:
        return None
    offsets = torch.arange(rows)[:, None] - torch.arange(cols)[None, :]  # query - key
    band = (offsets >= 0) & (offsets < window)
    return window if bool((allowed == band).all()) else None


def _is_causal(mask: torch.Tensor, queries: tuple[int, ...] | None, keys: tuple[int, ...] | None) -> bool:
    """Whether `mask`, broadcast to the scores `(..., L, L)`, is SDPA's `is_causal=True` mask: query
    `i` sees keys `0..i` (`_seen_window`)."""
    window = _seen_window(mask, queries, keys)
    return window is not None and window == queries[-2]


# Masks written out in the scores (`masked_fill`, `where`) ------------------------------------------
#
# Attention written with matmuls (minGPT, nanoGPT without flash, KernelBench's attention modules)
# hides the keys past each query with `scores.masked_fill(mask, -inf)`, the mask a registered
# `tril(ones)` buffer sliced to the sequence (`self.bias[:, :, :t, :t] == 0`) or built from ones
# every call (`torch.ones(t, t).triu(1)`). Loaded as a tensor, the mask costs the attention kernel
# a read per score and every key block (and a buffer tensor keeps SDPA out). Where the mask's value
# is, by value, the causal mask of the square scores it fills, it is replaced by the comparison of
# two aranges (`key > query`), which canonicalization and the attention pattern recognise as causal
# (`passes/flash_attention.causal_select`): blocks past the diagonal are skipped, and SDPA with
# `is_causal=True` becomes a candidate. A mask computed from a module buffer (a graph input whose
# value is known when the graph compiles) is folded under a guard: the compiled graph runs while
# the buffer is the same tensor, unwritten (`BufferGuard`).


def _fill_value(node: object) -> float | None:
    """The scalar a `where` branch fills in: a literal, `scalar_tensor(v)` or `full(shape, v)`."""
    if isinstance(node, int | float):
        return float(node)
    if isinstance(node, Node) and node.op == "call_function":
        if node.target is aten.scalar_tensor.default:
            return float(node.args[0])
        if node.target is aten.full.default:
            return float(node.args[1])
    return None


def _masked_fills(gm: GraphModule) -> list[tuple[Node, Node, bool]]:
    """Each `where(mask, -inf, x)` (`hides`: the mask says which keys are hidden) and
    `where(mask, x, -inf)` (the mask says which are seen) of `gm`, with its mask."""
    found = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not aten.where.self:
            continue
        mask, a, b = node.args[:3]
        if not isinstance(mask, Node):
            continue
        if _fill_value(a) == float("-inf") and _fill_value(b) is None:
            found.append((node, mask, True))
        elif _fill_value(b) == float("-inf") and _fill_value(a) is None:
            found.append((node, mask, False))
    return found


def _square_causal(mask: torch.Tensor, hides: bool, rows: int) -> bool:
    """Whether boolean `mask`, broadcast over leading dims, is the causal mask of `rows` x `rows`
    scores: true strictly above the diagonal (`hides`) or on and below it."""
    if mask.dtype != torch.bool or mask.dim() < 2 or tuple(mask.shape[-2:]) != (rows, rows):
        return False
    lower = torch.ones(rows, rows, dtype=torch.bool).tril()
    return bool((mask == (~lower if hides else lower)).all())


def fold_causal_selects(
    gm: GraphModule, known: dict[Node, torch.Tensor] | None = None
) -> tuple[int, set[Node], GraphModule | None]:
    """Replace each mask of a `where` filling scores with -inf that is, by value, the causal mask by
    `arange` comparisons; `known`: placeholders whose values the masks may be computed from (module
    buffers, real tensors). Returns how many masks went, the placeholders whose values they read,
    and, where they read any, a copy of `gm` from before the first such fold (what runs once one of
    them changes: `BufferGuard`)."""
    known = known or {}
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    values: dict[Node, object] = {}
    folded, read, before = 0, set(), None
    for where, mask, hides in _masked_fills(gm):
        val, mask_val = where.meta.get("val"), mask.meta.get("val")
        if not isinstance(val, torch.Tensor) or not isinstance(mask_val, torch.Tensor) or val.dim() < 2:
            continue
        rows = val.shape[-1]
        if not isinstance(rows, int) or val.shape[-2] != rows or mask_val.dim() > val.dim():
            continue
        inputs = _placeholders(mask)
        if not inputs <= known.keys():
            continue
        try:
            with unset_fake_temporarily():
                for p in inputs:
                    values.setdefault(p, known[p].detach().cpu())
                value = _constant_value(mask, values, position)
                causal = value is not None and _square_causal(_compact(value), hides, rows)
        except Exception as e:  # a mask we cannot evaluate is left as it is
            log.debug("tilefuse: mask %s of %s not evaluated: %s", mask.name, where.name, e)
            causal = False
        if not causal:
            continue
        if inputs and before is None:  # only the folds a buffer's value decides need the graph before
            before = GraphModule(gm, copy.deepcopy(gm.graph))
        where.replace_input_with(mask, _positions_compared(gm, where, mask_val.device, rows, hides))
        folded += 1
        read |= inputs
    if folded:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return folded, read, before


def _placeholders(node: Node) -> set[Node]:
    """The graph inputs among `node` and its ancestors."""
    found, stack, seen = set(), [node], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        if current.op == "placeholder":
            found.add(current)
        stack.extend(current.all_input_nodes)
    return found


def _positions_compared(gm: GraphModule, before: Node, device: torch.device, rows: int, hides: bool) -> Node:
    """`arange(rows)[None, :] > arange(rows)[:, None]` (key after query: hidden), or `<=` (seen),
    inserted before `before`, with fake values."""
    fake_mode = getattr(before.meta["val"], "fake_mode", None) or contextlib.nullcontext()
    graph = gm.graph
    call = functools.partial(call_with_value, graph, fake_mode)
    with graph.inserting_before(before):
        positions = call(aten.arange.start_step, (0, rows), {"dtype": torch.int64, "device": device})
        keys = call(aten.unsqueeze.default, (positions, 0))
        queries = call(aten.unsqueeze.default, (positions, 1))
        return call(aten.gt.Tensor if hides else aten.le.Tensor, (keys, queries))


def _version(tensor: torch.Tensor) -> int | None:
    """`tensor`'s version counter; None for an inference tensor (made under `torch.inference_mode`),
    which keeps none: its storage alone is checked."""
    try:
        return tensor._version
    except RuntimeError:
        return None


class BufferGuard:
    """A compiled graph that folded masks computed from module buffers (`fold_causal_selects`), run
    while each of those inputs is the tensor it was, unwritten (its storage and version counter);
    from the first call where one differs, `pytorch` (the graph before the fold) runs instead, said
    once in a warning and in `summary`."""

    def __init__(
        self, compiled: Callable, pytorch: Callable, checks: list[tuple[int, torch.Tensor]], summary: dict
    ):
        self.compiled, self.pytorch, self.summary = compiled, pytorch, summary
        self.checks = [(i, t.data_ptr(), _version(t)) for i, t in checks]

    def __call__(self, *args):
        for i, pointer, version in self.checks:
            tensor = args[i]
            if tensor.data_ptr() != pointer or _version(tensor) != version:
                return self._changed(i, args)
        return self.compiled(*args)

    def _changed(self, index: int, args: tuple):
        reason = f"input {index} (a module buffer a causal mask was computed from) changed since compile"
        log.warning("tilefuse: graph %s runs in PyTorch from now on: %s", self.summary.get("name"), reason)
        self.summary["buffer_guard"] = f"failed: {reason}; the graph runs in PyTorch"
        self.checks = []
        self.compiled = self.pytorch
        return self.pytorch(*args)


# Dynamo's graphs (before AOTAutograd) -----------------------------------------------------------
#
# A graph that trains is traced by AOTAutograd, which picks SDPA's kernel while it traces: given a
# mask, the fused kernels that take none (flash, cuDNN) are out, and on the H200 PyTorch 2.11
# traced its float32 math fallback (BERT's step, 4 layers of 8 x 512 tokens, spent ~2.5 ms in
# FFMA batched GEMMs and float32 softmaxes where eager's cuDNN attention took 0.36 ms). transformers
# builds the mask while Dynamo traces even where eager passes none (`is_tracing` keeps it from
# skipping an all-visible or causal mask), so the rewrite is made on Dynamo's graph, before
# AOTAutograd sees it: a mask that reads no graph input and lets every query see every key goes,
# and the causal mask becomes `is_causal=True`.

_DYNAMO_FUNCTIONS = {
    torch.arange, torch.ones, torch.zeros, torch.full, torch.eye, torch.tril, torch.triu, torch.where,
    torch.ones_like, torch.zeros_like, torch.full_like, torch.logical_and, torch.logical_or,
    torch.logical_not, torch.eq, torch.ne, torch.ge, torch.gt, torch.le, torch.lt, torch.bitwise_and,
    torch.bitwise_or, torch.bitwise_not, torch.minimum, torch.maximum, torch.abs, torch.cumsum,
    torch.diff, torch.flip, torch.clamp,
    operator.getitem, operator.add, operator.sub, operator.mul, operator.neg, operator.floordiv,
    operator.mod, operator.ge, operator.gt, operator.le, operator.lt, operator.eq, operator.ne,
    operator.and_, operator.or_, operator.xor, operator.invert, operator.not_,
}  # fmt: skip
_DYNAMO_METHODS = {
    "expand", "expand_as", "view", "reshape", "unsqueeze", "squeeze", "transpose", "permute",
    "contiguous", "to", "bool", "float", "long", "int", "clone", "flatten", "repeat", "tril", "triu",
    "masked_fill", "__getitem__", "__and__", "__or__", "__xor__", "__invert__", "eq", "ne", "ge",
    "gt", "le", "lt", "logical_and", "logical_or", "logical_not", "add", "sub", "mul", "cumsum",
    "diff", "flip", "clamp", "new_ones", "new_zeros", "new_full",
}  # fmt: skip
_VIEWS = {"expand", "expand_as"}  # sizes that allocate nothing: not held to MAX_MASK_ELEMENTS


# `F.scaled_dot_product_attention`'s arguments after query, key and value, in order (a call may give
# any of them by position)
SDPA_OPTIONS = ("attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def sdpa_options(node: Node) -> dict[str, object]:
    """The optional arguments a Dynamo graph's SDPA call gives, by name (positional ones named)."""
    return {**dict(zip(SDPA_OPTIONS, node.args[3:], strict=False)), **node.kwargs}


def constant_attention_masks(gm: GraphModule, sdpa: object) -> dict[Node, str]:
    """For each call of `sdpa` (PyTorch's `scaled_dot_product_attention`, as Dynamo records it) in
    `gm` whose mask is a constant: "visible" where it hides no key from any query, "causal" where it
    is the causal mask of square scores; calls with other masks are not in the result."""
    found: dict[Node, str] = {}
    values: dict[Node, object] = {}
    position = {n: i for i, n in enumerate(gm.graph.nodes)}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not sdpa:
            continue
        options = sdpa_options(node)
        mask, causal = options.get("attn_mask"), options.get("is_causal", False)
        if not isinstance(mask, Node) or causal is not False:
            continue
        try:
            with unset_fake_temporarily():
                value = _dynamo_value(mask, values, position)
                if value is None:
                    continue
                allowed = _allowed(value)
                if allowed is not None and bool(allowed.all()):
                    found[node] = "visible"
                elif _is_causal(
                    value, _shape(node.args[0], "example_value"), _shape(node.args[1], "example_value")
                ):
                    found[node] = "causal"
        except Exception as e:  # a mask we cannot evaluate is left as it is
            log.debug("tilefuse: mask %s of %s not evaluated: %s", mask.name, node.name, e)
    return found


def _dynamo_value(node: Node, values: dict[Node, object], position: dict[Node, int]) -> object:
    """`node`'s value computed on the CPU, where every ancestor is a call in the allowed sets above
    (deterministic, functional, no graph input) of static sizes; else None."""
    order: list[Node] = []
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current in seen or current in values:
            continue
        seen.add(current)
        val = current.meta.get("example_value")
        if not _evaluable_call(current) or _written_in_place(current) or (isinstance(val, torch.Tensor) and (
            any(not isinstance(d, int) for d in val.shape)
            or (current.target not in _VIEWS and val.numel() > MAX_MASK_ELEMENTS)
        )):  # fmt: skip
            return None
        order.append(current)
        stack.extend(current.all_input_nodes)
    _evaluate(order, values, position)
    value = values[node]
    return _compact(value) if isinstance(value, torch.Tensor) else None


def _evaluable_call(node: Node) -> bool:
    return (node.op == "call_function" and node.target in _DYNAMO_FUNCTIONS) or (
        node.op == "call_method" and node.target in _DYNAMO_METHODS
    )


_IN_PLACE_FUNCTIONS = {
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
}  # fmt: skip


def _mutates(node: Node) -> bool:
    """Whether `node` may write one of its tensor arguments (an in-place method or function, an
    item assignment, an `out=`)."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    name = name if isinstance(name, str) else ""
    dunder_in_place = name == "__setitem__" or (name.startswith("__i") and name.endswith("__"))
    # operator's and_ / or_ / not_ are not in place: operator's in-place calls are listed
    by_name = getattr(node.target, "__module__", None) != "_operator"
    in_place = by_name and ((name.endswith("_") and not name.startswith("__")) or dunder_in_place)
    return in_place or node.target in _IN_PLACE_FUNCTIONS or "out" in node.kwargs


def _written_in_place(node: Node) -> bool:
    """Whether anything writes `node`'s value in place, directly or through the mask-building ops
    reading it (any of which may be a view of it): `m = torch.ones(...); m[:, :2] = padding` keeps
    the `ones` node as the mask Dynamo's SDPA reads."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        for user in current.users:
            if _mutates(user):
                return True
            if _evaluable_call(user):
                stack.append(user)
    return False


def _compact(value: torch.Tensor) -> torch.Tensor:
    """`value` with every broadcast dim (stride 0) narrowed to one element: the same mask, checked
    without materializing the broadcast (8 x 8192 x 8192 is half a billion elements)."""
    for dim, (size, stride) in enumerate(zip(value.shape, value.stride())):
        if stride == 0 and size > 1:
            value = value.narrow(dim, 0, 1)
    return value
