"""Ops computed twice from the same arguments, computed once (common subexpressions, on the aten graph).

Traced models repeat work per layer that does not depend on the layer: `transformers` turns the
same boolean attention mask into a 0 / -inf bias inside every layer's SDPA call (two
`scalar_tensor`s and a `where` a layer). Where those ops run as kernels, fusion already shares
them; where they stay in PyTorch (a graph of symbolic sizes: a decode step with the dynamic KV
cache), each is a PyTorch call, a few microseconds of host time, every layer and every step.

An op is merged with an earlier one of the same target, arguments and keyword arguments when it
is a functional aten op (no mutation, no randomness) and nothing mutates its result or its
duplicate's.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import GraphModule, Node

from .direct_ops import CAPTURED_TARGET


def merge_duplicate_ops(gm: GraphModule) -> int:
    """Replace each op of `gm` that repeats an earlier op's computation by that op; returns how
    many were replaced."""
    seen: dict[object, Node] = {}
    merged = 0
    returned = _returned(gm)
    for node in list(gm.graph.nodes):
        if not _pure(node):
            continue
        try:
            key = (node.target, _hashable(node.args), _hashable(node.kwargs))
            hash(key)
        except TypeError:  # an argument that cannot be a key (a tensor constant, say)
            continue
        earlier = seen.setdefault(key, node)
        if earlier is not node and not (node in returned and earlier in returned):
            # (two results PyTorch returns in two tensors stay two: the caller may write into one)
            node.replace_all_uses_with(earlier)
            gm.graph.erase_node(node)
            merged += 1
    if merged:
        gm.graph.lint()
        gm.recompile()
    return merged


def alias_chain(node: Node) -> list[Node]:
    """`node`, then what it is a view of (or updated in place), and so on: the nodes whose memory
    it is, ending at the one that made that memory (a placeholder, or an op making a new tensor).
    An item of a multi-output op counts as a view of the op."""
    chain = [node]
    while aliases_its_input(node):
        node = node.args[0]
        chain.append(node)
    return chain


def aliases_its_input(node: Node) -> bool:
    """Whether `node`'s result is its first argument's memory: a view or an in-place op (its schema's
    result aliases an input), or an item of a multi-output op."""
    if not (node.op == "call_function" and node.args and isinstance(node.args[0], Node)):
        return False
    schema = getattr(node.meta.get(CAPTURED_TARGET, node.target), "_schema", None)  # bind_direct's too
    return node.target is operator.getitem or (
        schema is not None and bool(schema.returns) and schema.returns[0].alias_info is not None
    )


def _returned(gm: GraphModule) -> set[Node]:
    """The nodes whose memory the graph returns: its results, and what they are views of."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    return {n for result in output.all_input_nodes for n in alias_chain(result)}


def functional(node: Node) -> bool:
    """An aten op (or `getitem`) whose value depends on its arguments alone: not random, not mutating."""
    target = node.target
    if target is operator.getitem:
        return True
    if not isinstance(target, torch._ops.OpOverload):
        return False
    return not (target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags)


def _pure(node: Node) -> bool:
    if node.op != "call_function" or not functional(node):
        return False
    return not any(
        isinstance(u.target, torch._ops.OpOverload) and u.target._schema.is_mutable for u in node.users
    )


def _hashable(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_hashable(v) for v in value))
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, float):  # by its digits: -0.0 == 0.0, and NaN never equals itself
        return ("float", repr(value))
    return (type(value).__name__, value)
