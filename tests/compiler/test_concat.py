"""Concatenations are read in place by the kernels that consume them (each operand loaded where the
index falls in its range), never copied, except for a contraction's operand (copied once by a
pointwise kernel), and except a concatenation of more than MAX_CAT_PARTS parts, which PyTorch's cat
makes; against eager, on ragged shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse
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
    parts = [
        torch.randn(*(size if d == dim else base for d, base in enumerate((5, 7, 9)))) for size in (3, 1, 6)
    ]
    reports = compile_and_compare(lambda a, b, c: torch.cat((a.exp(), b, c * 2), dim=dim) + 1, *parts)
    assert "ein.concat" not in _glue(reports)


def test_a_row_kernel_and_a_reduction_read_a_concatenated_row():
    """Phi's partial rotary concatenates the rotated and the kept part of a head; a softmax or a sum
    over such a row reads both parts."""
    x, y = torch.randn(6, 24), torch.randn(6, 13)
    reports = compile_and_compare(
        lambda x, y: F.softmax(torch.cat((x * 2, y), -1), -1) + torch.cat((x, y), -1).sum(-1, keepdim=True),
        x,
        y,
    )
    assert "ein.concat" not in _glue(reports)
    assert {"row"} <= {g["kind"] for g in fusion_groups(reports)}


def test_a_concatenated_gemm_operand_is_copied_once():
    """By a pointwise kernel that reads the parts in place, computing the relu where it reads it (the
    relu's only reader): the GEMM streams tiles of one buffer."""
    x, w = torch.randn(9, 16), torch.randn(32, 8)
    reports = compile_and_compare(lambda x, w: torch.cat((x, x.relu()), -1) @ w, x, w)
    assert "ein.concat" not in _glue(reports)
    assert sorted(g["kind"] for g in fusion_groups(reports)) == ["gemm", "pointwise"]


@pytest.mark.parametrize("side", ["rhs", "lhs", "small"])
def test_a_gathered_gemm_operand_is_copied_once(side, tmp_path, monkeypatch):
    """BigBird's random key blocks: blocks of a tensor gathered by an index tensor, then a batched
    product with them. Read through the gather, each B tile loaded the index and computed an address
    per element inside the K loop (5x slower than the product on a copy, H100); a pointwise kernel
    copies the gathered blocks once (ragged: 7 blocks of 5 rows, 3 gathered per query block). Under
    `COPIED_GATHER_MIN_ELEMENTS` (a decode step's embedded token) the GEMM reads through the gather."""
    from tilefuse.passes import fusion_groups as passes

    monkeypatch.setattr(passes, "COPIED_GATHER_MIN_ELEMENTS", 10**9 if side == "small" else 64)
    monkeypatch.setenv("TILEFUSE_CACHE", "0")  # "small" compiles "rhs"'s graph: not its kept artifact
    blocks, index = torch.randn(2, 7, 5, 16), torch.randint(0, 7, (2, 4, 3))
    q, w = torch.randn(2, 4, 6, 16), torch.randn(2, 4, 15, 8)

    def gathered(q, w, blocks, index):
        picked = blocks[torch.arange(2)[:, None, None], index]  # [2, 4, 3, 5, 16]
        keys = picked.reshape(2, 4, 15, 16)
        return keys.transpose(-1, -2) @ w if side == "lhs" else q @ keys.transpose(-1, -2)

    reports = compile_and_compare(gathered, q, w, blocks, index, dump=str(tmp_path))
    kinds = sorted(g["kind"] for g in fusion_groups(reports))
    if side == "small":
        assert kinds == ["gemm"], kinds
        return
    assert kinds == ["gemm", "pointwise"], kinds
    (gemm,) = [p for p in tmp_path.glob("*/kernels/*.py") if "(gemm)" in p.read_text()]
    assert "index" not in gemm.read_text().split("@triton.jit", 1)[1].split("):", 1)[0]


def test_partial_rotary_attention_reads_each_bf16_operand_from_one_buffer(tmp_path):
    """Phi's partial rotary: 16-bit query and key heads concatenated from a rotated and a kept part.
    The attention kernel widens them inside its dots; read in place, every key block took two masked
    loads and a select (2x slower on the H200), so a pointwise kernel copies each into one buffer
    (no `torch.cat` glue: that took 21 us a copy of strided parts)."""

    def attention(q, k, v):
        rot = q.shape[-1] // 2
        q = torch.cat((q[..., :rot] * 2, q[..., rot:]), -1)
        k = torch.cat((k[..., :rot].neg(), k[..., rot:]), -1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    q, k, v = (torch.randn(2, 3, 21, 24, dtype=torch.bfloat16) for _ in range(3))
    reports = compile_and_compare(attention, q, k, v, rtol=2e-2, atol=2e-2, dump=str(tmp_path))
    assert "ein.concat" not in _glue(reports)
    (kernel,) = [p for p in tmp_path.glob("*/kernels/*.py") if "(attention)" in p.read_text()]
    signature = kernel.read_text().split("@triton.jit", 1)[1].split("):", 1)[0]
    assert signature.count("_ptr") == 4  # query, key, value and the output: one buffer each


def _fallbacks(reports) -> list[str]:
    return [f["op"] for r in reports for f in r.get("fallbacks", [])]


@pytest.mark.parametrize("dim,start,end", [(0, 0, 3), (1, 2, 5), (2, 4, None), (-1, -3, None)])
def test_slice_scatter_is_a_concatenation_read_in_place(dim, start, end):
    """A slice's backward (rotate_half's in a training graph) writes the gradient into zeros: the
    parts of `base` around the slice and `src`, read where the index falls; ragged sizes."""
    base = torch.randn(5, 7, 9)
    length = len(range(*slice(start, end).indices(base.shape[dim])))
    src_shape = list(base.shape)
    src_shape[dim] = length
    src = torch.randn(src_shape)

    def fn(base, src):
        return torch.slice_scatter(base * 2, src.exp(), dim=dim, start=start, end=end) + 1

    reports = compile_and_compare(fn, base, src)
    assert "aten.slice_scatter.default" not in _fallbacks(reports)
    assert "ein.concat" not in _glue(reports)


def test_select_scatter_matches_eager():
    """select_scatter writes one row."""
    base, row = torch.randn(4, 6), torch.randn(6)
    reports = compile_and_compare(lambda base, row: torch.select_scatter(base.tanh(), row * 3, 0, 2), base, row)
    assert "aten.select_scatter.default" not in _fallbacks(reports)


@pytest.mark.parametrize(
    "dim,start,end,step",
    [(1, 0, None, 2), (1, 1, None, 2), (-1, 1, 7, 3), (0, 2, None, 2), (2, 3, 8, 3), (-1, 0, 9, 9)],
)
def test_a_strided_slice_scatter_overwrites_one_phase_of_the_dim(dim, start, end, step):
    """The backward of GPT-J's rotate-every-two (`x[..., ::2]`, `x[..., 1::2]`) writes every other
    element: the dim viewed as [size / step, step], one phase overwritten from its first written row
    on; ragged counts (a slice that stops early), middle and leading dims, a step as large as the dim."""
    base = torch.randn(6, 4, 9) if dim != 1 else torch.randn(3, 8, 5)
    size = base.shape[dim]
    length = len(range(*slice(start, end, step).indices(size)))
    src_shape = list(base.shape)
    src_shape[dim] = length
    src = torch.randn(src_shape)

    def fn(base, src):
        return torch.slice_scatter(base * 2, src.exp(), dim=dim, start=start, end=end, step=step) + 1

    reports = compile_and_compare(fn, base, src)
    assert "aten.slice_scatter.default" not in _fallbacks(reports)


def test_a_strided_slice_scatter_over_a_dim_its_step_does_not_divide_runs_in_pytorch():
    base, every_other = torch.randn(4, 7), torch.randn(4, 4)
    fn = lambda base, src: torch.slice_scatter(base, src, dim=1, start=0, end=7, step=2) * 2  # noqa: E731
    reports = compile_and_compare(fn, base, every_other, allow_fallbacks=True)
    fallbacks = [f for r in reports for f in r.get("fallbacks", [])]
    assert [f["op"] for f in fallbacks] == ["aten.slice_scatter.default"]
    assert "step 2 over a dim of 7" in fallbacks[0]["reason"]


@pytest.mark.parametrize(
    "pad",
    [
        lambda x: F.pad(x, (2, 3)) * 2 + 1,
        lambda x: F.pad(x.permute(0, 2, 1), (1, 1, 2, 0)) - 1,
        lambda x: F.pad(x.reshape(3, 20), (1, 1)) * 3,
        lambda x: F.pad(x.unsqueeze(-1), (1, 1)) * 2 + 1,  # the padded dim is the reshape's size-1 one
    ],
    ids=["plain", "permuted", "reshaped", "unsqueezed"],
)
def test_zero_padding_is_read_through_the_loads_masks(pad):
    """A zero pad's pieces need no select where the padded tensor reads zero out of its bounds
    (tile_builder.zero_outside); a reshape that drops a size-1 dim's index is not such a read."""
    compile_and_compare(pad, torch.randn(3, 4, 5))


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize(
    "fn",
    [
        lambda x: torch.cat([x.new_empty(0, x.shape[0]), x.t()], 0),  # an empty operand: a view of x.t()
        lambda x: torch.cat([x.t()], 0),
        lambda x: torch.cat([x.new_empty(3, 0, 8), (x * 2).view(-1, 3, 8).transpose(0, 1)], 1),
    ],
    ids=["empty_and_transposed", "one_transposed", "kv_cache_first_step"],
)
def test_a_concatenation_folded_into_a_view_is_returned_contiguous_as_eagers(fn, dynamic):
    """A concatenation PyTorch returns as fresh contiguous memory comes back contiguous (and not x's
    memory) where the program folds it into a view of a transposed operand: a caller may `view` it,
    as transformers' dynamic cache concatenates its first keys and values to an empty tensor."""
    import tilefuse

    compiled = tilefuse.compile(fn, dynamic=dynamic)
    for rows in (16, 24):
        x = torch.randn(rows, 8 * 3)
        got, want = compiled(x), fn(x)
        torch.testing.assert_close(got, want)
        assert got.is_contiguous() and got.stride() == want.stride()
        assert got.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        got.view(-1)  # what a caller may do with PyTorch's result


@pytest.mark.parametrize("parts", [8, 9, 13])
def test_a_concatenation_of_many_parts_is_left_to_pytorchs_cat(parts):
    """DenseNet concatenates every earlier layer's features: read in place, each element of its
    norm took a masked load per part. Past MAX_CAT_PARTS the cat runs in PyTorch (one copy of each
    part) and the kernels around it read one tensor; up to it, the kernels read the parts in place.
    Ragged part sizes, a norm-like reader (a reduction and a map) on both sides of the limit."""
    from tilefuse.compiler.lower_structured import MAX_CAT_PARTS

    sizes = [3 + (5 * i) % 7 for i in range(parts)]
    xs = [torch.randn(2, s, 5, 3) for s in sizes]

    def densenet_like(*xs):
        x = torch.cat([t.relu() for t in xs], dim=1)
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        return (x - mean).relu() * 2

    reports = compile_and_compare(densenet_like, *xs, allow_fallbacks=True)
    fallbacks = [f for r in reports for f in r.get("fallbacks", [])]
    cats = [f for f in fallbacks if f["op"] == "aten.cat.default"]
    if parts > MAX_CAT_PARTS:
        assert len(cats) == 1 and f"a concatenation of {parts} parts" in cats[0]["reason"]
        assert any(r["partitions"] for r in reports)  # the norm after it still compiles
        assert {f["op"] for f in fallbacks} <= {"aten.cat.default", "aten.relu.default"}
    else:
        assert not fallbacks
        assert "ein.concat" not in _glue(reports)


def test_a_dense_block_of_many_concatenations_trains_as_eager():
    """A DenseNet-style block in train mode (BatchNorm's batch statistics, each layer reading the
    concatenation of every earlier output, past MAX_CAT_PARTS at its end): one training step's
    gradients match eager's, on ragged channel counts."""
    import torch.nn as nn

    from helpers import step_matches_eager

    class DenseBlock(nn.Module):
        def __init__(self, layers: int = 10, first: int = 5, growth: int = 3):
            super().__init__()
            self.norms = nn.ModuleList(nn.BatchNorm2d(first + i * growth) for i in range(layers))
            widths = [first + i * growth for i in range(layers)]
            self.convs = nn.ModuleList(nn.Conv2d(w, growth, 3, padding=1) for w in widths)

        def forward(self, x):
            features = [x]
            for norm, conv in zip(self.norms, self.convs):
                features.append(conv(norm(torch.cat(features, 1)).relu()))
            return torch.cat(features, 1)

    torch.manual_seed(0)
    block = DenseBlock()
    compiled = tilefuse.compile(block)
    step_matches_eager(compiled, block, torch.randn(2, 5, 7, 6), rtol=1e-4, atol=1e-4)
    fallbacks = [f for r in compiled.tilefuse_reports for f in r.get("fallbacks", [])]
    assert any("a concatenation of 11 parts" in f["reason"] for f in fallbacks)
