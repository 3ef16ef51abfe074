"""Row reductions after a GEMM (Triton interpreter) against eager PyTorch.

Softmax, log-softmax, logsumexp and norms over a product's N index run in the
GEMM's epilogue when one tile can hold whole rows (N <= MAX_EPILOGUE_ROW);
wider rows stay a GEMM plus a row kernel.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import compile_and_compare, fusion_groups
from tilefuse.passes.fusion_groups import MAX_EPILOGUE_ROW

EPILOGUES = {
    "softmax": lambda x, w, b: torch.softmax(F.linear(x, w, b), -1),
    "log_softmax": lambda x, w, b: F.log_softmax(x @ w.t(), -1),
    "logsumexp": lambda x, w, b: torch.logsumexp(x @ w.t() + b, -1),
    "layer_norm": lambda x, w, b: F.layer_norm(F.linear(x, w, b), (w.shape[0],)),
}


@pytest.mark.parametrize("name", EPILOGUES)
@pytest.mark.parametrize("n", [5, 48, 200], ids=lambda n: f"N={n}")
def test_row_reduction_in_the_gemm_epilogue(name, n):
    x, w, b = torch.randn(37, 40), torch.randn(n, 40), torch.randn(n)
    reports = compile_and_compare(EPILOGUES[name], x, w, b, rtol=1e-4, atol=1e-5)
    (group,) = fusion_groups(reports)
    assert group["kind"] == "gemm" and group["kernel"] and "ein.reduce" in group["ops"]


def test_wider_rows_are_a_gemm_and_a_row_kernel():
    n = MAX_EPILOGUE_ROW + 44
    x, w, b = torch.randn(9, 24), torch.randn(n, 24), torch.randn(n)
    reports = compile_and_compare(EPILOGUES["softmax"], x, w, b, rtol=1e-4, atol=1e-6)
    assert sorted(g["kind"] for g in fusion_groups(reports)) == ["gemm", "row"]


def test_batched_scores_softmax():
    q, k = torch.randn(6, 19, 8), torch.randn(6, 21, 8)
    fn = lambda q, k: torch.softmax(torch.bmm(q, k.transpose(1, 2)), -1)  # noqa: E731
    (group,) = fusion_groups(compile_and_compare(fn, q, k, rtol=1e-4, atol=1e-6))
    assert group["kind"] == "gemm"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    # logits of order 1: bf16 rounding of large logits would dominate the comparison
    x, w, b = (torch.randn(*s, dtype=dtype) / 4 for s in ((33, 64), (100, 64), (100,)))
    reports = compile_and_compare(EPILOGUES["softmax"], x, w, b, rtol=2e-2, atol=2e-3)
    (group,) = fusion_groups(reports)
    assert group["kind"] == "gemm"


@settings(max_examples=8, deadline=None)
@given(
    m=st.integers(1, 40),
    n=st.integers(2, MAX_EPILOGUE_ROW),
    k=st.integers(1, 50),
    name=st.sampled_from(sorted(EPILOGUES)),
)
def test_random_shapes(m, n, k, name):
    torch._dynamo.reset()
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    reports = compile_and_compare(EPILOGUES[name], x, w, b, rtol=1e-4, atol=1e-5)
    assert [g["kind"] for g in fusion_groups(reports)] == ["gemm"]
