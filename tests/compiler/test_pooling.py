"""Max and average pooling (`lower_structured._lower_pool`): windows of up to 27 elements (overlapping,
padded, dilated, ceil mode) are one map over strided slices of the padded input; larger windows that
tile the input a reshape and a reduction; against eager PyTorch on ragged shapes. Larger overlapping
windows stay in PyTorch and say why."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups

TILED = {
    "max2d": (lambda x: F.max_pool2d(x, 2), (2, 3, 8, 9)),  # a ragged width: the last column dropped
    "avg2d": (lambda x: F.avg_pool2d(x, 3), (2, 3, 10, 9)),
    "max2d_rect_then_relu": (lambda x: torch.relu(F.max_pool2d(x, (2, 3))) + 1, (2, 3, 8, 9)),
    "avg3d": (lambda x: F.avg_pool3d(x, 2), (2, 3, 5, 6, 7)),
    "max3d": (lambda x: F.max_pool3d(x, 2), (2, 3, 4, 6, 7)),
    "max2d_ceil_whole": (lambda x: F.max_pool2d(x, 2, ceil_mode=True), (2, 3, 8, 8)),
    "max1d": (lambda x: F.max_pool1d(x, 2), (2, 3, 9)),
    "avg1d": (lambda x: F.avg_pool1d(x, 3), (2, 3, 9)),
    "avg2d_wide_window": (lambda x: F.avg_pool2d(x, (6, 5)), (2, 3, 13, 11)),  # 30 > 27: a reduction
}


# eager PyTorch on CPU has no bf16 avg_pool3d to compare with
CASES = [
    (n, d) for n in TILED for d in (torch.float32, torch.bfloat16) if (n, d) != ("avg3d", torch.bfloat16)
]


@pytest.mark.parametrize("name, dtype", CASES, ids=[f"{n}-{str(d)[6:]}" for n, d in CASES])
def test_tiling_pools_are_reductions(name, dtype):
    fn, shape = TILED[name]
    torch._dynamo.reset()
    x = torch.randn(*shape).to(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)
    reports = compile_and_compare(fn, x, **tol)
    groups = fusion_groups(reports)
    assert groups and all(g["kernel"] for g in groups), groups
    # windows of up to 27 elements: one strided slice each, read by one pointwise kernel
    assert groups[0]["kind"] == ("reduction" if name == "avg2d_wide_window" else "pointwise"), groups


WINDOWED = {
    # KernelBench's level-1 pools (41-46) on ragged sizes, and the ceil-mode and divisor variants
    "max1d_dilated": (lambda x: F.max_pool1d(x, 4, stride=2, padding=2, dilation=3), (2, 3, 37)),
    "max2d_dilated": (lambda x: F.max_pool2d(x, 2, stride=2, padding=1, dilation=3), (2, 3, 17, 19)),
    "max3d_dilated": (lambda x: F.max_pool3d(x, 3, stride=2, padding=1, dilation=3), (1, 2, 11, 12, 13)),
    "avg1d_padded": (lambda x: F.avg_pool1d(x, 4, stride=2, padding=1), (2, 3, 37)),
    "avg3d_padded": (lambda x: F.avg_pool3d(x, 3, stride=2, padding=1), (1, 2, 11, 12, 13)),
    "max2d_ceil": (lambda x: F.max_pool2d(x, 3, stride=2, ceil_mode=True), (2, 3, 10, 11)),
    "avg2d_ceil": (lambda x: F.avg_pool2d(x, 3, stride=2, ceil_mode=True), (2, 3, 10, 11)),
    "avg2d_pad_excluded": (
        lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
        (2, 3, 10, 11),
    ),
    "avg2d_ceil_pad_excluded": (
        lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        (2, 3, 10, 11),
    ),
    "avg2d_ceil_pad_included": (
        lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True),
        (2, 3, 10, 11),
    ),
    "avg2d_divisor_override": (
        lambda x: F.avg_pool2d(x, 3, stride=1, padding=1, divisor_override=5),
        (2, 3, 10, 11),
    ),
}


@pytest.mark.parametrize("name", list(WINDOWED))
def test_overlapping_padded_and_dilated_pools_are_one_pointwise_kernel(name):
    """Windows that overlap, pad, dilate or end in a partial window: one map over strided slices of
    the padded input (-inf for max, 0 for average; an average's divisor counted per window where
    windows are clipped), against eager."""
    fn, shape = WINDOWED[name]
    torch._dynamo.reset()
    reports = compile_and_compare(fn, torch.randn(*shape), rtol=1e-5, atol=1e-6)
    assert [g["kind"] for g in fusion_groups(reports)] == ["pointwise"]


def test_pools_run_flat_not_in_the_stencil_tiles(tmp_path):
    """A pool reads its input through several slices, as the depthwise-stencil experiment does, but
    its kernel stays flat (one BLOCK over the output) unless that experiment is on: in the
    stencil's 2-d tiles KernelBench's pools ran 3-5x slower on the H200. Rows and columns here are
    past the tiles' minimum (16), where the split would apply."""
    torch._dynamo.reset()
    compiled = tilefuse.compile(lambda x: F.max_pool2d(x, 2), dump=tmp_path)
    x = torch.randn(2, 3, 40, 36)
    torch.testing.assert_close(compiled(x), F.max_pool2d(x, 2))
    (source,) = [p.read_text() for p in tmp_path.glob("**/kernels/*.py")]
    assert "GRID = ('cdiv(2160, BLOCK)',)" in source


