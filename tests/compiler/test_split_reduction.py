"""Split reductions of wide GEMM rows (Triton interpreter) against eager PyTorch.

A reduction over a GEMM output row wider than a tile (N > MAX_EPILOGUE_ROW) whose row is not
needed afterwards runs as partial reductions per chunk in the GEMM's epilogue plus a combine
kernel; see passes/split_reduction.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import compile_and_compare, fusion_groups
from tilefuse.passes import split_reduction
from tilefuse.passes.split_reduction import (
    COLUMN_PROGRAMS,
    COLUMN_TILE,
    MAX_EPILOGUE_ROW,
    chunk_size,
    column_chunk,
)

REDUCTIONS = {
    "logsumexp": lambda x, w, b: torch.logsumexp(F.linear(x, w, b), -1),
    "logsumexp_by_hand": lambda x, w, b: _lse_by_hand(x @ w.t() + b),
    "sum_of_squares": lambda x, w, b: F.linear(x, w, b).pow(2).sum(-1),
    "amax_keepdim": lambda x, w, b: F.linear(x, w, b).amax(-1, keepdim=True),
    "min": lambda x, w, b: (x @ w.t()).amin(-1),
    "mean": lambda x, w, b: torch.tanh(F.linear(x, w, b)).mean(-1),
}


def _lse_by_hand(y):
    m = y.amax(-1, keepdim=True)
    return torch.log(torch.exp(y - m).sum(-1)) + m.squeeze(-1)


def _split(reports) -> bool:
    """Whether the compiled graph is a GEMM whose epilogue reduces, plus a combine kernel."""
    groups = fusion_groups(reports)
    return (
        len(groups) == 2 and groups[0]["kind"] == "gemm" and "ein.reduce" in groups[0]["ops"]
        and all(g["kernel"] for g in groups)
    )  # fmt: skip


def test_chunk_size():
    assert chunk_size(MAX_EPILOGUE_ROW) is None  # one tile holds the row
    assert chunk_size(1024) == 256 and chunk_size(320) == 64 and chunk_size(32000) == 256
    assert chunk_size(1000) is None and chunk_size(50257) is None  # no power-of-two chunk >= 64


@pytest.mark.parametrize("name", REDUCTIONS)
@pytest.mark.parametrize("n", [512, 320, 1000], ids=lambda n: f"N={n}")
def test_wide_row_reductions(name, n):
    x, w, b = torch.randn(37, 40), torch.randn(n, 40), torch.randn(n)
    reports = compile_and_compare(REDUCTIONS[name], x, w, b, rtol=1e-4, atol=1e-4)
    assert _split(reports) == (chunk_size(n) is not None)


def test_softmax_is_not_split():
    # the row is needed after the reduction: a GEMM and a one-pass row kernel move fewer bytes
    x, w = torch.randn(9, 24), torch.randn(512, 24)
    reports = compile_and_compare(lambda x, w: torch.softmax(x @ w.t(), -1), x, w, rtol=1e-4, atol=1e-6)
    assert sorted(g["kind"] for g in fusion_groups(reports)) == ["gemm", "row"]


def test_row_needed_elsewhere_is_not_split():
    x, w = torch.randn(9, 24), torch.randn(512, 24)
    fn = lambda x, w: ((y := x @ w.t()), torch.logsumexp(y, -1))  # noqa: E731
    reports = compile_and_compare(fn, x, w, rtol=1e-4, atol=1e-5)
    assert not _split(reports)


def test_batched_and_3d_inputs():
    x, w, b = torch.randn(3, 11, 32), torch.randn(768, 32), torch.randn(768)
    reports = compile_and_compare(REDUCTIONS["logsumexp"], x, w, b, rtol=1e-4, atol=1e-4)
    assert _split(reports)
    q, k = torch.randn(4, 13, 16), torch.randn(4, 640, 16)
    reports = compile_and_compare(lambda q, k: torch.logsumexp(q @ k.transpose(1, 2), -1), q, k, rtol=1e-4)
    assert _split(reports)


def test_infinite_logits():
    # a chunk of -inf gives a partial of -inf, which the combine must not turn into NaN
    x, w = torch.randn(5, 8), torch.randn(512, 8)
    mask = torch.zeros(512)
    mask[:300] = float("-inf")  # chunks 0 and 1 (of 256) are -inf, or partly
    fn = lambda x, w, mask: torch.logsumexp(x @ w.t() + mask, -1)  # noqa: E731
    assert _split(compile_and_compare(fn, x, w, mask, rtol=1e-4, atol=1e-5))
    everything = torch.full((512,), float("-inf"))
    compile_and_compare(fn, x, w, everything)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["logsumexp", "sum_of_squares"])
def test_half_precision(dtype, name):
    x, w, b = (torch.randn(*s, dtype=dtype) / 4 for s in ((33, 64), (1024, 64), (1024,)))
    fn = REDUCTIONS[name]
    assert _split(compile_and_compare(fn, x, w, b, rtol=2e-2, atol=2e-2))
    # against float64: partials stay f32, so the error is the product's and the result's rounding
    actual = tilefuse.compile(fn)(x, w, b).double()
    torch.testing.assert_close(actual, fn(x.double(), w.double(), b.double()), rtol=1e-2, atol=1e-2)


@settings(max_examples=6, deadline=None)
@given(
    m=st.integers(1, 24),
    k=st.integers(1, 48),
    chunks=st.integers(2, 4),
    c=st.sampled_from([64, 128, 256]),
    name=st.sampled_from(sorted(REDUCTIONS)),
)
def test_random_shapes(m, k, chunks, c, name):
    torch._dynamo.reset()
    n = chunks * c
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    reports = compile_and_compare(REDUCTIONS[name], x, w, b, rtol=1e-4, atol=1e-4)
    assert _split(reports) == (chunk_size(n) is not None)


def test_a_head_split_norm_is_not_taken_for_chunks():
    # [T, H*D] -> [T, H, D] then a per-head norm (QK-norm) looks like chunks of the row; D = 96 is not
    # split-reduction's chunk, so the GEMM must not be forced to BLOCK_N = 96 (not a power of two)
    x, w = torch.randn(10, 32), torch.randn(384, 32)
    fn = lambda x, w: F.rms_norm((x @ w.t()).view(10, 4, 96), (96,))  # noqa: E731
    reports = compile_and_compare(fn, x, w, rtol=1e-4, atol=1e-5)
    groups = fusion_groups(reports)
    assert [g["kind"] for g in groups] == ["gemm", "row"] and all(g["kernel"] for g in groups)
    assert "BLOCK_N=96" not in groups[0]["config"]


# --- column reductions: sums over the leading dims into few outputs ------------------------------------

COLUMNS = {
    "sum": lambda x, g, r: x.reshape(512, 37).sum(0),
    "weight_grad": lambda x, g, r: (x * g * r).sum((0, 1)),  # a norm weight's gradient: one prologue map
    "mean_keepdim": lambda x, g, r: torch.tanh(x).mean((0, 1), keepdim=True),
    "amax": lambda x, g, r: (x + r).amax((0, 1)),
    "amin": lambda x, g, r: x.amin((0, 1)),
}


@pytest.fixture
def small_columns(monkeypatch):
    """Column reductions split from a smaller size, so the interpreter runs them quickly."""
    from tilefuse.passes import split_reduction

    monkeypatch.setattr(split_reduction, "MIN_COLUMN_ELEMENTS", 2048)


def _column_groups(reports) -> list[str]:
    return [g["kind"] for g in fusion_groups(reports)]


@pytest.mark.parametrize("name", COLUMNS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_column_reductions_are_split_into_partials(small_columns, name, dtype):
    """[4, 128, 37] reduced over its leading dims: chunks of rows to [T, 37] partials in f32, then the
    partials; the prologue map stays in the first reduction (two kernels, no pointwise one); bf16
    as close to float64 as eager."""
    x, g, r = torch.randn(4, 128, 37), torch.randn(4, 128, 1), torch.randn(37)
    fn = COLUMNS[name]
    x2, g2, r2 = (t.to(dtype) for t in (x, g, r))
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-4)
    reports = compile_and_compare(fn, x2, g2, r2, **tol)
    kinds = _column_groups(
        reports
    )  # the partials' reduction, then their combine (with its cast: a row kernel)
    assert len(kinds) == 2 and kinds[0] == "reduction" and "pointwise" not in kinds, kinds
    if dtype == torch.bfloat16:  # partials in f32: as close to float64 as eager's single f32 pass
        want = fn(x2.double(), g2.double(), r2.double())
        got = tilefuse.compile(fn)(x2, g2, r2).double()
        eager = fn(x2, g2, r2).double()
        assert (got - want).abs().max() <= 2 * (eager - want).abs().max() + 1e-2


@pytest.mark.parametrize(
    ("rows", "outputs", "chunk"),
    [
        (2048, 1024, 256),
        (2048, 256, 128),
        (4096, 256, 256),
        (512, 37, 64),
        (1000, 256, None),
        (4 * 96, 64, 64),
    ],
)
def test_a_column_split_gives_few_outputs_enough_programs(rows, outputs, chunk):
    """The chunk a column split takes: a norm gradient's [2048, 1024] keeps 256-row chunks (8 x 16 tiles);
    a key bias of 256 features over 2048 tokens takes 128 (16 x 4 = 64 programs, where 256 gave 32);
    a size nothing divides into 4 chunks is not split."""
    assert column_chunk(rows, outputs) == chunk
    if chunk is not None and rows // 64 * max(1, outputs // COLUMN_TILE) >= COLUMN_PROGRAMS:
        assert rows // chunk * max(1, outputs // COLUMN_TILE) >= COLUMN_PROGRAMS


def test_column_reductions_stay_whole_when_small_or_wide_or_not_leading(small_columns):
    """Few elements, many outputs, a row count without a chunk, or a reduction over a middle dim:
    one kernel, as before."""
    cases = [
        (lambda x: x.sum(0), torch.randn(8, 16)),  # too small
        (lambda x: x.sum(0), torch.randn(4, 20000)),  # too many outputs (and too few rows)
        (lambda x: x.sum(0), torch.randn(250, 33)),  # 250 rows: no chunk of 64..512 divides them
        (lambda x: x.sum(1), torch.randn(4, 512, 9)),  # not the leading dims
    ]
    for fn, x in cases:
        reports = compile_and_compare(fn, x, rtol=1e-5, atol=1e-4)
        assert _column_groups(reports) == ["reduction"], (fn, x.shape)


# --- full reductions: every dim to one element -----------------------------------------------------------

FULL = {
    "sum": lambda a, b: a.sum(),
    "mse": lambda a, b: F.mse_loss(a, b),
    "huber": lambda a, b: F.huber_loss(a, b, delta=0.5),
    "frobenius": lambda a, b: a / torch.linalg.norm(a),
    "amax_keepdim": lambda a, b: (a * 2.0).amax(dim=tuple(range(a.dim())), keepdim=True),
    "amin": lambda a, b: torch.tanh(a).amin(),
    "mean_broadcast": lambda a, b: (a - b[..., :1]).mean(),  # an operand broadcast: its map writes first
}


@pytest.fixture
def small_full(monkeypatch):
    """Full reductions split into partials from a smaller size, so the interpreter runs them quickly."""
    from tilefuse.passes import split_reduction

    monkeypatch.setattr(split_reduction, "MIN_FULL_SPLIT", 512)


def test_full_view():
    from tilefuse.passes.split_reduction import MIN_FULL_SPLIT, full_view

    assert full_view((7, 5)) == [1, 35]  # few elements: one row
    assert full_view((MIN_FULL_SPLIT // 64, 64)) == [MIN_FULL_SPLIT // 4096, 4096]  # across rows of 64
    assert full_view((4096, 8192)) == [4096, 2, 4096]  # the last dim split: contiguous rows
    assert full_view((MIN_FULL_SPLIT, 3)) == [MIN_FULL_SPLIT * 3 // 4096, 4096]  # nothing divides 3: across
    assert full_view((1031, 67)) == [1031, 67]  # nothing divides: the trailing dims
    assert full_view((65537,)) == [1, 65537]  # a prime count: one row


@pytest.mark.parametrize("name", FULL)
@pytest.mark.parametrize(
    "shape", [(4, 256), (3, 101, 7), (1031,), (37, 3)], ids=["pow2", "ragged_trailing", "prime", "one_row"]
)
def test_full_reductions_run_as_kernels(small_full, name, shape):
    """Reductions to one element on N elements (partials and a combine, or one row): kernels, no
    fallback, against eager; a prologue map with x-shaped or scalar operands stays in the first
    reduction (no pointwise kernel)."""
    a, b = torch.randn(*shape), torch.randn(*shape)
    reports = compile_and_compare(FULL[name], a, b, rtol=1e-5, atol=1e-5)
    kinds = _column_groups(reports)
    assert kinds.count("reduction") >= 1, kinds
    if name in ("sum", "mse", "huber", "amin"):
        assert "pointwise" not in kinds, kinds


@settings(max_examples=8, deadline=None)
@given(
    dims=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    kind=st.sampled_from(["sum", "mean", "amax", "amin"]),
)
def test_full_reductions_random_shapes(dims, kind):
    from tilefuse.passes import split_reduction

    old = split_reduction.MIN_FULL_SPLIT
    split_reduction.MIN_FULL_SPLIT = 256  # partials from 256 elements
    torch._dynamo.reset()
    try:
        x = torch.randn(*dims)
        compile_and_compare(lambda x: getattr(torch.square(x) - x, kind)(), x, rtol=1e-5, atol=1e-4)
    finally:
        split_reduction.MIN_FULL_SPLIT = old


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_full_reductions_accumulate_in_f32(small_full, dtype):
    """A half-precision loss: partials and the combine in f32, as close to float64 as eager."""
    a, b = torch.randn(16, 512).to(dtype), torch.randn(16, 512).to(dtype)
    fn = FULL["mse"]
    got = tilefuse.compile(fn)(a, b).double()
    want = fn(a.double(), b.double())
    eager = fn(a, b).double()
    assert (got - want).abs().max() <= 2 * (eager - want).abs().max() + 1e-2


@pytest.mark.parametrize("name", ["huber", "mse", "sum"])
def test_a_half_precision_loss_casts_back_in_its_combine(small_full, name):
    """A bf16 loss's 0-d cast back from f32 is the combine kernel's epilogue: the groups are the
    partials and the combine, nothing between them and the result but the reshape to 0-d."""
    a, b = torch.randn(16, 512).to(torch.bfloat16), torch.randn(16, 512).to(torch.bfloat16)
    reports = compile_and_compare(FULL[name], a, b, rtol=2e-2, atol=2e-2)
    groups = fusion_groups(reports)
    assert len(groups) == 2 and groups[0]["kind"] == "reduction", groups
    assert all(g["kernel"] for g in groups), groups


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("shape", [(37,), (5, 129), (3, 40, 7)], ids=str)
def test_integer_sums_are_kernels(small_full, dtype, shape):
    """Sums of integers (a count of labels that are not ignored) accumulate in i64 in the kernel, to
    one element (partials and a combine past MIN_FULL_SPLIT) or over a dim; exact as eager."""
    t = torch.randint(-5, 6, shape, dtype=dtype)
    for fn in (lambda t: (t != 3).sum(), lambda t: t.sum(), lambda t: t.sum(-1) * 2):
        torch._dynamo.reset()
        reports = compile_and_compare(fn, t, rtol=0, atol=0)
        groups = fusion_groups(reports)
        assert groups and all(g["kernel"] for g in groups if g["kind"] == "reduction"), groups


def test_cross_entropy_mean_with_ignored_labels_runs_in_kernels():
    """Cross-entropy's mean divides by the int64 count of labels not ignored: that count is a
    reduction kernel now, not an op on the reference interpreter."""
    x, t = torch.randn(64, 10), torch.randint(0, 10, (64,))
    t[::7] = -100
    reports = compile_and_compare(lambda x, t: F.cross_entropy(x, t), x, t, rtol=1e-5, atol=1e-5)
    glue = [g["op"] for r in reports for p in r["partitions"] for g in p["glue_ops"]]
    assert "ein.reduce" not in glue, glue


@pytest.mark.parametrize("shape", [(17, 37), (5, 3, 129)], ids=str)
def test_std_over_leading_dim_then_full_sum_runs_as_kernels(shape):
    """`std(x, 0).sum()`: the split of the full sum reshaped the std back to 2-d behind the reshape to
    1-d, and the std's row kernel read its own sqrt's input through the two views as a tensor nobody
    wrote (KeyError at the first call, the partition left to PyTorch): one reshape now, kernels run."""
    x = torch.randn(*shape)
    compiled = tilefuse.compile(lambda x: torch.std(x, dim=0).sum())
    torch.testing.assert_close(compiled(x), torch.std(x, dim=0).sum(), rtol=1e-5, atol=1e-5)
    (report,) = compiled.tilefuse_reports
    assert report["partitions"] and not report["fallbacks"]
    assert all(p.get("runtime_error") is None for p in report["partitions"])


class _ScaledLogits(torch.nn.Module):
    """SigLIP's logits: a similarity scaled by `exp` of a one-element parameter (`logit_scale`)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        self.scale = torch.nn.Parameter(torch.randn(1))

    def forward(self, x, y):
        return (self.lin(y) @ self.lin(x).t()) * self.scale.exp()


