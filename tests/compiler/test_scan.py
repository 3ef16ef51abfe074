"""Running sums and products (cumsum, cumprod): one scan kernel a row, walked in chunks with a carry
(`lower_to_tile.lower_scan`), against eager PyTorch and a float64 reference on ragged shapes."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups
from tilefuse.backends.triton import TritonOptions, emit, load
from tilefuse.ir import parse_module, print_module, run_module
from tilefuse.ir.module import functions
from tilefuse.passes.fusion_groups import annotate, form_groups
from tilefuse.passes.lower_to_tile import MAX_WHOLE_SCAN, lower_function

CASES = {
    # name: (fn, input shapes); widths that no chunk size divides, one longer than a chunk holds
    "cumsum_last": (lambda x: torch.cumsum(x, -1), [(5, 4001)]),
    "cumsum_first": (lambda x: torch.cumsum(x, 0), [(37, 6)]),
    "cumsum_middle": (lambda x: torch.cumsum(x, 1), [(3, 45, 7)]),
    "cumsum_1d": (lambda x: torch.cumsum(x, 0), [(9000,)]),
    "cumprod": (lambda x: torch.cumprod(x, 1), [(4, 300)]),
    "masked_cumsum": (lambda x, m: torch.cumsum(x * m, dim=1), [(7, 300), "mask"]),
    "exclusive_cumsum": (
        lambda x: torch.cumsum(torch.cat((torch.zeros_like(x[:, :1]), x), dim=1)[:, :-1], dim=1),
        [(6, 130)],
    ),
    "cumsum_then_map": (lambda x: torch.cumsum(x, -1) * 2 + 1, [(2, 3, 50)]),
    "long_cumsum_then_map": (lambda x: torch.sigmoid(torch.cumsum(x, 0) / 50), [(5000,)]),  # chunks + epilogue
    "masked_cumsum_then_map": (lambda x, m: torch.cumsum(x * m, 1) - x, [(7, 300), "mask"]),
    # flip ∘ cumsum ∘ flip: the canonicalizer's reverse scan, no flip left
    "reverse_cumsum": (lambda x: torch.cumsum(x.flip(1), 1).flip(1), [(5, 2500)]),
    "reverse_cumsum_long": (lambda x: torch.cumsum(x.flip(1), 1).flip(1), [(2, 9001)]),
    "reverse_cumprod_first": (lambda x: torch.cumprod(x.flip(0), 0).flip(0), [(37, 6)]),
}


def _inputs(shapes, dtype):
    x = None
    out = []
    for s in shapes:
        if s == "mask":
            out.append(torch.rand(*x.shape) > 0.5)
        else:
            x = torch.randn(*s).to(dtype)
            out.append(x)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_scans_are_one_kernel_and_match_eager(name):
    fn, shapes = CASES[name]
    torch._dynamo.reset()
    args = _inputs(shapes, torch.float32)
    if "cumprod" in name:  # factors near 1 keep a long product finite
        args[0] = 1 + 0.01 * args[0]
    reports = compile_and_compare(fn, *args, rtol=1e-4, atol=1e-3)
    groups = fusion_groups(reports)
    scans = [g for g in groups if g["kind"] == "scan"]
    assert len(scans) == 1 and scans[0]["kernel"], groups
    if name == "masked_cumsum":  # the mask's product is the scan's prologue: no kernel of its own
        assert len(groups) == 1 and scans[0]["ops"] == ["ein.map", "ein.scan"], groups
    if name == "cumsum_then_map":  # the map after the scan is its epilogue, applied before the store
        assert len(groups) == 1 and scans[0]["ops"] == ["ein.scan", "ein.map"], groups
    if name.startswith("reverse"):
        assert len(groups) == 1, groups
        glue = [op for r in reports for p in r["partitions"] for op in p["glue_ops"]]
        assert not glue, glue


FLIPS = {
    "flip_then_map": lambda x: torch.relu(x.flip(-1)) + x,
    "flip_into_softmax": lambda x: torch.softmax(x.flip(1), -1),
    "flip_twice_is_nothing": lambda x: x.flip(0).flip(0) * 3,
    "flip_two_dims_out": lambda x: (x * 2).flip(0, 1),
}


@pytest.mark.parametrize("name", list(FLIPS))
def test_flip_is_a_view_kernels_read_through(name):
    """torch.flip is an `ein.view flip`: kernels read index n-1-i; a flip returned to the caller
    is a copy, as PyTorch's is. Ragged sizes (33 x 100) so a flipped tail must stay masked."""
    torch._dynamo.reset()
    reports = compile_and_compare(FLIPS[name], torch.randn(33, 100))
    groups = fusion_groups(reports)
    assert groups and all(g["kernel"] for g in groups), groups
    assert len(groups) == 1, groups


def test_bf16_scan_accumulates_in_f32():
    """A 16-bit input accumulates in f32 (as torch.compile does): its error against float64 is the
    final rounding's, where a bf16 running sum over 4000 elements drifts by whole units."""
    torch._dynamo.reset()
    x = torch.randn(8, 4000).to(torch.bfloat16)
    compiled = tilefuse.compile(lambda x: torch.cumsum(x, 1))
    got = compiled(x).double()
    ref = torch.cumsum(x.double(), 1)
    rounding = (ref - ref.to(torch.bfloat16).double()).abs().max()
    assert (got - ref).abs().max() <= 2 * rounding + 1e-6


