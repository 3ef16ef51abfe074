"""Calls that skip the boxed `OpOverload` path: the graphs tilefuse runs call PyTorch's bindings.

A node of an ATen graph calls `torch.ops.aten.convolution.default(...)`: the
`OpOverload`'s Python `__call__`, then a boxed call that parses the arguments
against the schema into a stack. `torch.convolution(...)` reaches the same
kernel through the generated binding, a few microseconds sooner a call (on
the H200's host, a compiled ResNet-50 forward makes 53 convolutions and as
many permutes between its partitions). Inductor's wrapper calls
`extern_kernels.convolution` (that is, `torch.convolution`) for the same reason.

`bind_direct(gm)` retargets the nodes of a graph tilefuse executes (the
partitioned graph, a partition's captured PyTorch code, a backward left to
PyTorch) whose op is in `direct_table()`: each pair is the same ATen schema reached both ways (same
positional and keyword arguments, same overload), and only functional ops
are listed, so a graph's in-place ops stay `OpOverload`s for the checks that
look for them (`runtime._writes_inputs`). `_unsafe_view` is not: `Tensor.view` would make its result
an autograd view, which AOTAutograd's analysis of a graph's outputs did not see.
`TILEFUSE_DIRECT_OPS=0` leaves every graph as captured.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import torch
from torch.fx import GraphModule

DIRECT_OPS_ENV = "TILEFUSE_DIRECT_OPS"  # "0": graphs call torch.ops.aten.* as captured
CAPTURED_TARGET = "tilefuse_captured_target"  # node meta: the OpOverload a retargeted node had


@functools.cache
def direct_table() -> dict[torch._ops.OpOverload, Callable]:
    """OpOverload -> the binding that dispatches to the same schema (only those this torch has)."""
    aten, nn = torch.ops.aten, torch._C._nn
    pairs = [
        ("convolution.default", torch, "convolution"),
        ("permute.default", torch, "permute"),
        ("view.default", torch.Tensor, "view"),
        ("reshape.default", torch, "reshape"),
        ("expand.default", torch.Tensor, "expand"),
        ("t.default", torch, "t"),
        ("transpose.int", torch, "transpose"),
        ("unsqueeze.default", torch, "unsqueeze"),
        ("squeeze.dim", torch, "squeeze"),
        ("select.int", torch, "select"),
        ("mm.default", torch, "mm"),
        ("bmm.default", torch, "bmm"),
        ("addmm.default", torch, "addmm"),
        ("baddbmm.default", torch, "baddbmm"),
        ("embedding.default", torch, "embedding"),
        ("cat.default", torch, "cat"),
        ("clone.default", torch, "clone"),
        ("relu.default", torch, "relu"),
        ("constant_pad_nd.default", torch, "constant_pad_nd"),
        ("native_layer_norm.default", torch, "native_layer_norm"),
        ("native_group_norm.default", torch, "native_group_norm"),
        ("_native_batch_norm_legit_no_training.default", torch, "_native_batch_norm_legit_no_training"),
        ("max_pool2d_with_indices.default", nn, "max_pool2d_with_indices"),
        ("avg_pool2d.default", nn, "avg_pool2d"),
        ("_scaled_dot_product_flash_attention.default", torch, "_scaled_dot_product_flash_attention"),
        ("_scaled_dot_product_efficient_attention.default", torch, "_scaled_dot_product_efficient_attention"),
        ("_scaled_dot_product_cudnn_attention.default", torch, "_scaled_dot_product_cudnn_attention"),
    ]
    table = {}
    for qualified, home, name in pairs:
        packet, overload = qualified.split(".")
        op = getattr(getattr(aten, packet, None), overload, None)
        fn = getattr(home, name, None)
        if op is not None and fn is not None:
            table[op] = fn
    return table


def direct_ops_enabled() -> bool:
    return os.environ.get(DIRECT_OPS_ENV, "1") != "0"


def captured_target(node: torch.fx.Node) -> object:
    """The op a node called as captured (its OpOverload, where `bind_direct` retargeted it): what
    reports name."""
    return node.meta.get(CAPTURED_TARGET, node.target)


def bind_direct(gm: GraphModule) -> int:
    """Retarget `gm`'s nodes whose op has a direct binding; returns how many (recompiles if any)."""
    if not direct_ops_enabled() or not isinstance(gm, GraphModule):
        return 0
    table = direct_table()
    count = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in table:
            node.meta[CAPTURED_TARGET] = node.target
            node.target = table[node.target]
            count += 1
    if count:
        gm.recompile()
    return count
