"""merge-projections end to end (on by default; TILEFUSE_MERGE_PROJECTIONS=1 set here all the same): sibling projections of one input run as one GEMM over the stacked weights
(passes/merge_projections.py), against eager PyTorch; the stacked weights follow parameter updates;
training graphs and TILEFUSE_MERGE_PROJECTIONS=0 keep the GEMMs apart."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import MODELS, _inputs
from torch import nn

import tilefuse
from helpers import compile_and_compare, fusion_groups


@pytest.fixture(autouse=True)
def merge_on(monkeypatch):
    monkeypatch.setenv("TILEFUSE_MERGE_PROJECTIONS", "1")


class Attention(nn.Module):
    """q, k and v projections of one input (k and v narrower: grouped KV heads), optionally after an
    RMSNorm (folded into the weights by norm-prologue), then something of each."""

    def __init__(self, hidden: int, q: int, kv: int, bias: bool, norm: bool):
        super().__init__()
        self.norm = nn.RMSNorm(hidden) if norm else nn.Identity()
        self.q, self.k, self.v = (nn.Linear(hidden, n, bias=bias) for n in (q, kv, kv))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        return q.sum(-1) + k.amax(-1) * v.mean(-1)


def _gemm_contractions(reports) -> list[int]:
    return [g["ops"].count("ein.contract") for g in fusion_groups(reports) if g["kind"] == "gemm"]


def _merged(reports) -> bool:
    """Whether one GEMM group computes all three projections (one contraction over 3 stacked weights)."""
    gemms = [g for g in fusion_groups(reports) if g["kind"] == "gemm"]
    return len(gemms) == 1


@settings(max_examples=6, deadline=None)
@given(
    rows=st.integers(1, 40), hidden=st.sampled_from([24, 40]), q=st.sampled_from([16, 48]),
    kv=st.sampled_from([8, 24]), bias=st.booleans(), norm=st.booleans(),
)  # fmt: skip
def test_projections_of_one_input_are_one_gemm(rows, hidden, q, kv, bias, norm):
    """Ragged sizes (rows, widths no tile divides), with and without biases and a folded norm."""
    torch._dynamo.reset()  # a fresh module class each example would do too: Dynamo's recompile limit
    torch.manual_seed(rows)
    model = Attention(hidden, q, kv, bias, norm)
    reports = compile_and_compare(model, torch.randn(rows, hidden), rtol=1e-4, atol=1e-4)
    assert _merged(reports), fusion_groups(reports)


def test_merging_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("TILEFUSE_MERGE_PROJECTIONS", "0")
    model = Attention(24, 16, 8, bias=True, norm=False)
    reports = compile_and_compare(model, torch.randn(5, 24), rtol=1e-4, atol=1e-4)
    assert len([g for g in fusion_groups(reports) if g["kind"] == "gemm"]) == 3


def test_half_precision():
    torch.manual_seed(0)
    model = Attention(32, 32, 16, bias=True, norm=True).to(torch.bfloat16)
    reports = compile_and_compare(model, torch.randn(7, 32, dtype=torch.bfloat16), rtol=2e-2, atol=2e-2)
    assert _merged(reports)


def test_stacked_weights_follow_parameter_updates():
    """The stacked weight and bias are computed once from the parameters and again when one changes:
    in place (a new version), replaced, or written through `.data`."""
    torch.manual_seed(0)
    model = Attention(24, 16, 8, bias=True, norm=True)
    compiled = tilefuse.compile(model)
    x = torch.randn(6, 24)

    def agrees():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)

    with torch.no_grad():
        agrees()
        model.k.weight.mul_(-2.0)
        agrees()
        model.v.bias.add_(1.0)
        agrees()
        model.q.weight = nn.Parameter(torch.randn(16, 24))
        agrees()
        model.norm.weight.data.mul_(3.0)
        agrees()
    assert _merged(compiled.tilefuse_reports)


def test_a_training_graph_keeps_its_gemms_apart():
    """A training forward's parameters change every step: stacking them would copy the weights every
    step, so its projections stay three GEMMs; the gradients are eager's."""
    torch.manual_seed(0)
    model = Attention(24, 16, 8, bias=True, norm=False)
    compiled = tilefuse.compile(model)
    x = torch.randn(6, 24)
    compiled(x).sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for g, want in zip(got, (p.grad for p in model.parameters())):
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5)
    forward = [r for r in compiled.tilefuse_reports if r.get("kind") != "backward"]
    assert _gemm_contractions(forward).count(1) == 3


def test_a_returned_projection_keeps_eagers_layout():
    """A projection the function returns (a dynamic cache's value states) comes back in a buffer of
    its own, as eager's does: `.view()` of it works as on eager's."""
    torch.manual_seed(0)
    q, k = nn.Linear(16, 16), nn.Linear(16, 8)

    def fn(x):
        return q(x).sum(-1), k(x)

    x = torch.randn(2, 3, 16)
    reports = compile_and_compare(fn, x, rtol=1e-4, atol=1e-4)
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        _, keys = compiled(x)
    assert keys.is_contiguous()
    torch.testing.assert_close(keys.view(6, 8), k(x).view(6, 8))
    assert [g["kind"] for g in fusion_groups(reports)].count("gemm") == 1


@pytest.mark.parametrize("name", ["llama", "qwen2", "bert"])
def test_transformers_attention_projections_merge(name, tmp_path):
    """Llama's (RMSNorm folded, grouped KV heads), Qwen2's (biases) and BERT's (biases, after a
    LayerNorm) q, k and v projections: one GEMM a layer, outputs eager's (last hidden states, and
    the KV cache a decoder returns)."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    inputs = _inputs(name)
    compiled = tilefuse.compile(model, dump=tmp_path)
    with torch.no_grad():
        got, want = compiled(**inputs), model(**inputs)
    first = "last_hidden_state" if name == "bert" else "logits"
    torch.testing.assert_close(got[first], want[first], rtol=1e-4, atol=1e-4)
    if name != "bert":
        for g, w in zip(got.past_key_values.layers, want.past_key_values.layers):
            torch.testing.assert_close(g.keys, w.keys, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(g.values, w.values, rtol=1e-4, atol=1e-4)
    (dumped,) = tmp_path.glob("*/ein.merge-projections.mlir")
    text = dumped.read_text()
    layers = model.config.num_hidden_layers
    assert text.count("q_proj_weight, %") + text.count("query_weight, %") == layers, text
