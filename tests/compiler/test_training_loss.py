"""A language-model loss in a training graph (bf16 logits, `cross_entropy(logits.float())`): the
forward hands the backward the 16-bit logits and a max and log-sum a row, not the float32
log-probabilities (`backend.decompositions(training=True)`), and neither side writes a float32 copy
of the logits (`canonicalize.SinkViewBelowWidening`): each kernel reads the bf16 logits and widens
them itself. Gradients match eager's."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

import tilefuse

VOCAB = 300  # not a multiple of any tile


class Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(32, VOCAB, bias=False)

    def forward(self, h, labels):
        logits = self.proj(h)
        return F.cross_entropy(logits.float().view(-1, VOCAB), labels.view(-1)), logits


def test_lm_loss_saves_row_statistics_and_reads_bf16_logits(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")  # the backward compiled on CPU too
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Head().to(torch.bfloat16)
    reference = Head().to(torch.bfloat16)
    reference.load_state_dict(model.state_dict())
    h = torch.randn(2, 7, 32, dtype=torch.bfloat16)  # 14 tokens
    labels = torch.randint(0, VOCAB, (2, 7))
    compiled = tilefuse.compile(model, dump=tmp_path)
    loss, logits = compiled(h, labels)
    loss.backward()
    want_loss, want_logits = reference(h, labels)
    want_loss.backward()
    torch.testing.assert_close(loss, want_loss, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(logits, want_logits)
    torch.testing.assert_close(model.proj.weight.grad, reference.proj.weight.grad, rtol=2e-2, atol=2e-3)

    (backward,) = tmp_path.glob("*_backward")
    signature = (backward / "aten_graph.py").read_text().split("def forward(", 1)[1].split("):", 1)[0]
    saved = re.findall(r'"(\w+)\[([\d, ]*)\]"', signature)
    assert ("bf16", f"14, {VOCAB}") in saved or ("bf16", f"2, 7, {VOCAB}") in saved  # the logits
    assert not [s for s in saved if s[0] == "f32" and str(VOCAB) in s[1].split(", ")], saved
    programs = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert len(programs) >= 2  # the forward's and the backward's
    for source in programs:  # no buffer of f32 logits (or log-probabilities) is made
        wide = re.findall(rf"_empty\(\([^)]*\b{VOCAB}\b[^)]*\), \([^)]*\), torch.float32", source)
        assert not wide, wide


class _MaxOfFusedMap(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(33, 65)
        self.b = nn.Parameter(torch.randn(65))

    def forward(self, x):
        return (torch.tanh(self.lin(x)) * 2 + self.b).amax(1)


def test_the_gradient_of_a_max_reaches_the_element_the_forward_kernel_chose():
    """amax's backward gives the gradient to the elements equal to the max. Recomputed in the
    backward, the reduced map is other arithmetic than the forward kernel's (a last-bit difference):
    no element equaled the max and the gradient was grad / 0. The map is saved instead."""
    torch.manual_seed(0)
    model = _MaxOfFusedMap()
    compiled = tilefuse.compile(model)
    for seed in range(6):
        torch.manual_seed(100 + seed)
        x = torch.randn(7, 33)
        mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = compiled(mine), model(ref)
        torch.testing.assert_close(got, want)
        g = torch.randn_like(want)
        (grad_mine,) = torch.autograd.grad(got, mine, g)
        (grad_ref,) = torch.autograd.grad(want, ref, g)
        torch.testing.assert_close(grad_mine, grad_ref)
    assert any("Triton" in p["executor"] for r in compiled.tilefuse_reports for p in r["partitions"])


def test_a_full_max_backward_runs_as_kernels_in_the_interpreter(monkeypatch):
    """A full `max()`'s backward masks `x == m | isnan(x) & isnan(m)`, `m` a loaded scalar: Triton
    3.9's interpreter typed the scalar comparison as a float, the `&` with the block's raised, and the
    backward partition ran in PyTorch ("failed at run time"). It runs as kernels now, ties and NaN
    included, and matches eager."""
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch._dynamo.reset()

    def f(x):
        return x * x.max()

    compiled = tilefuse.compile(f)
    for case in ("random", "tie", "nan"):
        x = torch.randn(9, 33)
        if case == "tie":
            x[2, 5] = x[7, 30] = x.max() + 1
        if case == "nan":
            x[4, 4] = float("nan")
        mine, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = compiled(mine), f(ref)
        torch.testing.assert_close(got, want, equal_nan=True)
        g = torch.randn_like(want)
        (grad_mine,) = torch.autograd.grad(got, mine, g)
        (grad_ref,) = torch.autograd.grad(want, ref, g)
        torch.testing.assert_close(grad_mine, grad_ref, equal_nan=True)
    partitions = [p for r in compiled.tilefuse_reports for p in r["partitions"]]
    assert not any(p.get("runtime_error") for p in partitions), partitions
    backward = [p for r in compiled.tilefuse_reports if r["kind"] == "backward" for p in r["partitions"]]
    assert backward and all("Triton kernel" in p["executor"] for p in backward), backward
