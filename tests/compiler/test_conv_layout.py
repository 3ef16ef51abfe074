"""Convolutions run channels-last (compiler/conv_layout.py): the rewrite, and models against eager.

On CPU the pass is forced with TILEFUSE_CONV_LAYOUT=channels_last (its default is on a GPU only);
the oracle is eager PyTorch on the same module, values and output strides both.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from helpers import compile_and_compare, fusion_groups
from tilefuse.compiler.conv_layout import LAYOUT_ENV, channels_last_convolutions, conv_layout_enabled

aten = torch.ops.aten


@pytest.fixture
def channels_last(monkeypatch):
    monkeypatch.setenv(LAYOUT_ENV, "channels_last")
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


def test_rewrite_converts_input_and_weight_and_back():
    x, w = torch.randn(2, 3, 9, 11), torch.randn(5, 3, 3, 3)
    gm = _aten_graph(F.conv2d, x, w, padding=1)
    assert channels_last_convolutions(gm) == 1
    clones = [n for n in gm.graph.nodes if n.target is aten.clone.default]
    formats = sorted(str(n.kwargs["memory_format"]) for n in clones)
    assert formats == ["torch.channels_last", "torch.channels_last", "torch.contiguous_format"]
    (conv,) = [n for n in gm.graph.nodes if n.target is aten.convolution.default]
    assert all(a.target is aten.clone.default for a in conv.args[:2])
    assert conv.meta["val"].is_contiguous(memory_format=torch.channels_last)
    assert [u.kwargs["memory_format"] for u in conv.users] == [torch.contiguous_format]
    out = gm(x, w)
    torch.testing.assert_close(out, F.conv2d(x, w, padding=1))
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


def test_depthwise_convolutions_are_converted():
    gm = _aten_graph(F.conv2d, torch.randn(1, 4, 8, 8), torch.randn(4, 1, 3, 3), groups=4)
    assert channels_last_convolutions(gm) == 1


def test_setting(monkeypatch):
    monkeypatch.delenv(LAYOUT_ENV, raising=False)
    assert conv_layout_enabled(True) and not conv_layout_enabled(False)
    monkeypatch.setenv(LAYOUT_ENV, "off")
    assert not conv_layout_enabled(True)
    monkeypatch.setenv(LAYOUT_ENV, "nhwc")
    with pytest.raises(ValueError, match="channels_last"):
        conv_layout_enabled(True)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: ConvReluBias(nn.Conv2d(3, 5, 3), 5, 2), (2, 3, 9, 11)),
        (lambda: ConvReluBias(nn.Conv2d(6, 7, (3, 2), stride=2, padding=1), 7, 2), (3, 6, 13, 10)),
        (lambda: ConvReluBias(nn.Conv3d(2, 3, 3), 3, 3), (2, 2, 5, 6, 7)),
        (lambda: ConvReluBias(nn.ConvTranspose2d(3, 4, 3, stride=2), 4, 2), (2, 3, 5, 6)),
    ],
    ids=["conv2d", "strided_ragged", "conv3d", "transposed"],
)
def test_convolution_then_epilogue_matches_eager(channels_last, make, shape):
    """The conversion back fuses into the kernel after the convolution: one pointwise kernel, no
    copy of its own; the output has eager's strides."""
    torch.manual_seed(0)
    module, x = make(), torch.randn(*shape)
    reports = compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
    assert reports[0]["conv_layout"].startswith("1 convolution")
    assert [g["kind"] for g in fusion_groups(reports)] == ["pointwise"]
    fallbacks = {f["op"] for r in reports for f in r["fallbacks"]}
    assert fallbacks == {"aten.convolution.default", "aten.clone.default"}, fallbacks
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
    """Nothing after the convolution: the conversion back is a copy kernel of its own, and the
    result is row-major as eager's, not a view of the NHWC one."""
    module, x = nn.ConvTranspose2d(3, 4, 3, stride=2), torch.randn(2, 3, 5, 6)
    reports = compile_and_compare(module, x, rtol=1e-4, atol=1e-4, allow_fallbacks=True)
    assert [g["kind"] for g in fusion_groups(reports)] == ["pointwise"]
    out = tilefuse.compile(module)(x)
    assert out.stride() == module(x).stride() and out.is_contiguous()


def test_a_models_own_contiguous_stays_a_view_for_its_readers():
    """`.contiguous()` of a transposed tensor before a matmul: the GEMM reads the transpose through
    its strides, as before the conversion back became a copy (one kernel, no pointwise copy)."""
    fn = lambda a, b: a.transpose(0, 1).contiguous() @ b  # noqa: E731
    reports = compile_and_compare(fn, torch.randn(24, 16), torch.randn(24, 8), rtol=1e-4, atol=1e-4)
    assert [g["kind"] for g in fusion_groups(reports)] == ["gemm"]
