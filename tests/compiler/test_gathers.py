"""Gathers (embedding, index_select, gather, `x[idx]`) and outer products compile into kernels that
match eager; a group whose lowering breaks runs op by op without costing the graph its kernels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import compile_and_compare, fusion_groups
from tilefuse.passes import lower_to_tile


def _embedding_scaled(w, ids, x):
    return torch.nn.functional.embedding(ids, w) * 2.0 + 1.0


def _embedding_layer_norm(w, ids, x):
    return torch.nn.functional.layer_norm(torch.nn.functional.embedding(ids, w), (w.shape[1],))


def _index_select(w, ids, x):
    return torch.index_select(x, 1, ids[0]) + 1.0


def _gather(w, ids, x):
    return torch.gather(x, 1, ids[:, :4]) * 3.0


def _advanced_index(w, ids, x):
    return x[:, ids[1]] - 1.0


def _two_index_tensors(w, ids, x):
    return x[ids[0, :3, None] - 6, ids[1, None, :]] * 2.0  # negative indices count from the end


@pytest.mark.parametrize(
    "fn", [_embedding_scaled, _embedding_layer_norm, _index_select, _gather, _advanced_index, _two_index_tensors]
)
def test_gather_matches_eager_in_kernels(fn):
    w, ids, x = torch.randn(50, 8), torch.randint(0, 6, (2, 5)), torch.randn(6, 6, 3)
    if fn in (_gather, _two_index_tensors):
        x = x[..., 0]
    reports = compile_and_compare(fn, w, ids, x)
    groups = fusion_groups(reports)
    assert groups and all(g["kernel"] is not None for g in groups)
    assert "ein.gather" in reports[0]["partitions"][0]["ein_ops"]


@pytest.mark.parametrize("batch", [1, 3])
def test_outer_product_contraction_is_a_kernel(batch):
    """RoPE's `inv_freq[None, :, None] @ positions[:, None, :]` sums over an index of size 1 that
    the operands' views drop: the GEMM kernel multiplies instead of calling a dot."""

    def freqs(inv_freq, positions):
        inv = inv_freq[None, :, None].expand(positions.shape[0], -1, 1)
        return torch.cos(inv @ positions[:, None, :].float()).transpose(1, 2)

    positions = torch.arange(16).expand(batch, 16)
    reports = compile_and_compare(freqs, torch.rand(8), positions)
    groups = fusion_groups(reports)
    assert "gemm" in [g["kind"] for g in groups]  # the other: positions cast to float
    assert all(g["kernel"] is not None for g in groups)


def test_a_group_that_fails_to_lower_runs_op_by_op(monkeypatch):
    def broken(kb, group, allow_tf32):
        raise RuntimeError("injected lowering bug")

    monkeypatch.setenv("TILEFUSE_CACHE", "0")
    monkeypatch.setattr(lower_to_tile, "lower_gemm", broken)
    w = torch.randn(16, 16)
    reports = compile_and_compare(lambda x: (torch.relu(x @ w), x.exp()), torch.randn(4, 16))
    groups = fusion_groups(reports)
    assert any(g["kernel"] is not None for g in groups)  # the pointwise group still is a kernel
    failed = [g for g in groups if g["kernel"] is None]
    assert failed and all("injected lowering bug" in g["not_a_kernel_because"] for g in failed)


class _FirstProjection(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(50, 24))
        self.gamma = torch.nn.Parameter(torch.rand(24) + 0.5)
        self.proj = torch.nn.Linear(24, 40, bias=False)

    def forward(self, ids):
        h = torch.nn.functional.embedding(ids, self.table)
        normed = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * self.gamma
        return self.proj(normed), h