def test_a_one_element_parameters_gradient_runs_as_kernels(monkeypatch):
    """The scale's gradient is a full sum reshaped to [1]: its split left reshape(reshape(total)), and
    the backward's partition failed at its first call (SigLIP training); the gradients as eager's."""
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch.manual_seed(0)
    model = _ScaledLogits()
    x, y, w = torch.randn(2, 16), torch.randn(2, 16), torch.randn(2, 2)
    (model(x, y) * w).sum().backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = tilefuse.compile(model)
    (compiled(x, y) * w).sum().backward()
    for got, ref in zip((p.grad for p in model.parameters()), want):
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    partitions = [p for r in compiled.tilefuse_reports for p in r["partitions"]]
    assert any(r.get("kind") == "backward" and r["partitions"] for r in compiled.tilefuse_reports)
    assert all(p.get("runtime_error") is None for p in partitions), partitions


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x / torch.norm(x, p="fro"),
        lambda x: x - x.mean(),
        lambda x: torch.relu(x) / x.abs().amax(),
    ],
    ids=["frobenius_normalize", "minus_mean", "over_absmax"],
)
@pytest.mark.parametrize("shape", [(64, 1031), (37, 3)], ids=str)
def test_a_map_reading_a_full_reductions_total_is_a_kernel(fn, shape):
    """A pointwise map over x reading the 0-d total of a reduction over all of x: the total's reshape to
    0-d made the lowering's row-merge check index an empty shape (IndexError), so the map had no kernel
    and ran op by op in PyTorch (KernelBench's frobenius_normalize at eager's speed, 0.52x
    torch.compile). Every group is a kernel now, nothing runs beside them."""
    reports = compile_and_compare(fn, torch.randn(*shape), rtol=1e-5, atol=1e-5)
    partitions = [p for r in reports for p in r["partitions"]]
    assert partitions and all(not p.get("glue_ops") for p in partitions), partitions
    groups = [g for p in partitions for g in p.get("groups", [])]
    assert groups and all(g["kernel"] for g in groups), groups