def test_integer_cumsum_is_exact_int64():
    torch._dynamo.reset()
    x = torch.randint(-5, 1000, (3, 5000), dtype=torch.int32)
    compiled = tilefuse.compile(lambda x: torch.cumsum(x, 1))
    got = compiled(x)
    assert got.dtype == torch.int64
    assert torch.equal(got, torch.cumsum(x, 1))
    groups = fusion_groups(compiled.tilefuse_reports)
    assert [g["kind"] for g in groups] == ["scan"] and groups[0]["kernel"]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16])
def test_a_narrow_integer_cumsum_is_one_kernel_and_wraps_as_eager(dtype):
    """`cumsum(..., dtype=torch.int32)` (Mixtral's expert offsets: histc's counts, cast, scanned) is a
    scan kernel accumulating in i64 and storing the low bits: eager's wrapped sums, on ragged rows,
    one of them past int32's range."""
    torch._dynamo.reset()
    counts = torch.randint(0, 600, (37,)).float()
    big = torch.full((3, 2051), 2**30 if dtype == torch.int32 else 20000, dtype=dtype)  # sums that wrap
    compiled = tilefuse.compile(
        lambda c, b: (torch.cumsum(c.int(), 0, dtype=dtype), torch.cumsum(b, 1, dtype=dtype))
    )
    got = compiled(counts, big)
    want = (torch.cumsum(counts.int(), 0, dtype=dtype), torch.cumsum(big, 1, dtype=dtype))
    for g, w in zip(got, want):
        assert g.dtype == dtype and torch.equal(g, w)
    groups = fusion_groups(compiled.tilefuse_reports)
    assert sorted(g["kind"] for g in groups) == ["scan", "scan"] and all(g["kernel"] for g in groups)


@settings(max_examples=10, deadline=None)
@given(
    rows=st.integers(1, 9),
    width=st.one_of(st.integers(1, MAX_WHOLE_SCAN), st.integers(MAX_WHOLE_SCAN + 1, 9000)),
    dim=st.sampled_from([0, 1]),
    prod=st.booleans(),
    block_c=st.sampled_from([512, 1024, 4096]),
)
def test_scan_any_shape_and_chunk(rows, width, dim, prod, block_c):
    """Any shape; a row longer than one tile walked in chunks of any size: the carry is right."""
    torch._dynamo.reset()
    x = torch.randn(rows, width)
    if prod:
        x = 1 + 0.001 * x
    fn = (lambda x: torch.cumprod(x, dim)) if prod else (lambda x: torch.cumsum(x, dim))
    with pytest.MonkeyPatch.context() as env:
        if (width if dim == 1 else rows) > MAX_WHOLE_SCAN:  # a whole row's BLOCK_C is not a choice
            env.setenv("TILEFUSE_KERNEL_CONFIG", json.dumps({"scan": {"BLOCK_C": block_c}}))
        compiled = tilefuse.compile(fn)
        torch.testing.assert_close(compiled(x), fn(x), rtol=1e-4, atol=1e-3)
    assert [g["kind"] for g in fusion_groups(compiled.tilefuse_reports)] == ["scan"]


REVERSE = """
builtin.module {
  func.func @f(%x: tensor<3x5000xf32>) -> tensor<3x5000xf32> {
    %y = ein.scan sum 1 reverse %x : tensor<3x5000xf32> -> tensor<3x5000xf32>
    func.return %y : tensor<3x5000xf32>
  }
}
"""


def test_reverse_scan_prints_parses_and_runs_from_the_end(tmp_path):
    """`ein.scan ... reverse` (no aten op makes one yet): the interpreter and the kernel, which walks
    the chunks backwards, both give the suffix sums; the tile kernel prints and parses back."""
    module = parse_module(REVERSE)
    assert "ein.scan sum 1 reverse" in print_module(module)
    x = torch.randn(3, 5000)
    ref = torch.cumsum(x.flip(1), 1).flip(1)
    (got,) = run_module(module, "f", [x])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)

    (fn,) = functions(module)
    annotate(form_groups(fn))
    (lowered,) = lower_function(fn)
    kernel = lowered.kernel
    text = print_module(kernel)
    assert 'tile.scan "sum"' in text and "reverse 1" in text
    parse_module(text)
    built = load(emit(kernel, TritonOptions(libdevice=False)), kernel.sym_name.data, cache_dir=tmp_path)
    for blocks in ({"BLOCK_R": 2, "BLOCK_C": 512}, {"BLOCK_R": 4, "BLOCK_C": 4096}):
        y = torch.empty_like(x)
        built([x, y], blocks)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-4)


def test_scan_over_a_0d_tensor_stays_in_pytorch():
    torch._dynamo.reset()
    reports = compile_and_compare(lambda x: torch.cumsum(x, 0) + 1, torch.tensor(3.0), allow_fallbacks=True)
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert any("0-d" in reason for reason in reasons), reasons


@pytest.mark.parametrize(
    "line, why",
    [
        ("ein.scan sum 2 %x : tensor<3x4xf32> -> tensor<3x4xf32>", "dim 2 invalid"),
        ("ein.scan max 1 %x : tensor<3x4xf32> -> tensor<3x4xf32>", "not one of sum, prod"),
        ("ein.scan sum 1 %x : tensor<3x4xf32> -> tensor<3x4xf16>", "must be the input's"),
        ("ein.view flip params [1] %x : tensor<3x4xf32> -> tensor<4x3xf32>", "input's shape"),
        ("ein.view flip params [2] %x : tensor<3x4xf32> -> tensor<3x4xf32>", "invalid for rank"),
    ],
)
def test_malformed_scans_and_flips_are_refused(line, why):
    from tilefuse.ir import IRError

    text = f"""
builtin.module {{
  func.func @f(%x: tensor<3x4xf32>) -> () {{
    %y = {line}
    func.return
  }}
}}
"""
    with pytest.raises(IRError, match=why):
        parse_module(text)
