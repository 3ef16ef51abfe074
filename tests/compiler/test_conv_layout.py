"""Convolutions run channels-last (compiler/conv_layout.py): the rewrite, and models against eager.

On CPU the pass is forced with TILEFUSE_CONV_LAYOUT=channels_last (its default is on a GPU only);
the oracle is eager PyTorch on the same module, values and output strides both.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from helpers import compile_and_compare, fusion_groups
from tilefuse.compiler.conv_layout import (
    LAYOUT_ENV,
    channels_last_convolutions,
    conv_layout_enabled,
    is_explicit_copy,
    is_nchw_view,
    is_storage_view,
)
from tilefuse.compiler.depthwise_conv import DEPTHWISE_ENV

aten = torch.ops.aten


@pytest.fixture
def channels_last(monkeypatch):
    monkeypatch.setenv(LAYOUT_ENV, "channels_last")
    monkeypatch.setenv(DEPTHWISE_ENV, "pytorch")  # depthwise ones stay convolutions here
    torch._dynamo.reset()


class ConvReluBias(nn.Module):
    def __init__(self, conv: nn.Module, channels: int, dims: int):
        super().__init__()
        self.conv = conv
        self.bias = nn.Parameter(torch.randn(channels, *[1] * dims))

    def forward(self, x):
        return torch.relu(self.conv(x)) + self.bias


class ConvFlattenLinear(nn.Module):
    """A view right after the convolution: it needs the strides eager PyTorch gave the result."""

    def __init__(self, features: int):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.linear = nn.Linear(features, 6)

    def forward(self, x):
        return self.linear(self.conv(x).flatten(1))


def _aten_graph(conv, x: torch.Tensor, w: torch.Tensor, **options):
    """The aten graph of `conv(x, w, None, **options)`, traced with fake tensors (meta values)."""
    return make_fx(lambda x, w: conv(x, w, None, **options), tracing_mode="fake")(x, w)


def test_rewrite_converts_input_and_weight_and_back(channels_last):
    """Input and weight: permute + explicit copy (NHWC, contiguous) viewed back as NCHW; the bias leaves the convolution for an add after the copy back; the result's
    first permute is marked to run in PyTorch."""
    x, w, b = torch.randn(2, 3, 9, 11), torch.randn(5, 3, 3, 3), torch.randn(5)
    gm = make_fx(lambda x, w, b: F.conv2d(x, w, b, padding=1), tracing_mode="fake")(x, w, b)
    assert channels_last_convolutions(gm) == 1
    (conv,) = [n for n in gm.graph.nodes if n.target is aten.convolution.default]
    x_last, w_last, bias = conv.args[:3]
    assert bias is None and x_last.target is aten.permute.default and list(x_last.args[1]) == [0, 3, 1, 2]
    copy_in = x_last.args[0]
    assert copy_in.target is aten.clone.default and is_explicit_copy(copy_in)
    assert list(copy_in.args[0].args[1]) == [0, 2, 3, 1]
    assert w_last.target is aten.permute.default and is_explicit_copy(w_last.args[0])  # once per weight
    assert conv.meta["val"].is_contiguous(memory_format=torch.channels_last)
    (storage,) = conv.users
    assert is_storage_view(storage) and list(storage.args[1]) == [0, 2, 3, 1]
    copies = [n for n in gm.graph.nodes if n.target is aten.clone.default and is_explicit_copy(n)]
    assert len(copies) == 3  # input, weight, result
    (add,) = [n for n in gm.graph.nodes if n.target is aten.add.Tensor]
    assert add.args[0] is copies[2]
    out = gm(x, w, b)
    torch.testing.assert_close(out, F.conv2d(x, w, b, padding=1), rtol=1e-5, atol=1e-5)
    assert out.is_contiguous()


@pytest.mark.parametrize(
    "conv, x, w, options",
    [
        (F.conv2d, torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3), dict(groups=2)),  # slower channels-last
        (F.conv1d, torch.randn(2, 3, 10), torch.randn(4, 3, 3), {}),  # 1-d: no channels-last format
        (F.conv2d, torch.randn(1, 3, 8, 8).double(), torch.randn(4, 3, 3, 3).double(), {}),
    ],
    ids=["grouped", "conv1d", "float64"],
)
def test_rewrite_leaves_grouped_1d_and_float64_alone(conv, x, w, options):
    gm = _aten_graph(conv, x, w, **options)
    assert channels_last_convolutions(gm) == 0


def test_symbolic_sizes_are_left_alone():
    x, w = torch.randn(2, 3, 9, 11), torch.randn(5, 3, 3, 3)
    gm = make_fx(lambda x, w: F.conv2d(x, w), tracing_mode="symbolic")(x, w)
    assert channels_last_convolutions(gm) == 0


def test_depthwise_convolutions_are_converted(channels_last):
    gm = _aten_graph(F.conv2d, torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), groups=4)
    assert channels_last_convolutions(gm) == 1


class ConvNeXtBlocks(nn.Module):
    """A channels-first layer norm (over [N, H, W, C], permuted back), then two ConvNeXt blocks: a
    7x7 depthwise convolution, then layer norm and an MLP over [N, H, W, C], permuted back and added
    to the block's input. Eager lays the norm and the sums out channels-last, and so the blocks'
    convolutions read them."""

    def __init__(self, channels: int):
        super().__init__()
        self.stem_norm = nn.LayerNorm(channels)
        self.convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 7, padding=3, groups=channels) for _ in range(2)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(channels) for _ in range(2))
        self.ups = nn.ModuleList(nn.Linear(channels, 4 * channels) for _ in range(2))
        self.downs = nn.ModuleList(nn.Linear(4 * channels, channels) for _ in range(2))

    keep = False  # return what each convolution reads too

    def forward(self, x):
        x = self.stem_norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        read = []
        for conv, norm, up, down in zip(self.convs, self.norms, self.ups, self.downs, strict=True):
            read.append(x)
            y = down(F.gelu(up(norm(conv(x).permute(0, 2, 3, 1)))))
            x = x + y.permute(0, 3, 1, 2)
        return (*read, x) if self.keep else x


def test_a_convolutions_channels_last_input_is_written_channels_last():
    """Each block's convolution reads a channels-last tensor in eager (not contiguous, so not
    converted whole): the norm and the first block's sum are stored NHWC by an explicit copy and
    viewed back in PyTorch (NCHW_VIEW), with eager's strides, and the graph computes eager's value."""
    module, x = ConvNeXtBlocks(8).eval(), torch.randn(2, 8, 9, 7)
    names, params = zip(*module.named_parameters(), strict=True)
    call = lambda x, *ps: torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))  # noqa: E731
    gm = make_fx(call, tracing_mode="fake")(x, *[p.detach() for p in params])
    convs = [n for n in gm.graph.nodes if n.target is aten.convolution.default]
    assert not any(c.args[0].meta["val"].is_contiguous() for c in convs)
    assert channels_last_convolutions(gm) == 2
    assert all(is_nchw_view(c.args[0]) for c in convs)
    view = convs[1].args[0]
    assert view.target is aten.permute.default and is_nchw_view(view) and list(view.args[1]) == [0, 3, 1, 2]
    copy = view.args[0]
    assert copy.target is aten.clone.default and is_explicit_copy(copy) and copy.meta["val"].is_contiguous()
    assert view.meta["val"].is_contiguous(memory_format=torch.channels_last)
    residual = [n for n in gm.graph.nodes if n.target is aten.add.Tensor and view in n.args]
    assert residual  # the second block's residual reads the same view
    with torch.no_grad():
        torch.testing.assert_close(gm(x, *params), module(x), rtol=1e-5, atol=1e-5)


class SharedInputs(nn.Module):
    """`h` is read by a convolution and a residual add, `y` by two convolutions (ResNet's block
    output: the next block's convolution and its shortcut), `z` by a convolution and a view."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c2, self.c3 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1, stride=2)
        self.c4 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = torch.relu(self.c0(x))
        y = torch.relu(self.c1(h)) + h
        z = self.c2(y) + 1
        return self.c4(z), z.flatten(1).sum(1), self.c3(y)


def test_an_input_read_by_convolutions_and_pointwise_ops_is_stored_nhwc_once(channels_last, monkeypatch):
    """A convolution's input that other convolutions or pointwise ops read too is written NHWC once,
    for all of them (`_share_nhwc_input`): the convolutions read the view as it is, the add reads it;
    an input also read by anything else (a view) keeps its own copy. Compiled: eager's values and
    strides, and fewer kernels than with a copy per convolution."""
    from tilefuse.compiler import conv_layout
    from tilefuse.passes import fusion_groups as fg

    # the kernels counted are the copies sharing removes: at these sizes the copies left without sharing
    # would join as small siblings (fusion_groups.SMALL_SIBLING) and hide one
    monkeypatch.setattr(fg, "SMALL_SIBLING", 0)
    torch.manual_seed(0)
    module, x = SharedInputs().eval(), torch.randn(2, 3, 10, 9)
    names, params = zip(*module.named_parameters(), strict=True)
    call = lambda x, *ps: torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))  # noqa: E731
    gm = make_fx(call, tracing_mode="fake")(x, *[p.detach() for p in params])
    assert channels_last_convolutions(gm) == 5
    c0, c1, c2, c4, c3 = [n for n in gm.graph.nodes if n.target is aten.convolution.default]  # run order
    assert is_nchw_view(c1.args[0]) and c2.args[0] is c3.args[0] and is_nchw_view(c2.args[0])
    (add,) = [n for n in c1.args[0].users if n.target is aten.add.Tensor]  # h's residual reads the view
    assert not is_nchw_view(c4.args[0]) and not is_nchw_view(c0.args[0])  # z is viewed; x is an input
    with torch.no_grad():
        for got, want in zip(gm(x, *params), module(x), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    kernels = {}
    for share in (True, False):
        if not share:
            conv_layout._share_nhwc_input, shared = (lambda *args: None), conv_layout._share_nhwc_input
        try:
            torch._dynamo.reset()
            reports = compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
        finally:
            if not share:
                conv_layout._share_nhwc_input = shared
        kernels[share] = len(fusion_groups(reports))
        with torch.no_grad():
            got, want = tilefuse.compile(module)(x), module(x)
        assert [t.stride() for t in got] == [t.stride() for t in want]
    assert kernels[True] == kernels[False] - 3, kernels  # h's copy and y's two (one a convolution) are gone


def test_zero_width_pads_are_dropped_and_others_kept(channels_last):
    """TF-style padding pads by nothing before a 1x1 convolution: that copy goes (`drop_identity_pads`),
    so the block's output is shared NHWC with its residual add; a real pad and a zero pad that is a
    graph output stay. Compiled: eager's values and strides."""
    from tilefuse.compiler.conv_layout import drop_identity_pads

    class TFPadded(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3)

        def forward(self, x):
            y = torch.relu(self.c0(F.pad(x, (0, 0, 0, 0))))
            z = self.c1(F.pad(y, (0, 0, 0, 0))) + y
            return self.c2(F.pad(z, (1, 1, 1, 1))), F.pad(z, (0, 0, 0, 0))

    module, x = TFPadded().eval(), torch.randn(2, 3, 9, 7)
    names, params = zip(*module.named_parameters(), strict=True)
    call = lambda x, *ps: torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (x,))  # noqa: E731
    gm = make_fx(call, tracing_mode="fake")(x, *[p.detach() for p in params])
    pads = lambda: [n for n in gm.graph.nodes if n.target is aten.constant_pad_nd.default]  # noqa: E731
    assert len(pads()) == 4
    assert drop_identity_pads(gm) == 2 and len(pads()) == 2  # the real pad and the result's stay
    torch._dynamo.reset()
    compile_and_compare(module, x, rtol=1e-5, atol=1e-5, allow_fallbacks=True)
    with torch.no_grad():
        got, want = tilefuse.compile(module)(x), module(x)
    assert [t.stride() for t in got] == [t.stride() for t in want]
    assert got[1].data_ptr() != got[0].data_ptr()


