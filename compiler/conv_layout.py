"""Convolutions in channels-last layout (a pass on the aten graph), as Inductor's layout optimization.

Convolutions stay in PyTorch (cuDNN). Given NCHW tensors, cuDNN on Hopper converts its input to
NHWC, runs an NHWC implicit GEMM, converts the result back and adds the bias in a separate pass:
a [16, 64, 128, 128] 3x3 convolution to 64 channels in bf16 took 170 µs on the H200 of which the
GEMM was 45 (`.scratch` probe, benchmarks/NOTES.md). `torch.compile` takes the layout over
(`torch._inductor.graph.GraphLowering.decide_layout_opt`): its own tiled kernels convert the input
and, fused with the bias and whatever follows, the result, 84 µs in all. So does this pass:

    y = convolution(x, w, b, ..)
      ->  xc = clone(permute(x, [0, 2, 3, 1]))                   a generated kernel: NHWC, contiguous
          wc = clone(permute(w, [0, 2, 3, 1]))                   the same, once per weight version
          yc = convolution(permute(xc, [0, 3, 1, 2]), permute(wc, [0, 3, 1, 2]), None, ..)    cuDNN, NHWC
          y  = clone(permute(permute(yc, [0, 2, 3, 1]), [0, 3, 1, 2])) + b[:, None, None]

The first permute of `yc` runs in PyTorch (a view: its result is `yc`'s storage as a contiguous
[N, H, W, C] tensor), so the compiled code after it reads a contiguous tensor through an `ein`
permute. Both clones are explicit copies in `ein` (`lower_elementwise.lower_clone`, marked here):
a copy whose operand is read through a permute that moves the innermost dim is lowered as a
2-d tiled kernel (`lower_to_tile.lower_pointwise`: loads coalesced along one dim, stores along
another), and the copy back fuses with the bias and the ops after the convolution (activation,
residual, norm), which then read the NHWC result once and write their own output row-major. Every
op after it sees the strides eager PyTorch gave the result (a `view` stays valid). The weight's
copy reads parameters only, so the program computes it once and reuses it while they are
unchanged. Grouped convolutions are left alone (Inductor measured them slower channels-last;
depthwise ones, a channel a group, are converted), as are 1-d ones, float64, non-contiguous inputs
and symbolic sizes.

A convolution that eager PyTorch already gives a channels-last input (a tensor it computed as
[N, H, W, C] and permuted back, as ConvNeXt's blocks do) is not converted: its input, where a
compiled op makes it, is written NHWC by that op and viewed back in PyTorch with eager's strides
(`_channels_last_input`), and so is a channels-last result of the graph.

Where cuDNN may use TF32 (PyTorch's default, `torch.backends.cudnn.allow_tf32`) and the float32
matmul precision is "highest", a float32 convolution is converted only where its NHWC kernel is
measured as exact as eager's NCHW one (`nhwc_as_exact`): cuDNN picks its algorithm per layout and
geometry, so one convolution runs TF32 either way (KernelBench's 3x3 over 16x64x128x128: 2.9e-04
from float64 in both layouts) and another is exact NCHW and TF32 NHWC (ViT-base's 16x16 patch
embedding: 9.9e-07 against 3.0e-04 on the H200). The probe runs both layouts once per geometry on
random data, against float64 on the first sample. A depthwise one is converted without it: it sums
a few products a channel on CUDA cores, in either layout (torch.compile's NHWC one: 1.7e-07 from
float64 on a 3x3 over 16x64x256x256, eager's 1.5e-07, 0.44 ms against eager's 0.63 on the H200).

`TILEFUSE_CONV_LAYOUT`: `auto` (the default: on a GPU), `channels_last` (everywhere: tests run it
on CPU), `off`.
"""

from __future__ import annotations

import logging
import os

import torch
from torch.fx import GraphModule, Node
from torch.utils._python_dispatch import _disable_current_modes

from .duplicate_ops import functional

aten = torch.ops.aten
log = logging.getLogger(__name__)

