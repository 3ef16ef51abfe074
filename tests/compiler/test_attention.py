"""Attention as one flash-attention kernel (Triton interpreter) against eager PyTorch.

SDPA (causal or not, float/boolean masks, grouped-query), attention written
out by hand, ragged sequence lengths with small tiles so the key loop and the
causal block skipping run over several blocks, head dims that are not a power
of two, and 16-bit dtypes.
"""

from __future__ import annotations

import math
import operator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import compile_and_compare, fusion_groups
from tilefuse.autotune.heuristics import CONFIG_ENV

SMALL_TILES = '{"attention": {"BLOCK_M": 16, "BLOCK_N": 16}}'


def assert_one_attention_kernel(reports, masked: bool = False) -> dict:
    """One attention kernel; with a mask, beside it only the small kernels that zero the rows the
    mask leaves no key (`lower_structured._zero_fully_masked_rows`): a map and a reduction of the
    mask, a map of the output."""
    groups = fusion_groups(reports)
    (group,) = [g for g in groups if g["kind"] == "attention"]
    assert group["kernel"] is not None, group
    others = [g["kind"] for g in groups if g is not group]
    assert set(others) <= ({"pointwise", "reduction"} if masked else set()) and len(others) <= 3, groups
    return group


def qkv(b, h, sq, sk, d, kv_heads=None, dtype=torch.float32):
    kv_heads = kv_heads or h
    return (
        torch.randn(b, h, sq, d, dtype=dtype),
        torch.randn(b, kv_heads, sk, d, dtype=dtype),
        torch.randn(b, kv_heads, sk, d, dtype=dtype),
    )


@pytest.fixture(params=["default tiles", "16x16 tiles"])
def tiles(request, monkeypatch):
    if request.param == "16x16 tiles":
        monkeypatch.setenv(CONFIG_ENV, SMALL_TILES)
    return request.param


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("sq, sk", [(37, 37), (20, 45), (64, 64)], ids=str)
def test_sdpa(tiles, causal, sq, sk):
    q, k, v = qkv(2, 3, sq, sk, 16)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    assert_one_attention_kernel(compile_and_compare(fn, q, k, v, rtol=1e-4, atol=1e-5))


def test_causal_attention_is_recognised_and_skips_key_blocks(tmp_path, monkeypatch):
    import tilefuse

    monkeypatch.setenv(CONFIG_ENV, SMALL_TILES)
    compiled = tilefuse.compile(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), dump=tmp_path)
    compiled(*qkv(1, 2, 40, 40, 16))
    (source,) = list((tmp_path / compiled.tilefuse_reports[0]["dir"] / "kernels").glob("*.py"))
    assert "tl.minimum(40," in source.read_text()  # the key loop stops at the block's last query


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_grouped_query_attention(tiles, causal):
    q, k, v = qkv(2, 6, 33, 33, 16, kv_heads=2)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)  # noqa: E731
    assert_one_attention_kernel(compile_and_compare(fn, q, k, v, rtol=1e-4, atol=1e-5))

    def repeat_kv(q, k, v):  # the Llama way: repeat_interleave, then plain SDPA
        k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    torch._dynamo.reset()
    assert_one_attention_kernel(compile_and_compare(repeat_kv, q, k, v, rtol=1e-4, atol=1e-5))


def test_float_and_boolean_masks(tiles):
    q, k, v = qkv(2, 2, 29, 31, 16)
    additive = torch.randn(2, 1, 29, 31)
    keep = torch.rand(29, 31) > 0.3
    keep[:, 0] = True  # no fully masked row (those: test_rows_the_mask_leaves_no_key_are_zero_as_in_pytorch)
    for mask in (additive, keep):
        torch._dynamo.reset()
        fn = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # noqa: E731
        assert_one_attention_kernel(compile_and_compare(fn, q, k, v, mask, rtol=1e-4, atol=1e-5), masked=True)


