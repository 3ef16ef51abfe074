"""Split an aten graph into parts tilefuse compiles and parts PyTorch runs.

Every call whose op has an `ein` lowering (and whose dtypes and shapes ein
supports) may join a compiled partition; everything else stays in the outer
graph, run by PyTorch, with the reason recorded for the dump.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from torch.fx import GraphModule, Node
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from .lowering_table import target_name, unsupported_reason


@dataclass(frozen=True)
class Fallback:
    """One node (or partition) that runs in PyTorch, and why."""

    node: str
    op: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "reason": self.reason}


class _EinSupport(OperatorSupportBase):
    def is_node_supported(self, submodules: object, node: Node) -> bool:
        if node.op != "call_function":
            return False
        if node.target is operator.getitem:
            return self.is_node_supported(submodules, node.args[0])
        return unsupported_reason(node) is None


def find_fallbacks(gm: GraphModule) -> list[Fallback]:
    """The compute nodes of `gm` that have no `ein` lowering, with reasons."""
    fallbacks = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is operator.getitem:
            continue
        reason = unsupported_reason(node)
        if reason is not None:
            fallbacks.append(Fallback(node.name, target_name(node), reason))
    return fallbacks


def partition_graph(gm: GraphModule) -> tuple[GraphModule, list[str]]:
    """Fuse maximal supported regions of `gm` into `fused_N` submodules.

    Returns the rewritten module and the names of the compiled submodules.
    Regions made only of views are left to PyTorch: they cost nothing there.
    """
    partitioner = CapabilityBasedPartitioner(gm, _EinSupport(), allows_single_node_partition=True)
    partitions = partitioner.propose_partitions()
    fused = partitioner.fuse_partitions(partitions)
    names = [n.target for n in fused.graph.nodes if n.op == "call_module" and n.target.startswith("fused_")]
    return fused, names
