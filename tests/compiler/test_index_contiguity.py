"""Indices a view pushes out of bounds (a reshape's tail) keep what Triton knows of their contiguity.

A select of a constant index (`tl.where(c < 4096, i, 8192)`) hides an index's contiguity from
Triton's axis analysis, so every load through it reads one element at a time: a loss's mean over a
4096 x 8192 bf16 tensor ran at 28% of copy bandwidth on the H200. The out-of-bounds index is made
as a sum instead (`i + (c >= 4096) * 8192`), which Triton's analysis follows.
"""

import re

import pytest
import torch

from helpers import compile_and_compare

CONSTANT_INDEX_SELECT = re.compile(r"tl\.where\([^,]+, [^,]+, \d+\)")


def _sources(tmp_path) -> list[str]:
    return [p.read_text() for p in tmp_path.glob("*/kernels/*.py")]


@pytest.mark.parametrize("shape", [(16, 8192), (3, 5, 4096)])
def test_a_full_reduction_read_as_rows_selects_no_index(tmp_path, shape):
    def mse(a, b):
        return torch.mean((a - b) ** 2)

    a, b = torch.randn(shape), torch.randn(shape)
    compile_and_compare(mse, a, b, rtol=1e-5, atol=1e-6, dump=tmp_path)
    sources = _sources(tmp_path)
    assert any("reduction_" in s for s in sources)
    for source in sources:
        assert not CONSTANT_INDEX_SELECT.search(source), source


@pytest.mark.parametrize("shape", [(7, 300), (2, 3, 1000)])
def test_ragged_reshaped_reads_stay_masked(shape):
    """Sizes no tile divides: the lanes pushed past the end read nothing (the result is eager's)."""

    def f(x):
        return (x.reshape(-1, 50) * 2).sum(dim=1) + x.flip(-1).reshape(-1, 50).amax(dim=1)

    compile_and_compare(f, torch.randn(shape), rtol=1e-5, atol=1e-5)
