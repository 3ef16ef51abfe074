"""Tensors of 2**31 elements or more on the GPU: kernels compute their offsets in int64 (KernelBench's
avg_pool2d over 16 x 64 x 2048 x 2048 fp32 faulted with int32 offsets, an illegal address that ends
the process), and match eager PyTorch. Each case needs several GB of GPU memory: skipped (with the
reason) where it is not free."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")
BIG = 2**31 + 4099  # elements: past int32, and ragged


def _needs(gigabytes: float) -> None:
    free, _ = torch.cuda.mem_get_info()
    if free < gigabytes * 2**30:
        pytest.skip(f"needs {gigabytes} GB of free GPU memory, {free / 2**30:.1f} GB free")


@pytest.fixture(autouse=True)
def _generated_kernels(monkeypatch):
    """The generated kernels run, unmeasured against PyTorch (whose graph the selection may keep)."""
    monkeypatch.setenv("TILEFUSE_SELECT", "0")
    monkeypatch.setenv("TILEFUSE_CACHE", "0")
    yield
    torch.cuda.empty_cache()


def _compiled_without_fallback(fn, *inputs):
    compiled = tilefuse.compile(fn)
    out = compiled(*inputs)
    torch.cuda.synchronize()
    (report,) = compiled.tilefuse_reports
    assert report["partitions"] and not report["fallbacks"], report["fallbacks"]
    return out


def test_pointwise_past_int32_matches_eager():
    _needs(16)
    x = torch.randn(BIG // 1024 + 1, 1024, device=CUDA, dtype=torch.bfloat16)

    def fn(x):
        return torch.relu(x) * 2 + 1

    out = _compiled_without_fallback(fn, x)
    expected = fn(x)
    assert torch.equal(out[-3:], expected[-3:]) and torch.equal(out[:3], expected[:3])
    assert torch.equal(out, expected)


def test_avg_pool2d_past_int32_matches_eager():
    _needs(24)
    # KernelBench's problem at 9 images of its 16 (2.4e9 elements, fp32). PyTorch's own kernel
    # refuses this input in bf16 at stride 1 ("integer out of range")
    x = torch.rand(9, 64, 2048, 2048, device=CUDA)
    out = _compiled_without_fallback(lambda x: F.avg_pool2d(x, 11), x)
    torch.testing.assert_close(out, F.avg_pool2d(x, 11), rtol=1e-5, atol=1e-6)


def test_row_softmax_past_int32_matches_eager():
    _needs(20)
    x = torch.randn(BIG // 1000 + 3, 1000, device=CUDA, dtype=torch.bfloat16)
    out = _compiled_without_fallback(lambda x: torch.softmax(x, dim=-1), x)
    torch.testing.assert_close(out[-1000:], torch.softmax(x[-1000:], dim=-1), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(out[:1000], torch.softmax(x[:1000], dim=-1), rtol=1e-2, atol=1e-3)
