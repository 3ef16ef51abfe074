"""Kernels of symbolic sizes on the GPU: a dynamic graph's pointwise and row kernels run every size
through one program, their launches go straight to Triton's binaries once a specialization is seen."""

from __future__ import annotations

import gc

import pytest
import torch

import tilefuse
from helpers import TinyBlock
from tilefuse.backends.triton.launcher import SizedLaunch

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_dynamic_block_runs_every_size_through_kernels_taking_its_sizes(monkeypatch, dtype):
    monkeypatch.setenv("TILEFUSE_SPECIALIZE", "0")  # every size through the dynamic graph
    monkeypatch.setenv("TILEFUSE_SELECT", "0")  # the kernels, not the measured choice
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = TinyBlock().eval().to(CUDA, dtype)
    compiled = tilefuse.compile(block)
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    with torch.no_grad():
        for b, s in [(2, 3), (3, 7), (5, 12), (2, 17), (3, 30), (2, 3), (5, 129)]:
            x = torch.randn(b, s, 16, device=CUDA, dtype=dtype)
            torch.testing.assert_close(compiled(x), block(x), **tolerance)
    dynamic = [p for r in compiled.tilefuse_reports for p in r["partitions"] if p["name"].startswith("dynamic_")]
    assert dynamic and all("runtime_error" not in p for p in dynamic), dynamic
    gc.collect()
    launches = [o for o in gc.get_objects() if type(o) is SizedLaunch]
    assert launches and all(launch.direct and launch.raw for launch in launches)
