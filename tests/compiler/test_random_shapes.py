"""Random shapes (hypothesis) through the whole capture path, and dynamic shapes."""

from __future__ import annotations

import torch
import torch._dynamo
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare

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
    backend = tilefuse.TilefuseBackend()
    compiled = torch.compile(lambda x: torch.exp(x) + 1, backend=backend, dynamic=True)
    x = torch.randn(5, 2)
    torch.testing.assert_close(compiled(x), torch.exp(x) + 1)
    reasons = [f["reason"] for r in backend.reports for f in r["fallbacks"]]
    assert reasons and all("dynamic shape" in r or "symbolic" in r for r in reasons)
