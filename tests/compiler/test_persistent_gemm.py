"""Persistent GEMMs (Triton interpreter): with PROGRAMS below the tile count each program loops
over several output tiles; results must not change, whatever the epilogue or the shape."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import compile_and_compare, fusion_groups

CASES = {
    "bias_gelu": (lambda x, w, b: F.gelu(F.linear(x, w, b)), (37, 40), (70, 40)),
    "softmax_row_epilogue": (lambda x, w, b: torch.softmax(F.linear(x, w, b), -1), (45, 24), (100, 24)),
    "split_logsumexp": (lambda x, w, b: torch.logsumexp(F.linear(x, w, b), -1), (21, 16), (512, 16)),
    "swiglu": (
        lambda x, w, b: F.silu(x @ w.t()) * (x @ (w.t() * 0.5 + b[: w.shape[1]].view(-1, 1))),
        (33, 48),
        (50, 48),
    ),
}


@pytest.mark.parametrize("programs", [1, 3])
@pytest.mark.parametrize("name", CASES)
def test_persistent_programs_compute_the_same(monkeypatch, name, programs):
    fn, x_shape, w_shape = CASES[name]
    monkeypatch.setenv("TILEFUSE_KERNEL_CONFIG", json.dumps({"gemm": {"PROGRAMS": programs, "BLOCK_M": 16}}))
    x, w, b = torch.randn(*x_shape), torch.randn(*w_shape), torch.randn(max(w_shape))
    reports = compile_and_compare(fn, x, w, b, rtol=1e-4, atol=1e-4)
    gemms = [g for g in fusion_groups(reports) if g["kind"] == "gemm"]
    assert gemms and all(f"PROGRAMS={programs}" in g["config"] for g in gemms)
    assert all(g["config_source"] == "override" for g in gemms)  # the report names the experiment


@settings(max_examples=6, deadline=None)
@given(m=st.integers(1, 70), n=st.integers(1, 90), k=st.integers(1, 40), programs=st.integers(1, 5))
def test_random_shapes(m, n, k, programs):
    torch._dynamo.reset()
    import os

    os.environ["TILEFUSE_KERNEL_CONFIG"] = json.dumps(
        {"gemm": {"PROGRAMS": programs, "BLOCK_M": 16, "BLOCK_N": 32}}
    )
    try:
        x, w = torch.randn(m, k), torch.randn(k, n)
        compile_and_compare(lambda x, w: torch.relu(x @ w), x, w, rtol=1e-4, atol=1e-4)
    finally:
        del os.environ["TILEFUSE_KERNEL_CONFIG"]
