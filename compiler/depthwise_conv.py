"""Depthwise convolutions as stencils (a pass on the aten graph): one generated kernel, no cuDNN.

A depthwise convolution (one input channel a group, one output channel a group: ConvNeXt's 7x7,
MobileNet's 3x3, Mamba's causal 1-d) has no reduction across channels, so it has no GEMM in it:
each output element is a weighted sum of kernel-size neighbours of one input channel. cuDNN runs
it on CUDA cores from NCHW or NHWC storage at a fraction of copy bandwidth (ConvNeXt-T's twelve 7x7
ones: 500 µs of its 2.0 ms forward in bf16 on the H200, torch.compile's too). Written as the sum
it is,

    y = convolution(x, w, b, stride, padding, dilation, groups=C)          w: [C, 1, *k]
      ->  xp = constant_pad_nd(x, padding)                                   (no copy: a view)
          y  = (b + sum over taps t of float32(xp[..., t's window]) * float32(w[:, 0, t])).to(x.dtype)

it is one pointwise map whose operands are shifted windows of the same tensor: `ein` views of
the padded input, which the pointwise lowering reads in 2-d tiles (`lower_to_tile._stencil_split`:
rows by the last spatial dim), each tap a masked load that the cache serves. The sum runs in
float32 whatever the input's dtype, rounding once, as cuDNN accumulates; what follows the
convolution (a bias, an activation, a residual) fuses into the same kernel as any map.

Only convolutions with at most `MAX_TAPS` taps (7x7 is 49) and static sizes are rewritten, in
float32, bfloat16 and float16; transposed and grouped (several channels a group) ones stay in
PyTorch.

Off by default (`TILEFUSE_DEPTHWISE=pytorch`; `stencil` turns it on): measured on the H200 (bf16,
benchmarks/NOTES.md, thirtieth session) the pointwise kernel it becomes ran 4-13x slower than
cuDNN (16x64x256x256 3x3: 2.5 ms against 0.64; ConvNeXt's 32x96x56x56 7x7: 3.8 ms against 0.34),
and the measured selection sent such graphs back to PyTorch whole. A stencil needs its own kernel
(a loop over the taps into one accumulator, 2-d spatial tiles with their halo), not a map with one
operand a tap.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os

import torch
from torch.fx import GraphModule, Node

from ..passes.lower_to_tile import DEPTHWISE_ENV, DEPTHWISE_STENCIL
from .conv_layout import is_depthwise
from .partition import call_with_value

aten = torch.ops.aten

MAX_TAPS = 64  # loads per output element; a 7x7 kernel has 49
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def depthwise_enabled() -> bool:
    setting = os.environ.get(DEPTHWISE_ENV, "pytorch")
    if setting not in (DEPTHWISE_STENCIL, "pytorch"):
        raise ValueError(f"{DEPTHWISE_ENV}={setting!r}: expected {DEPTHWISE_STENCIL} or pytorch")
    return setting == DEPTHWISE_STENCIL


def depthwise_stencils(gm: GraphModule) -> int:
    """Rewrite each eligible depthwise convolution of `gm` as the module docstring says; returns
    how many were rewritten."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is aten.convolution.default and _eligible(node):
            _rewrite(gm, node)
            count += 1
    if count:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return count


def _eligible(conv: Node) -> bool:
    if conv.kwargs or len(conv.args) != 9:
        return False
    x, w, bias, stride, padding, dilation, transposed, output_padding, groups = conv.args
    vals = [getattr(a, "meta", {}).get("val") for a in (x, w, conv)]
    if not all(isinstance(v, torch.Tensor) for v in vals) or transposed:
        return False
    xv, wv, out = vals
    if isinstance(bias, Node) and not isinstance(bias.meta.get("val"), torch.Tensor):
        return False
    if not all(isinstance(d, int) for v in vals for d in v.shape):
        return False  # symbolic sizes stay in PyTorch
    rank = xv.dim()
    if rank not in (3, 4, 5) or xv.dtype not in _DTYPES or wv.dtype != xv.dtype:
        return False
    if not is_depthwise(xv, wv, out, groups):
        return False
    if not all(isinstance(p, int) for p in (*stride, *padding, *dilation)):
        return False
    return 0 < torch.Size(wv.shape[2:]).numel() <= MAX_TAPS


def _rewrite(gm: GraphModule, conv: Node) -> None:
    x, w, bias, stride, padding, dilation = conv.args[:6]
    xv, wv, out = x.meta["val"], w.meta["val"], conv.meta["val"]
    spatial = xv.dim() - 2
    kernel, channels, sizes = tuple(wv.shape[2:]), xv.shape[1], tuple(out.shape[2:])
    fake_mode = getattr(xv, "fake_mode", None) or contextlib.nullcontext()
    with gm.graph.inserting_before(conv):
        call = functools.partial(call_with_value, gm.graph, fake_mode)
        padded = x
        if any(padding):
            pads = [p for d in reversed(range(spatial)) for p in (padding[d], padding[d])]
            padded = call(aten.constant_pad_nd.default, [x, pads, 0.0])
        offsets = list(itertools.product(*map(range, kernel)))  # the taps, in the weight's order
        taps = call(aten.view.default, [w, [channels, len(offsets)]])
        taps = call(aten._to_copy.default, [taps], {"dtype": torch.float32})
        shape = [1, channels, *[1] * spatial]
        total = None
        for t, offset in enumerate(offsets):
            window = padded
            for d in range(spatial):
                start = offset[d] * dilation[d]
                end = start + (sizes[d] - 1) * stride[d] + 1
                if start != 0 or end != window.meta["val"].shape[2 + d] or stride[d] != 1:
                    window = call(aten.slice.Tensor, [window, 2 + d, start, end, stride[d]])
            window = call(aten._to_copy.default, [window], {"dtype": torch.float32})
            weight = call(aten.view.default, [call(aten.select.int, [taps, 1, t]), shape])
            term = call(aten.mul.Tensor, [window, weight])
            total = term if total is None else call(aten.add.Tensor, [total, term])
        if isinstance(bias, Node):
            b = call(aten._to_copy.default, [bias], {"dtype": torch.float32})
            total = call(aten.add.Tensor, [total, call(aten.view.default, [b, shape])])
        result = call(aten._to_copy.default, [total], {"dtype": out.dtype})
    conv.replace_all_uses_with(result)
    gm.graph.erase_node(conv)
