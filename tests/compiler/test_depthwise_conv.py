"""Depthwise convolutions compiled as stencils (compiler/depthwise_conv.py): one generated kernel
that sums the taps' shifted windows of the zero-padded input (passes/tile_builder's padding read
without selects, passes/lower_to_tile._stencil_split's 2-d tiles).

The oracle is float64 PyTorch: the compiled result is as close to it as eager's, in float32 and
bfloat16, on ragged sizes (no tile divides them), with strides, dilations, 1-d and 2-d kernels,
and whatever follows the convolution fused into the same kernel.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from helpers import fusion_groups
from tilefuse.compiler.depthwise_conv import DEPTHWISE_ENV, depthwise_stencils

aten = torch.ops.aten


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(autouse=True)
def _stencils(monkeypatch):
    monkeypatch.setenv(DEPTHWISE_ENV, "stencil")  # off by default: slower than cuDNN so far


def _compiled_eager_float64(module: nn.Module, x: torch.Tensor):
    """`module` compiled (its one convolution a stencil), and its output compiled, eager and in
    float64."""
    compiled = tilefuse.compile(module)
    with torch.no_grad():
        out, eager = compiled(x), module(x)
        ref = module.double()(x.double())
    (report,) = compiled.tilefuse_reports
    assert report["depthwise"].startswith("1 depthwise")
    return compiled, out, eager, ref


class ConvGelu(nn.Module):
    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return F.gelu(self.conv(x)) + 0.5


CASES = [  # (input shape, kernel, stride, padding, dilation, bias)
    ((3, 7, 19, 21), 3, 1, 1, 1, True),  # rows 399, columns 21: 2-d tiles
    ((2, 10, 23, 17), 7, 1, 3, 1, True),  # ConvNeXt's 7x7
    ((3, 6, 13, 11), 3, 2, 1, 1, False),  # strided, no bias
    ((2, 9, 12, 15), 3, 1, 2, 2, True),  # dilated
    ((2, 3, 5, 6), (1, 3), 1, (0, 1), 1, True),  # rows of 6: the flat kernel
    ((2, 12, 37), 4, 1, 3, 1, True),  # 1-d (Mamba's causal convolution before its slice)
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("shape, kernel, stride, padding, dilation, bias", CASES)
def test_stencil_matches_float64_as_eager_does(shape, kernel, stride, padding, dilation, bias, dtype):
    channels = shape[1]
    make = nn.Conv2d if len(shape) == 4 else nn.Conv1d
    conv = make(
        channels,
        channels,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=channels,
        bias=bias,
    )
    module = ConvGelu(conv).to(dtype)
    compiled, out, eager, ref = _compiled_eager_float64(module, torch.randn(shape, dtype=dtype))
    assert not compiled.tilefuse_reports[0]["fallbacks"]
    groups = fusion_groups(compiled.tilefuse_reports)
    assert [g["kind"] for g in groups] == ["pointwise"] and groups[0]["kernel"]  # GELU and the add fused
    assert out.shape == eager.shape and out.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert _relative_error(out, ref) <= max(2 * _relative_error(eager, ref), tolerance)


def test_wide_stencil_reads_in_2d_tiles(monkeypatch, tmp_path):
    """Rows ([batch, channel, height]) by columns (width): a tap's bounds are a row's and a column's."""
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8)
    x = torch.randn(4, 8, 9, 30)
    compiled = tilefuse.compile(conv, dump=str(tmp_path))
    with torch.no_grad():
        out = compiled(x)
        ref = conv.double()(x.double())
    assert _relative_error(out, ref) < 1e-6
    (group,) = fusion_groups(compiled.tilefuse_reports)
    assert "BLOCK_X" in group["config"] and "BLOCK_Y" in group["config"]
    (source,) = [p.read_text() for p in tmp_path.rglob("kernels/*.py")]
    assert "GRID = ('cdiv(30, BLOCK_X)', 'cdiv(288, BLOCK_Y)')" in source
    # the zero padding is the loads' masks: no select of a zero per tap
    assert not re.search(r"tl\.where\([^,]+, (0\.0, |[^,]+, 0\.0\))", source)
    assert source.count("tl.load(") == 25 + 25 + 1  # taps, their weights, the bias


