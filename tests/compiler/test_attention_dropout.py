"""Attention that drops out (train mode) is traced in the inputs' dtype, not PyTorch's float32 math
fallback (`compiler/attention_dropout.py`): its products stay 16-bit GEMMs, and the compiled graph
draws eager's masks (dropout runs in PyTorch) and matches `attention_with_dropout` run eagerly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.compiler.attention_dropout import attention_with_dropout


@pytest.mark.parametrize("mask", ["none", "bool", "additive", "causal", "gqa"])
def test_without_dropout_it_is_sdpa(mask):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 13, 16, dtype=torch.float64)  # 13 queries: ragged
    k, v = torch.randn(2, 4, 11, 16, dtype=torch.float64), torch.randn(2, 4, 11, 16, dtype=torch.float64)
    kwargs: dict = {}
    if mask == "bool":
        kwargs["attn_mask"] = torch.rand(2, 1, 13, 11) > 0.3
        kwargs["attn_mask"][0, 0, 3] = False  # a row masked whole: zeros, as SDPA gives
    elif mask == "additive":
        kwargs["attn_mask"] = torch.randn(1, 4, 13, 11, dtype=torch.float64)
    elif mask == "causal":
        q, kwargs["is_causal"] = q[:, :, :11], True
    elif mask == "gqa":
        k, v, kwargs["enable_gqa"] = k[:, :2], v[:, :2], True
    got = attention_with_dropout(q, k, v, dropout_p=0.0, scale=0.3, **kwargs)
    want = F.scaled_dot_product_attention(q, k, v, scale=0.3, **kwargs).nan_to_num(0.0)
    torch.testing.assert_close(got, want)


class Attention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(32, 96)

    def forward(self, x, mask):
        q, k, v = self.qkv(x).view(2, 10, 3, 2, 16).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.3).sum(1)


def test_compiled_training_attention_draws_eagers_masks_in_bf16(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Attention().to(torch.bfloat16)
    x = torch.randn(2, 10, 32, dtype=torch.bfloat16)
    mask = torch.zeros(2, 1, 10, 10, dtype=torch.bfloat16)
    mask[1, :, :, 7:] = float("-inf")  # the second sequence padded
    compiled = tilefuse.compile(model, dump=tmp_path)
    torch.manual_seed(3)
    out = compiled(x, mask)
    out.float().square().sum().backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    def reference(x, mask):
        q, k, v = model.qkv(x).view(2, 10, 3, 2, 16).permute(2, 0, 3, 1, 4)
        return attention_with_dropout(q, k, v, mask, dropout_p=0.3).sum(1)

    torch.manual_seed(3)
    want = reference(x, mask)
    want.float().square().sum().backward()
    torch.testing.assert_close(out, want, rtol=2e-2, atol=2e-2)
    for g, w in zip(got, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(g, w, rtol=5e-2, atol=5e-2)
    (aten,) = [p for p in tmp_path.glob("*/aten_graph.py") if "_backward" not in str(p)]
    products = [line for line in aten.read_text().splitlines() if "aten.bmm" in line or "aten.matmul" in line]
    assert products and all('"bf16[' in line for line in products), products


def test_a_row_masked_whole_has_zero_gradients():
    """An additive mask of -inf over a whole row: zeros forward and backward, as SDPA (not NaN)."""
    q = torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[0, 0, 1] = float("-inf")
    out = attention_with_dropout(q, q, q, mask, dropout_p=0.0)
    out.sum().backward()
    q2 = q.detach().clone().requires_grad_()
    F.scaled_dot_product_attention(q2, q2, q2, attn_mask=mask).sum().backward()
    assert torch.isfinite(q.grad).all()
    torch.testing.assert_close(q.grad, q2.grad)


def test_causal_with_fewer_queries_than_keys_is_sdpas_top_left_mask():
    q, k = torch.randn(1, 2, 3, 8, dtype=torch.float64), torch.randn(1, 2, 7, 8, dtype=torch.float64)
    got = attention_with_dropout(q, k, k, dropout_p=0.0, is_causal=True)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, k, is_causal=True))


def test_a_graph_that_does_not_train_keeps_its_attention():
    from torch.fx import symbolic_trace

    from tilefuse.compiler.attention_dropout import attention_for_tracing

    def f(q):
        return F.scaled_dot_product_attention(q, q, q, None, 0.25)  # dropout_p positional

    gm = symbolic_trace(f)
    gm.meta["marker"] = 1
    copy = attention_for_tracing(gm, training=True)
    assert copy is not gm and copy.meta["marker"] == 1
    assert [n.target for n in copy.graph.nodes if n.op == "call_function"] == [attention_with_dropout]
    assert [n.target for n in gm.graph.nodes if n.op == "call_function"] == [F.scaled_dot_product_attention]
    no_dropout = symbolic_trace(lambda q: F.scaled_dot_product_attention(q, q, q))
    assert attention_for_tracing(no_dropout, training=True) is no_dropout
    # inference keeps the dropping-out call whole: PyTorch runs it, drawing eager's masks
    assert attention_for_tracing(gm, training=False) is gm