def test_convnext_blocks_give_their_convolutions_eager_layouts(channels_last):
    """Compiled, the tensors the convolutions read (the norm, the first block's sum) and the result
    come back in eager's layout, channels-last, viewed from the compiled NHWC storage; the values
    are eager's."""
    torch.manual_seed(0)
    module, x = ConvNeXtBlocks(8).eval(), torch.randn(2, 8, 9, 7)
    module.keep = True
    reports = compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert sum("channels-last tensor" in r for r in reasons) == 3, reasons  # two inputs, the result
    with torch.no_grad():
        got, want = tilefuse.compile(module)(x), module(x)
    assert [t.stride() for t in got] == [t.stride() for t in want]
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in got)


def test_float32_convolutions_keep_eagers_precision(monkeypatch):
    """On the GPU's default setting a float32 convolution is converted only where cuDNN cannot pick a
    TF32 kernel eager's NCHW one was not (`f32_layout_exact`) or measured as exact on the device
    (`nhwc_as_exact`; never on CPU); 16-bit and depthwise ones always are."""
    monkeypatch.setenv(LAYOUT_ENV, "auto")
    x, w = torch.randn(1, 4, 8, 8), torch.randn(6, 4, 3, 3)
    assert torch.get_float32_matmul_precision() == "highest" and torch.backends.cudnn.allow_tf32
    assert channels_last_convolutions(_aten_graph(F.conv2d, x, w)) == 0
    assert channels_last_convolutions(_aten_graph(F.conv2d, x.bfloat16(), w.bfloat16())) == 1
    # a depthwise one has no GEMM to run in TF32: converted
    assert channels_last_convolutions(_aten_graph(F.conv2d, x, torch.randn(4, 1, 3, 3), groups=4)) == 1
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert channels_last_convolutions(_aten_graph(F.conv2d, x, w)) == 1
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    torch.set_float32_matmul_precision("high")
    try:
        assert channels_last_convolutions(_aten_graph(F.conv2d, x, w)) == 1
    finally:
        torch.set_float32_matmul_precision("highest")