def test_pool_windows_get_a_windows_config():
    """A flat kernel that reads one operand three or more times (a pool's taps, strided loads) is a
    window: 256-element blocks on 2 warps, not the pointwise 1024 on 4 (autotune/heuristics.py); a
    kernel reading each operand once keeps the pointwise default."""
    from tilefuse.autotune.heuristics import default_config

    config = default_config("pointwise", {"N": 1 << 22, "window": 4})
    assert (config.params, config.num_warps) == ({"BLOCK": 256}, 2)
    config = default_config("pointwise", {"N": 1 << 22})
    assert (config.params, config.num_warps) == ({"BLOCK": 1024}, 4)
    torch._dynamo.reset()
    reports = compile_and_compare(lambda x: F.max_pool2d(x, 2), torch.randn(2, 3, 40, 36), rtol=0, atol=0)
    ((group,),) = [fusion_groups(reports)]
    assert group["config"].endswith(",w=2,s=1"), group  # under the interpreter BLOCK is widened
    torch._dynamo.reset()
    reports = compile_and_compare(lambda x, y: torch.relu(x) + y, torch.randn(2, 3, 40, 36), torch.randn(36))
    ((group,),) = [fusion_groups(reports)]
    assert group["config"].endswith(",w=4,s=1"), group


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(["max", "avg"]),
    size=st.tuples(st.integers(3, 13), st.integers(3, 13)),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 4),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    ceil_mode=st.booleans(),
    count_include_pad=st.booleans(),
)
def test_any_small_window_matches_eager(
    kind, size, kernel, stride, padding, dilation, ceil_mode, count_include_pad
):
    padding = min(padding, kernel // 2)  # PyTorch's own limit
    if kind == "max":
        extent = dilation * (kernel - 1) + 1
        fn = lambda x: F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)  # noqa: E731
    else:
        extent = kernel
        fn = lambda x: F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)  # noqa: E731
    assume(all(s + 2 * padding >= extent for s in size))
    torch._dynamo.reset()
    x = torch.randn(2, 3, *size)
    reports = compile_and_compare(fn, x, rtol=1e-5, atol=1e-6)
    assert all(g["kernel"] for g in fusion_groups(reports))


def test_large_overlapping_windows_stay_in_pytorch_and_say_why():
    torch._dynamo.reset()
    fn = lambda x: F.max_pool2d(x, 8, stride=4)  # noqa: E731
    reports = compile_and_compare(fn, torch.randn(2, 3, 16, 24), allow_fallbacks=True)
    reasons = [f["reason"] for r in reports for f in r["fallbacks"]]
    assert any("64 > 27 elements" in reason for reason in reasons), reasons


def test_max_pool_in_training_keeps_its_indices_in_pytorch(monkeypatch):
    """The backward reads the argmax indices: the pooling stays in PyTorch; gradients match eager."""
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch._dynamo.reset()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    fn = lambda x: (F.max_pool2d(x * 2, 2) ** 2).sum()  # noqa: E731
    compiled = tilefuse.compile(fn)
    compiled(x).backward()
    got, x.grad = x.grad, None
    fn(x).backward()
    torch.testing.assert_close(got, x.grad)
    reasons = [f["reason"] for r in compiled.tilefuse_reports for f in r["fallbacks"]]
    assert any("indices used" in reason for reason in reasons), reasons


def test_unread_pool_indices_are_dropped_from_the_graph():
    """Inference reads no indices: the graph calls the pool without them (as eager does), so a
    pool left to PyTorch writes no index tensor either."""
    torch._dynamo.reset()
    reports = compile_and_compare(
        lambda x: F.max_pool2d(x, 3, stride=2, padding=1) * 2, torch.randn(2, 3, 9, 11)
    )
    ops = {op for r in reports for p in r["partitions"] for op in p["aten_ops"]}
    assert "aten.max_pool2d.default" in ops and "aten.max_pool2d_with_indices.default" not in ops
    torch._dynamo.reset()
    fn = lambda x: F.max_pool3d(x, 4, stride=2) + 1  # noqa: E731  (64 elements a window: PyTorch)
    reports = compile_and_compare(fn, torch.randn(1, 2, 9, 10, 11), allow_fallbacks=True)
    assert [f["op"] for r in reports for f in r["fallbacks"]] == ["aten.max_pool3d.default"]


def test_unraveled_inner_indices_need_no_mask(tmp_path):
    """The output index unraveled into (n, c, h, w): `% size` keeps every inner index in range, and
    the windows' `2h + o` stay below the input's height, so each load and the store check only the
    outermost index (the emitter's upper bounds)."""
    torch._dynamo.reset()
    compile_and_compare(lambda x: F.max_pool2d(x, 2), torch.randn(2, 3, 16, 16), dump=tmp_path)
    (source,) = [p.read_text() for p in tmp_path.glob("*/kernels/*.py")]
    accesses = [line for line in source.splitlines() if "tl.load(" in line or "tl.store(" in line]
    assert len(accesses) == 5, accesses
    assert all(line.count(" < ") == 1 for line in accesses), accesses


def test_rotary_embeddings_are_no_window():
    """Rotate-half reads x at three places (x and its two halves): under WINDOW_TAPS, the pointwise
    config; the GELU reads x at one place."""
    from tilefuse.passes.lower_to_tile import WINDOW_TAPS

    def rope(x, cos, sin):
        h = x.shape[-1] // 2
        return x * cos + torch.cat([-x[..., h:], x[..., :h]], -1) * sin

    assert WINDOW_TAPS > 3
    for fn, args in (
        (rope, (torch.randn(2, 3, 40, 36), torch.randn(40, 36), torch.randn(40, 36))),
        (lambda x: F.gelu(x, approximate="tanh") * x, (torch.randn(2, 3, 40, 36),)),
    ):
        torch._dynamo.reset()
        ((group,),) = [fusion_groups(compile_and_compare(fn, *args))]
        assert group["config"].endswith(",w=4,s=1"), group
