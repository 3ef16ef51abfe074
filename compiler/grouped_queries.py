"""Decode attention over repeated KV heads, as one attention of grouped queries (a pass on the aten graph).

Grouped-query attention in `transformers` (`repeat_kv`) copies each KV head `group` times before
SDPA: `unsqueeze(k, 2) -> expand [B, Hkv, group, L, D] -> clone -> view [B, H, L, D]`. With one
query token (a decode step), the `group` query heads that share a KV head can instead be the
`group` query rows of one attention over the KV head itself:

    q [B, H, 1, D] -> [B, Hkv, group, D];  attention(q, k, v, mask) -> [B, Hkv, group, D] -> [B, H, 1, D]

Each query row sees exactly the keys and values it saw before (query head `h` reads KV head
`h // group`, `repeat_kv`'s order), and a mask over [.., 1, L] broadcasts over the rows, so every
score and every output is the same. The copies go: with the dynamic KV cache of `generate`, the
attention has a symbolic length and runs in PyTorch beside the kernels, and its five copy and view
ops a key or value (ten a layer, and `group` x the cache's bytes each) were a decode step's
largest share of host time beside the kernels.

Only attention that stays in PyTorch is rewritten (keys of a symbolic length): a generated
attention kernel reads grouped KV heads directly (`lower_structured.lower_attention`). The new op
is `aten.scaled_dot_product_attention`, which picks its backend when it runs: the private op the
graph held (cuDNN's, say) was chosen for the old shapes.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from .causal_masks import MASKED_ATTENTION
from .lowering_table import bound_args

aten = torch.ops.aten

_ATTENTION = (*MASKED_ATTENTION, aten._scaled_dot_product_flash_attention.default)
_VIEWS = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)


def group_decode_queries(gm: GraphModule) -> int:
    """Rewrite each one-query attention over repeated KV heads of a symbolic length in `gm` as an
    attention of grouped queries over the KV heads themselves; returns how many were rewritten."""
    rewritten = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _ATTENTION and _rewrite(node):
            rewritten += 1
    if rewritten:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return rewritten


def _rewrite(node: Node) -> bool:
    args = bound_args(node)
    if args.get("is_causal") or args.get("dropout_p", 0.0) or args.get("enable_gqa"):
        return False
    query = _sizes(node.args[0])
    keys, values = _repeated_kv(node.args[1]), _repeated_kv(node.args[2])
    if query is None or keys is None or values is None or len(query) != 4 or query[2] != 1:
        return False
    (k, group), (v, value_group) = keys, values
    batch, heads, _, _ = query
    if not all(isinstance(d, int) for d in query[1:]):
        return False
    if group != value_group or group < 2 or heads % group or _static(_sizes(k)):
        return False
    # a symbolic batch (generate at a second batch size) is the reshapes' one -1: its name (a string
    # here) in a shape crashed the graph at its first call
    lead = batch if isinstance(batch, int) else -1
    outputs = _first_output_users(node)
    mask = args.get(MASKED_ATTENTION.get(node.target, "attn_mask"))
    mask = _grouped_mask(mask, heads, group) if isinstance(mask, Node) else None if mask is None else False
    if outputs is None or mask is False:
        return False
    graph = node.graph
    with graph.inserting_before(node):
        grouped_shape = [lead, heads // group, group, query[3]]
        grouped = graph.call_function(aten.reshape.default, (node.args[0], grouped_shape))
        if isinstance(mask, tuple):
            mask = graph.call_function(aten.reshape.default, mask)
        attention = graph.call_function(
            aten.scaled_dot_product_attention.default, (grouped, k, v),
            {"attn_mask": mask, "scale": args.get("scale")},
        )  # fmt: skip
        out = graph.call_function(aten.reshape.default, (attention, [lead, *query[1:]]))
    _give_values(node.args[0], grouped, attention, _sizes(v)[-1])
    out.meta["val"] = outputs[0].meta.get("val")
    for user in outputs:
        user.replace_all_uses_with(out)
    return True


def _repeated_kv(node: object) -> tuple[Node, int] | None:
    """(x, group) where `node` is `repeat_kv(x, group)` as traced: a view [B, Hkv * group, L, D] of
    a contiguous clone of `x` [B, Hkv, L, D] unsqueezed at 2 (and sliced whole) and expanded to
    [B, Hkv, group, L, D]; else None."""
    if not (isinstance(node, Node) and node.target in _VIEWS):
        return None
    clone = node.args[0]
    if not (isinstance(clone, Node) and clone.target == aten.clone.default):
        return None
    expand = clone.args[0]
    if not (isinstance(expand, Node) and expand.target == aten.expand.default):
        return None
    source = expand.args[0]
    while isinstance(source, Node) and source.target == aten.slice.Tensor and _whole_slice(source):
        source = source.args[0]
    if not (isinstance(source, Node) and source.target == aten.unsqueeze.default and source.args[1] == 2):
        return None
    x = source.args[0]
    before, after, out = _sizes(x), _sizes(expand), _sizes(node)
    if before is None or after is None or out is None or len(before) != 4 or len(after) != 5:
        return None
    group = after[2]
    if not isinstance(group, int) or after[:2] + after[3:] != before or len(out) != 4:
        return None
    if out[0] != before[0] or out[2:] != before[2:] or out[1] != _times(before[1], group):
        return None
    return x, group


def _first_output_users(node: Node) -> list[Node] | None:
    """The nodes standing for the attention's output: the node itself for the public op (one
    output), else its `getitem(.., 0)` readers; None where another output is read."""
    if node.target == aten.scaled_dot_product_attention.default:
        return [node]
    users = list(node.users)
    if not users or any(u.target is not operator.getitem or u.args[1] != 0 for u in users):
        return None
    return users


def _grouped_mask(mask: Node, heads: int, group: int) -> Node | tuple | bool:
    """The mask for the grouped attention: as it is where it broadcasts over heads, reshaped
    (arguments of the reshape) where it has one per head; False where it has several query rows
    or an unknown shape."""
    shape = _sizes(mask)
    if shape is None or len(shape) < 2 or shape[-2] != 1:
        return False
    if len(shape) < 3 or shape[-3] == 1:
        return mask
    if len(shape) != 4 or shape[1] != heads or not isinstance(shape[0], int):
        return False
    return (mask, [shape[0], heads // group, group, -1])  # -1: the length, symbolic


def _whole_slice(node: Node) -> bool:
    start = node.args[2] if len(node.args) > 2 else 0
    end = node.args[3] if len(node.args) > 3 else None
    step = node.args[4] if len(node.args) > 4 else 1
    return start in (0, None) and step == 1 and (end is None or (isinstance(end, int) and end >= 2**62))


def _sizes(node: object) -> tuple | None:
    """The node's shape, a symbolic size as its expression (comparing those adds no guard)."""
    val = node.meta.get("val") if isinstance(node, Node) else None
    if not isinstance(val, torch.Tensor):
        return None
    return tuple(d if isinstance(d, int) else str(d) for d in val.shape)


def _static(shape: tuple | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _times(heads: object, group: int) -> object:
    return heads * group if isinstance(heads, int) else None


def _give_values(query: Node, grouped: Node, attention: Node, value_dim: object) -> None:
    """Fake values (shapes, for later passes and dumps) of the grouped query and its attention."""
    val = query.meta.get("val")
    if not isinstance(val, torch.Tensor) or not isinstance(value_dim, int):
        return
    _, kv_heads, group, dim = grouped.args[1]
    batch = val.shape[0]  # the query's own (symbolic, where the shape says -1)
    try:
        grouped.meta["val"] = val.new_empty((batch, kv_heads, group, dim))
        attention.meta["val"] = val.new_empty((batch, kv_heads, group, value_dim))
    except Exception:  # a value is for reading only; without one, passes treat the node as unknown
        pass
