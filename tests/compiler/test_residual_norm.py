"""Residual add then a norm (a pre-norm transformer block): one kernel with two outputs, the new
residual stream `h` and the normed activations (Triton interpreter, against eager PyTorch)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups


def pre_rms_norm(x, y, w):
    h = x + y
    return h, F.rms_norm(h, h.shape[-1:], w, eps=1e-6)


def pre_layer_norm(x, y, w, b):
    h = x + y
    return h, F.layer_norm(h, h.shape[-1:], w, b, eps=1e-5)


CASES = {"rms_norm": (pre_rms_norm, 1), "layer_norm": (pre_layer_norm, 2)}


def kernels_ran(reports) -> None:
    for part in (p for r in reports for p in r["partitions"]):
        assert "runtime_error" not in part and "Triton kernel" in part["executor"], part["executor"]


def the_one_group(reports) -> dict:
    """The single group of the compile: it must hold the add and the norm's reductions."""
    kernels_ran(reports)
    (group,) = fusion_groups(reports)
    assert group["kernel"] is not None, group
    assert group["ops"][0] == "ein.map" and "ein.reduce" in group["ops"], group["ops"]
    return group


def args_for(name, shape, dtype=torch.float32):
    _, params = CASES[name]
    x, y = torch.randn(*shape) * 2 + 0.5, torch.randn(*shape)
    vectors = [torch.randn(shape[-1]) for _ in range(params)]
    return [t.to(dtype) for t in (x, y, *vectors)]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shape", [(5, 33), (2, 3, 130), (1, 1000), (7, 4100)], ids=str)
def test_add_and_norm_are_one_row_kernel(name, shape):
    fn, _ = CASES[name]
    group = the_one_group(compile_and_compare(fn, *args_for(name, shape), rtol=1e-4, atol=1e-5))
    assert group["kind"] == "row"


@pytest.mark.parametrize("name", CASES)
def test_half_precision_against_float64(name):
    """fp16 in and out: the kernel's error against float64 stays within eager fp16's (both round
    h and the result to fp16 once; the kernel computes its statistics in f32 like PyTorch)."""
    fn, _ = CASES[name]
    args = args_for(name, (9, 200), torch.float16)
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        actual, eager = compiled(*args), fn(*args)
        exact = fn(*[a.double() for a in args])
    the_one_group(compiled.tilefuse_reports)
    for a, e, x in zip(actual, eager, exact):
        assert a.dtype == torch.float16
        kernel_err, eager_err = (a.double() - x).abs().max(), (e.double() - x).abs().max()
        assert kernel_err <= 2 * eager_err + 1e-3, (kernel_err, eager_err)


def test_kernel_writes_both_and_reads_each_input_once(tmp_path):
    compiled = tilefuse.compile(pre_layer_norm, dump=tmp_path)
    compiled(*args_for("layer_norm", (4, 40)))
    (source,) = list((tmp_path / compiled.tilefuse_reports[0]["dir"] / "kernels").glob("*.py"))
    text = source.read_text()
    assert text.count("tl.store(") == 2
    assert text.count("tl.load(") == 4  # x, y, the weight and the bias, once each


def test_residual_in_a_gemm_epilogue_then_a_norm_is_one_gemm_with_two_outputs():
    """The add is the epilogue of the projection before it; a row of N <= 256 fits one tile, so
    the norm joins that GEMM too and the kernel writes h and norm(h)."""

    def proj_residual_norm(a, w, x, g):
        h = x + a @ w
        return h, F.rms_norm(h, h.shape[-1:], g, eps=1e-6)

    args = torch.randn(12, 24), torch.randn(24, 40), torch.randn(12, 40), torch.randn(40)
    reports = compile_and_compare(proj_residual_norm, *args, rtol=1e-4, atol=1e-4)
    kernels_ran(reports)
    (group,) = fusion_groups(reports)
    assert group["kind"] == "gemm" and group["kernel"] is not None
    assert {"ein.contract", "ein.map", "ein.reduce"} <= set(group["ops"])


class PreNormBlock(nn.Module):
    """A Llama-style block's second half: h = x + attn (through o_proj if asked);
    out = h + mlp(norm(h))."""

    def __init__(self, d: int, norm: type[nn.Module], o_proj: bool = False):
        super().__init__()
        self.o = nn.Linear(d, d, bias=False) if o_proj else nn.Identity()
        self.norm = norm(d)
        self.up = nn.Linear(d, 2 * d, bias=False)
        self.down = nn.Linear(2 * d, d, bias=False)
        with torch.no_grad():
            for p in self.norm.parameters():
                p.copy_(torch.randn_like(p))

    def forward(self, x, attn):
        h = x + self.o(attn)
        return h + self.down(F.silu(self.up(self.norm(h))))


