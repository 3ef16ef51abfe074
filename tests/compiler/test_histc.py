"""`torch.histc` of integers (Mixtral's tokens per expert on a GPU) decomposed into a comparison and a
sum (`backend.integer_histc`), against PyTorch's histc of the same values as floats (CPU's histc takes
no integers; for integer values in a given range its bins are CUDA's integer ones)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from helpers import fusion_groups
from tilefuse.compiler.backend import HISTC_MAX_PAIRS, decompositions, integer_histc


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 700),
    bins=st.integers(1, 40),
    lo=st.integers(-20, 20),
    width=st.integers(1, 60),
    dtype=st.sampled_from([torch.int16, torch.int32, torch.int64, torch.uint8]),
    seed=st.integers(0, 2**31 - 1),
)
def test_integer_histc_counts_as_histc_does(n, bins, lo, width, dtype, seed):
    """Values below, inside and above the range (the maximum itself in the last bin), counted in the
    input's dtype: a uint8 bin of more than 255 counts wraps, as the count's cast to the input's dtype
    does (hypothesis found 264 elements in one bin, counted 8)."""
    if dtype == torch.uint8:
        lo = abs(lo)
    hi = lo + width
    low = 0 if dtype == torch.uint8 else lo - 5
    x = torch.randint(low, hi + 5, (n,), generator=torch.Generator().manual_seed(seed)).to(dtype)
    got = integer_histc(x, bins, lo, hi)
    assert got.dtype == dtype and got.shape == (bins,)
    counts = torch.histc(x.to(torch.float64), bins, lo, hi).to(torch.int64)
    assert torch.equal(got, counts.to(dtype))


def test_what_integer_histc_leaves_to_histc():
    """Floats, the data's own range (min == max), a fractional bound and too many (element, bin) pairs
    are histc's own."""
    ints = torch.arange(10, dtype=torch.int32)
    assert integer_histc(ints.float(), 4, 0, 9) is NotImplemented
    assert integer_histc(ints, 4, 0, 0) is NotImplemented
    assert integer_histc(ints, 4, 0.5, 9) is NotImplemented
    many = torch.zeros(HISTC_MAX_PAIRS // 8 + 1, dtype=torch.int32)
    assert integer_histc(many, 8, 0, 7) is NotImplemented


def test_the_trace_decomposes_an_integer_histc_and_keeps_a_float_one():
    """Under tilefuse's decomposition table an integer histc is traced as its comparison and sum (the
    traced graph gives the same counts); a float histc stays one op."""
    table = decompositions()

    def counts(ids):
        return torch.histc(ids, bins=8, min=0, max=7)

    ids = torch.randint(0, 8, (300,), dtype=torch.int32)
    with pytest.raises(NotImplementedError):  # CPU's histc takes no integers: the trace never calls it
        counts(ids)
    traced = make_fx(counts, decomposition_table=table)(ids)
    targets = {n.target for n in traced.graph.nodes if n.op == "call_function"}
    assert torch.ops.aten.histc.default not in targets
    assert torch.equal(traced(ids).float(), torch.histc(ids.double(), 8, 0, 7).float())
    traced = make_fx(counts, decomposition_table=table)(ids.float())
    assert torch.ops.aten.histc.default in {n.target for n in traced.graph.nodes}


def test_mixtrals_expert_offsets_compile_into_kernels():
    """Sorted expert ids, counted per expert and scanned into offsets (`grouped_mm_experts_forward` on a
    GPU): the cast, the counts and the scan are kernels, the sort (and the flatten it reads) stays in
    PyTorch; equal to eager."""

    def offsets(top_k_index):
        ids, perm = torch.sort(top_k_index.reshape(-1))
        return torch.cumsum(integer_histc(ids.int(), 8, 0, 7), 0, dtype=torch.int32), perm

    torch._dynamo.reset()
    top_k = torch.randint(0, 8, (37, 2))
    compiled = tilefuse.compile(offsets)
    got, perm = compiled(top_k)
    ids = top_k.reshape(-1).sort().values
    want = torch.cumsum(torch.histc(ids.double(), 8, 0, 7), 0).to(torch.int32)
    assert torch.equal(got, want) and torch.equal(perm, torch.sort(top_k.reshape(-1)).indices)
    groups = fusion_groups(compiled.tilefuse_reports)
    assert all(g["kernel"] for g in groups) and "scan" in {g["kind"] for g in groups}, groups
    in_pytorch = {f["op"] for r in compiled.tilefuse_reports for f in r["fallbacks"]}
    assert in_pytorch <= {"aten.sort.default", "aten.view.default"}, in_pytorch  # the flatten before it
