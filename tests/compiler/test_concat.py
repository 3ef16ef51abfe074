"""Concatenations are read in place by the kernels that consume them (each operand loaded where the
index falls in its range), never copied, except for a contraction's operand; against eager, on
ragged shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import compile_and_compare, fusion_groups


def _glue(reports) -> list[str]:
    return [g["op"] for r in reports for p in r["partitions"] for g in p["glue_ops"]]


def test_rotate_half_is_read_in_place_by_the_rope_kernel():
    """Llama's RoPE: `q * cos + cat(-q2, q1) * sin`; no copy of the rotated half."""

    def rope(q, cos, sin):
        half = q.shape[-1] // 2
        return q * cos + torch.cat((-q[..., half:], q[..., :half]), dim=-1) * sin

    q, cos, sin = torch.randn(2, 3, 37, 40), torch.randn(37, 40), torch.randn(37, 40)
    reports = compile_and_compare(rope, q, cos, sin)
    assert "ein.concat" not in _glue(reports)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_three_parts_along_any_dim(dim):
    parts = [torch.randn(*(size if d == dim else base for d, base in enumerate((5, 7, 9)))) for size in (3, 1, 6)]
    reports = compile_and_compare(lambda a, b, c: torch.cat((a.exp(), b, c * 2), dim=dim) + 1, *parts)
    assert "ein.concat" not in _glue(reports)


def test_a_row_kernel_and_a_reduction_read_a_concatenated_row():
    """Phi's partial rotary concatenates the rotated and the kept part of a head; a softmax or a sum
    over such a row reads both parts."""
    x, y = torch.randn(6, 24), torch.randn(6, 13)
    reports = compile_and_compare(
        lambda x, y: F.softmax(torch.cat((x * 2, y), -1), -1) + torch.cat((x, y), -1).sum(-1, keepdim=True), x, y
    )
    assert "ein.concat" not in _glue(reports)
    assert {"row"} <= {g["kind"] for g in fusion_groups(reports)}


def test_a_concatenated_gemm_operand_is_copied_once():
    x, w = torch.randn(9, 16), torch.randn(32, 8)
    reports = compile_and_compare(lambda x, w: torch.cat((x, x.relu()), -1) @ w, x, w)
    assert _glue(reports).count("ein.concat") == 1
