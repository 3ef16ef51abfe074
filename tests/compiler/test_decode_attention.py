"""Decode attention of a symbolic KV length runs as tilefuse's flash-decoding kernel
(compiler/decode_attention.py): a decode step compiled once serves every cache length, matches
eager at each, and the report names the choice. Attention the kernel does not take stays SDPA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse

HEADS, DIM = 4, 16


def _step(mask_kind: str, causal: bool = False):
    def step(q, k_cache, k_new, v_cache, v_new, valid):
        k = torch.cat([k_cache, k_new], dim=-2)
        v = torch.cat([v_cache, v_new], dim=-2)
        mask = None
        if mask_kind == "bool":
            mask = valid[:, None, None, :]
        elif mask_kind == "additive":
            mask = torch.where(valid, 0.0, float("-inf"))[:, None, None, :].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1) * 2.0, k, v

    return step


def _inputs(batch: int, past: int, queries: int = 1, dtype=torch.float32):
    q = torch.randn(batch, HEADS, queries, DIM, dtype=dtype)
    k_cache, v_cache = (torch.randn(batch, HEADS, past, DIM, dtype=dtype) for _ in range(2))
    k_new, v_new = (torch.randn(batch, HEADS, queries, DIM, dtype=dtype) for _ in range(2))
    valid = torch.ones(batch, past + queries, dtype=torch.bool)
    valid[0, : past // 3] = False  # the first row is left-padded
    return q, k_cache, k_new, v_cache, v_new, valid


def _run(step, lengths, queries=1, dtype=torch.float32, tolerance=1e-5):
    compiled = tilefuse.compile(step)
    with torch.no_grad():
        for past in lengths:
            args = _inputs(2, past, queries, dtype)
            for got, want in zip(compiled(*args), step(*args), strict=True):
                torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    return compiled.tilefuse_reports


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_a_decode_step_compiles_once_for_every_cache_length(mask_kind):
    # ragged lengths, some past a chunk (several programs a head, combined by the last)
    reports = _run(_step(mask_kind), (5, 9, 14, 130, 300, 17))
    assert len(reports) <= 2, [r["name"] for r in reports]  # the first length's static graph, then one
    dynamic = reports[-1]
    assert [d["choice"] for d in dynamic["decode_attention"]] == ["kernels"], dynamic["decode_attention"]
    assert "decode_attention_0" in [f["node"] for f in dynamic["fallbacks"]] or any(
        "flash-decoding" in f["reason"] for f in dynamic["fallbacks"]
    )


def test_the_dump_holds_the_kernel(tmp_path):
    compiled = tilefuse.compile(_step("bool"), dump=tmp_path)
    with torch.no_grad():
        for past in (5, 9):
            compiled(*_inputs(2, past))
    report = compiled.tilefuse_reports[-1]
    source = (tmp_path / report["dir"] / "kernels" / "decode_attention.py").read_text()
    assert "def decode_attention(" in source and "do_not_specialize" in source
    from tilefuse.compiler.inspect import summarize

    text = summarize(tmp_path)  # `tilefuse inspect`: the call site beside the partitions, not "in PyTorch"
    assert "beside the partitions: decode_attention_0: flash-decoding kernel" in text
    assert "1 decode attention calls" in text and "in PyTorch: decode_attention" not in text


def test_bf16_decode_steps_match_eager():
    reports = _run(_step("bool"), (7, 11, 200), dtype=torch.bfloat16, tolerance=2e-2)
    assert reports[-1]["decode_attention"][0]["choice"] == "kernels"


@pytest.mark.parametrize("case", ["causal", "many queries"])
def test_attention_the_kernel_does_not_take_stays_sdpa(case):
    step = _step("bool", causal=case == "causal")
    reports = _run(step, (5, 9, 14), queries=17 if case == "many queries" else 1)
    assert all("decode_attention" not in r for r in reports), reports


def test_the_switch_turns_the_kernel_off(monkeypatch):
    monkeypatch.setenv("TILEFUSE_DECODE_KERNELS", "0")
    reports = _run(_step("bool"), (5, 9, 14))
    assert all("decode_attention" not in r for r in reports)


def test_a_training_graph_keeps_sdpa():
    """With gradients the forward is a training graph's: its attention is left as it was."""
    step = _step("none")
    compiled = tilefuse.compile(step)
    for past in (5, 9, 14):
        args = list(_inputs(2, past))
        args[0].requires_grad_()
        got = compiled(*args)[0]
        got.sum().backward()
        want = step(*args)[0]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert all("decode_attention" not in r for r in compiled.tilefuse_reports)