@pytest.mark.parametrize("norm", [nn.RMSNorm, nn.LayerNorm])
@pytest.mark.parametrize("d", [40, 300])
def test_pre_norm_block_with_norm_prologue(norm, d):
    """RMSNorm before an nn.Linear becomes a row statistic plus a folded GEMM (norm-prologue); the
    residual add then runs in the statistic's row kernel, which writes h and the sum. LayerNorm is
    not folded (its mean would cancel after the GEMM): the add and the whole norm are one row
    kernel, which writes h and the normalized rows."""
    block = PreNormBlock(d, norm)
    x, attn = torch.randn(2, 5, d), torch.randn(2, 5, d)
    reports = compile_and_compare(block, x, attn, rtol=1e-4, atol=1e-4)
    kernels_ran(reports)
    (stats,) = [g for g in fusion_groups(reports) if g["kind"] == "row"]
    assert stats["ops"][0] == "ein.map" and stats["kernel"] is not None  # the add
    if norm is nn.RMSNorm:  # then the sum of squares, and nothing normalized is written
        assert stats["ops"] == ["ein.map", "ein.map", "ein.reduce"]
    else:  # the mean, the centred variance and the normalized rows
        assert stats["ops"].count("ein.reduce") == 2 and stats["ops"][-1] == "ein.map"


def test_a_sum_of_the_residual_stream_is_one_row_kernel():
    """A map and one reduction with both results read outside: a row kernel (two outputs), not the
    chunked reduction kernel, which writes one."""

    def residual_and_row_sums(x, y):
        h = x + y
        return h, h.sum(-1)

    group = the_one_group(compile_and_compare(residual_and_row_sums, torch.randn(6, 70), torch.randn(6, 70)))
    assert group["kind"] == "row" and group["ops"] == ["ein.map", "ein.reduce"]


@pytest.mark.parametrize("norm", [nn.RMSNorm, nn.LayerNorm])
@pytest.mark.parametrize(
    "d, tokens", [(40, (2, 5)), (300, (2, 5)), (40, (1, 1))], ids=["prefill", "prefill-wide", "decode"]
)
def test_pre_norm_block_with_the_add_in_o_proj(norm, d, tokens):
    """The residual add is o_proj's epilogue and stays there (h is the GEMM's output). With
    rows a tile holds (d <= 256) the norm's statistics join that GEMM, which writes h and
    the sums; wider rows get one statistics kernel reading h. One token (decoding: every
    leading dim 1) fuses the same way: the residual is a full tensor, not a broadcast."""
    block = PreNormBlock(d, norm, o_proj=True)
    x, attn = torch.randn(*tokens, d), torch.randn(*tokens, d)
    reports = compile_and_compare(block, x, attn, rtol=1e-4, atol=1e-4)
    kernels_ran(reports)
    groups = fusion_groups(reports)
    sums = 2 if norm is nn.LayerNorm else 1
    o_proj = groups[0]
    assert o_proj["kind"] == "gemm" and o_proj["ops"][:2] == ["ein.contract", "ein.map"]
    if d <= 256:
        assert o_proj["ops"].count("ein.reduce") == sums
    else:
        assert o_proj["ops"] == ["ein.contract", "ein.map"]
        assert groups[1]["kind"] in ("row", "reduction") and groups[1]["ops"].count("ein.reduce") == sums


def pre_norm_linear_residual(x, y, g, w):
    """The residual stream feeds the norm, whose result feeds a GEMM, and is added to again
    in that GEMM's epilogue (plain tensors: no norm-prologue)."""
    h = x + y
    return h + F.linear(F.rms_norm(h, h.shape[-1:], g, eps=1e-6), w)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(2, 300))
def test_random_shapes_with_the_stream_read_by_a_later_kernel(rows, cols):
    torch._dynamo.reset()
    x, y, g, w = torch.randn(rows, cols), torch.randn(rows, cols), torch.randn(cols), torch.randn(cols, cols)
    reports = compile_and_compare(pre_norm_linear_residual, x, y, g, w, rtol=1e-4, atol=1e-4)
    kernels_ran(reports)
    row, gemm = fusion_groups(reports)
    assert row["kind"] == "row" and row["ops"][0] == "ein.map" and "ein.reduce" in row["ops"]
    assert gemm["kind"] == "gemm" and gemm["ops"] == ["ein.contract", "ein.map"]


class Conv1DBlock(nn.Module):
    """GPT-2's shape: the norm's output is flattened to rows for `addmm` (transformers' Conv1D),
    the residual stream stays [batch, seq, d] (an RMSNorm: GPT-2's LayerNorm is not folded)."""

    def __init__(self, d: int):
        super().__init__()
        self.ln = nn.RMSNorm(d)
        with torch.no_grad():
            self.ln.weight.normal_()
        self.weight = nn.Parameter(torch.randn(d, d) / d**0.5)
        self.bias = nn.Parameter(torch.randn(d))

    def forward(self, x, attn):
        h = x + attn
        z = torch.addmm(self.bias, self.ln(h).view(-1, h.shape[-1]), self.weight)
        return h + z.view(h.shape)


def test_flattened_rows_after_the_norm_keep_the_add_with_the_statistics():
    """norm-prologue computes the sums over x's own rows and views them as the GEMM's rows, so
    the residual add (in x's shape) joins the statistics' row kernel."""
    reports = compile_and_compare(
        Conv1DBlock(48), torch.randn(2, 7, 48), torch.randn(2, 7, 48), rtol=1e-4, atol=1e-4
    )
    kernels_ran(reports)
    (stats,) = [g for g in fusion_groups(reports) if g["kind"] == "row"]
    assert stats["ops"] == ["ein.map", "ein.map", "ein.reduce"]