LAYOUT_ENV = "TILEFUSE_CONV_LAYOUT"
_FORMATS = {4: torch.channels_last, 5: torch.channels_last_3d}
# node meta: this clone is an explicit copy (not a `.contiguous()` of the model's, which stays a view)
EXPLICIT_COPY = "tilefuse_explicit_copy"
# node meta: this permute runs in PyTorch (the NHWC storage of a convolution's result, made a tensor)
STORAGE_VIEW = "tilefuse_storage_view"
# node meta: this permute runs in PyTorch (NHWC storage a compiled op wrote, viewed as eager's
# channels-last NCHW tensor for a convolution; `_channels_last_input`)
NCHW_VIEW = "tilefuse_nchw_view"


def conv_layout_enabled(on_gpu: bool) -> bool:
    setting = os.environ.get(LAYOUT_ENV, "auto")
    if setting not in ("auto", "channels_last", "off"):
        raise ValueError(f"{LAYOUT_ENV}={setting!r}: expected auto, channels_last or off")
    return setting == "channels_last" or (setting == "auto" and on_gpu)


def is_layout_change(node: Node) -> bool:
    """A clone into a channels-last format: runs in PyTorch (its point is the strides it makes)."""
    return node.target is aten.clone.default and node.kwargs.get("memory_format") in _FORMATS.values()


def is_explicit_copy(node: Node) -> bool:
    return bool(node.meta.get(EXPLICIT_COPY))


def is_storage_view(node: Node) -> bool:
    return bool(node.meta.get(STORAGE_VIEW))


def is_nchw_view(node: Node) -> bool:
    return bool(node.meta.get(NCHW_VIEW))


def f32_layout_exact() -> bool:
    """Whether any float32 convolution may be converted without measuring its precision: not where
    cuDNN may use TF32 (PyTorch's default, `torch.backends.cudnn.allow_tf32`) and the float32 matmul
    precision is "highest", because cuDNN may then pick a TF32 NHWC kernel where eager's NCHW one
    was exact (ViT-base's float32 patch embedding: 3.0e-04 from float64, eager 9.9e-07, H200); there
    each one is measured (`nhwc_as_exact`). Forced on (`channels_last`), every float32 convolution is
    converted."""
    return (
        os.environ.get(LAYOUT_ENV) == "channels_last"
        or not torch.backends.cudnn.allow_tf32
        or torch.get_float32_matmul_precision() != "highest"
    )


