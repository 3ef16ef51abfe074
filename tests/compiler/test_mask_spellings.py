"""`canonicalize.SimplifyMaskInMap`: boolean masks spelled as SDPA's math decomposition spells them are
rewritten to the select the attention matcher reads, and integer bitwise ops that only look like them
(`x & 255`, `x ^ 7`) are left alone. Against eager PyTorch, ragged shapes."""

from __future__ import annotations

import pytest
import torch

import tilefuse


@pytest.mark.parametrize("mask, flip", [(255, 7), (1, 1), (-1, -1), (0, 0)])
def test_integer_bitwise_ops_with_constants_keep_their_values(mask, flip):
    def f(x, y):
        a = (x * 100).long()
        return ((a & mask) + (a ^ flip) + (a | 3)).float() * y + ((x > 0) & (y > 0) ^ (x < 1)).float()

    g = torch.Generator().manual_seed(mask & 0xFF)
    x, y = torch.randn(9, 13, generator=g), torch.randn(9, 13, generator=g)
    assert torch.equal(tilefuse.compile(f)(x, y), f(x, y))


@pytest.mark.parametrize("length, keys", [(13, 13), (7, 13)])
def test_a_decomposed_causal_bias_gives_eagers_attention(length, keys):
    """`scores + where(!(tril(ones) & true), -inf, 0)` (SDPA's math path), square and with more keys
    than queries (top-left aligned, as SDPA's `is_causal`)."""

    def attend(q, k, v):
        visible = torch.ones(length, keys, dtype=torch.bool).tril() & torch.ones(
            length, keys, dtype=torch.bool
        )
        bias = torch.where(visible.logical_not(), float("-inf"), 0.0)
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25 + bias, -1) @ v

    g = torch.Generator().manual_seed(length)
    q, k, v = (
        torch.randn(2, 3, length, 16, generator=g),
        *(torch.randn(2, 3, keys, 16, generator=g) for _ in "kv"),
    )
    with torch.no_grad():
        torch.testing.assert_close(tilefuse.compile(attend)(q, k, v), attend(q, k, v), rtol=1e-4, atol=1e-4)
