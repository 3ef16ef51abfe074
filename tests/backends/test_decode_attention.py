"""The flash-decoding kernel (backends/triton/decode_attention.py) against float64 SDPA, in Triton's
interpreter: few query rows over keys of any length (ragged, one chunk or many), every mask SDPA
takes (none, boolean, additive; broadcast or full), three dtypes; operands it refuses raise
`Unsupported`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tilefuse.backends.triton.decode_attention import (
    BLOCK_L,
    MIN_CHUNK,
    ONE_ROW_BLOCK_L,
    DecodeKernels,
    Unsupported,
    active_chunks,
    decode_attention,
)

TOLERANCE = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}


def _mask(kind: str, batch: int, heads: int, rows: int, length: int, dtype: torch.dtype):
    if kind == "none":
        return None
    if kind == "bool":  # a padding mask as transformers builds it: [B, 1, 1, L]
        mask = torch.rand(batch, 1, 1, length) > 0.3
        mask[..., -1] = True  # every row sees a key
        return mask
    if kind == "bool-full":
        mask = torch.rand(batch, heads, rows, length) > 0.5
        mask[..., 0] = True
        return mask
    if kind == "additive":  # [1, H, rows, L]
        return torch.randn(1, heads, rows, length).to(dtype)
    if kind == "additive-keys":  # [L]: broadcast over everything else
        bias = torch.zeros(length)
        bias[: length // 4] = float("-inf")
        return bias.to(dtype)
    raise AssertionError(kind)


def _reference(q, k, v, mask, scale=None):
    if mask is not None:  # PyTorch's math path wants it 4-d
        mask = mask.expand(*q.shape[:3], k.shape[2])
        mask = mask if mask.dtype == torch.bool else mask.double()
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, scale=scale)


@settings(max_examples=14, deadline=None)
@given(
    batch=st.integers(1, 3), heads=st.integers(1, 3), rows=st.sampled_from([1, 4, 5, 16]),
    dims=st.sampled_from([(16, 16), (40, 40), (64, 32), (128, 128)]), length=st.integers(1, 700),
    kind=st.sampled_from(["none", "bool", "bool-full", "additive", "additive-keys"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
)  # fmt: skip
def test_decode_attention_matches_float64_sdpa(batch, heads, rows, dims, length, kind, dtype):
    dim, dim_v = dims
    q = torch.randn(batch, heads, rows, dim, dtype=dtype)
    k = torch.randn(batch, heads, length, dim, dtype=dtype)
    v = torch.randn(batch, heads, length, dim_v, dtype=dtype)
    mask = _mask(kind, batch, heads, rows, length, dtype)
    if kind == "additive-keys" and length < 4:
        mask = None
    got = decode_attention(q, k, v, mask)
    assert got.shape == (batch, heads, rows, dim_v) and got.dtype == dtype
    torch.testing.assert_close(
        got.double(), _reference(q, k, v, mask), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype]
    )


def test_many_chunks_combine_and_their_counters_reset_between_calls():
    """Lengths that split into several chunks, one call site called at growing lengths (a decode
    loop): each call's combine must see only its own partials."""
    launches = DecodeKernels()
    q = torch.randn(1, 2, 4, 32)
    for length in (3 * MIN_CHUNK + 5, 5 * MIN_CHUNK, 5 * MIN_CHUNK + 1, 2 * BLOCK_L + 7):
        k, v = torch.randn(1, 2, length, 32), torch.randn(1, 2, length, 32)
        mask = torch.rand(1, 1, 1, length) > 0.2
        mask[..., 0] = True
        got = decode_attention(q, k, v, mask, 0.3, launches)
        torch.testing.assert_close(got.double(), _reference(q, k, v, mask, 0.3), rtol=2e-5, atol=2e-5)
        assert launches.count is not None and int(launches.count.abs().sum()) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("length", [1, ONE_ROW_BLOCK_L + 3, 5 * MIN_CHUNK + 7])
def test_one_query_row_runs_unpadded(dtype, length):
    """A model without grouped KV heads decodes one query row a head: its plan holds one row (no dot
    padded to 16 rows) and reads the keys in ONE_ROW_BLOCK_L blocks, over one chunk or several."""
    launches = DecodeKernels()
    q = torch.randn(2, 3, 1, 64, dtype=dtype)
    k, v = torch.randn(2, 3, length, 64, dtype=dtype), torch.randn(2, 3, length, 64, dtype=dtype)
    mask = torch.rand(2, 1, 1, length) > 0.3
    mask[..., -1] = True
    got = decode_attention(q, k, v, mask, None, launches)
    torch.testing.assert_close(
        got.double(), _reference(q, k, v, mask), rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype]
    )
    (plan,) = launches.plans.values()
    assert plan.constexprs["ROWS_P"] == 1 and plan.constexprs["BLOCK_L"] == ONE_ROW_BLOCK_L


def test_strided_operands_a_sliced_cache():
    """Keys and values that are views of a longer cache (strides other than the length's)."""
    cache_k, cache_v = torch.randn(2, 3, 900, 64), torch.randn(2, 3, 900, 64)
    q = torch.randn(2, 3, 2, 64)
    k, v = cache_k[:, :, :517], cache_v[:, :, :517]
    torch.testing.assert_close(
        decode_attention(q, k, v).double(), _reference(q, k, v, None), rtol=2e-5, atol=2e-5
    )


def test_a_row_no_key_may_attend_gives_zeros():
    q, k, v = torch.randn(1, 1, 2, 16), torch.randn(1, 1, 9, 16), torch.randn(1, 1, 9, 16)
    mask = torch.ones(1, 1, 2, 9, dtype=torch.bool)
    mask[0, 0, 1] = False
    got = decode_attention(q, k, v, mask)
    assert torch.equal(got[0, 0, 1], torch.zeros(16))
    torch.testing.assert_close(got[:, :, :1].double(), _reference(q[:, :, :1], k, v, mask[:, :, :1]))


@pytest.mark.parametrize(
    "case",
    ["rows", "rank", "head dim", "mask shape", "grad", "dtypes", "strided head dim", "past 32 bits"],
)
def test_operands_the_kernel_does_not_take_raise_unsupported(case):
    q, k, v, mask = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 30, 16), torch.randn(1, 2, 30, 16), None
    if case == "rows":  # more than a program holds (`MAX_PROGRAM_ROWS`)
        q = torch.randn(1, 2, 65, 16)
    elif case == "rank":
        q, k, v = q[0], k[0], v[0]
    elif case == "head dim":
        q, k, v = torch.randn(1, 2, 4, 300), torch.randn(1, 2, 30, 300), torch.randn(1, 2, 30, 300)
    elif case == "mask shape":
        mask = torch.ones(1, 2, 4, 31, dtype=torch.bool)
    elif case == "grad":
        q.requires_grad_()
    elif case == "dtypes":
        k = k.double()
    elif case == "strided head dim":
        k = torch.randn(1, 2, 16, 30).transpose(2, 3)
    elif case == "past 32 bits":  # a cache view whose batch stride reaches past 2**31 elements
        k = torch.randn(1, 2, 30, 16).as_strided((1, 2, 30, 16), (2**31, 30 * 16, 16, 1))
    with pytest.raises(Unsupported):
        decode_attention(q, k, v, mask)


@given(length=st.integers(1, 100_000), chunks=st.integers(1, 64))
def test_chunks_cover_the_keys_in_whole_blocks(length, chunks):
    per, active = active_chunks(length, chunks)
    assert per % BLOCK_L == 0 and per >= MIN_CHUNK
    assert 1 <= active <= chunks and (active - 1) * per < length <= active * per
