"""Import an aten-level FX graph (one supported partition) into an `ein` function.

Placeholders become function arguments; parameters keep their module path
as an `ein.param` argument attribute, so weights stay runtime arguments and
are never baked into the IR.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node
from xdsl.dialects import func
from xdsl.dialects.builtin import StringAttr
from xdsl.ir import SSAValue

from ..ir.builder import EinBuilder
from ..ir.dtypes import size_of, to_mlir_type
from . import lower_elementwise, lower_structured  # noqa: F401  (register lowerings)
from .lowering_table import LOWERINGS, LoweredValue, LoweringContext, target_name


class ImportFailure(RuntimeError):
    """A graph could not be imported; the message says which node and why."""


@dataclass(frozen=True)
class InputInfo:
    """Where a graph input comes from: a user argument or a module parameter/buffer."""

    name: str
    param: str | None = None


_IDENT = re.compile(r"[^A-Za-z0-9_]")


def _value_name(name: str) -> str:
    cleaned = _IDENT.sub("_", name).strip("_") or "arg"
    return cleaned if not cleaned[0].isdigit() else f"v{cleaned}"


def import_graph(gm: GraphModule, name: str, inputs: list[InputInfo] | None = None) -> func.FuncOp:
    """Translate `gm` (aten ops with `val` metadata) to an `ein` function named `name`."""
    b = EinBuilder(name)
    env: dict[Node, LoweredValue] = {}
    ctx = LoweringContext(b, env)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    infos = inputs or [InputInfo(n.name) for n in placeholders]
    for node, info in zip(placeholders, infos):
        val = node.meta["val"]
        if isinstance(val, torch.SymInt):  # a size a view reads (its lowering reads the node's metadata)
            env[node] = val
            continue
        if not isinstance(val, torch.Tensor):  # a SymBool or SymFloat: the partitioner keeps its readers out
            raise ImportFailure(f"input {node.name} is a {type(val).__name__}, not a tensor or a size")
        attrs = {"ein.param": StringAttr(info.param)} if info.param else None
        env[node] = b.add_argument(
            [size_of(d) for d in val.shape], to_mlir_type(val.dtype), _value_name(info.name), attrs
        )
    for node in gm.graph.nodes:
        if node.op == "call_function":
            env[node] = _lower_node(ctx, node)
        elif node.op == "output":
            return b.finish(_flatten_outputs(node.args[0], env))
        elif node.op != "placeholder":
            raise ImportFailure(f"node {node.name}: {node.op} nodes are not supported")
    raise ImportFailure("graph has no output node")


def _lower_node(ctx: LoweringContext, node: Node) -> LoweredValue:
    if node.target is operator.getitem:
        source = ctx.env[node.args[0]]
        if not isinstance(source, tuple):
            raise ImportFailure(f"node {node.name}: getitem on a single value")
        return source[node.args[1]]
    lowering = LOWERINGS.get(node.target)
    if lowering is None:
        raise ImportFailure(f"node {node.name}: no ein lowering for {target_name(node)}")
    try:
        return lowering.fn(ctx, node)
    except Exception as e:  # a lowering bug must not take the user's model down
        raise ImportFailure(f"node {node.name} ({target_name(node)}): {type(e).__name__}: {e}") from e


def _flatten_outputs(out: object, env: dict[Node, LoweredValue]) -> list[SSAValue]:
    items = out if isinstance(out, (list, tuple)) else [out]
    values = []
    for item in items:
        if not isinstance(item, Node) or not isinstance(env.get(item), SSAValue):
            raise ImportFailure(f"graph output {item!r} is not a tensor computed in the graph")
        values.append(env[item])
    return values