def test_rewrite_is_one_map_over_windows_of_the_padded_input():
    x, w, b = torch.randn(2, 4, 9, 11), torch.randn(4, 1, 3, 3), torch.randn(4)
    gm = make_fx(lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=4), tracing_mode="fake")(x, w, b)
    assert depthwise_stencils(gm) == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert aten.convolution.default not in targets
    assert targets.count(aten.constant_pad_nd.default) == 1 and targets.count(aten.mul.Tensor) == 9
    torch.testing.assert_close(gm(x, w, b), F.conv2d(x, w, b, padding=1, groups=4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "x, w, options",
    [
        (torch.randn(1, 4, 8, 8), torch.randn(4, 2, 3, 3), dict(groups=2)),  # two channels a group
        (torch.randn(1, 4, 8, 8), torch.randn(8, 1, 3, 3), dict(groups=4)),  # a channel multiplier
        (torch.randn(1, 3, 8, 8), torch.randn(3, 1, 9, 9), dict(groups=3, padding=4)),  # 81 taps
        (torch.randn(1, 3, 8, 8).double(), torch.randn(3, 1, 3, 3).double(), dict(groups=3)),
    ],
    ids=["grouped", "multiplier", "81-taps", "float64"],
)
def test_other_convolutions_stay_convolutions(x, w, options):
    gm = make_fx(lambda x, w: F.conv2d(x, w, None, **options), tracing_mode="fake")(x, w)
    assert depthwise_stencils(gm) == 0


def test_symbolic_sizes_stay_convolutions():
    x, w = torch.randn(2, 3, 9, 11), torch.randn(3, 1, 3, 3)
    gm = make_fx(lambda x, w: F.conv2d(x, w, groups=3), tracing_mode="symbolic")(x, w)
    assert depthwise_stencils(gm) == 0


@pytest.mark.parametrize("setting", [None, "pytorch"], ids=["default", "pytorch"])
def test_default_and_switch_leave_the_convolution_to_pytorch(monkeypatch, setting):
    if setting is None:
        monkeypatch.delenv(DEPTHWISE_ENV)
    else:
        monkeypatch.setenv(DEPTHWISE_ENV, setting)
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(2, 4, 6, 6)
    compiled = tilefuse.compile(conv)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), conv(x))
    (report,) = compiled.tilefuse_reports
    assert "depthwise" not in report
    assert [f["op"] for f in report["fallbacks"]] == ["aten.convolution.default"]
    monkeypatch.setenv(DEPTHWISE_ENV, "sometimes")
    with pytest.raises(ValueError, match=DEPTHWISE_ENV):
        tilefuse.compile(conv)


class ConvNeXtBlock(nn.Module):
    """A ConvNeXt block: 7x7 depthwise convolution, layer norm and MLP over [N, H, W, C], permuted
    back and added to the input. Eager's result is channels-last."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.up, self.down = nn.Linear(channels, 4 * channels), nn.Linear(4 * channels, channels)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)  # the caller's [N, H, W, C] as NCHW with channels-last strides
        y = self.down(F.gelu(self.up(self.norm(self.conv(x).permute(0, 2, 3, 1)))))
        return x + y.permute(0, 3, 1, 2)


def test_convnext_block_keeps_eager_values_and_layout(monkeypatch):
    """The stencil reads the channels-last input through its strides; with the layout pass on (as
    on a GPU) the channels-last result comes back with eager's strides."""
    monkeypatch.setenv("TILEFUSE_CONV_LAYOUT", "channels_last")
    compiled, out, eager, ref = _compiled_eager_float64(ConvNeXtBlock(16).eval(), torch.randn(2, 9, 11, 16))
    assert _relative_error(out, ref) <= max(2 * _relative_error(eager, ref), 1e-6)
    assert out.stride() == eager.stride() and out.is_contiguous(memory_format=torch.channels_last)