WIDE = {
    "softmax": lambda x: torch.softmax(x, -1),
    "log_softmax": lambda x: F.log_softmax(x, -1),
    "layer_norm": lambda x: F.layer_norm(x, x.shape[-1:]),
    "rms_norm": lambda x: F.rms_norm(x, x.shape[-1:], eps=1e-6),
    "amax_keepdim": lambda x: x.amax(-1, keepdim=True),
    "mean_of_squares": lambda x: (x * x).mean(-1),
}
OVER_TRAILING_DIMS = {
    "layer_norm_over_trailing_dims": lambda x: F.layer_norm(x, x.shape[1:]),
    "group_norm_one_group": lambda x: F.group_norm(x, 1),
    "softmax_of_flattened": lambda x: torch.softmax(x.flatten(1), -1).view_as(x),
}


@pytest.mark.parametrize(
    "name, shape",
    [(n, s) for n in sorted(WIDE) for s in [(3, 1 << 15), (2, 4, 40960)]]
    + [(n, (2, 4, 96, 96)) for n in sorted(OVER_TRAILING_DIMS)],
)
def test_few_wide_rows_are_reduced_in_chunks(name, shape):
    """Few rows wider than WIDE_ROW: every reduction over them runs as partials over chunks (many
    programs) and a combine, the rest (softmax's division, a norm's scaling) as its own kernel."""
    fn = WIDE.get(name) or OVER_TRAILING_DIMS[name]
    reports = compile_and_compare(fn, torch.randn(shape), rtol=1e-4, atol=1e-5)
    groups = fusion_groups(reports)
    # each reduction became partials and a combine: two kernels with a reduce at least (one before)
    assert sum("ein.reduce" in g["ops"] for g in groups) >= 2, groups


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_few_wide_rows_in_half_precision(dtype):
    x = torch.randn(2, 1 << 15).to(dtype)
    for name in ("softmax", "layer_norm"):
        torch._dynamo.reset()
        compile_and_compare(WIDE[name], x, rtol=2e-2, atol=2e-3)


