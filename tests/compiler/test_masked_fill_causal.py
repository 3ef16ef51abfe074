"""Attention written with matmuls whose scores are `masked_fill`ed with the causal mask: the mask,
however it is spelled (aranges compared, `triu`/`tril` of ones, a registered `tril` buffer sliced
to the sequence as minGPT does), becomes the causal pattern of the attention kernel, which skips the
key blocks past the diagonal (compiler/causal_masks.fold_causal_selects, passes/canonicalize's iota
rewrites, passes/flash_attention.causal_select).

Eager PyTorch is the oracle; ragged lengths with 16 x 16 tiles run the key loop over several
blocks on both sides of the diagonal. A mask that only looks causal stays a tensor, and a buffer
written after the compile sends the graph back to PyTorch (`BufferGuard`).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tilefuse
from helpers import fusion_groups
from tilefuse.autotune.heuristics import CONFIG_ENV
from tilefuse.compiler.causal_masks import fold_causal_selects

SMALL_TILES = '{"attention": {"BLOCK_M": 16, "BLOCK_N": 16}}'


def _scores(q, k):
    return (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))


def _arange_compared(q, k, v):
    i = torch.arange(q.shape[-2])
    return F.softmax(_scores(q, k).masked_fill(i[None, :] > i[:, None], float("-inf")), dim=-1) @ v


def _triu_of_ones(q, k, v):
    hide = torch.ones(q.shape[-2], q.shape[-2], dtype=torch.bool).triu(1)
    return F.softmax(_scores(q, k).masked_fill(hide, float("-inf")), dim=-1) @ v


def _where_tril(q, k, v):
    seen = torch.tril(torch.ones(q.shape[-2], q.shape[-2])).bool()
    return F.softmax(torch.where(seen, _scores(q, k), float("-inf")), dim=-1) @ v


class _MinGPT(nn.Module):
    """minGPT's mask: a registered tril buffer, longer than the sequence, sliced to it."""

    def __init__(self, max_seq: int = 64, mask: torch.Tensor | None = None):
        super().__init__()
        full = torch.tril(torch.ones(max_seq, max_seq)) if mask is None else mask
        self.register_buffer("bias", full.view(1, 1, max_seq, max_seq))

    def forward(self, q, k, v):
        t = q.shape[-2]
        att = _scores(q, k).masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
        return F.softmax(att, dim=-1) @ v


def _qkv(length: int, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.randn(2, 3, length, 16, dtype=dtype) for _ in range(3)]


def _run(fn, args, tmp_path, rtol=1e-4, atol=1e-5):
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn, dump=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), fn(*args), rtol=rtol, atol=atol)
    return compiled


def _attention_source(compiled, tmp_path) -> str:
    (report,) = compiled.tilefuse_reports
    groups = fusion_groups([report])
    # one attention kernel and nothing beside it: the mask is not written by a kernel of its own
    assert [g["kind"] for g in groups] == ["attention"], groups
    (path,) = (tmp_path / report["dir"] / "kernels").glob("*.py")
    return path.read_text()


@pytest.mark.parametrize(
    "fn", [_arange_compared, _triu_of_ones, _where_tril, _MinGPT()],
    ids=["arange k > q", "triu of ones", "where tril", "minGPT buffer"],
)  # fmt: skip
@pytest.mark.parametrize("length", [7, 40])
def test_a_causal_masked_fill_becomes_the_causal_kernel(fn, length, tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, SMALL_TILES)
    compiled = _run(fn, _qkv(length), tmp_path)
    (report,) = compiled.tilefuse_reports
    if fn is not _arange_compared:  # a mask of constant ones or a buffer: folded on the aten graph
        assert report["causal_masks"] == "1 attention mask(s) equal to the causal mask: is_causal=True"
    assert report["fallbacks"] == []
    # the key loop stops at the block's last query
    assert f"tl.minimum({length}," in _attention_source(compiled, tmp_path)


def test_bf16_scores_with_the_minGPT_mask(tmp_path, monkeypatch):
    """In bf16 the softmax's upcast merges into the masked map (`extf(select(...))`): still causal."""
    monkeypatch.setenv(CONFIG_ENV, SMALL_TILES)
    fn = _MinGPT()
    compiled = _run(fn, _qkv(33, torch.bfloat16), tmp_path, rtol=2e-2, atol=2e-2)
    assert "causal_masks" in compiled.tilefuse_reports[0]
    assert "tl.minimum(33," in _attention_source(compiled, tmp_path)


def _window(max_seq: int = 64) -> torch.Tensor:
    i = torch.arange(max_seq)
    return ((i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < 5)).float()


def _with_diagonal(mask: torch.Tensor) -> torch.Tensor:
    """`mask` with each query seeing itself: no row hides every key (eager's softmax gives NaN)."""
    return torch.maximum(mask, torch.eye(64))


def _diagonal_hidden() -> torch.Tensor:
    mask = torch.ones(64, 64).tril(-1)
    mask[0, 0] = 1.0
    return mask


@pytest.mark.parametrize(
    "mask", [_window(), _diagonal_hidden(), _with_diagonal((torch.rand(64, 64) > 0.3).float().tril())],
    ids=["sliding window", "diagonal hidden", "random lower"],
)  # fmt: skip
def test_a_buffer_that_only_looks_causal_stays_a_mask(mask, tmp_path):
    compiled = _run(_MinGPT(mask=mask), _qkv(21), tmp_path)
    assert "causal_masks" not in compiled.tilefuse_reports[0]


def test_fewer_queries_than_keys_are_not_folded(tmp_path):
    def fn(q, k, v):  # the mask is square, the scores are not: the where broadcasts past it
        hide = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).triu(1)
        return F.softmax(_scores(q, k).masked_fill(hide, float("-inf")), dim=-1) @ v

    q, k, v = _qkv(12)
    k, v = torch.cat([k, k], -2), torch.cat([v, v], -2)
    assert "causal_masks" not in _run(fn, (q, k, v), tmp_path).tilefuse_reports[0]


def test_a_buffer_written_after_the_compile_sends_the_graph_to_pytorch(tmp_path, caplog):
    module = _MinGPT()
    args = _qkv(19)
    compiled = _run(module, args, tmp_path)
    (report,) = compiled.tilefuse_reports
    assert "causal_masks" in report and "buffer_guard" not in report
    with torch.no_grad():
        module.bias.fill_(1.0)  # every key visible now: the folded causal mask would be wrong
        torch.testing.assert_close(compiled(*args), module(*args), rtol=1e-4, atol=1e-5)
        module.bias.copy_(_window().view(1, 1, 64, 64))  # and again, from PyTorch's graph
        torch.testing.assert_close(compiled(*args), module(*args), rtol=1e-4, atol=1e-5)
    assert report["buffer_guard"].startswith("failed: input")
    assert "runs in PyTorch from now on" in caplog.text


def test_a_module_made_under_inference_mode(tmp_path):
    """Inference tensors keep no version counter: the guard checks the buffer's storage alone."""
    with torch.inference_mode():
        module, args = _MinGPT(), _qkv(19)
        compiled = _run(module, args, tmp_path)
        assert "causal_masks" in compiled.tilefuse_reports[0]
        torch.testing.assert_close(compiled(*args), module(*args), rtol=1e-4, atol=1e-5)


def test_the_fold_leaves_a_graph_without_masked_scores_alone():
    gm = torch.fx.symbolic_trace(lambda x: torch.where(x > 0, x, 0.0))
    code = gm.code
    assert fold_causal_selects(gm) == (0, set(), None) and gm.code == code