def test_float32_convolutions_measured_on_the_device(monkeypatch):
    """Where TF32 may be used and precision is "highest", a float32 convolution on CUDA is converted
    where its NHWC kernel's error against float64 is no worse than eager NCHW's (both TF32, or both
    exact), once per geometry; not where NHWC alone is TF32 (`nhwc_as_exact`, fake errors here)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from tilefuse.compiler import conv_layout

    monkeypatch.setattr(conv_layout, "_EXACT", {})
    errors, probed, probe = {}, [], conv_layout.probe_errors

    def fake_probe(x, w, params):
        probed.append(tuple(x.shape))
        return errors[tuple(x.shape)]

    monkeypatch.setattr(conv_layout, "probe_errors", fake_probe)
    with FakeTensorMode(allow_non_fake_inputs=True):
        shapes = (1, 4, 8, 8), (2, 4, 8, 8), (3, 4, 8, 8), (4, 4, 8, 8)
        xs = [torch.empty(s, device="cuda") for s in shapes]
        w = torch.empty(6, 4, 3, 3, device="cuda")
    params = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    errors.update({shapes[0]: (2.9e-4, 3.1e-4), shapes[1]: (9.9e-7, 3.0e-4), shapes[2]: (1e-7, 4e-7)})
    errors[shapes[3]] = (1e-4, 2.1e-4)  # both TF32, NHWC more than twice eager's: kept
    assert [conv_layout.nhwc_as_exact(x, w, params) for x in xs] == [True, False, True, False]
    assert conv_layout.nhwc_as_exact(xs[0], w, params) and probed == list(shapes)  # measured once
    assert not conv_layout.nhwc_as_exact(torch.empty(1, 4, 8, 8), torch.empty(6, 4, 3, 3), params)  # CPU

    def failing_probe(x, w, params):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(conv_layout, "probe_errors", failing_probe)  # a probe that fails: NCHW, not cached
    with FakeTensorMode(allow_non_fake_inputs=True):
        x5 = torch.empty(5, 4, 8, 8, device="cuda")
    assert not conv_layout.nhwc_as_exact(x5, w, params) and len(conv_layout._EXACT) == 4
    # the real probe, on CPU (both layouts exact float32): its errors are float32's
    eager, nhwc = probe(torch.randn(2, 4, 9, 7), torch.empty(6, 4, 3, 3), params)
    assert 0 <= eager < 1e-5 and 0 <= nhwc < 1e-5


def test_setting(monkeypatch):
    monkeypatch.delenv(LAYOUT_ENV, raising=False)
    assert conv_layout_enabled(True) and not conv_layout_enabled(False)
    monkeypatch.setenv(LAYOUT_ENV, "off")
    assert not conv_layout_enabled(True)
    monkeypatch.setenv(LAYOUT_ENV, "nhwc")
    with pytest.raises(ValueError, match="channels_last"):
        conv_layout_enabled(True)
    with pytest.raises(ValueError, match="TILEFUSE_CONV_LAYOUT"):  # said by compile, not a failed trace
        tilefuse.compile(lambda x: x + 1)


def _eval_batch_norm(channels: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(channels).eval()
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1), norm.running_var.uniform_(0.5, 2), norm.weight.uniform_(0.5, 2)
    return norm


@pytest.mark.parametrize(
    "make, shape, tiled",
    [
        (lambda: ConvReluBias(nn.Conv2d(16, 16, 3), 16, 2), (2, 16, 9, 11), 3),
        (lambda: ConvReluBias(nn.Conv2d(17, 19, (3, 2), stride=2, padding=1), 19, 2), (3, 17, 13, 10), 3),
        (lambda: ConvReluBias(nn.Conv3d(16, 16, 3), 16, 3), (2, 16, 5, 6, 7), 3),
        (lambda: ConvReluBias(nn.ConvTranspose2d(16, 16, 3, stride=2), 16, 2), (2, 16, 5, 6), 3),
        (lambda: ConvReluBias(nn.Conv2d(3, 5, 3), 5, 2), (2, 3, 9, 11), 0),  # under a tile's edge: flat
        # an eval BatchNorm's per-channel scale, computed in the copy back's kernel: still tiles
        (lambda: nn.Sequential(nn.Conv2d(16, 24, 3), _eval_batch_norm(24), nn.ReLU()), (2, 16, 9, 11), 3),
    ],
    ids=["conv2d", "strided_ragged", "conv3d", "transposed", "few_channels", "batch_norm"],
)
def test_convolution_then_epilogue_matches_eager(channels_last, make, shape, tiled):
    """Three kernels, transposing copies (in 2-d tiles where rows and columns fill one): the input and
    the weight to NHWC (the weight's once: parameters only), and the copy back fused with the bias,
    ReLU and the parameter after the convolution; the output has eager's strides."""
    torch.manual_seed(0)
    module, x = make(), torch.randn(*shape)
    reports = compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
    assert reports[0]["conv_layout"].startswith("1 convolution")
    groups = fusion_groups(reports)
    assert [g["kind"] for g in groups] == ["pointwise"] * 3, groups
    executors = " ".join(p["executor"] for r in reports for p in r["partitions"])
    assert "1 on parameters only" in executors, executors
    assert sum("BLOCK_X" in g["config"] for g in groups) == tiled, [g["config"] for g in groups]
    fallbacks = {f["op"] for r in reports for f in r["fallbacks"]}
    assert fallbacks == {"aten.convolution.default", "aten.permute.default"}, fallbacks
    out = tilefuse.compile(module)(x)
    assert out.stride() == module(x).stride()


def test_view_after_the_convolution_sees_eager_strides(channels_last):
    module, x = ConvFlattenLinear(4 * 7 * 9), torch.randn(2, 3, 7, 9)
    reports = compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
    assert reports[0]["conv_layout"].startswith("1 convolution")


def test_off_leaves_the_graph(monkeypatch):
    monkeypatch.setenv(LAYOUT_ENV, "off")
    torch._dynamo.reset()
    module, x = ConvReluBias(nn.Conv2d(3, 5, 3), 5, 2), torch.randn(2, 3, 9, 11)
    reports = compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
    assert "conv_layout" not in reports[0]
    assert {f["op"] for r in reports for f in r["fallbacks"]} == {"aten.convolution.default"}


def test_convolution_alone_returns_eager_strides(channels_last):
    """Nothing after the convolution but its bias: the copy back with the bias is a kernel of its
    own, and the result is row-major as eager's, not a view of the NHWC one."""
    module, x = nn.ConvTranspose2d(3, 4, 3, stride=2), torch.randn(2, 3, 5, 6)
    reports = compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
    assert [g["kind"] for g in fusion_groups(reports)] == ["pointwise"] * 3
    out = tilefuse.compile(module)(x)
    assert out.stride() == module(x).stride() and out.is_contiguous()


def test_a_models_own_contiguous_stays_a_view_for_its_readers():
    """`.contiguous()` of a transposed tensor before a matmul: the GEMM reads the transpose through
    its strides, as before the conversion back became a copy (one kernel, no pointwise copy)."""
    fn = lambda a, b: a.transpose(0, 1).contiguous() @ b  # noqa: E731
    reports = compile_and_compare(fn, torch.randn(24, 16), torch.randn(24, 8), rtol=1e-4, atol=1e-4)
    assert [g["kind"] for g in fusion_groups(reports)] == ["gemm"]


# --- pointwise kernels that read an operand transposed: 2-d tiles (lower_to_tile.lower_pointwise) ---------


@settings(max_examples=10, deadline=None)
@given(
    dims=st.lists(st.integers(1, 40), min_size=2, max_size=4),
    data=st.data(),
)
def test_transposed_pointwise_kernels_match_eager(dims, data):
    """A map over a permuted operand (any permutation, ragged sizes): tiled where the operand's
    innermost dim moves and both sides of the split reach a tile's edge, flat otherwise; eager's
    values either way."""
    perm = data.draw(st.permutations(range(len(dims))))
    torch._dynamo.reset()
    x, b = torch.randn(*dims), torch.randn(1)
    fn = lambda x, b: torch.sigmoid(x.permute(*perm)) * b  # noqa: E731
    reports = compile_and_compare(fn, x, b, rtol=1e-5, atol=1e-5)
    (group,) = fusion_groups(reports)
    out_shape = [dims[p] for p in perm]
    j = list(perm).index(len(dims) - 1)
    rows, cols = math.prod(out_shape[: j + 1]), math.prod(out_shape[j + 1 :])
    tiled = j < len(dims) - 1 and min(rows, cols) >= 16
    assert ("BLOCK_X" in group["config"]) == tiled, (perm, dims, group["config"])


class _TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


def test_nhwc_buffers_for_a_convolution_are_allocated_as_its_nchw_view(channels_last, tmp_path):
    """Each convolution's input and weight are written NHWC by a kernel (the weight's once) and reach
    cuDNN as NCHW views: the programs allocate each such buffer as that view and pass it to the kernels
    with the NHWC strides, so no permute runs per call, and the result is eager's."""
    torch.manual_seed(0)
    module, x = _TwoConvs().eval(), torch.randn(2, 3, 9, 7)
    with torch.no_grad():
        compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
        tilefuse.compile(module, dump=tmp_path)(x)
    programs = [p.read_text() for p in tmp_path.rglob("program_*.py")]
    source = "\n".join(programs)
    assert source.count("allocated as this view") == 4 and ".permute(" not in source, source
    assert "_empty((2, 8, 9, 7), (504, 1, 56, 8), torch.float32)" in source, source  # channels-last


class SharedReaders(nn.Module):
    """A computed convolution input `h` read besides by: a pointwise result (0), a transposed
    convolution and a reduction (1), a depthwise convolution and two adds (2), a gate before a
    view (3), BatchNorm'd sums through zero pads (4), a select and a concatenation (5)."""

    def __init__(self, case: int):
        super().__init__()
        self.case = case
        self.a, self.b = nn.Conv2d(4, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.t = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.dw, self.bn = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)

    def forward(self, x):
        h = F.gelu(self.a(x))
        if self.case == 0:
            return self.b(h), h * 2
        if self.case == 1:
            return self.t(h), self.b(h) + h.mean()
        if self.case == 2:
            return self.b(self.dw(h) + h) + h
        if self.case == 3:
            return (self.b(h) * h.sigmoid()).flatten(1).softmax(-1)
        if self.case == 4:
            return self.bn(self.b(h)) + F.pad(h, (0, 0, 0, 0)) - self.dw(F.pad(h, (0, 0, 0, 0)))
        return self.b(torch.where(h > 0, h, -h)), torch.cat([h, h], 1)


@pytest.mark.parametrize(
    "case, train", [(c, False) for c in range(6)] + [(2, True), (4, True)], ids=lambda v: str(v)
)
def test_shared_inputs_with_any_readers_match_eager(channels_last, case, train):
    """Whatever else reads a shared convolution input, values, strides and (training) gradients are
    eager's."""
    torch.manual_seed(case)
    module = SharedReaders(case).train(train)
    x = torch.randn(2, 4, 10, 9, requires_grad=train)
    torch._dynamo.reset()
    compiled = tilefuse.compile(module)
    got, want = compiled(x), module(x)
    got, want = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert a.stride() == b.stride()
    assert compiled.tilefuse_reports[0]["conv_layout"].endswith("run channels-last, converted back after")
    if train:
        wanted = [x, module.a.weight]
        grads = torch.autograd.grad(sum(o.sum() for o in got), wanted)
        for a, b in zip(grads, torch.autograd.grad(sum(o.sum() for o in want), wanted), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
