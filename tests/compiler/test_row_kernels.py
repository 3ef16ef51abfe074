"""Row kernels: softmax, norms and elementwise+reduction chains as one kernel (Triton interpreter).

Each case is checked against eager PyTorch on random data, with row lengths
that do not divide the tile, and must run as exactly one `row` kernel that
reads its input once.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups
from tilefuse.passes.fusion_groups import MAX_ROW


def assert_one_row_kernel(reports) -> dict:
    (group,) = fusion_groups(reports)
    assert group["kind"] == "row" and group["kernel"] is not None, group
    return group


def softmax(x):
    return torch.softmax(x, -1)


def log_softmax(x):
    return F.log_softmax(x, -1)


def logsumexp(x):
    return torch.logsumexp(x, -1)


def layer_norm(x):
    return F.layer_norm(x, x.shape[-1:])


def layer_norm_affine(x, w, b):
    return F.layer_norm(x, x.shape[-1:], w, b, eps=1e-5)


def rms_norm(x, w):
    return F.rms_norm(x, x.shape[-1:], w, eps=1e-6)


def softmax_of_scaled_plus_bias(x, b):
    return torch.softmax(x * 0.125 + b, -1) * 2.0


CASES = {
    "softmax": (softmax, 0),
    "log_softmax": (log_softmax, 0),
    "logsumexp": (logsumexp, 0),
    "layer_norm": (layer_norm, 0),
    "layer_norm_affine": (layer_norm_affine, 2),
    "rms_norm": (rms_norm, 1),
    "chain": (softmax_of_scaled_plus_bias, 1),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("shape", [(5, 33), (2, 3, 130), (1, 1000)], ids=str)
def test_one_kernel_per_row_op(name, shape):
    fn, params = CASES[name]
    x = torch.randn(*shape) * 2 + 0.5
    extra = [torch.randn(shape[-1]) for _ in range(params)]
    group = assert_one_row_kernel(compile_and_compare(fn, x, *extra, rtol=1e-4, atol=1e-5))
    assert group["ops"].count("ein.reduce") >= 1


@settings(max_examples=12, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(2, 300),
    name=st.sampled_from(sorted(CASES)),
)
def test_random_shapes(rows, cols, name):
    torch._dynamo.reset()
    fn, params = CASES[name]
    x = torch.randn(rows, cols) * 3
    extra = [torch.randn(cols) for _ in range(params)]
    assert_one_row_kernel(compile_and_compare(fn, x, *extra, rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    x, w, b = torch.randn(7, 96, dtype=dtype), torch.randn(96, dtype=dtype), torch.randn(96, dtype=dtype)
    assert_one_row_kernel(compile_and_compare(layer_norm_affine, x, w, b, rtol=2e-2, atol=2e-2))
    torch._dynamo.reset()
    assert_one_row_kernel(compile_and_compare(softmax, x, rtol=2e-2, atol=2e-3))


def test_reduction_over_two_trailing_dims():
    def group_norm_like(x):
        mean = x.mean((-2, -1), keepdim=True)
        var = ((x - mean) ** 2).mean((-2, -1), keepdim=True)
        return (x - mean) * torch.rsqrt(var + 1e-5)

    assert_one_row_kernel(compile_and_compare(group_norm_like, torch.randn(3, 4, 5, 7), rtol=1e-4, atol=1e-5))


def test_softmax_over_a_leading_dim():
    x = torch.randn(37, 6)
    assert_one_row_kernel(compile_and_compare(lambda x: torch.softmax(x, 0), x, rtol=1e-4, atol=1e-6))


def test_kernel_reads_each_input_once(tmp_path):
    compiled = tilefuse.compile(layer_norm_affine, dump=tmp_path)
    compiled(torch.randn(4, 40), torch.randn(40), torch.randn(40))
    (source,) = list((tmp_path / compiled.tilefuse_reports[0]["dir"] / "kernels").glob("*.py"))
    text = source.read_text()
    assert text.count("tl.load(x_ptr") == 1 and text.count("tl.store(") == 1


def test_an_intermediate_read_after_the_group_is_its_second_output():
    def norm_and_residual(x, w):
        h = x * 2.0 + 1.0
        return rms_norm(h, w), h

    reports = compile_and_compare(norm_and_residual, torch.randn(6, 50), torch.randn(50), rtol=1e-4, atol=1e-5)
    assert assert_one_row_kernel(reports)["ops"][0] == "ein.map"


def test_an_intermediate_read_before_the_group_ends_stays_out_of_it():
    def residual_read_early(x, w):
        h = x * 2.0 + 1.0
        both = torch.cat([h, x], -1)  # PyTorch glue that reads h before the norm is done
        return rms_norm(h, w), both

    reports = compile_and_compare(residual_read_early, torch.randn(6, 50), torch.randn(50), rtol=1e-4, atol=1e-5)
    kinds = sorted(g["kind"] for g in fusion_groups(reports))
    assert kinds == ["pointwise", "row"]


@pytest.mark.parametrize("width", [MAX_ROW + 3, 3 * MAX_ROW - 5])
def test_rows_longer_than_a_tile_are_walked_in_chunks(width, tmp_path):
    """A row wider than one tile (a softmax over a vocabulary, an LM loss's log-softmax, a norm over
    several trailing dims) is one row kernel walking each row in chunks, a pass per reduction (max
    and sum of exp in one, online): softmax, log-softmax of bf16 logits upcast, LayerNorm with a
    weight and a logsumexp, against eager on a ragged width, with -inf lanes and a row of -inf."""

    def wide(x, w):
        return (torch.softmax(x, -1), torch.log_softmax(x.to(torch.bfloat16).float(), -1),
                F.layer_norm(x, (width,), w), torch.logsumexp(x, -1))  # fmt: skip

    x, w = torch.randn(4, width) * 4, torch.randn(width)
    x[1, : width // 2] = float("-inf")  # a masked half: the online max starts at -inf
    x[2] = float("-inf")  # a row of nothing: NaN, as eager's
    reports = compile_and_compare(wide, x, w, rtol=1e-4, atol=1e-5, dump=tmp_path)
    rows = [g for g in fusion_groups(reports) if g["kind"] == "row"]
    passes = sorted(p.read_text().count("    for ") for p in tmp_path.glob("*/kernels/*.py"))
    assert passes == [2, 2, 2, 3], passes  # softmax, log-softmax: online max and sum, then the write;
    # logsumexp: max, then a sum of exp(x - max) guarded for infinite maxima; LayerNorm: mean, variance, write
    assert len(rows) >= 3 and all(g["kernel"] for g in rows)
    assert all("BLOCK_R=1," in g["config"] and int(g["config"].split("BLOCK_C=")[1].split(",")[0]) < width
               for g in rows)  # fmt: skip
    assert not [g for g in fusion_groups(reports) if g["kind"] == "reduction"]


def test_a_config_that_splits_rows_is_refused(monkeypatch):
    from tilefuse.autotune.heuristics import CONFIG_ENV, default_config

    monkeypatch.setenv(CONFIG_ENV, '{"row": {"BLOCK_C": 64}}')
    with pytest.raises(ValueError, match="BLOCK_C >= 100"):
        default_config("row", {"R": 8, "C": 100})
