"""KernelBench-style cases: small `nn.Module`s, single ops (level 1), fused op chains (level 2) and
small models (level 3), each timed in eager PyTorch, under `torch.compile` and under tilefuse.

    python -m tilefuse.benchmarks.kernelbench [--dtype bfloat16|float32|both] [--cases a,b,...]
        [--out FILE.md] [--max-autotune] [--fp32-precision highest|high|medium] [--small]
        [--no-torch-compile]

For each case and dtype the module is built (seeded random weights, eval mode, on the GPU, in the
dtype) with seeded random inputs, and run under `torch.no_grad()` by each candidate: eager,
`torch.compile` (default mode), `torch.compile(mode="max-autotune-no-cudagraphs")` with
`--max-autotune` (slow to compile: off by default) and `tilefuse.compile`. A compiled candidate is
called SETTLE_CALLS times before it is timed (tilefuse measures its own choices during its first
calls), then timed with `triton.testing.do_bench`'s median. Every candidate is checked against a
float64 copy of the module on the same device, its inputs upcast: the error is max |out − ref| /
max |ref|, and a candidate whose error passes 10x eager's own plus a floor for the dtype is WRONG.
One candidate's exception is a table cell, never the end of the run. The table ends with the
geomeans of tilefuse's speedups and the rows where tilefuse is slower than eager, WRONG or failed.
`--small` runs the tiny sizes the CPU test uses (mostly 33, 47, 100: no multiple of 16); without
a GPU it runs there (tilefuse's kernels run in Triton's interpreter with TILEFUSE_INTERPRET=1).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import tilefuse

from .cases import COMPILE, EAGER, MAX_AUTOTUNE, key_padding
from .run import SUBJECT, describe_error, environment_lines, release_memory, time_ms

# calls before timing: tilefuse times its program against PyTorch over its first ~10 calls
SETTLE_CALLS = 12
SLOWER_THAN_EAGER = 0.97
WRONG_FACTOR = 10.0
# the least error counted WRONG, for ops eager gets (almost) exactly: about an ulp of the dtype at
# the output's largest magnitude
ERROR_FLOORS = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float16: 1e-3}
DTYPES = {"bfloat16": (torch.bfloat16,), "float32": (torch.float32,), "both": (torch.bfloat16, torch.float32)}
SHORT = {EAGER: "eager", COMPILE: "tc", MAX_AUTOTUNE: "max-autotune", SUBJECT: "tilefuse"}


# Level 1: single ops. Parameterless ones are a function in `Apply`.


class Apply(nn.Module):
    """A parameterless op as a module: `fn(*inputs)`."""

    def __init__(self, fn: Callable[..., Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.fn(*inputs)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def matmul(a: Tensor, b: Tensor) -> Tensor:
    return a @ b


def matmul_transposed_a(a: Tensor, b: Tensor) -> Tensor:
    return a.T @ b


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def rms_norm_dim1(x: Tensor) -> Tensor:
    """KernelBench's RMSNorm: over the channels (dim 1) of an image batch, without a weight."""
    return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-5)


def sum_dim1(x: Tensor) -> Tensor:
    return torch.sum(x, dim=1, keepdim=True)


def mean_dim1(x: Tensor) -> Tensor:
    return torch.mean(x, dim=1)


def max_dim1(x: Tensor) -> Tensor:
    return torch.max(x, dim=1).values


def argmax_dim1(x: Tensor) -> Tensor:
    return torch.argmax(x, dim=1)


def prod_dim1(x: Tensor) -> Tensor:
    """KernelBench's product over dim 1, of factors near 1 so that 512 of them stay finite."""
    return torch.prod(1 + x / 64, dim=1)


def argmin_dim1(x: Tensor) -> Tensor:
    return torch.argmin(x, dim=1)


def cumsum_dim1(x: Tensor) -> Tensor:
    return torch.cumsum(x, dim=1)


def cumprod_dim1(x: Tensor) -> Tensor:
    return torch.cumprod(x, dim=1)


def cumsum_reverse(x: Tensor) -> Tensor:
    return torch.cumsum(x.flip(1), dim=1).flip(1)


def cumsum_exclusive(x: Tensor) -> Tensor:
    """KernelBench's exclusive cumsum, its slice of the batch dim included."""
    shifted = torch.cat((torch.zeros_like(x.select(1, 0).unsqueeze(1)), x), dim=1)[:-1]
    return torch.cumsum(shifted, dim=1)


def cumsum_masked(x: Tensor, m: Tensor) -> Tensor:
    return torch.cumsum(x * (m > 0), dim=1)


def l2_normalize(x: Tensor) -> Tensor:
    return x / x.norm(dim=1, keepdim=True)


def mse_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    return torch.mean((predictions - targets) ** 2)


