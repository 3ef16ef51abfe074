"""One-query attention over repeated KV heads becomes an attention of grouped queries
(compiler/grouped_queries.py). Eager PyTorch is the oracle; the report says whether the graph was
rewritten, and the repeat's copies must be gone from the ops left to PyTorch where it was."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse

HEADS, KV_HEADS, DIM = 6, 2, 16


def _repeat_kv(x: torch.Tensor, group: int) -> torch.Tensor:
    # transformers' repeat_kv
    b, h, n, d = x.shape
    return x[:, :, None, :, :].expand(b, h, group, n, d).reshape(b, h * group, n, d)


def _decode_step(mask_kind: str):
    def step(q, k_cache, k_new, v_cache, v_new, valid):
        k = torch.cat([k_cache, k_new], dim=-2)
        v = torch.cat([v_cache, v_new], dim=-2)
        group = q.shape[1] // k.shape[1]
        mask = None
        if mask_kind == "bool":  # [B, 1, 1, L], a padding mask as transformers builds it
            mask = valid[:, None, None, :]
        elif mask_kind == "additive":
            mask = torch.where(valid, 0.0, float("-inf"))[:, None, None, :].to(q.dtype)
        elif mask_kind == "per-head":  # [B, H, 1, L]
            mask = valid[:, None, None, :].repeat(1, q.shape[1], 1, 1)
        out = F.scaled_dot_product_attention(q, _repeat_kv(k, group), _repeat_kv(v, group), attn_mask=mask)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1), k, v

    return step


def _inputs(batch: int, past: int, queries: int = 1):
    q = torch.randn(batch, HEADS, queries, DIM)
    k_cache, v_cache = torch.randn(batch, KV_HEADS, past, DIM), torch.randn(batch, KV_HEADS, past, DIM)
    k_new, v_new = torch.randn(batch, KV_HEADS, queries, DIM), torch.randn(batch, KV_HEADS, queries, DIM)
    valid = torch.ones(batch, past + queries, dtype=torch.bool)
    valid[0, : past // 3] = False  # the first row is left-padded
    return q, k_cache, k_new, v_cache, v_new, valid


def _fallback_ops(report: dict) -> list[str]:
    return [f["op"] for f in report["fallbacks"]]


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive", "per-head"])
def test_a_decode_step_over_a_growing_cache_attends_with_grouped_queries(mask_kind):
    step = _decode_step(mask_kind)
    compiled = tilefuse.compile(step)
    with torch.no_grad():
        for past in (5, 9, 14, 15):  # ragged lengths: the second makes the length symbolic
            args = _inputs(3, past)
            for got, want in zip(compiled(*args), step(*args), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    first, report = compiled.tilefuse_reports  # static shapes, then one graph for every length
    assert "grouped_queries" not in first
    assert report["grouped_queries"].startswith("1 one-query attention(s)")
    ops = _fallback_ops(report)
    # the grouped attention runs beside the kernels, as the decode kernel (`compiler/decode_attention.py`)
    assert "decode_attention_0" in ops and report["decode_attention"][0]["choice"] == "kernels"
    assert "aten.clone.default" not in ops


@pytest.mark.parametrize("case", ["two queries", "static length"])
def test_attention_that_is_not_a_decode_step_of_symbolic_length_is_left_alone(case):
    step = _decode_step("bool")
    if case == "two queries":  # a query row per position: grouping would mix rows with positions
        calls = [_inputs(2, past, queries=2) for past in (5, 9, 11)]
    else:  # a static length: the generated attention kernel reads grouped heads itself
        calls = [_inputs(2, 7)]
    compiled = tilefuse.compile(step)
    with torch.no_grad():
        for args in calls:
            for got, want in zip(compiled(*args), step(*args), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all("grouped_queries" not in r for r in compiled.tilefuse_reports)


@pytest.mark.parametrize("mask_kind", ["none", "bool"])
def test_a_symbolic_batch_is_the_reshapes_minus_one(mask_kind):
    """Batch and length both symbolic (a second batch size in one process, or `dynamic=True`) in a graph
    with a static island (here a product of the weight alone), so the graph goes through the pipeline:
    the grouped query's reshape took the batch's name, a string, as a size and the graph raised at its
    first call (greedy `generate` at batch 3 after batch 1 crashed). The reshapes say -1 for it now."""
    inner = _decode_step(mask_kind)

    def step(w, q, *rest):
        return inner(q @ (w * 2.0), *rest)

    w = torch.randn(DIM, DIM) / DIM
    compiled = tilefuse.compile(step)
    with torch.no_grad():
        for batch, past in ((1, 5), (1, 9), (3, 14), (2, 15), (3, 6)):
            args = _inputs(batch, past)
            for got, want in zip(compiled(w, *args), step(w, *args), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    reports = compiled.tilefuse_reports
    assert sum(bool(r.get("grouped_queries")) for r in reports) >= 2, reports  # batch 1, then symbolic