@pytest.mark.parametrize("tokens", [(1, 1), (2, 1), (1, 3)], ids=str)
def test_one_token_embedding_feeds_a_normed_projection_as_a_kernel(tokens):
    """Decode's first projection: the embedding of one token, RMS-normed (the norm's weight folds
    into the projection's, its scale into the epilogue), read by the GEMM through the gather. The
    gathered operand is a single row for every M of the tile; it once failed to lower ("tile.dot:
    shapes ('1', 'BLOCK_K') ... do not chain") and ran on the reference interpreter in every
    decode step."""
    reports = compile_and_compare(_FirstProjection().eval(), torch.randint(0, 50, tokens), rtol=1e-4)
    groups = fusion_groups(reports)
    assert "gemm" in [g["kind"] for g in groups]
    assert all(g["kernel"] is not None for g in groups), [g["not_a_kernel_because"] for g in groups]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_cross_entropy_reads_the_label_logit_instead_of_writing_the_log_softmax(tmp_path, reduction):
    """The gather of one label a row sinks through log-softmax's maps: the row kernel writes its two
    statistics, and no [rows, vocabulary] tensor is allocated; ignored labels (-100) as eager."""
    torch._dynamo.reset()
    logits, labels = torch.randn(33, 2000), torch.randint(0, 2000, (33,))
    labels[::5] = -100
    fn = lambda x, t: F.cross_entropy(x, t, reduction=reduction)  # noqa: E731
    compile_and_compare(fn, logits, labels, rtol=1e-5, atol=1e-5, dump=tmp_path)
    (program,) = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert "(33, 2000)" not in program, program


def test_a_gather_of_a_computed_table_gathers_its_operands():
    """embedding(ids, w * 2 + b) reads w and b at the ids (b broadcast: read at index 0 along its
    size-1 dim) instead of computing the whole table; the same numbers as eager."""
    torch._dynamo.reset()
    w, b, ids = torch.randn(500, 16), torch.randn(1, 16), torch.randint(0, 500, (3, 7))
    fn = lambda ids, w, b: F.embedding(ids, w * 2 + b)  # noqa: E731
    reports = compile_and_compare(fn, ids, w, b)
    assert [g["kind"] for g in fusion_groups(reports)] == ["pointwise"]


def test_a_gather_at_one_loaded_position_runs_in_the_interpreter(capsys):
    """T5's relative-position bias in a decode step: one bucket id (a 1 x 1 tensor) gathers one row of
    the bias table, permuted to (1, heads, 1, 1). The kernel loads the id as a 0-d value that the IR
    types as a block, so the load's mask conditions are all Triton scalars over a block of pointers,
    a mask the interpreter refused (the partition then ran in PyTorch)."""

    def bias(ids, table):
        return F.embedding(ids, table).permute(2, 0, 1).unsqueeze(0) + 1.0

    table = torch.randn(32, 4)
    for ids in (torch.tensor([[3]]), torch.tensor([[31]])):
        reports = compile_and_compare(bias, ids, table)
        partitions = [p for r in reports for p in r["partitions"]]
        assert partitions and not [p for p in partitions if p.get("runtime_error")], partitions
        assert all(g["kernel"] is not None for g in fusion_groups(reports))


@pytest.mark.parametrize("tokens,hidden,experts", [(16, 64, 2), (13, 37, 3)], ids=str)
def test_a_mixture_of_experts_combine_reads_the_experts_rows_through_the_permutation(tokens, hidden, experts):
    """The experts' output rows (in expert order), scaled by their routing weights, put back in token
    order and summed over each token's experts: one reduction kernel reading the rows through the
    permutation, no scaled copy written (as Mixtral's combine after `_grouped_mm`)."""
    torch.manual_seed(0)
    y = torch.randn(tokens * experts, hidden)
    w = torch.rand(tokens * experts, 1)
    order = torch.randperm(tokens * experts)

    def combine(y, w, order):
        return (y * w)[order].reshape(tokens, experts, hidden).sum(1)

    reports = compile_and_compare(combine, y, w, order, rtol=1e-5, atol=1e-5)
    assert [g["kind"] for g in fusion_groups(reports)] == ["reduction"]