def cosine_similarity_loss(predictions: Tensor, targets: Tensor) -> Tensor:
    return torch.mean(1 - F.cosine_similarity(predictions, targets, dim=1))


def frobenius_normalize(x: Tensor) -> Tensor:
    return x / torch.norm(x, p="fro")


class ManualRMSNorm(nn.Module):
    """Llama's RMSNorm written out: x * rsqrt(mean(x²) + eps) * weight over the last dim."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def layer_norm(dim: int) -> nn.LayerNorm:
    """nn.LayerNorm with a random affine (ones and zeros would hide a mistake in either)."""
    norm = nn.LayerNorm(dim)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.1)
        norm.bias.normal_(0.0, 0.1)
    return norm


# Level 2: op chains around a GEMM (or a convolution, which stays in PyTorch).


class LinearGelu(nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.linear = nn.Linear(k, n)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.linear(x))


class LinearReluScaleResidual(nn.Module):
    def __init__(self, d: int, scale: float = 0.5):
        super().__init__()
        self.linear, self.scale = nn.Linear(d, d), scale

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.linear(x)) * self.scale + x


class LinearSigmoidSum(nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.linear = nn.Linear(k, n)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.linear(x)).sum(dim=1, keepdim=True)


class LinearLayerNorm(nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.linear, self.norm = nn.Linear(k, n), layer_norm(n)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.linear(x))


class Conv2dReluBias(nn.Module):
    """KernelBench 2.1: a convolution (PyTorch's), ReLU, plus a per-channel bias."""

    def __init__(self, c: int, o: int):
        super().__init__()
        self.conv = nn.Conv2d(c, o, kernel_size=3)
        self.bias = nn.Parameter(0.02 * torch.randn(o, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x)) + self.bias


class ConvTransposeGelu(nn.Module):
    """A transposed 2-d convolution (PyTorch's), then GELU: upsampling in a decoder."""

    def __init__(self, c: int, o: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(c, o, kernel_size=3, stride=2, padding=1, output_padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.conv(x))


class Conv3dRelu(nn.Module):
    def __init__(self, c: int, o: int):
        super().__init__()
        self.conv = nn.Conv3d(c, o, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x))


class LinearDropoutSoftmax(nn.Module):
    def __init__(self, k: int, n: int):
        super().__init__()
        self.linear, self.dropout = nn.Linear(k, n), nn.Dropout(0.1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.dropout(self.linear(x)), dim=1)


class LinearClampScale(nn.Module):
    """x @ W.T + b written out, clamped to [-1, 1], doubled; W large enough that the clamp bites."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n, k) / math.sqrt(k))
        self.bias = nn.Parameter(0.1 * torch.randn(n))

    def forward(self, x: Tensor) -> Tensor:
        return torch.clamp(x @ self.weight.T + self.bias, -1, 1) * 2


class LinearSwishScale(nn.Module):
    def __init__(self, k: int, n: int, scale: float = 2.0):
        super().__init__()
        self.linear, self.scale = nn.Linear(k, n), scale

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        return x * torch.sigmoid(x) * self.scale


class LinearBatchNormGelu(nn.Module):
    """BatchNorm1d in eval mode is an affine map per feature, from random running statistics."""

    def __init__(self, k: int, n: int):
        super().__init__()
        self.linear, self.norm = nn.Linear(k, n), nn.BatchNorm1d(n)
        with torch.no_grad():
            self.norm.running_mean.normal_(0.0, 0.1)
            self.norm.running_var.uniform_(0.5, 2.0)
            self.norm.weight.normal_(1.0, 0.1)
            self.norm.bias.normal_(0.0, 0.1)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.norm(self.linear(x)))


# Level 3: small models.


def mlp3(k: int, h: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(k, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))


class MinGPTCausalSelfAttention(nn.Module):
    """minGPT's attention block: the mask is a registered tril buffer, sliced to the sequence."""

    def __init__(self, c: int, heads: int, max_seq: int):
        super().__init__()
        self.q, self.k, self.v, self.proj = (nn.Linear(c, c) for _ in range(4))
        self.attn_dropout, self.resid_dropout = nn.Dropout(0.1), nn.Dropout(0.1)
        self.heads = heads
        self.register_buffer("bias", torch.tril(torch.ones(max_seq, max_seq)).view(1, 1, max_seq, max_seq))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = (self.split_heads(linear(x)) for linear in (self.q, self.k, self.v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_dropout(self.proj(y))

    def split_heads(self, y: Tensor) -> Tensor:
        """(b, t, c) -> (b, heads, t, c / heads)."""
        b, t, c = y.shape
        return y.view(b, t, self.heads, c // self.heads).transpose(1, 2)


def encoder_layer(d: int, heads: int, ff: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(d, heads, dim_feedforward=ff, batch_first=True)


class PaddedEncoderLayer(nn.Module):
    """An encoder layer over padded rows (`key_padding`), its mask built from aranges in the forward
    (inference hands PyTorch's fused layer op the mask)."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.layer = encoder_layer(d, heads, ff)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x, src_key_padding_mask=key_padding(*x.shape[:2], x.device))


# The cases


@dataclass(frozen=True)
class Labels:
    """An integer input: class indices in [0, classes), of `shape`."""

    shape: tuple[int, ...]
    classes: int


Shape = tuple[int, ...]
InputSpec = Shape | Labels  # a shape (standard normal values) or class labels


@dataclass(frozen=True)
class KernelCase:
    """A module and its inputs at two sizes: `full` (a GPU's) and `small` (the CPU test's).

    `module(d)` builds it and `inputs(d)` gives its inputs' shapes from the dims `d` of the size.
    """

    name: str
    level: int
    module: Callable[[SimpleNamespace], nn.Module]
    inputs: Callable[[SimpleNamespace], list[InputSpec]]
    full: dict[str, int]
    small: dict[str, int]
    train: bool = False  # KernelBench's harness never calls eval(): its BatchNorm runs on batch statistics

    def dims(self, small: bool) -> SimpleNamespace:
        return SimpleNamespace(**(self.small if small else self.full))

    def build(self, small: bool) -> nn.Module:
        """The module, in float32 on the CPU, in eval mode unless `train` (seed the RNG first)."""
        return self.module(self.dims(small)).train(self.train)

    def get_inputs(self, device: torch.device, dtype: torch.dtype, small: bool) -> tuple[Tensor, ...]:
        """Random inputs (seed the RNG first): floats in `dtype`, labels as int64."""
        return tuple(
            torch.randint(0, spec.classes, spec.shape, device=device)
            if isinstance(spec, Labels)
            else torch.randn(spec, device=device, dtype=dtype)
            for spec in self.inputs(self.dims(small))
        )


def unary(name: str, fn: Callable[[Tensor], Tensor], full: Shape, small: Shape) -> KernelCase:
    """A level-1 case of one input of shape (b, d)."""
    sizes = dict(b=full[0], d=full[1]), dict(b=small[0], d=small[1])
    return KernelCase(name, 1, lambda d: Apply(fn), lambda d: [(d.b, d.d)], *sizes)


def binary(name: str, fn: Callable[[Tensor, Tensor], Tensor]) -> KernelCase:
    """A level-1 loss of two (b, d) inputs, predictions and targets."""
    sizes = dict(b=4096, d=8192), dict(b=33, d=100)
    return KernelCase(name, 1, lambda d: Apply(fn), lambda d: [(d.b, d.d)] * 2, *sizes)


ACTIVATION = ((4096, 8192), (33, 100))  # 32M elements: ~50 µs of bf16 traffic on an H200
MIDDLE = dict(b=64, r=512, d=1024), dict(b=3, r=33, d=47)  # reductions over r, the middle dim
GEMM = dict(m=4096, k=4096, n=4096), dict(m=100, k=47, n=33)


def middle(name: str, fn: Callable[[Tensor], Tensor]) -> KernelCase:
    return KernelCase(name, 1, lambda d: Apply(fn), lambda d: [(d.b, d.r, d.d)], *MIDDLE)


def gemm_chain(name: str, module: Callable[[int, int], nn.Module]) -> KernelCase:
    """A level-2 case: `module(k, n)` on x of (m, k)."""
    return KernelCase(name, 2, lambda d: module(d.k, d.n), lambda d: [(d.m, d.k)], *GEMM)


def op_case(name: str, fn: Callable[..., Tensor], inputs: Callable, full: dict, small: dict) -> KernelCase:
    """A level-1 case of a parameterless op on inputs of several shapes."""
    return KernelCase(name, 1, lambda d: Apply(fn), inputs, full, small)


# fmt: off
CASES: dict[str, KernelCase] = {case.name: case for case in (
    op_case("matmul_square", matmul, lambda d: [(d.n, d.n)] * 2, dict(n=4096), dict(n=47)),
    op_case("matmul_rect", matmul, lambda d: [(d.m, d.k), (d.k, d.n)],
            dict(m=2048, k=8192, n=1024), dict(m=33, k=100, n=47)),
    op_case("matmul_batched", torch.bmm, lambda d: [(d.b, d.m, d.k), (d.b, d.k, d.n)],
            dict(b=64, m=512, k=512, n=512), dict(b=3, m=33, k=47, n=20)),
    # a GEMV each way: one row times a matrix (a decode step's linear layer), a matrix times a column
    op_case("matvec_m1", matmul, lambda d: [(1, d.k), (d.k, d.n)], dict(k=8192, n=8192), dict(k=100, n=47)),
    op_case("matvec_n1", matmul, lambda d: [(d.m, d.k), (d.k, 1)], dict(m=8192, k=8192), dict(m=47, k=100)),
    op_case("matmul_transposed_a", matmul_transposed_a, lambda d: [(d.k, d.m), (d.k, d.n)],
            dict(m=2048, k=8192, n=2048), dict(m=33, k=100, n=47)),
    op_case("matmul_large_k", matmul, lambda d: [(d.m, d.k), (d.k, d.n)],
            dict(m=256, k=131072, n=256), dict(m=33, k=2000, n=47)),
    unary("relu", torch.relu, *ACTIVATION),
    unary("gelu", F.gelu, *ACTIVATION),
    unary("sigmoid", torch.sigmoid, *ACTIVATION),
    unary("tanh", torch.tanh, *ACTIVATION),
    unary("softplus", F.softplus, *ACTIVATION),
    unary("elu", F.elu, *ACTIVATION),
    unary("hardtanh", F.hardtanh, *ACTIVATION),
    unary("swish", swish, *ACTIVATION),
    unary("softmax", partial(torch.softmax, dim=-1), (4096, 4096), (33, 100)),
    unary("softmax_wide", partial(torch.softmax, dim=-1), (16, 262144), (3, 20000)),  # wider than a tile
    unary("log_softmax", partial(torch.log_softmax, dim=-1), (4096, 4096), (33, 100)),
    unary("log_softmax_wide", partial(torch.log_softmax, dim=-1), (16, 262144), (3, 20000)),
    KernelCase("layer_norm", 1, lambda d: layer_norm(d.d), lambda d: [(d.b, d.t, d.d)],
               dict(b=8, t=2048, d=4096), dict(b=2, t=33, d=100)),
    KernelCase("rms_norm", 1, lambda d: ManualRMSNorm(d.d), lambda d: [(d.b, d.t, d.d)],
               dict(b=8, t=2048, d=4096), dict(b=2, t=33, d=100)),
    # KernelBench 40 and 35: a LayerNorm over [C, H, W] (16 rows of 4M), a GroupNorm of 8 groups
    KernelCase("layer_norm_chw", 1, lambda d: nn.LayerNorm((d.c, d.h, d.w)), lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=16, c=64, h=256, w=256), dict(b=2, c=5, h=33, w=47)),
    KernelCase("group_norm", 1, lambda d: nn.GroupNorm(d.g, d.c), lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=16, c=64, g=8, h=256, w=256), dict(b=2, c=6, g=3, h=17, w=13)),
    # KernelBench 33 and 34, as its harness runs them: in training mode (batch statistics, running ones
    # updated); an InstanceNorm of 1024 rows
    KernelCase("batch_norm_train", 1, lambda d: nn.BatchNorm2d(d.c), lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=16, c=64, h=256, w=256), dict(b=2, c=5, h=33, w=47), train=True),
    KernelCase("instance_norm", 1, lambda d: nn.InstanceNorm2d(d.c), lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=16, c=64, h=256, w=256), dict(b=2, c=5, h=33, w=47)),
    op_case("rms_norm_dim1", rms_norm_dim1, lambda d: [(d.b, d.c, d.h, d.w)],
            dict(b=16, c=64, h=256, w=256), dict(b=2, c=5, h=33, w=47)),
    middle("sum_dim1", sum_dim1),
    middle("mean_dim1", mean_dim1),
    middle("max_dim1", max_dim1),
    middle("argmax_dim1", argmax_dim1),
    middle("argmin_dim1", argmin_dim1),
    middle("prod_dim1", prod_dim1),
    unary("cumsum", cumsum_dim1, (4096, 2048), (33, 100)),
    unary("cumsum_long_rows", cumsum_dim1, (128, 32768), (3, 5000)),  # rows walked in chunks
    unary("cumprod", cumprod_dim1, (4096, 2048), (33, 100)),
    unary("cumsum_reverse", cumsum_reverse, (4096, 2048), (33, 100)),  # one reverse scan
    unary("cumsum_exclusive", cumsum_exclusive, (4096, 2048), (33, 100)),
    op_case("cumsum_masked", cumsum_masked, lambda d: [(d.b, d.d)] * 2,
            dict(b=4096, d=2048), dict(b=33, d=100)),
    unary("l2_normalize", l2_normalize, *ACTIVATION),
    binary("mse_loss", mse_loss),
    KernelCase("cross_entropy", 1, lambda d: nn.CrossEntropyLoss(),
               lambda d: [(d.b, d.v), Labels((d.b,), d.v)], dict(b=4096, v=32000), dict(b=33, v=1000)),
    binary("cosine_similarity_loss", cosine_similarity_loss),
    unary("frobenius_normalize", frobenius_normalize, *ACTIVATION),
    binary("huber_loss", F.smooth_l1_loss),
    gemm_chain("linear_gelu", LinearGelu),
    KernelCase("linear_relu_scale_residual", 2, lambda d: LinearReluScaleResidual(d.k),
               lambda d: [(d.m, d.k)], dict(m=4096, k=4096), dict(m=100, k=47)),
    gemm_chain("linear_sigmoid_sum", LinearSigmoidSum),
    gemm_chain("linear_layernorm", LinearLayerNorm),
    KernelCase("conv2d_relu_bias", 2, lambda d: Conv2dReluBias(d.c, d.o), lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=32, c=64, o=128, h=128, w=128), dict(b=2, c=3, o=5, h=33, w=47)),
    KernelCase("conv2d", 1, lambda d: nn.Conv2d(d.c, d.o, kernel_size=3, padding=1),
               lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=16, c=64, o=64, h=128, w=128), dict(b=2, c=3, o=4, h=17, w=13)),
    KernelCase("max_pool2d", 1, lambda d: nn.MaxPool2d(2), lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=16, c=64, h=256, w=256), dict(b=2, c=3, h=9, w=8)),
    # KernelBench 41-46's geometries: overlapping, padded, dilated windows
    KernelCase("max_pool2d_dilated", 1, lambda d: nn.MaxPool2d(2, stride=2, padding=1, dilation=3),
               lambda d: [(d.b, d.c, d.h, d.w)], dict(b=16, c=32, h=128, w=128), dict(b=2, c=3, h=17, w=19)),
    KernelCase("avg_pool2d_k3", 1, lambda d: nn.AvgPool2d(3), lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=16, c=64, h=256, w=256), dict(b=2, c=3, h=17, w=19)),
    KernelCase("max_pool3d_dilated", 1, lambda d: nn.MaxPool3d(3, stride=2, padding=1, dilation=3),
               lambda d: [(d.b, d.c, d.h, d.h, d.h)], dict(b=16, c=32, h=64), dict(b=1, c=2, h=11)),
    KernelCase("avg_pool3d_padded", 1, lambda d: nn.AvgPool3d(3, stride=2, padding=1),
               lambda d: [(d.b, d.c, d.h, d.h, d.h)], dict(b=16, c=32, h=64), dict(b=1, c=2, h=11)),
    KernelCase("max_pool1d_dilated", 1, lambda d: nn.MaxPool1d(4, stride=2, padding=2, dilation=3),
               lambda d: [(d.b, d.c, d.h)], dict(b=16, c=64, h=8192), dict(b=2, c=3, h=37)),
    KernelCase("conv2d_depthwise", 1, lambda d: nn.Conv2d(d.c, d.c, kernel_size=3, padding=1, groups=d.c),
               lambda d: [(d.b, d.c, d.h, d.w)], dict(b=16, c=64, h=256, w=256), dict(b=2, c=3, h=17, w=13)),
    KernelCase("conv_transpose2d_gelu", 2, lambda d: ConvTransposeGelu(d.c, d.o),
               lambda d: [(d.b, d.c, d.h, d.w)],
               dict(b=16, c=128, o=64, h=64, w=64), dict(b=2, c=3, o=4, h=9, w=7)),
    KernelCase("conv3d_relu", 2, lambda d: Conv3dRelu(d.c, d.o), lambda d: [(d.b, d.c, d.h, d.w, d.w)],
               dict(b=8, c=32, o=64, h=32, w=32), dict(b=2, c=3, o=4, h=5, w=6)),
    gemm_chain("linear_dropout_softmax", LinearDropoutSoftmax),
    gemm_chain("linear_clamp_scale", LinearClampScale),
    gemm_chain("linear_swish_scale", LinearSwishScale),
    gemm_chain("linear_batchnorm_gelu", LinearBatchNormGelu),
    KernelCase("mlp3", 3, lambda d: mlp3(d.k, d.h, d.o), lambda d: [(d.m, d.k)],
               dict(m=2048, k=2048, h=4096, o=1024), dict(m=33, k=47, h=100, o=20)),
    KernelCase("mingpt_attention", 3, lambda d: MinGPTCausalSelfAttention(d.c, d.heads, d.max_seq),
               lambda d: [(d.b, d.t, d.c)], dict(b=16, t=1024, c=768, heads=12, max_seq=1024),
               dict(b=2, t=33, c=60, heads=3, max_seq=47)),
    KernelCase("transformer_encoder", 3, lambda d: encoder_layer(d.c, d.heads, d.ff),
               lambda d: [(d.b, d.t, d.c)], dict(b=8, t=1024, c=1024, heads=16, ff=4096),
               dict(b=2, t=33, c=48, heads=3, ff=100)),
    KernelCase("transformer_encoder_padded", 3, lambda d: PaddedEncoderLayer(d.c, d.heads, d.ff),
               lambda d: [(d.b, d.t, d.c)], dict(b=8, t=1024, c=1024, heads=16, ff=4096),
               dict(b=3, t=33, c=48, heads=3, ff=100)),
)}
# fmt: on


# Measuring


@dataclass(frozen=True)
class Outcome:
    """One candidate on one case in one dtype: its median time and error, or why it has none."""

    candidate: str
    us: float | None = None
    error: float | None = None  # max |out − ref| / max |ref|, against float64
    failure: str | None = None
    note: str = ""


@dataclass
class CaseResult:
    """A row of the table: every candidate on one case in one dtype."""

    case: str
    level: int
    dtype: torch.dtype
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    reference_failure: str | None = None

    def us(self, candidate: str) -> float | None:
        return self.outcomes[candidate].us if candidate in self.outcomes else None

    def error(self, candidate: str) -> float | None:
        return self.outcomes[candidate].error if candidate in self.outcomes else None


def max_relative_error(out: object, ref: object) -> float:
    """max |out − ref| / max |ref| in float64 (inf where anything is not finite); a wrong shape is an
    error, not a broadcast. Of a tuple of outputs, the largest; a non-tensor output must be equal."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(ref):
            raise ValueError(f"output is {type(out).__name__}, expected {len(ref)} outputs")
        return max((max_relative_error(o, r) for o, r in zip(out, ref)), default=0.0)
    if not isinstance(ref, Tensor):
        return 0.0 if out == ref else math.inf
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    diff = (out.double() - ref.double()).abs()
    if not torch.isfinite(diff).all():
        return math.inf
    scale = ref.double().abs().max().item() if ref.numel() else 0.0
    return diff.max().item() / max(scale, 1e-30) if diff.numel() else 0.0


def is_wrong(error: float | None, eager_error: float | None, dtype: torch.dtype) -> bool:
    """Whether `error` passes WRONG_FACTOR times eager's own error plus the dtype's floor."""
    if error is None:
        return False
    floor = ERROR_FLOORS.get(dtype, 1e-2)
    return not error <= WRONG_FACTOR * (eager_error or 0.0) + floor


def candidates(max_autotune: bool, torch_compile: bool = True) -> dict[str, Callable[[nn.Module], Callable]]:
    """Each candidate's compile function, in measuring order."""
    compilers: dict[str, Callable[[nn.Module], Callable]] = {EAGER: lambda m: m}
    if torch_compile:
        compilers[COMPILE] = torch.compile
        if max_autotune:
            compilers[MAX_AUTOTUNE] = partial(torch.compile, mode="max-autotune-no-cudagraphs")
    compilers[SUBJECT] = tilefuse.compile
    return compilers


def measure(
    candidate: str, compile_fn: Callable, module: nn.Module, inputs: tuple[Tensor, ...], ref: Tensor | None,
    device: torch.device,
) -> Outcome:  # fmt: skip
    """Compile `module`, check its first output against `ref`, settle it, time it."""
    release_memory(device)
    try:
        compiled = compile_fn(module)
        out = compiled(*inputs)
        error = None if ref is None else max_relative_error(out, ref)
        del out
        for _ in range(SETTLE_CALLS if device.type == "cuda" and candidate != EAGER else 0):
            compiled(*inputs)
        us = time_ms(lambda: compiled(*inputs), device, cpu_repeats=1) * 1e3
    except Exception as exc:  # one failing candidate is a table cell, never the end of the run
        return Outcome(candidate, failure=describe_error(exc))
    note = tilefuse_summary(compiled.tilefuse_reports) if candidate == SUBJECT else ""
    return Outcome(candidate, us=us, error=error, note=note)


def float64_reference(module: nn.Module, inputs: tuple) -> object:
    """The output of a float64 copy of `module` on the inputs upcast (labels and scalars stay)."""
    wide = tuple(x.double() if isinstance(x, Tensor) and x.is_floating_point() else x for x in inputs)
    return copy.deepcopy(module).to(torch.float64)(*wide)


def run_case(
    case: KernelCase, dtype: torch.dtype, device: torch.device, small: bool,
    compilers: dict[str, Callable[[nn.Module], Callable]], grad: bool = False,
) -> CaseResult:  # fmt: skip
    """Every candidate on one case in one dtype, on one module and one set of seeded inputs; with
    `grad`, the candidates run under grad mode (a harness without `torch.no_grad()`). `case` is any
    object with KernelCase's `name`, `level`, `build` and `get_inputs` (kernelbench_files.ProblemCase)."""
    result = CaseResult(case.name, case.level, dtype)
    try:
        torch.manual_seed(0)
        module = case.build(small).to(device=device, dtype=dtype)
        inputs = case.get_inputs(device, dtype, small)
    except Exception as exc:  # a case that cannot be built here is a row of failures
        failure = f"not built: {describe_error(exc)}"
        result.outcomes = {c: Outcome(c, failure=failure) for c in compilers}
        return result
    with torch.no_grad():
        try:
            ref = float64_reference(module, inputs)
        except Exception as exc:  # no reference (out of memory): times still stand, errors do not
            ref, result.reference_failure = None, describe_error(exc)
    with torch.set_grad_enabled(grad):
        for candidate, compile_fn in compilers.items():
            start = time.perf_counter()
            outcome = measure(candidate, compile_fn, module, inputs, ref, device)
            result.outcomes[candidate] = outcome
            shown = outcome.failure or f"{outcome.us:.1f} µs, error {fmt(outcome.error, '.1e')}"
            took = time.perf_counter() - start
            label = f"{case.name} {dtype_name(dtype)}"
            print(f"[{label}] {candidate}: {shown} ({took:.1f} s)", file=sys.stderr, flush=True)
    del module, inputs, ref
    release_memory(device)
    return result


# Reporting


def tilefuse_summary(reports: Sequence[dict]) -> str:
    """Graphs, partitions, fallbacks (their ops), the executor of each partition and the whole
    graph's measured choice, from a tilefuse-compiled callable's `tilefuse_reports`."""
    partitions = [p for r in reports for p in r.get("partitions", [])]
    fallbacks = [f for r in reports for f in r.get("fallbacks", [])]
    text = f"{len(reports)} graph(s), {len(partitions)} partition(s), {len(fallbacks)} fallback(s)"
    if not partitions:  # Dynamo captured nothing, or nothing tilefuse compiles: the row times eager's ops
        text += " (nothing compiled: eager's own ops ran)"
    if fallbacks:
        text += " (" + ", ".join(sorted({f["op"] for f in fallbacks})) + ")"
    executors = Counter(p.get("executor", "?") for p in partitions)
    if executors:
        text += "; " + "; ".join(e if n == 1 else f"{e} (x{n})" for e, n in executors.items())
    for selection in (r["selection"] for r in reports if "selection" in r):
        times = [f"{k} {selection[k]}" for k in ("tilefuse_ms", "pytorch_ms") if selection.get(k) is not None]
        text += f"; graph runs {selection.get('chosen')}" + (f" ({', '.join(times)} ms)" if times else "")
    return text


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fmt(value: float | None, spec: str) -> str:
    """A table cell: `value` formatted, or "—" for nothing measured."""
    return "—" if value is None else format(value, spec)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def tilefuse_status(result: CaseResult) -> str:
    """One of ok, WRONG, FAILED (tilefuse raised) or — (no tilefuse row)."""
    subject = result.outcomes.get(SUBJECT)
    if subject is None:
        return "—"
    if subject.failure:
        return "FAILED"
    return "WRONG" if is_wrong(subject.error, result.error(EAGER), result.dtype) else "ok"


def error_cell(result: CaseResult, candidate: str) -> str:
    outcome = result.outcomes.get(candidate)
    if outcome is None or outcome.error is None:
        return "—"
    wrong = candidate != EAGER and is_wrong(outcome.error, result.error(EAGER), result.dtype)
    return f"{outcome.error:.1e}" + (" WRONG" if wrong else "")


def notes_cell(result: CaseResult) -> str:
    """Each failure's exception text, then tilefuse's summary; pipes escaped for markdown."""
    failed = [o for o in result.outcomes.values() if o.failure]
    notes = [f"{SHORT.get(o.candidate, o.candidate)} FAILED: {o.failure}" for o in failed]
    if result.reference_failure:
        notes.append(f"float64 reference failed: {result.reference_failure}")
    subject = result.outcomes.get(SUBJECT)
    if subject is not None and subject.note:
        notes.append(subject.note)
    return "; ".join(notes).replace("|", "\\|") or "—"


def render_table(results: Sequence[CaseResult]) -> str:
    """A markdown row per case and dtype: each candidate's µs, tilefuse's speedups over eager and
    torch.compile, each candidate's error against float64, tilefuse's status and summary."""
    present = {c for r in results for c in r.outcomes}
    shown = [c for c in (EAGER, COMPILE, MAX_AUTOTUNE, SUBJECT) if c in present]
    baselines = [c for c in (EAGER, COMPILE) if c in shown]
    head = ["case", "level", "dtype", *(f"{SHORT[c]} µs" for c in shown)]
    head += [*(f"vs {SHORT[c]}" for c in baselines), *(f"err {SHORT[c]}" for c in shown), "tilefuse", "notes"]
    align = ["---", "---:", "---", *["---:"] * (2 * len(shown) + len(baselines)), "---", "---"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    for r in results:
        cells = [r.case, str(r.level), dtype_name(r.dtype)]
        cells += ["FAILED" if r.outcomes[c].failure else fmt(r.us(c), ".1f") for c in shown]
        cells += [fmt(ratio(r.us(c), r.us(SUBJECT)), ".3g") for c in baselines]
        cells += [error_cell(r, c) for c in shown]
        cells += [tilefuse_status(r), notes_cell(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def geomean(values: Sequence[float]) -> float | None:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def render_summary(results: Sequence[CaseResult]) -> str:
    """Per dtype, the geomeans of eager/tilefuse and torch.compile/tilefuse over the rows with both
    times; then every row where tilefuse is slower than eager, WRONG or failed."""
    lines = []
    for dtype in dict.fromkeys(r.dtype for r in results):
        rows = [r for r in results if r.dtype == dtype]
        parts = []
        for baseline in (EAGER, COMPILE, MAX_AUTOTUNE):
            ratios = [x for x in (ratio(r.us(baseline), r.us(SUBJECT)) for r in rows) if x is not None]
            if ratios:
                parts.append(f"vs {baseline} {geomean(ratios):.3f}x over {len(ratios)} case(s)")
        lines.append(f"- {dtype_name(dtype)}: geomean speedup of tilefuse " + ("; ".join(parts) or "—"))
    lines += ["", f"Rows where tilefuse is slower than eager (< {SLOWER_THAN_EAGER}x), WRONG or FAILED:", ""]
    flagged = []
    for r in results:
        status, speedup = tilefuse_status(r), ratio(r.us(EAGER), r.us(SUBJECT))
        why = [status] if status in ("WRONG", "FAILED") else []
        if speedup is not None and speedup < SLOWER_THAN_EAGER:
            why.append(f"{speedup:.2f}x eager")
        if why:
            flagged.append(f"- {r.case} ({dtype_name(r.dtype)}): {', '.join(why)}")
    return "\n".join(lines + (flagged or ["- none"]))


def render_report(header: Sequence[str], results: Sequence[CaseResult]) -> str:
    """The whole results file: header, table, summary, legend."""
    return "\n".join([
        "# tilefuse on KernelBench-style cases",
        "",
        *header,
        f"- µs: median per call; a compiled candidate is called {SETTLE_CALLS} times first. vs eager = "
        "eager µs / tilefuse µs"
        + (", vs tc = torch.compile µs / tilefuse µs" if any(COMPILE in r.outcomes for r in results) else "")
        + " (> 1: tilefuse is faster)",
        "- err: max |out − ref| / max |ref| against a float64 copy of the module on the inputs upcast; "
        f"WRONG: above {WRONG_FACTOR:g}x eager's error + "
        + ", ".join(f"{v:g} ({dtype_name(k)})" for k, v in ERROR_FLOORS.items()),
        "",
        render_table(results),
        "",
        "## Summary",
        "",
        render_summary(results),
        "",
    ])  # fmt: skip


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.kernelbench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    parser.add_argument("--cases", default="", help=f"comma-separated, of: {', '.join(CASES)} (default all)")
    parser.add_argument("--out", type=Path, help="markdown file to write, rewritten after each case")
    parser.add_argument(
        "--max-autotune", action="store_true", help='add torch.compile(mode="max-autotune-no-cudagraphs")'
    )
    parser.add_argument("--fp32-precision", choices=("highest", "high", "medium"), default="highest",
                        help="torch.set_float32_matmul_precision for every candidate")  # fmt: skip
    parser.add_argument("--small", action="store_true", help="the CPU test's tiny sizes (CPU without CUDA)")
    parser.add_argument("--no-torch-compile", action="store_true", help="leave torch.compile's columns out")
    parser.add_argument("--grad", action="store_true",
                        help="run the candidates under grad mode, as a harness without torch.no_grad() does "
                        "(parameters require gradients; nothing calls backward)")  # fmt: skip
    args = parser.parse_args(argv)
    args.cases = [c for c in args.cases.split(",") if c] or list(CASES)
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if not args.small and not torch.cuda.is_available():
        parser.error("full sizes need a CUDA device; --small runs the tiny sizes on the CPU")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the selected cases in each dtype, rewriting `--out` after each; print and return the report."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_float32_matmul_precision(args.fp32_precision)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtypes = DTYPES[args.dtype]
    compilers = candidates(args.max_autotune, torch_compile=not args.no_torch_compile)
    header = environment_lines(__spec__.name, device, dtypes[0], argv)
    if len(dtypes) > 1:
        header.append(f"- dtypes: {', '.join(map(dtype_name, dtypes))}, each case in each")
    if args.grad:
        header.append("- grad mode on: no `torch.no_grad()` around the candidates' calls")
    results: list[CaseResult] = []
    report = render_report(header, results)
    for name in args.cases:
        for dtype in dtypes:
            results.append(run_case(CASES[name], dtype, device, args.small, compilers, args.grad))
            report = render_report(header, results)
            if args.out is not None:
                args.out.write_text(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
