"""Kernels of symbolic sizes on the GPU: a dynamic graph's pointwise and row kernels run every size
through one program, their launches go straight to Triton's binaries once a specialization is seen."""

from __future__ import annotations

import copy
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemms_of_symbolic_sizes_run_every_size_and_bucket(monkeypatch, dtype):
    """TILEFUSE_SYMBOLIC_GEMM=1: a linear layer over a dynamic number of rows is one GEMM kernel
    with its epilogue, a config per size bucket (few rows, hundreds, thousands)."""
    monkeypatch.setenv("TILEFUSE_SYMBOLIC_GEMM", "1")
    monkeypatch.setenv("TILEFUSE_SPECIALIZE", "0")
    monkeypatch.setenv("TILEFUSE_SELECT", "0")
    torch._dynamo.reset()
    torch.manual_seed(0)
    up, down = torch.nn.Linear(256, 688).to(CUDA, dtype), torch.nn.Linear(688, 256).to(CUDA, dtype)
    fn = lambda x: down(torch.nn.functional.gelu(up(x))) + x  # noqa: E731
    up64, down64 = copy.deepcopy(up).double(), copy.deepcopy(down).double()
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        for n in (3, 17, 1, 300, 2049, 8):
            x = torch.randn(n, 256, device=CUDA, dtype=dtype)
            torch._dynamo.mark_dynamic(x, 0)
            out, ref = compiled(x), fn(x)
            exact = down64(torch.nn.functional.gelu(up64(x.double()))) + x.double()
            error = (out.double() - exact).abs().max() / exact.abs().max()
            eager = (ref.double() - exact).abs().max() / exact.abs().max()
            assert error <= 2 * eager + 1e-5, (n, error, eager)
    groups = [g for r in compiled.tilefuse_reports for p in r["partitions"] if p["name"].startswith("dynamic_")
              for g in p["groups"]]  # fmt: skip
    assert [g["kind"] for g in groups].count("gemm") == 2 and all(g["kernel"] for g in groups), groups
    assert all(len(set(g["config_buckets"].values())) > 1 for g in groups if g["kind"] == "gemm"), groups