def test_a_failing_kernel_leaves_the_model_on_sdpa(monkeypatch, caplog):
    """Never break the model: an error in the kernel (not an operand it refuses) is reported once and
    the call site runs SDPA from then on."""
    from tilefuse.compiler import decode_attention as site

    def broken(*args, **kwargs):
        raise RuntimeError("no binary for this GPU")

    monkeypatch.setattr(site, "decode_attention", broken)
    with caplog.at_level("WARNING", logger="tilefuse"):
        reports = _run(_step("bool"), (5, 9, 14, 20))
    entry = reports[-1]["decode_attention"][0]
    assert entry["choice"] == "sdpa" and "no binary for this GPU" in entry["why"], entry
    assert sum("decode kernel failed" in r.getMessage() for r in caplog.records) == 1


def test_without_a_gpu_or_the_interpreter_it_is_sdpa(monkeypatch):
    monkeypatch.delenv("TILEFUSE_INTERPRET")
    reports = _run(_step("additive"), (5, 9, 14))
    assert [d["choice"] for d in reports[-1]["decode_attention"]] == ["sdpa"]


@pytest.mark.parametrize("mask_kind", ["none", "bool"])
def test_sdpa_with_enable_gqa_reads_each_kv_head_once(mask_kind):
    """`enable_gqa=True` (one query row, 6 query heads over 2 KV heads): a KV head's query heads are
    the rows of one attention over it, as with `repeat_kv` grouped."""

    def step(q, k_cache, k_new, v_cache, v_new, valid):
        k = torch.cat([k_cache, k_new], dim=-2)
        v = torch.cat([v_cache, v_new], dim=-2)
        mask = valid[:, None, None, :] if mask_kind == "bool" else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1), k, v

    compiled = tilefuse.compile(step)
    with torch.no_grad():
        for past in (5, 9, 140):
            q = torch.randn(2, 6, 1, DIM)
            k_cache, v_cache = torch.randn(2, 2, past, DIM), torch.randn(2, 2, past, DIM)
            k_new, v_new = torch.randn(2, 2, 1, DIM), torch.randn(2, 2, 1, DIM)
            valid = torch.rand(2, past + 1) > 0.2
            valid[:, -1] = True
            args = (q, k_cache, k_new, v_cache, v_new, valid)
            for got, want in zip(compiled(*args), step(*args), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert [d["choice"] for d in compiled.tilefuse_reports[-1]["decode_attention"]] == ["kernels"]


def test_a_graph_with_no_static_node_but_a_decode_attention_runs_the_kernel():
    """Batch and length both symbolic (both change between calls): nothing else in the graph is
    static, and the attention still runs as the kernel (the graph goes through the pipeline for it)."""

    def attend(q, k_cache, k_new, v_cache, v_new):
        k = torch.cat([k_cache, k_new], dim=-2)
        v = torch.cat([v_cache, v_new], dim=-2)
        return F.scaled_dot_product_attention(q, k, v), k, v

    compiled = tilefuse.compile(attend)
    with torch.no_grad():
        for batch, past in ((2, 5), (3, 9), (4, 140), (2, 33)):
            q = torch.randn(batch, HEADS, 1, DIM)
            k_cache, v_cache = torch.randn(batch, HEADS, past, DIM), torch.randn(batch, HEADS, past, DIM)
            k_new, v_new = torch.randn(batch, HEADS, 1, DIM), torch.randn(batch, HEADS, 1, DIM)
            args = (q, k_cache, k_new, v_cache, v_new)
            for got, want in zip(compiled(*args), attend(*args), strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    first, dynamic = compiled.tilefuse_reports  # the first sizes' static graph, then one for all
    assert "decode_attention" not in first
    assert [d["choice"] for d in dynamic["decode_attention"]] == ["kernels"], dynamic