VARIANCES = {
    "layer_norm_over_trailing_dims": lambda x: F.layer_norm(x, x.shape[1:]),
    "group_norm_two_groups": lambda x: F.group_norm(x, 2),
    "var": lambda x: x.var(dim=(1, 2, 3)),
    "var_mean": lambda x: torch.var_mean(x, dim=(1, 2, 3), correction=0),
}


def _compiled_against_float64(fn, x: torch.Tensor):
    """`fn` compiled, its first call's outputs checked against float64's (relative to their largest)."""
    compiled = tilefuse.compile(fn)
    actual, expected = compiled(x), fn(x.double())
    for a, e in zip(
        actual if isinstance(actual, tuple) else [actual],
        expected if isinstance(expected, tuple) else [expected],
    ):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-4 * e.abs().max().item())
    return compiled


@pytest.mark.parametrize("name", sorted(VARIANCES))
@given(offset=st.sampled_from([0.0, 100.0]), scale=st.sampled_from([1e-2, 1.0, 30.0]))
@settings(max_examples=3, deadline=None, database=None)
def test_a_variance_over_few_wide_rows_reads_them_once(name, offset, scale):
    """A variance over few wide rows (a LayerNorm over [C, H, W], a GroupNorm of few groups): each
    chunk's mean and squared deviations from it in one partial kernel (two reductions over the chunk),
    a combine of the chunk statistics, and the rest; the input is read once for the statistics (three
    times before: mean, squares, normalization; a bf16 input's f32 copy written out too). Against
    float64 with an offset of 100 deviations, where a sum-of-squares formula would lose most digits (the
    chunk means' rounding enters as in Inductor's split Welford reduction: at 1e5 deviations both lose
    about half the digits eager keeps)."""
    torch._dynamo.reset()
    fn = VARIANCES[name]
    x = (torch.randn(2, 4, 128, 128) + offset) * scale
    compiled = _compiled_against_float64(fn, x)
    groups = fusion_groups(compiled.tilefuse_reports)
    assert [g["kind"] for g in groups][:2] == ["row", "row"] and all(g["kernel"] for g in groups), groups
    assert groups[0]["ops"].count("ein.reduce") == 2 and len(groups) <= 3, groups


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "softmax_of_flattened"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_softmax_over_few_wide_rows_reads_them_twice(name, dtype):
    """A (log-)softmax over few wide rows: each chunk's max and sum of exponentials from it in one
    partial kernel, a combine rescaling the sums to the row's max, and the output's kernel reading the
    input again: three kernels (five before, the input read three times). Chunks of -inf (a masked
    span) add nothing; a row of -inf gives eager's NaNs."""
    fn = WIDE.get(name) or OVER_TRAILING_DIMS[name]
    x = (torch.randn(4, 2, 128, 128) * 3).to(dtype)
    if name != "softmax_of_flattened":
        x = x.view(4, -1)
        x[0, :20000] = float("-inf")  # whole chunks of 4096 and part of one
        x[1, 5:] = float("-inf")
        x[2] = float("-inf")
    tol = dict(rtol=2e-2, atol=2e-3) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    reports = compile_and_compare(fn, x, **tol)
    assert [g["kind"] for g in fusion_groups(reports)] == ["row", "row", "pointwise"]


