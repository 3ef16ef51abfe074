"""Split-K: a linear layer whose output tiles underfill the GPU runs as S partial GEMMs over K/S
each and a pointwise sum of the partials that carries the epilogue (Triton interpreter, against
eager PyTorch and float64)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import compile_and_compare, fusion_groups
from tilefuse.passes.split_reduction import SPLIT_K_ENV, split_k_factor


def test_the_split_fills_about_a_wave_and_keeps_k_deep():
    # a short prompt's projections (16 tiles of 128 x 128): K split until ~a wave of programs
    assert split_k_factor(128, 2048, 8192) == 8
    assert split_k_factor(128, 2048, 2048) == 4  # K/8 = 256 would be under MIN_SPLIT_DEPTH
    assert split_k_factor(128, 8192, 2048) == 1  # 64 tiles already
    assert split_k_factor(256, 1024, 4096) == 2  # 64 x 64 tiles on a half-wave grid: 64 of them
    # a split deeper than the heuristic's small-grid K keeps 128 x 128 tiles, and is counted so:
    # 4 tiles of 256 x 256 -> 32 splits of 4096 (as 64 x 64 tiles: 8 splits of 16384 on 32 programs)
    assert split_k_factor(256, 256, 131072) == 32
    assert split_k_factor(512, 512, 32768) == 8
    # enough tiles (a prefill of 2048 rows), or K too shallow: no split
    assert split_k_factor(2048, 2048, 8192) == 1
    assert split_k_factor(128, 2048, 512) == 1
    # decode-sized M: only deep K, up to two waves of narrow tiles
    assert split_k_factor(1, 2048, 2048) == 1
    assert split_k_factor(1, 2048, 8192) == 4
    # K that no split divides into whole 64-deep steps stays whole
    assert split_k_factor(128, 2048, 8192 + 32) == 1
    assert split_k_factor(128, 2048, 8192, forced="4") == 4
    assert split_k_factor(128, 2048, 100, forced="4") == 1


class Projection(nn.Module):
    def __init__(self, k: int, n: int, bias: bool = True):
        super().__init__()
        self.lin = nn.Linear(k, n, bias=bias)

    def forward(self, x, r):
        return torch.relu(self.lin(x)) + r


def _split_groups(reports) -> tuple[dict, dict]:
    groups = fusion_groups(reports)
    (gemm,) = [g for g in groups if g["kind"] == "gemm"]
    combine = next(g for g in groups if g["kind"] == "pointwise")
    return gemm, combine


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m, n", [(40, 40), (50, 72), (130, 20)], ids=["square", "ragged", "two-row-blocks"])
def test_split_projection_matches_eager(m, n, dtype):
    """Ragged M and N (no tile divides them), K = 1024 split in two: eager's values, the GEMM
    writing f32 partials and one pointwise kernel summing them with the bias, ReLU and residual."""
    torch.manual_seed(0)
    layer = Projection(1024, n).to(dtype)
    x, r = torch.randn(m, 1024, dtype=dtype), torch.randn(m, n, dtype=dtype)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    reports = compile_and_compare(layer, x, r, **tol)
    gemm, combine = _split_groups(reports)
    assert gemm["kernel"] is not None and combine["kernel"] is not None
    with torch.no_grad():  # closer to float64 than eager's bf16 result is, or as close
        exact = torch.relu(x.double() @ layer.lin.weight.double().T + layer.lin.bias.double()) + r.double()
        got = torch.compile(layer, backend="tilefuse")(x, r).double()
        eager = layer(x, r).double()
    assert (got - exact).norm() <= 1.5 * (eager - exact).norm() + 1e-6


def test_the_switch_turns_the_split_off_and_forces_a_factor(monkeypatch, tmp_path):
    torch.manual_seed(0)
    layer = Projection(1024, 24)
    x, r = torch.randn(8, 1024), torch.randn(8, 24)
    monkeypatch.setenv(SPLIT_K_ENV, "0")
    whole = fusion_groups(compile_and_compare(layer, x, r, rtol=1e-4, atol=1e-4))
    assert [g["kind"] for g in whole] == ["gemm"]  # the epilogue in the GEMM, K whole
    monkeypatch.setenv(SPLIT_K_ENV, "8")
    monkeypatch.setenv("TILEFUSE_DUMP", str(tmp_path))
    _split_groups(compile_and_compare(layer, x, r, rtol=1e-4, atol=1e-4))
    (split_ir,) = tmp_path.rglob("ein.split-reduction.mlir")
    assert "tensor<8x8x128xf32>" in split_ir.read_text()  # K = 1024 as 8 splits of 128, f32 partials


def test_batched_contractions_are_never_split():
    """Attention's contractions (a batch index in both operands) read whole: a long key axis is K of
    the P @ V product, and splitting it would break the attention pattern."""

    def attention(q, k, v):
        return F.softmax(q @ k.transpose(-1, -2), dim=-1) @ v

    q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 4096, 8), torch.randn(1, 2, 4096, 8)
    groups = fusion_groups(compile_and_compare(attention, q, k, v, rtol=1e-4, atol=1e-4))
    assert [g["kind"] for g in groups] == ["attention"]


@settings(max_examples=4, deadline=None)
@given(
    m=st.integers(1, 140), n=st.integers(1, 90), splits=st.sampled_from([2, 4]),
    steps=st.integers(2, 6), bias=st.booleans(),
)  # fmt: skip
def test_random_split_shapes(m, n, splits, steps, bias):
    k = splits * 64 * steps
    torch._dynamo.reset()  # one forward compiled per example: past Dynamo's recompile limit otherwise
    torch.manual_seed(m * 1000 + n)
    layer = Projection(k, n, bias=bias)
    x, r = torch.randn(m, k), torch.randn(m, n)
    os.environ[SPLIT_K_ENV] = str(splits)
    try:
        compile_and_compare(layer, x, r, rtol=1e-4, atol=1e-4)
    finally:
        del os.environ[SPLIT_K_ENV]


def test_a_malformed_switch_says_what_it_takes():
    with pytest.raises(ValueError, match="TILEFUSE_SPLIT_K='four'"):
        split_k_factor(128, 2048, 8192, forced="four")
