"""Ops that stay in PyTorch cost the graph no extra partition: training-mode dropout keeps only its
random mask there, a cheap prefix computed from the inputs of such an op runs beside it (a
sort's), and constant padding compiles."""

from __future__ import annotations

import pytest
import torch

import tilefuse
from helpers import compile_and_compare, fusion_groups
from tilefuse.compiler import partition


def test_training_dropout_compiles_its_product_with_eagers_random_mask():
    x, w = torch.randn(8, 16), torch.randn(16, 16)

    def dropout_mlp(x, w):
        hidden = torch.nn.functional.dropout(x @ w, p=0.25, training=True)
        return hidden, torch.relu(hidden @ w)

    compiled = tilefuse.compile(dropout_mlp)
    torch.manual_seed(1)
    actual = compiled(x, w)
    torch.manual_seed(1)  # PyTorch draws the same mask for the compiled graph as for eager
    expected = dropout_mlp(x, w)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    kept = (actual[0] != 0).float().mean().item()
    assert 0.5 < kept < 0.95  # about three quarters of the units survive
    (report,) = compiled.tilefuse_reports
    assert [f["op"] for f in report["fallbacks"]] == ["aten.full.default", "aten.native_dropout.default"]
    (partition,) = report["partitions"]
    assert "aten.native_dropout.default" not in partition["aten_ops"]
    assert all(g["kernel"] is not None for g in partition["groups"])


@pytest.mark.parametrize(
    "layout",
    [
        lambda h: h.t(),  # a transpose
        lambda h: h.reshape(2, 4, 4, 4).permute(0, 2, 1, 3),  # attention heads
        lambda h: h[:, :10],  # a slice: not dense, its mask is drawn contiguous
    ],
    ids=["transposed", "heads_permuted", "sliced"],
)
def test_dropout_of_a_strided_view_draws_eagers_mask(layout):
    """PyTorch draws a dropout mask in the memory order of its input's layout (`empty_like` keeps a
    dense tensor's strides): the ones the mask is drawn on are laid out like the input, so a
    transposed or permuted activation gets eager's mask too."""
    torch._dynamo.reset()
    x, w = torch.randn(8, 16), torch.randn(16, 16)

    def f(x, w):
        return torch.nn.functional.dropout(layout(x @ w), p=0.5, training=True) * 2 + 1

    compiled = tilefuse.compile(f)
    torch.manual_seed(3)
    actual = compiled(x, w)
    torch.manual_seed(3)
    torch.testing.assert_close(actual, f(x, w), rtol=1e-5, atol=1e-5)


def test_prefix_of_an_op_left_to_pytorch_runs_beside_it():
    """A mask computed from the inputs feeds a sort (left to PyTorch): the mask runs beside the sort,
    not as a partition of its own; one partition."""

    def sorted_then_embedding(ids, table, w):
        mask = ids.ne(1).int()
        order = torch.sort(mask, dim=1, stable=True).indices
        return torch.nn.functional.embedding(order, table) @ w

    ids, table, w = torch.randint(0, 4, (2, 8)), torch.randn(20, 16), torch.randn(16, 16)
    reports = compile_and_compare(sorted_then_embedding, ids, table, w, allow_fallbacks=True)
    (report,) = reports
    assert len(report["partitions"]) == 1
    in_pytorch = {f["op"]: f["reason"] for f in report["fallbacks"]}
    assert set(in_pytorch) == {"aten.sort.stable", "aten.ne.Scalar", "aten._to_copy.default"}
    assert "runs beside" in in_pytorch["aten.ne.Scalar"]


