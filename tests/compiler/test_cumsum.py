"""cumsum: a GEMM with the triangular ones matrix while that matrix is small, else PyTorch."""

from __future__ import annotations

import pytest
import torch

import tilefuse
from tilefuse.compiler.lower_structured import MAX_CUMSUM_GEMM


@pytest.mark.parametrize("n", [7, 300, MAX_CUMSUM_GEMM + 1])
def test_cumsum_matches_and_long_rows_stay_in_pytorch(n):
    fn = lambda x: torch.cumsum(x, -1) * 2  # noqa: E731
    compiled = tilefuse.compile(fn)
    x = torch.randn(2, n)
    torch.testing.assert_close(compiled(x), fn(x), rtol=1e-4, atol=1e-3)
    fallbacks = [f["op"] for f in compiled.tilefuse_reports[0]["fallbacks"]]
    assert fallbacks == (["aten.cumsum.default"] if n > MAX_CUMSUM_GEMM else [])
