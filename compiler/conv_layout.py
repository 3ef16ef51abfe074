"""Convolutions in channels-last layout (a pass on the aten graph), as Inductor's layout optimization.

Convolutions stay in PyTorch (cuDNN). On Hopper cuDNN's NCHW kernels are several times slower
than its NHWC ones: a 3x3 convolution of [32, 64, 128, 128] to 128 channels took ~600 µs in bf16
as eager PyTorch ran it (NCHW) where `torch.compile`, which converts convolutions to channels-last
(`torch._inductor.graph.GraphLowering.decide_layout_opt`), ran the whole conv + ReLU + bias in
243 µs (H200, benchmarks/RESULTS_kernelbench.md). So each convolution reads its input and weight
converted to channels-last, and its result is converted back at once:

    y = convolution(x, w, b, ..)
      -> y = clone(convolution(clone(x, channels_last), clone(w, channels_last), b, ..), contiguous)

The conversions to channels-last run in PyTorch (`lowering_table`: a layout change is not an `ein`
op). The conversion back is an elementwise copy in `ein` (`lower_elementwise.lower_clone`): where a
compiled op reads the result (the bias, activation or norm after a convolution) it fuses into that
kernel, which reads the NHWC tensor through its strides and writes its own output row-major, so it
costs nothing; elsewhere it is one copy, and every later op sees the strides eager PyTorch gave it
(a `view` after it stays valid). Grouped convolutions are left alone (Inductor measured them slower
channels-last; depthwise ones, a channel a group, are converted), as are 1-d ones and float64.

`TILEFUSE_CONV_LAYOUT`: `auto` (the default: on a GPU), `channels_last` (everywhere: tests run it
on CPU), `off`.
"""

from __future__ import annotations

import os

import torch
from torch.fx import GraphModule, Node

aten = torch.ops.aten

LAYOUT_ENV = "TILEFUSE_CONV_LAYOUT"
_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}
CONVERTED_BACK = "tilefuse_converted_back"  # node meta: this clone restores a convolution's eager strides


def is_conversion_back(node: Node) -> bool:
    """The clone after a channels-last convolution (not a `.contiguous()` of the model's own)."""
    return bool(node.meta.get(CONVERTED_BACK))


def conv_layout_enabled(on_gpu: bool) -> bool:
    setting = os.environ.get(LAYOUT_ENV, "auto")
    if setting not in ("auto", "channels_last", "off"):
        raise ValueError(f"{LAYOUT_ENV}={setting!r}: expected auto, channels_last or off")
    return setting == "channels_last" or (setting == "auto" and on_gpu)


def is_layout_change(node: Node) -> bool:
    """A clone into a channels-last format: runs in PyTorch (its point is the strides it makes)."""
    return node.target is aten.clone.default and node.kwargs.get("memory_format") in _FORMATS.values()


def channels_last_convolutions(gm: GraphModule) -> int:
    """Rewrite each eligible convolution of `gm` as the module docstring says; returns how many."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is aten.convolution.default and _eligible(node):
            _rewrite(gm, node)
            count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _eligible(node: Node) -> bool:
    x, w = node.args[0], node.args[1]
    groups = node.args[8] if len(node.args) > 8 else node.kwargs.get("groups", 1)
    vals = [getattr(a, "meta", {}).get("val") for a in (x, w)]
    out = node.meta.get("val")
    if not all(isinstance(v, torch.Tensor) for v in (*vals, out)):
        return False
    if vals[0].dim() not in _FORMATS or vals[0].dtype == torch.float64:
        return False
    if groups > 1 and vals[1].shape[1] > 1:  # grouped; a depthwise one (one channel a group) gains
        return False
    return out.is_contiguous()  # the layout eager PyTorch gave it, which the conversion back restores


def _rewrite(gm: GraphModule, conv: Node) -> None:
    graph = gm.graph
    fmt = _FORMATS[conv.args[0].meta["val"].dim()]
    with graph.inserting_before(conv):
        converted = []
        for arg in conv.args[:2]:
            clone = graph.call_function(aten.clone.default, (arg,), {"memory_format": fmt})
            clone.meta["val"] = arg.meta["val"].clone(memory_format=fmt)
            converted.append(clone)
    conv.args = (*converted, *conv.args[2:])
    eager_val = conv.meta["val"]
    conv.meta["val"] = eager_val.clone(memory_format=fmt)
    with graph.inserting_after(conv):
        back = graph.call_function(aten.clone.default, (conv,), {"memory_format": torch.contiguous_format})
    back.meta["val"] = eager_val
    back.meta[CONVERTED_BACK] = True
    conv.replace_all_uses_with(back, delete_user_cb=lambda user: user is not back)
