"""The CUDA C++ backend built with nvcc and run on the GPU, against float64 PyTorch and against the
Triton backend, on random and ragged shapes (skipped without CUDA)."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.backends.cuda.cutlass import cutlass_include

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc to build CUDA C++ kernels"),
]

CUDA = "cuda"


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def rms_norm(x, w):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype) * w


CASES = {
    "softmax": (lambda x, w: torch.softmax(x, -1), 0),
    "layer_norm": (lambda x, w: F.layer_norm(x, x.shape[-1:], w), 0),
    "rms_norm": (rms_norm, 0),
    "gelu_scale": (lambda x, w: F.gelu(x) * w + x, 0),
    "log_softmax": (lambda x, w: torch.log_softmax(x * w, -1), 0),
}


@pytest.mark.parametrize("shape", [(64, 1000), (37, 129), (3, 5, 4097)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", sorted(CASES))
def test_cuda_kernels_match_float64_and_triton(case, shape, dtype):
    fn, _ = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(*shape, device=CUDA, dtype=dtype) * 2
    w = torch.rand(shape[-1], device=CUDA, dtype=dtype) + 0.5
    cuda, triton = tilefuse.compile(fn, backend="cuda"), tilefuse.compile(fn, backend="triton")
    with torch.no_grad():
        out, other, ref = cuda(x, w), triton(x, w), fn(x.double(), w.double())
    groups = [g for r in cuda.tilefuse_reports for p in r["partitions"] for g in p["groups"]]
    assert any(g.get("backend") == "cuda" for g in groups), groups
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    assert rel_error(out, ref) < tol
    assert rel_error(out, other) < tol


def test_auto_measures_both_backends_and_matches_eager():
    x = torch.randn(4096, 2048, device=CUDA, dtype=torch.bfloat16)
    w = torch.rand(2048, device=CUDA, dtype=torch.bfloat16)
    compiled = tilefuse.compile(rms_norm, backend="auto")
    with torch.no_grad():
        out = compiled(x, w)
    partitions = [p for r in compiled.tilefuse_reports for p in r["partitions"]]
    measured = [c for p in partitions for c in p.get("group_selection", []) if "cuda_ms" in c]
    assert measured, partitions
    assert rel_error(out, rms_norm(x.double(), w.double())) < 2e-2


GEMM_EPILOGUES = {
    "bias_gelu_residual": lambda x, w, b, r: F.gelu(F.linear(x, w, b)) + r,
    "plain": lambda x, w, b, r: F.linear(x, w),
    "silu_scaled_bias": lambda x, w, b, r: F.silu(F.linear(x, w, b)) * 0.5,
}


@pytest.mark.skipif(cutlass_include() is None, reason="no CUTLASS headers (pip install nvidia-cutlass==4.2.0.0)")
@pytest.mark.parametrize("shape", [(77, 1024, 136), (2048, 2048, 8192)], ids=str)
@pytest.mark.parametrize("epilogue", sorted(GEMM_EPILOGUES))
def test_cutlass_gemms_match_float64_and_triton(epilogue, shape, monkeypatch):
    """A linear layer's GEMM and its epilogue as a CUTLASS SM90 GEMM (EVT epilogue), ragged M included:
    as close to float64 as the Triton kernel and eager are. Split-K is off: its partial products are a
    batched contraction over a reshaped K, which stays on Triton (77 x 1024 x 136 was split on the H200)."""
    monkeypatch.setenv("TILEFUSE_SPLIT_K", "0")
    fn = GEMM_EPILOGUES[epilogue]
    m, k, n = shape
    torch.manual_seed(0)
    x, w = torch.randn(m, k, device=CUDA, dtype=torch.bfloat16), torch.randn(n, k, device=CUDA, dtype=torch.bfloat16)
    b, r = torch.randn(n, device=CUDA, dtype=torch.bfloat16), torch.randn(m, n, device=CUDA, dtype=torch.bfloat16)
    cuda, triton = tilefuse.compile(fn, backend="cuda"), tilefuse.compile(fn, backend="triton")
    with torch.no_grad():
        out, other, eager = cuda(x, w, b, r), triton(x, w, b, r), fn(x, w, b, r)
        ref = fn(x.double(), w.double(), b.double(), r.double())
    groups = [g for rep in cuda.tilefuse_reports for p in rep["partitions"] for g in p["groups"]]
    gemms = [g for g in groups if g["kind"] == "gemm"]
    assert gemms and all(g.get("backend") == "cuda" for g in gemms), groups
    assert rel_error(out, ref) <= 1.5 * max(rel_error(eager, ref), rel_error(other, ref)) + 1e-6
