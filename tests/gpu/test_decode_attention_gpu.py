"""The flash-decoding kernel on the GPU: compiled binaries launched directly at every cache length,
against float64 SDPA; a decode attention call site chooses between it and SDPA by measurement."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tilefuse.backends.triton.decode_attention import DecodeKernels, decode_attention
from tilefuse.compiler.decode_attention import TIMED_CALLS, DecodeAttentionCall

pytestmark = pytest.mark.gpu

TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def _reference(q, k, v, mask):
    mask = mask.expand(*q.shape[:3], k.shape[2])
    mask = mask if mask.dtype == torch.bool else mask.double()
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape", [(1, 4, 4, 128), (8, 8, 4, 128), (2, 12, 1, 64), (1, 12, 64, 64), (1, 3, 40, 128)]
)
def test_decode_kernel_over_growing_lengths_matches_float64(dtype, shape):
    batch, heads, rows, dim = shape
    launches = DecodeKernels()
    q = torch.randn(*shape, device="cuda", dtype=dtype)
    for length in (1, 77, 513, 514, 1000, 4097):
        k = torch.randn(batch, heads, length, dim, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        mask = torch.zeros(batch, 1, 1, length, device="cuda", dtype=dtype)
        mask[0, ..., : length // 3] = float("-inf")
        got = decode_attention(q, k, v, mask, None, launches)
        torch.testing.assert_close(
            got.double(), _reference(q, k, v, mask), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype]
        )
    kept = [entry for plan in launches.plans.values() for entry in plan.launches.values()]
    assert kept and all(raw is not None for raw, _ in kept), "no C launch was kept for direct launches"


def test_a_call_site_measures_then_keeps_the_faster():
    report: dict = {}
    call = DecodeAttentionCall("decode_attention_0", None, report)
    q = torch.randn(1, 4, 4, 128, device="cuda", dtype=torch.bfloat16)
    for step in range(2 * TIMED_CALLS + 4):
        length = 600 + step
        k = torch.randn(1, 4, length, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        mask = torch.ones(1, 1, 1, length, device="cuda", dtype=torch.bool)
        got = call(q, k, v, mask)
        torch.testing.assert_close(got.double(), _reference(q, k, v, mask), rtol=3e-2, atol=3e-2)
    assert report["choice"] in ("kernels", "sdpa") and report["why"] == "measured over decode steps", report
    assert report["kernels_us"] > 0 and report["sdpa_us"] > 0