@pytest.mark.parametrize("channels", [2, 8])  # 2: results under _SMALL_RESULT, cheap inputs; 8: work
def test_work_between_convolutions_compiles(channels):
    """A ResNet block (conv, eval BatchNorm, ReLU, conv, BatchNorm, residual, ReLU) and a DenseNet
    layer (BatchNorm, ReLU on the graph's input, then a conv): a convolution's large result is work,
    not a cheap input, and so is a norm of a large graph input, so what runs between convolutions is
    one compiled kernel each, not five aten ops beside the convolution they feed; small results stay
    beside it."""

    class Block(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.pre = torch.nn.BatchNorm2d(c)
            self.c1, self.c2 = (torch.nn.Conv2d(c, c, 3, padding=1, bias=False) for _ in range(2))
            self.b1, self.b2 = torch.nn.BatchNorm2d(c), torch.nn.BatchNorm2d(c)

        def forward(self, x):
            x = self.c1(torch.relu(self.pre(x)))
            return torch.relu(self.b2(self.c2(torch.relu(self.b1(x)))) + x)

    torch.manual_seed(0)
    block = Block(channels).eval()
    for bn in (block.pre, block.b1, block.b2):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    x = torch.randn(4, channels, 48, 48)  # 2 channels: 18432 elements, 8: 73728 (over 2**16)
    (report,) = compile_and_compare(block, x, allow_fallbacks=True, rtol=1e-4, atol=1e-4)
    beside = {f["node"] for f in report["fallbacks"] if "runs beside" in f["reason"]}
    between = {"relu", "relu_1", "sub", "sub_1"}  # the pre-norm's and the first BatchNorm's
    if channels == 8:
        assert not beside & between, beside
        assert sum(g["kernel"] is not None for g in fusion_groups([report])) >= 3
    else:
        assert between <= beside


def test_statistics_of_a_large_graph_input_are_work_not_a_cheap_input(monkeypatch):
    """A training BatchNorm of a graph input: its statistics are a small result of a large input, work
    that compiles with the normalization; they ran in PyTorch beside the running-stat updates' copy_
    (KernelBench's BatchNorm: var_mean of 67M elements as glue). Running statistics as eager's."""
    import copy

    monkeypatch.setattr(partition, "_SMALL_INPUT", 1 << 12)  # 8192 elements below stand for many
    bn = torch.nn.BatchNorm2d(4).train()
    ref = copy.deepcopy(bn)
    compiled = tilefuse.compile(bn)
    x = torch.randn(2, 4, 32, 32)
    torch.testing.assert_close(compiled(x), ref(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    (report,) = compiled.tilefuse_reports
    beside = {f["op"] for f in report["fallbacks"] if "runs beside" in f["reason"]}
    assert "aten.var_mean.correction" not in beside, report["fallbacks"]
    assert any("aten.var_mean.correction" in p["aten_ops"] for p in report["partitions"])


def test_roberta_positions_compile_with_their_cumsum():
    """RoBERTa's positions: an integer `cumsum` of a padding mask (a scan kernel), then an embedding;
    one partition, nothing left to PyTorch."""

    def positions_then_embedding(ids, table, w):
        mask = ids.ne(1).int()
        positions = torch.cumsum(mask, dim=1).type_as(mask) * mask + 1
        return torch.nn.functional.embedding(positions.long(), table) @ w

    ids, table, w = torch.randint(0, 4, (2, 8)), torch.randn(20, 16), torch.randn(16, 16)
    (report,) = compile_and_compare(positions_then_embedding, ids, table, w)
    assert len(report["partitions"]) == 1
    assert "scan" in {g["kind"] for g in fusion_groups([report])}


def test_constant_pad_compiles():
    def padded(x, w):
        return torch.nn.functional.pad(x @ w, (-1, 2, 3, 0), value=1.5) * 2.0

    reports = compile_and_compare(padded, torch.randn(8, 16), torch.randn(16, 16))
    assert all(g["kernel"] is not None for g in fusion_groups(reports))
    assert "ein.concat" in reports[0]["partitions"][0]["ein_ops"]


def test_training_dropout_in_a_dynamic_graph_stays_in_pytorch():
    """With a symbolic size, the mask's tensor of ones would be built from a size the program cannot
    name (BART's decoder in train mode crashed with `NameError: s50`): the dropout stays whole."""

    def fn(x):
        h = torch.nn.functional.dropout(x * 2, 0.5, training=True)
        return h @ torch.ones(8, 4) + x.sum()

    compiled = tilefuse.compile(fn)  # the second size makes the dim dynamic (Dynamo's default)
    for rows in (3, 6, 7):
        x = torch.randn(2, rows, 8)
        torch.manual_seed(1)
        got = compiled(x)
        torch.manual_seed(1)
        torch.testing.assert_close(got, fn(x))