def channels_last_convolutions(gm: GraphModule, results_too: bool = False) -> int:
    """Rewrite each eligible convolution of `gm` as the module docstring says, and give each other
    convolution whose input eager PyTorch laid out channels-last a compiled input in that layout
    (`_channels_last_input`); returns how many convolutions were rewritten either way. A float32
    convolution is converted only where that keeps eager's precision (`f32_layout_exact`,
    `nhwc_as_exact`).
    The graph's channels-last results are returned with eager's strides where a convolution was
    rewritten, or with `results_too` (its depthwise convolutions became stencils,
    `compiler/depthwise_conv.py`: eager's layout flows from them to the results)."""
    count, f32 = 0, f32_layout_exact()
    dropped, results = drop_identity_pads(gm), _results(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.convolution.default:
            continue
        if _eligible(node, f32):
            _share_nhwc_input(gm, node, results, f32)
            _rewrite(gm, node)
            count += 1
        elif _channels_last_input(gm, node.args[0]):
            count += 1
    if count or results_too or dropped:  # the graph's channels-last results: returned with eager's strides
        for result in _results(gm):
            _channels_last_input(gm, result)
        gm.graph.lint()
        gm.recompile()
    return count


def is_depthwise(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, groups: int) -> bool:
    """A convolution's values (input, weight, result) and groups: one input and one output
    channel a group, so no sum across channels (no GEMM)."""
    channels = x.shape[1]
    return groups == channels and tuple(w.shape[:2]) == (channels, 1) and out.shape[1] == channels


def drop_identity_pads(gm: GraphModule) -> int:
    """Replace each zero-width `constant_pad_nd` (a copy) whose input has its strides by the input
    itself; returns how many. `transformers`' TF-style padding pads before every convolution, by
    nothing where a 1x1 one needs none (MobileNetV2: 34 of its 52 convolutions): the copy was a
    kernel of its own, and it hid that the block's output feeds the next convolution directly
    (`_share_nhwc_input`). Kept where the pad's result is a graph output (a fresh tensor there)
    or something mutates it."""
    results, dropped = _results(gm), 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.constant_pad_nd.default:
            continue
        x, pads = node.args[0], node.args[1]
        if not isinstance(x, Node) or any(not isinstance(p, int) or p != 0 for p in pads):
            continue
        val, xval = node.meta.get("val"), x.meta.get("val")
        if not isinstance(val, torch.Tensor) or not isinstance(xval, torch.Tensor):
            continue
        if xval.shape != val.shape or xval.dtype != val.dtype or xval.stride() != val.stride():
            continue
        if node in results or not all(functional(u) for u in node.users):
            continue
        node.replace_all_uses_with(x)
        gm.graph.erase_node(node)
        dropped += 1
    return dropped


def _results(gm: GraphModule) -> list[Node]:
    """The nodes `gm` returns."""
    (output,) = [n for n in gm.graph.nodes if n.op == "output"]
    return output.all_input_nodes


def _shareable(conv: Node, results: list[Node], f32: bool) -> bool:
    """Whether the input `x` of eligible convolution `conv` may be stored NHWC for every reader
    (`_share_nhwc_input`): a compiled op's result (not one of the graph's `results`), static, read
    by more than this convolution, and only by eligible convolutions (as their input) and pointwise
    ops."""
    x = conv.args[0]
    if not isinstance(x, Node) or x.op != "call_function" or len(x.users) < 2 or _layout_node(x):
        return False
    if x in results:
        return False  # a result keeps eager's strides
    for user in x.users:
        if user.target is aten.convolution.default:
            if user.args[0] is not x or x in user.args[1:] or not _eligible(user, f32):
                return False
        elif torch.Tag.pointwise not in getattr(user.target, "tags", ()):
            return False
    return True


def _share_nhwc_input(gm: GraphModule, conv: Node, results: list[Node], f32: bool) -> None:
    """Where `conv`'s input is read by other convolutions or pointwise ops too (a residual block's
    output: ResNet's next block reads it through a convolution and the shortcut's add), store it
    NHWC once for all of them (`_shareable`): its producer's kernel writes NHWC storage that the
    readers see through a view with eager's shape (`_channels_last_input`'s form), where the
    producer wrote it NCHW and a separate copy kernel made each convolution's NHWC input (the two
    results have different shapes: no one kernel wrote both)."""
    if _shareable(conv, results, f32):
        _store_nhwc(gm, conv.args[0])


def _eligible(node: Node, f32: bool) -> bool:
    x, w = node.args[0], node.args[1]
    if is_nchw_view(x):  # its NHWC storage shared by its readers (`_share_nhwc_input`)
        x = x.args[0].args[0].args[0]  # permute <- clone <- permute <- the value eager computed
    groups = node.args[8] if len(node.args) > 8 else node.kwargs.get("groups", 1)
    vals = [getattr(a, "meta", {}).get("val") for a in (x, w)]
    out = node.meta.get("val")
    if not all(isinstance(v, torch.Tensor) for v in (*vals, out)) or node.kwargs:
        return False
    if not all(isinstance(d, int) for v in (*vals, out) for d in v.shape):
        return False  # symbolic sizes: left as they are (Inductor saw regressions with dynamic shapes)
    if vals[0].dim() not in _FORMATS or vals[0].dtype == torch.float64 or not vals[0].is_contiguous():
        return False
    if groups > 1 and vals[1].shape[1] > 1:  # grouped; a depthwise one (one channel a group) gains
        return False
    if not out.is_contiguous():  # the layout eager PyTorch gave it, which the copy back restores
        return False
    if vals[0].dtype == torch.float32 and not f32 and not (groups > 1 and is_depthwise(*vals, out, groups)):
        return nhwc_as_exact(*vals, tuple(node.args[3:]))  # a depthwise one has no GEMM to run in TF32
    return True


# (geometry, device) -> whether cuDNN's NHWC kernel is as exact as its NCHW one (`nhwc_as_exact`)
_EXACT: dict[tuple, bool] = {}
# relative error (max |y - ref| / max |ref|) under which a float32 convolution counts as exact: TF32
# (10 mantissa bits) is ~1e-4 and above on any sum, fp32 arithmetic ~1e-7
EXACT_ERROR = 1e-5


def nhwc_as_exact(x: torch.Tensor, w: torch.Tensor, params: tuple) -> bool:
    """Whether a float32 convolution of `x`'s and `w`'s geometry (`params`: aten.convolution's
    stride, padding, dilation, transposed, output padding, groups) keeps eager's precision in
    NHWC: its error against float64 is no worse than twice eager NCHW's, or below `EXACT_ERROR`.
    Measured once per geometry on the device (a few convolutions); False off CUDA."""
    key = (tuple(x.shape), tuple(w.shape), repr(params), str(x.device))
    if key not in _EXACT:
        if x.device.type != "cuda":
            return False
        try:
            eager, nhwc = probe_errors(x, w, params)
        except Exception as e:  # (a CUDA graph capturing, no memory): NCHW, as eager runs it, not cached
            log.info("float32 convolution %s not measured (%s): left NCHW", key[:2], e)
            return False
        _EXACT[key] = nhwc <= max(2 * eager, EXACT_ERROR)
        log.info("float32 convolution %s: NHWC error %.1e, NCHW %.1e: %s", key[:2], nhwc, eager, _EXACT[key])
    return _EXACT[key]


def probe_errors(x: torch.Tensor, w: torch.Tensor, params: tuple) -> tuple[float, float]:
    """Relative errors against float64 of one convolution of random data, NCHW (eager's) and
    NHWC, with the process's cuDNN settings; float64 computes the first sample only."""
    fmt = _FORMATS[x.dim()]
    # real tensors, outside any fake or tracing mode, and in float32 under a caller's autocast
    with _disable_current_modes(), torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        gen = torch.Generator(device=x.device).manual_seed(0)
        xs = torch.randn(tuple(x.shape), generator=gen, device=x.device)
        ws = torch.randn(tuple(w.shape), generator=gen, device=x.device)
        ref = aten.convolution.default(xs[:1].double(), ws.double(), None, *params)

        def error(y: torch.Tensor) -> float:
            return ((y[:1].double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()

        eager = error(aten.convolution.default(xs, ws, None, *params))
        xl, wl = xs.to(memory_format=fmt), ws.to(memory_format=fmt)
        nhwc = error(aten.convolution.default(xl, wl, None, *params))
    return eager, nhwc


def _channels_last_input(gm: GraphModule, x: object) -> bool:
    """Where eager PyTorch gives a convolution (or the graph's caller) a channels-last tensor `x`
    (ConvNeXt: the residual sum of a block computed as [N, H, W, C] and permuted back,
    `x + y.permute(0, 3, 1, 2)`, is channels-last in eager, and so is every convolution's input
    after the stem) and a compiled op makes it, the program writes it channels-last too: its
    readers get a view in PyTorch of NHWC storage that an explicit copy (fused with the op) writes,

        x  ->  xs = clone(permute(x, [0, 2, 3, 1]))        compiled: the op's result stored NHWC
               xv = permute(xs, [0, 3, 1, 2])               PyTorch: a view, eager's strides

    The program writes its results row-major, so without this the convolution read an NCHW tensor,
    and a depthwise one ran ATen's generic kernel: 125 µs against cuDNN's 41 for ConvNeXt-T's 7x7
    depthwise convolutions in bf16 on the H200 (8 of its 12). Returns whether `x` was rewritten."""
    val = getattr(x, "meta", {}).get("val")
    if not isinstance(x, Node) or x.op != "call_function" or not isinstance(val, torch.Tensor):
        return False
    rank = val.dim()
    if rank not in _FORMATS or val.dtype == torch.float64 or any(not isinstance(d, int) for d in val.shape):
        return False
    if val.is_contiguous() or not val.is_contiguous(memory_format=_FORMATS[rank]):
        return False
    if _layout_node(x):
        return False
    _store_nhwc(gm, x)
    return True


def _layout_node(x: Node) -> bool:
    """Whether PyTorch makes `x` (a convolution), or it is already a layout conversion."""
    return x.target in (aten.convolution.default, aten.clone.default) or is_storage_view(x) or is_nchw_view(x)


def _store_nhwc(gm: GraphModule, x: Node) -> None:
    """Every reader of `x` reads it NHWC instead: an explicit copy right after `x` (fused with the op
    that makes it), viewed back in PyTorch with eager's shape and channels-last strides."""
    users = list(x.users)
    with gm.graph.inserting_before(x.next):  # right after `x`, in order
        xv = _nhwc_copy(gm, x, **{NCHW_VIEW: True})
    for user in users:
        user.replace_input_with(x, xv)


def _nhwc_copy(gm: GraphModule, t: Node, **view_meta) -> Node:
    """`t` copied to NHWC by a generated kernel (an explicit copy), viewed back as NCHW-shaped
    (channels-last strides); the view's node carries `view_meta`. Inserted where the graph's
    insertion point is."""
    rank = t.meta["val"].dim()
    to_last = [0, *range(2, rank), 1]  # NCHW -> NHWC
    to_first = [0, rank - 1, *range(1, rank - 1)]  # NHWC -> NCHW
    tp = _call(gm, aten.permute.default, (t, to_last), t.meta["val"].permute(to_last))
    tc = _call(gm, aten.clone.default, (tp,), tp.meta["val"].contiguous(),
               {"memory_format": torch.contiguous_format}, **{EXPLICIT_COPY: True})  # fmt: skip
    return _call(gm, aten.permute.default, (tc, to_first), tc.meta["val"].permute(to_first), **view_meta)


def _call(
    gm: GraphModule, target, args: tuple, val: torch.Tensor, kwargs: dict | None = None, **meta
) -> Node:
    node = gm.graph.call_function(target, args, kwargs or {})
    node.meta["val"] = val
    node.meta.update(meta)
    return node


def _rewrite(gm: GraphModule, conv: Node) -> None:
    x, w, bias = conv.args[:3]
    rank = x.meta["val"].dim()
    to_last = [0, *range(2, rank), 1]  # NCHW -> NHWC
    to_first = [0, rank - 1, *range(1, rank - 1)]  # NHWC -> NCHW
    contiguous = {"memory_format": torch.contiguous_format}
    copy = {EXPLICIT_COPY: True}
    with gm.graph.inserting_before(conv):
        # the weight's copy reads parameters only: made once, reused while they are unchanged;
        # an input shared NHWC (`_share_nhwc_input`) is read as it is
        x_last = x if is_nchw_view(x) else _nhwc_copy(gm, x)
        w_last = _nhwc_copy(gm, w)
    fmt = _FORMATS[rank]
    conv.args = (x_last, w_last, None, *conv.args[3:])
    eager_val = conv.meta["val"]
    conv.meta["val"] = eager_val.clone(memory_format=fmt)
    users = list(conv.users)
    with gm.graph.inserting_after(conv):
        storage = conv.meta["val"].permute(to_last)
        yu = _call(gm, aten.permute.default, (conv, to_last), storage, **{STORAGE_VIEW: True})
    with gm.graph.inserting_after(yu):
        yv = _call(gm, aten.permute.default, (yu, to_first), yu.meta["val"].permute(to_first))
    with gm.graph.inserting_after(yv):
        y = _call(gm, aten.clone.default, (yv,), eager_val, contiguous, **copy)
    result = y
    if isinstance(bias, Node):
        shape = [1, -1, *[1] * (rank - 2)]
        with gm.graph.inserting_after(y):
            b = _call(gm, aten.view.default, (bias, shape), bias.meta["val"].view(shape))
        with gm.graph.inserting_after(b):
            result = _call(gm, aten.add.Tensor, (y, b), eager_val)
    for user in users:
        user.replace_input_with(conv, result)