def test_attention_written_out_by_hand(tiles):
    def attention(q, k, v, mask):
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + mask
        return torch.softmax(scores, dim=-1) @ v

    q, k, v = qkv(2, 4, 26, 26, 8)
    causal = torch.full((26, 26), float("-inf")).triu(1)
    assert_one_attention_kernel(compile_and_compare(attention, q, k, v, causal, rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("sq, sk", [(1, 9), (5, 1), (1, 1)], ids=["one query", "one key", "one of each"])
def test_one_query_or_key_of_one_sequence_read_through_a_head_merging_view(sq, sk):
    """GPT-J and CodeGen write attention with 4-d matmuls, which view [1, H, S, D] as [H, S, D].
    In decode (batch 1, one query) that view only moves size-1 dims, so the query's row index
    never reaches its load: the tile came back [1, BLOCK_D], `tile.dot` refused it ("shapes ('1',
    'BLOCK_D') x ... do not chain") and each layer's attention ran on the reference interpreter."""

    def attention(q, k, v):  # q: [1, Sq, H, D] as projected; k, v: [1, Sk, H, D]
        q, k, v = (x.permute(0, 2, 1, 3) for x in (q, k, v))
        return torch.softmax(torch.matmul(q, k.transpose(-1, -2)) / 4.0, dim=-1) @ v

    q, k, v = torch.randn(1, sq, 3, 16), torch.randn(1, sk, 3, 16), torch.randn(1, sk, 3, 16)
    assert_one_attention_kernel(compile_and_compare(attention, q, k, v, rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("d", [64, 128])
def test_head_dims(d):
    q, k, v = qkv(1, 2, 24, 24, d)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    assert_one_attention_kernel(compile_and_compare(fn, q, k, v, rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(tiles, dtype):
    q, k, v = qkv(1, 2, 35, 35, 16, dtype=dtype)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    assert_one_attention_kernel(compile_and_compare(fn, q, k, v, rtol=2e-2, atol=2e-2))


@settings(max_examples=10, deadline=None)
@given(
    sq=st.integers(1, 50),
    sk=st.integers(1, 50),
    d=st.sampled_from([8, 12, 24]),
    causal=st.booleans(),
)
def test_random_shapes(sq, sk, d, causal):
    torch._dynamo.reset()
    q, k, v = qkv(1, 2, sq, sk, d)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    with torch.no_grad():
        expected = fn(q, k, v)
    if causal and sq > sk or expected.isnan().any():
        return  # rows with no visible key: eager's answer is NaN, ours too; compared elsewhere
    assert_one_attention_kernel(compile_and_compare(fn, q, k, v, rtol=1e-4, atol=1e-5))


def test_a_scaled_upcast_operand_is_read_through_its_map():
    """`q.float() * 2` is not a pure widening: the map stays in the kernel as a plain load."""
    q, k, v = qkv(1, 2, 9, 9, 16, dtype=torch.float16)
    fn = lambda q, k, v: F.scaled_dot_product_attention(q.float() * 2, k.float(), v.float())  # noqa: E731
    reports = compile_and_compare(fn, q, k, v, rtol=1e-4, atol=1e-5)
    assert "attention" in {g["kind"] for g in fusion_groups(reports)}


def test_a_rotated_bf16_query_keeps_16_bit_dot_operands(tmp_path):
    """RoPE in bf16 then SDPA (Llama): the query's widening to f32 must not merge into the
    rotation's map, or the kernel's dots run on f32 operands (exact FMA math, ~100x slower
    than tensor cores on the H200). Both dots read bf16 tiles, accumulate in f32, and the
    answer matches eager."""
    torch.manual_seed(0)
    q, k, v = qkv(1, 2, 24, 24, 16, dtype=torch.bfloat16)
    cos, sin = torch.randn(24, 16, dtype=torch.bfloat16), torch.randn(24, 16, dtype=torch.bfloat16)

    def rope_attention(q, k, v, cos, sin):
        half = q.shape[-1] // 2
        rotated = torch.cat((-q[..., half:], q[..., :half]), dim=-1)
        return F.scaled_dot_product_attention(q * cos + rotated * sin, k, v, is_causal=True)

    reports = compile_and_compare(rope_attention, q, k, v, cos, sin, rtol=2e-2, atol=2e-2, dump=tmp_path)
    assert "attention" in {g["kind"] for g in fusion_groups(reports)}
    assert_16_bit_attention_dots(tmp_path)


def assert_16_bit_attention_dots(dump: Path) -> None:
    """The attention kernel's four dots (q @ k and p @ v, in the unmasked and the masked key loop)
    read bf16 tiles."""
    tile_ir = next(dump.glob("*/tile.mlir")).read_text()
    kernel = tile_ir[tile_ir.index('kind "attention"'):]
    kernel = kernel[: kernel.find("tile.kernel") if "tile.kernel" in kernel else None]
    dots = [line for line in kernel.splitlines() if "tile.dot" in line]
    assert len(dots) == 4, dots
    for line in dots:
        lhs, rhs = line.split(" : ")[1].split("->")[0].split(", !tile")[:2]
        assert lhs.endswith("bf16>") and rhs.endswith("bf16>"), line


def test_heads_sliced_from_a_fused_qkv_product_keep_plain_contiguous_indices(tmp_path):
    """GPT-2 splits one [B, S, 3 * H * D] product into q, k and v. A head's columns h * D + d stay
    inside their slice (h < H, d an exact D-wide tile), so the kernel reads them with no select on
    the index: a select hides the contiguity from Triton and made this kernel 4x slower on the H200.
    Ragged sequence length, a boolean mask; the answer matches eager."""
    heads, d = 2, 16
    qkv_product = torch.randn(2, 37, 3 * heads * d)
    mask = torch.rand(2, 1, 37, 37) > 0.3
    mask[..., 0] = True

    def split_attention(qkv, mask):
        q, k, v = qkv.split(heads * d, dim=2)
        q, k, v = (t.view(2, 37, heads, d).transpose(1, 2) for t in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    reports = compile_and_compare(split_attention, qkv_product, mask, rtol=1e-4, atol=1e-4, dump=tmp_path)
    assert_one_attention_kernel(reports, masked=True)
    (source,) = [p.read_text() for p in tmp_path.glob("*/kernels/*.py") if "attention_" in p.read_text()]
    lines = source.splitlines()
    indices = _index_names([line for line in lines if "tl.load(qkv_ptr" in line])
    selected = [line.strip() for line in lines if line.strip().split(" = ")[0] in indices and "tl.where(" in line]
    assert indices and not selected, selected


def _index_names(loads: list[str]) -> set[str]:
    """The variables a load's address adds up (`qkv_ptr + v1 * qkv_s0 + ...`)."""
    names = set()
    for line in loads:
        address = line.split("tl.load(")[1].split(", mask=")[0]
        names |= {term.split(" * ")[0].strip() for term in address.split(" + ")[1:]}
    return names


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("boolean", [True, False])
def test_rows_the_mask_leaves_no_key_are_zero_as_in_pytorch(causal, boolean):
    """Left padding under a causal mask leaves a pad query no key: PyTorch's SDPA returns 0 for that
    row (its safe softmax), where a plain softmax gives 0/0 = NaN, which the next layer would spread
    over the whole sequence. Masks as transformers builds them: boolean, or 0 / -inf."""
    q, k, v = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    keep = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    keep[1, :, :, :4] = False  # the second sequence's first four positions are padding
    keep[1, :, 2, :] = False  # and one query sees nothing at all, even without causality
    mask = keep if boolean else torch.zeros(keep.shape).masked_fill(~keep, float("-inf"))

    def attend(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal) + 1

    expected = attend(q, k, v, mask)
    assert not expected.isnan().any() and (expected[1, :, 2] == 1).all()  # PyTorch's zero rows
    compile_and_compare(attend, q, k, v, mask, rtol=1e-4, atol=1e-5)


def test_layers_sharing_a_mask_compute_which_rows_have_a_key_once():
    """(An additive mask, as transformers passes it: a boolean one is converted per call by the
    decomposition, so each call has its own.)"""
    q, k, v = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8), torch.randn(2, 3, 9, 8)
    keep = torch.zeros(2, 1, 9, 9).masked_fill(torch.rand(2, 1, 9, 9) > 0.7, float("-inf"))

    def two_layers(q, k, v, mask):
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return F.scaled_dot_product_attention(h, k, v, attn_mask=mask)

    reports = compile_and_compare(two_layers, q, k, v, keep, rtol=1e-4, atol=1e-5)
    kinds = [g["kind"] for g in fusion_groups(reports)]
    assert kinds.count("attention") == 2 and kinds.count("reduction") == 1, kinds


def test_float32_attention_on_cuda_at_highest_precision_is_left_to_sdpa(monkeypatch):
    """On a GPU, exact-f32 attention runs as PyTorch's SDPA (an exact-f32 flash kernel has no tensor
    cores); with TF32 allowed, or on the interpreter's CPU tensors, it is a kernel. The check reads
    the graph's fake tensors, so it is exercised here on meta-device stand-ins for CUDA ones."""
    from tilefuse.compiler.lower_structured import EXACT_F32_ATTENTION, _attention_check

    graph = torch.fx.Graph()
    q, k, v = (graph.placeholder(n) for n in "qkv")
    node = graph.call_function(torch.ops.aten.scaled_dot_product_attention.default, (q, k, v))
    getitem = graph.call_function(operator.getitem, (node, 0))
    graph.output(getitem)
    for device, precision, left in (("cuda", "highest", True), ("cuda", "high", False), ("cpu", "highest", False)):
        for p in (q, k, v):
            p.meta["val"] = _On(torch.empty(2, 4, 16, 8, device="meta"), device)
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda precision=precision: precision)
        assert (_attention_check(node) == EXACT_F32_ATTENTION) == left, (device, precision)


def test_an_empty_logsumexp_nobody_reads_does_not_send_attention_to_pytorch(monkeypatch):
    """CUDA's memory-efficient attention (a padded encoder layer's, in fp32) returns an empty logsumexp
    where none is asked for; only its first output is read, so the op is judged by that one: at
    precision 'high' it lowers, at 'highest' it is left to SDPA for that reason, not for having 'no
    elements'."""
    from tilefuse.compiler.lower_structured import EXACT_F32_ATTENTION
    from tilefuse.compiler.lowering_table import unsupported_reason

    graph = torch.fx.Graph()
    q, k, v, bias = (graph.placeholder(n) for n in ("q", "k", "v", "bias"))
    efficient = torch.ops.aten._scaled_dot_product_efficient_attention.default
    node = graph.call_function(efficient, (q, k, v, bias, False))
    graph.output(graph.call_function(operator.getitem, (node, 0)))
    for p in (q, k, v):
        p.meta["val"] = _On(torch.empty(3, 4, 37, 16, device="meta"), "cuda")
    bias.meta["val"] = _On(torch.empty(3, 4, 37, 37, device="meta"), "cuda")
    empty_lse = torch.empty(3, 4, 0, device="meta")
    seed = torch.empty((), dtype=torch.int64, device="meta")
    node.meta["val"] = (torch.empty(3, 4, 37, 16, device="meta"), empty_lse, seed, seed)
    for precision, reason in (("high", None), ("highest", EXACT_F32_ATTENTION)):
        monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda precision=precision: precision)
        assert unsupported_reason(node) == reason, precision


class _On:
    """A fake tensor's stand-in that says it lives on `device` (no such device is needed)."""

    def __init__(self, meta: torch.Tensor, device: str):
        self.meta, self.device = meta, torch.device(device)

    def __getattr__(self, name: str) -> object:
        return getattr(self.meta, name)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("mask_kind", ["boolean", "additive", "causal"])
def test_sdpa_math_path_safe_softmax_is_one_kernel_with_zero_rows(tiles, mask_kind, dtype, tmp_path):
    """Query and key head counts that differ without `enable_gqa` (Falcon's multi-query attention)
    leave SDPA's math path in the graph, whose safe softmax writes zeros for a row with no visible
    key (`t != -inf`, a row `any`, `select(not any, 0, e / l)`): one attention kernel, zero rows kept.
    In bf16 the math path widens q, k and v to f32 and scales q and k by the square root of the
    softmax scale: the kernel's dots still read bf16 tiles (q and k unscaled and rounded back exactly,
    the scales applied to the f32 scores; p rounded to bf16 for its dot with v, as a flash kernel
    does), not f32 ones (exact FMA math: Falcon's attention ran ~10x slower on the H200)."""
    q, k, v = qkv(2, 4, 19, 23, 8, kv_heads=1, dtype=dtype)
    keep = torch.rand(2, 1, 19, 23) > 0.4
    keep[:, :, :, 0] = True
    keep[1, :, 5, :] = False  # a query that sees no key
    if mask_kind == "causal":
        fn = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    else:
        additive = torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, float("-inf"))
        mask = keep if mask_kind == "boolean" else additive
        fn = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
    expected = fn(q, k, v, None)
    if mask_kind != "causal":
        assert (expected[1, :, 5] == 0).all()  # PyTorch's zero rows
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    reports = compile_and_compare(fn, q, k, v, None, **tolerance, dump=tmp_path)
    kinds = [g["kind"] for g in fusion_groups(reports)]
    assert kinds.count("attention") == 1 and "row" not in kinds, kinds
    if dtype == torch.bfloat16:
        assert_16_bit_attention_dots(tmp_path)


def test_math_path_attention_after_a_rotary_embedding_keeps_16_bit_dots(tmp_path):
    """Falcon: RoPE in bf16, then SDPA with one key head for four query heads (the math path).
    The path's widening of q and k merges into the rotation's map (`extf(truncf(...)) * c`) and k's
    scale is a map of its own after a transpose: the kernel still finds their bf16 values."""
    torch.manual_seed(0)
    q, k, v = qkv(1, 4, 24, 24, 16, kv_heads=1, dtype=torch.bfloat16)
    cos, sin = torch.randn(24, 16, dtype=torch.bfloat16), torch.randn(24, 16, dtype=torch.bfloat16)

    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def falcon_attention(q, k, v, cos, sin):
        return F.scaled_dot_product_attention(rotate(q, cos, sin), rotate(k, cos, sin), v, is_causal=True)

    reports = compile_and_compare(falcon_attention, q, k, v, cos, sin, rtol=2e-2, atol=2e-2, dump=tmp_path)
    assert "attention" in {g["kind"] for g in fusion_groups(reports)}
    assert_16_bit_attention_dots(tmp_path)
