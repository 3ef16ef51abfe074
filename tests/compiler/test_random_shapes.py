"""Random shapes (hypothesis) through the whole capture path, and dynamic shapes."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import TinyBlock, compile_and_compare

ACTIVATIONS = [F.gelu, F.silu, torch.relu, torch.tanh, lambda t: F.leaky_relu(t, 0.1)]


@settings(max_examples=12, deadline=None)
@given(
    m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 70),
    batch=st.sampled_from([(), (3,), (2, 2)]), act=st.sampled_from(ACTIVATIONS),
    bias=st.booleans(), residual=st.booleans(),
)  # fmt: skip
def test_linear_epilogue_chains(m, k, n, batch, act, bias, residual):
    torch._dynamo.reset()
    x, w = torch.randn(*batch, m, k), torch.randn(n, k)
    b = torch.randn(n) if bias else None
    r = torch.randn(*batch, m, n)

    def fn(x, w, r):
        y = act(F.linear(x, w, b))
        return y + r if residual else y * 0.5

    compile_and_compare(fn, x, w, r, rtol=1e-4, atol=1e-4)


@settings(max_examples=10, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 300), dim=st.sampled_from([0, -1]))
def test_row_reductions(rows, cols, dim):
    torch._dynamo.reset()
    w = torch.randn(cols)

    def fn(x):
        return torch.softmax(x, dim) + F.layer_norm(x, (cols,), w) + torch.logsumexp(x, dim, keepdim=True)

    compile_and_compare(fn, torch.randn(rows, cols) * 4, rtol=1e-4, atol=1e-4)


def test_automatic_dynamic_shapes_stay_correct():
    def fn(x):
        return torch.sigmoid(x) * 2

    compiled = torch.compile(fn, backend=tilefuse.TilefuseBackend())
    for n in (4, 7, 9):  # the second shape makes Dynamo mark the dimension dynamic
        x = torch.randn(n, 3)
        torch.testing.assert_close(compiled(x), fn(x))


def test_dynamic_graph_report_names_dynamic_shapes():
    """An inference graph of symbolic sizes compiles them into kernels taking the sizes; what stays
    in PyTorch says why (a training graph's sizes, a contraction of symbolic sizes)."""
    backend = tilefuse.TilefuseBackend()
    compiled = torch.compile(lambda x: torch.exp(x) + 1, backend=backend, dynamic=True)
    x = torch.randn(5, 2)
    torch.testing.assert_close(compiled(x), torch.exp(x) + 1)
    (report,) = backend.reports
    assert not report["fallbacks"] and [p["name"] for p in report["partitions"]] == ["dynamic_0"]
    backend = tilefuse.TilefuseBackend()
    w = torch.randn(2, 3)
    compiled = torch.compile(lambda x: torch.exp(x @ w) + 1, backend=backend, dynamic=True)
    torch.testing.assert_close(compiled(x), torch.exp(x @ w) + 1)
    reasons = [f["reason"] for r in backend.reports for f in r["fallbacks"]]
    assert reasons and all("symbolic" in r for r in reasons), reasons


@pytest.mark.parametrize("order", ["mixed", "batch-major"])
def test_five_lengths_and_three_batch_sizes_compile_at_most_twice_and_match_eager(order):
    """Dynamo's automatic dynamic shapes: the first call compiles for its shapes; a call whose sizes
    differ compiles once more with those dims symbolic (nodes with static shapes would still run
    as kernels; here every node has a symbolic size), and every later size reuses it. Batch sizes
    2-4 in any order once both dims have changed: two compiles. Batch-major from batch 1: the
    batch dim stays static while the lengths change, and batch 1 is a size PyTorch specializes
    (its 0/1 specialization: torch.compile compiles as often), so a third compile when the batch
    first changes. Outputs match eager at every call, lengths ragged (no tile divides them)."""
    torch._dynamo.reset()
    block = TinyBlock().eval()
    compiled = tilefuse.compile(block)
    lengths = (5, 7, 12, 17, 33)
    if order == "batch-major":
        calls = [(b, s) for b in (1, 2, 3) for s in lengths]
    else:
        calls = [(b, s) for s in lengths for b in (2, 3, 4)]
        calls.insert(1, calls.pop(calls.index((3, 7))))  # the second call changes both dims
    with torch.no_grad():
        for b, s in calls:
            x = torch.randn(b, s, 16)
            torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)
    assert len(compiled.tilefuse_reports) == (2 if order == "mixed" else 3)


@settings(max_examples=8, deadline=None)
@given(lead=st.lists(st.integers(1, 9), min_size=1, max_size=3), cols=st.integers(1, 200),
       reduced=st.integers(0, 2))
def test_column_reductions(lead, cols, reduced):
    """Sums over leading dims with the contiguous index kept (norm weight gradients, GQA's summed
    heads): tiles wide along the kept index, ragged in every dim."""
    torch._dynamo.reset()
    shape = [*lead, cols]
    dims = list(range(min(reduced, len(lead)) + 1)) if reduced < 2 else [len(lead) - 1]
    r = torch.rand(*lead, 1)

    def fn(g, x):
        return (g * (x * r)).sum(dims), g.amax(dims)

    compile_and_compare(fn, torch.randn(shape), torch.randn(shape), rtol=1e-4, atol=1e-4)