@pytest.mark.parametrize("shape", [(2, 4, 128, 128), (16, 4, 50, 50), (8, 4, 70, 70)], ids=str)
def test_a_training_batch_norms_statistics_over_few_channels_are_split(shape):
    """A training BatchNorm's statistics over [N, H, W] per channel (few channels, many elements each):
    the trailing [H, W] run read in chunks (of 4096, or the whole run where none divides it: 70 x 70
    is 4900) for each chunk's mean and squared deviations, combined over N and the chunks (before: one
    program a channel walking all of it); outputs and running statistics as eager's. Three kernels: the
    partials, their combine (which also scales the variance by its count and updates both running
    statistics: three small kernels of their own before), the normalization."""
    import copy

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(shape[1]).train()
    ref = copy.deepcopy(bn)
    compiled = tilefuse.compile(lambda x: bn(torch.relu(x)))
    for _ in range(2):
        x = torch.randn(shape) * 3 + 1
        torch.testing.assert_close(compiled(x), ref(torch.relu(x)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    groups = fusion_groups(compiled.tilefuse_reports)
    assert [g["kind"] for g in groups] == ["row", "row", "pointwise"], groups
    assert groups[0]["ops"].count("ein.reduce") == 2, groups


@pytest.mark.parametrize(
    "name, shape",
    [
        ("var_mean", (2, 3, 126, 126)),  # a row of 47628: no chunk divides it; [126, 126] runs are chunks
        ("layer_norm_over_trailing_dims", (3, 3, 126, 126)),
        ("var", (2, 3, 100, 300)),  # 90000: [100, 300] runs pass MAX_ROW; rows of 300 are the chunks
    ],
    ids=str,
)
def test_a_variance_over_ragged_wide_rows_is_split_by_its_trailing_dims(name, shape):
    """Rows no power-of-two chunk divides (feature maps after a 3x3 convolution) are split by their
    trailing dims (a chunk of at most MAX_ROW elements a row kernel holds), the dims before them
    combined with the partials; against float64."""
    fn = VARIANCES[name]
    x = torch.randn(shape) * 3 + 2
    compiled = _compiled_against_float64(fn, x)
    kinds = [g["kind"] for g in fusion_groups(compiled.tilefuse_reports)]
    assert kinds[:2] == ["row", "row"], kinds


def test_a_run_too_short_for_a_chunk_is_not_split():
    """A [C, 130, 130] row (16900: more than a row kernel holds, no power-of-two chunk, and rows of 130
    too short to be chunks) stays one reduction a row."""
    fn = VARIANCES["var_mean"]
    x = torch.randn(2, 2, 130, 130)
    compiled = tilefuse.compile(fn)
    for a, e in zip(compiled(x), fn(x.double())):
        torch.testing.assert_close(a.double(), e, rtol=1e-4, atol=1e-5)
    reduces = sum(g["ops"].count("ein.reduce") for g in fusion_groups(compiled.tilefuse_reports))
    assert reduces == 2, fusion_groups(compiled.tilefuse_reports)


def test_a_bf16_layer_norm_over_wide_rows_reads_the_input_in_every_kernel():
    """The normalization reads the bf16 input itself: no kernel writes its f32 copy for it."""
    x = torch.randn(2, 4, 128, 128).to(torch.bfloat16)
    reports = compile_and_compare(VARIANCES["layer_norm_over_trailing_dims"], x, rtol=2e-2, atol=2e-2)
    assert [g["kind"] for g in fusion_groups(reports)] == ["row", "row", "pointwise"]


@pytest.mark.parametrize(
    "name, shape, split",
    [
        ("rms_norm", (6, 1 << 15), False),  # FEW_ROWS rows of one statistic: a row kernel reads them once
        ("rms_norm", (5, 1 << 15), True),
        ("layer_norm", (6, 1 << 15), True),  # a variance over rows wider than MAX_ROW: split however many
        ("layer_norm", (6, 16384), False),  # as wide as a row kernel holds
        ("softmax", (6, 1 << 15), False),  # the row kernel's online max and sum read the row once
        ("softmax", (3, (1 << 15) + 8), False),  # no chunk divides the width
        ("layer_norm", (3, 16384), False),
    ],
)
def test_which_rows_are_split(name, shape, split, monkeypatch):
    """FEW_ROWS rows or more (6 here, as many as two an SM on a GPU) of one statistic, rows narrower than
    WIDE_ROW, or a width no chunk divides: one row kernel, as before; fewer rows are split. A norm's
    mean and variance are split however many the rows where a row kernel would read them once a
    statistic (wider than MAX_ROW); a softmax's max and sum it reads in one online pass."""
    monkeypatch.setattr(split_reduction, "FEW_ROWS", 6)
    reports = compile_and_compare(WIDE[name], torch.randn(shape), rtol=1e-4, atol=1e-5)
    kinds = [g["kind"] for g in fusion_groups(reports)]
    assert (len(kinds) == 3 and kinds[2] == "pointwise") if split else kinds == ["row"], kinds


def test_an_instance_norm_of_many_rows_wider_than_a_row_kernel_holds_is_split(monkeypatch):
    """KernelBench's InstanceNorm (1024 rows of 65536 on the GPU, 0.79x torch.compile as a row kernel
    reading each row three times): its mean and variance from one pass over chunks."""
    monkeypatch.setattr(split_reduction, "FEW_ROWS", 4)
    torch.manual_seed(0)
    norm = torch.nn.InstanceNorm2d(4)
    x = torch.randn(2, 4, 128, 160) * 2 + 5  # 8 rows of 20480 > MAX_ROW
    reports = compile_and_compare(norm, x, rtol=1e-4, atol=1e-5)
    assert [g["kind"] for g in fusion_groups(reports)] == ["row", "row", "pointwise"]
