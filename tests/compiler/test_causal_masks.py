"""Attention masks equal to the causal mask become `is_causal=True` (compiler/causal_masks.py).

Eager PyTorch is the oracle; each case checks the report says whether the mask was folded, and
that the result is eager's either way: a mask that only looks causal (a sliding window, a
diagonal offset by a cache, a mask read from an input) must keep its tensor.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.compiler.causal_masks import fold_causal_masks


def _qkv(length: int, keys: int | None = None):
    torch.manual_seed(0)
    keys = keys or length
    return torch.randn(2, 3, length, 16), torch.randn(2, 3, keys, 16), torch.randn(2, 3, keys, 16)


def _compiled(fn, *args) -> dict:
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*args), fn(*args), rtol=1e-4, atol=1e-4)
    (report,) = compiled.tilefuse_reports
    return report


def _bool_causal(q, k, v):
    # as transformers builds it: kv_idx <= q_idx on aranges, and-ed with a scalar True, broadcast
    rows, cols = torch.arange(q.shape[-2]), torch.arange(k.shape[-2])
    mask = torch.full((), True) & (cols[None, None, None, :] <= rows[None, None, :, None])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask.expand(q.shape[0], -1, -1, -1))


def _additive_causal(q, k, v):
    rows, cols = torch.arange(q.shape[-2]), torch.arange(k.shape[-2])
    allowed = cols[None, :] <= rows[:, None]
    bias = torch.where(allowed, 0.0, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _min_value_causal(q, k, v):
    # transformers' half-precision masks hide keys with finfo(dtype).min, not -inf
    rows, cols = torch.arange(q.shape[-2]), torch.arange(k.shape[-2])
    bias = torch.where(cols[None, :] <= rows[:, None], 0.0, torch.finfo(q.dtype).min)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@pytest.mark.parametrize(
    "fn", [_bool_causal, _additive_causal, _min_value_causal], ids=["bool", "additive", "finfo min"]
)
@pytest.mark.parametrize("length", [5, 33])
def test_a_causal_mask_built_from_aranges_becomes_is_causal(fn, length):
    report = _compiled(fn, *_qkv(length))
    assert report["causal_masks"] == "1 attention mask(s) equal to the causal mask: is_causal=True"
    # the mask's ops are gone with it: nothing is left to run beside the kernels
    assert report["fallbacks"] == []


def _sliding_window(q, k, v):
    rows, cols = torch.arange(q.shape[-2]), torch.arange(k.shape[-2])
    mask = (cols[None, :] <= rows[:, None]) & (rows[:, None] - cols[None, :] < 4)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _past_keys(q, k, v):
    # a causal mask with a cache in front: query i sees keys 0..past + i
    past = k.shape[-2] - q.shape[-2]
    rows, cols = torch.arange(q.shape[-2]) + past, torch.arange(k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=cols[None, :] <= rows[:, None])


def _finite_bias(q, k, v):
    rows, cols = torch.arange(q.shape[-2]), torch.arange(k.shape[-2])
    bias = torch.where(cols[None, :] <= rows[:, None], 0.0, -1e4)  # large, but a bias, not a mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@pytest.mark.parametrize(
    "fn, keys", [(_sliding_window, None), (_past_keys, 12), (_finite_bias, None)],
    ids=["sliding window", "keys past a cache", "finite bias"],
)  # fmt: skip
def test_masks_that_are_not_the_causal_mask_are_kept(fn, keys):
    """Kept as masks (the result is eager's), but computed once: the op reads a buffer and the
    ops that built the mask no longer run beside the kernels."""
    report = _compiled(fn, *_qkv(9, keys))
    assert "causal_masks" not in report
    assert report["constant_masks"] == "1 attention mask(s) computed once, read from a buffer"
    assert report["fallbacks"] == []


def test_a_mask_read_from_an_input_is_kept():
    def fn(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = _qkv(7)
    report = _compiled(fn, q, k, v, torch.ones(7, 7, dtype=torch.bool).tril())
    assert "causal_masks" not in report and "constant_masks" not in report


def test_the_pass_leaves_a_graph_without_attention_alone():
    gm = torch.fx.symbolic_trace(lambda x: torch.relu(x) + 1)
    code = gm.code
    assert fold_causal_masks(gm) == (0, 0) and gm.code == code


# graphs that train: the masks are folded on Dynamo's graph, before AOTAutograd picks SDPA's kernel


def _all_visible(q, k, v):
    # as transformers builds a bidirectional mask while tracing (BERT): q_idx >= 0, broadcast
    rows = torch.arange(q.shape[-2])[None, None, :, None]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=(rows >= 0).expand(q.shape[0], -1, -1, k.shape[-2])
    )


def _all_zero_bias(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=torch.zeros(q.shape[-2], k.shape[-2]))


def _hides_one_key(q, k, v):
    cols = torch.arange(k.shape[-2])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=(cols != 2)[None, :])


def _dynamo_graph(fn, *args) -> torch.fx.GraphModule:
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=capture)(*args)
    (gm,) = graphs
    return gm


def _attention_arguments(gm: torch.fx.GraphModule) -> list[tuple[object, object]]:
    calls = [n for n in gm.graph.nodes if n.target is F.scaled_dot_product_attention]
    return [(n.kwargs.get("attn_mask"), n.kwargs.get("is_causal")) for n in calls]


@pytest.mark.parametrize(
    "fn, want",
    [(_all_visible, (None, False)), (_all_zero_bias, (None, False)), (_bool_causal, (None, True)),
     (_additive_causal, (None, True)), (_min_value_causal, (None, True))],
    ids=["all visible", "zero bias", "bool causal", "additive causal", "finfo min causal"],
)  # fmt: skip
def test_a_training_graphs_constant_mask_is_folded_before_tracing(fn, want):
    from tilefuse.compiler.attention_dropout import attention_for_tracing

    gm = _dynamo_graph(fn, *_qkv(9))
    before = gm.code
    copy = attention_for_tracing(gm, training=True)
    assert copy is not gm and gm.code == before  # Dynamo's own graph stays as it was
    assert _attention_arguments(copy) == [want]
    assert not any(n.target is torch.arange for n in copy.graph.nodes)  # the mask's ops went


@pytest.mark.parametrize("fn", [_hides_one_key, _sliding_window])
def test_a_training_graphs_other_constant_masks_are_kept(fn):
    from tilefuse.compiler.attention_dropout import attention_for_tracing

    gm = _dynamo_graph(fn, *_qkv(9))
    assert attention_for_tracing(gm, training=True) is gm


@pytest.mark.parametrize(
    "fn", [_all_visible, _bool_causal, _hides_one_key], ids=["visible", "causal", "hides"]
)
def test_compiled_training_with_a_constant_mask_matches_eager(fn, monkeypatch):
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch._dynamo.reset()
    q, k, v = (t.requires_grad_() for t in _qkv(12))
    out = tilefuse.compile(fn)(q, k, v)
    (out * out).sum().backward()
    got = [t.grad for t in (q, k, v)]
    q2, k2, v2 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = fn(q2, k2, v2)
    (ref * ref).sum().backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    for g, t in zip(got, (q2, k2, v2), strict=True):
        torch.testing.assert_close(g.double(), t.grad, rtol=1e-4, atol=1e-4)


def _ones_padded_in_place(q, k, v, padding):
    mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool)
    mask[:, :2] = padding  # Dynamo keeps the `ones` node as the mask SDPA reads
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _zeros_filled_in_place(q, k, v, padding):
    bias = torch.zeros(q.shape[-2], k.shape[-2])
    bias[:, 1:3].masked_fill_(padding, float("-inf"))  # through a view of the mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


@pytest.mark.parametrize(
    "fn", [_ones_padded_in_place, _zeros_filled_in_place], ids=["setitem", "masked_fill_"]
)
def test_a_constant_mask_written_in_place_is_kept(fn):
    from tilefuse.compiler.attention_dropout import attention_for_tracing

    q, k, v = _qkv(9)
    padding = torch.zeros(9, 2, dtype=torch.bool)
    padding[3] = True
    gm = _dynamo_graph(fn, q, k, v, padding)
    assert attention_for_tracing(gm, training=True) is gm


def test_folding_a_mask_leaves_the_graphs_in_place_ops():
    """Only the dropped mask's own ops go: an in-place op whose result nobody reads stays."""
    from tilefuse.compiler.attention_dropout import attention_for_tracing

    def fn(q, k, v):
        h = q * 2
        h.mul_(3)
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), h

    q, k, v = _qkv(9)
    copy = attention_for_tracing(_dynamo_graph(fn, q, k, v), training=True)
    assert _attention_arguments(copy) == [(None, True)]
    got, want = copy(q, k, v), fn(q, k, v)
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    torch.testing.assert_close(got[1], q * 6)


def test_the_rewritten_call_reads_only_the_copys_nodes():
    """A scale computed in the graph (a symbolic size's power, with dynamic shapes) is read from the
    copy's node, not Dynamo's: the copy lints and Dynamo's graph keeps its users."""
    from tilefuse.compiler.attention_dropout import SDPA, attention_for_tracing

    def fn(q, k, v):
        mask = torch.ones(9, 9, dtype=torch.bool)  # hides nothing
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=q.size(-1) ** -0.5)

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    q, k, v = _qkv(9)
    torch.compile(fn, backend=capture, dynamic=True)(q, k, v)
    (gm,) = graphs
    before = gm.code
    copy = attention_for_tracing(gm, training=True)
    copy.graph.lint()  # every argument is a node of the copy's graph
    assert copy is not gm and gm.code == before
    (call,) = [n for n in copy.graph.nodes if n.target is SDPA]
    assert call.kwargs["attn_mask"] is None and call.kwargs["scale"].graph is copy.graph


def _window_of(width: int, additive: bool):
    def fn(q, k, v):
        rows, cols = torch.arange(q.shape[-2]), torch.arange(k.shape[-2])
        seen = (cols[None, :] <= rows[:, None]) & (rows[:, None] - cols[None, :] < width)
        mask = torch.where(seen, 0.0, float("-inf")).to(q.dtype) if additive else seen
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    return fn


@pytest.mark.parametrize(
    "length, width, additive", [(9, 4, False), (70, 5, True), (70, 33, False), (41, 40, True)]
)
def test_a_sliding_window_is_written_from_aranges_and_its_attention_skips_blocks_past_the_diagonal(
    length, width, additive, tmp_path
):
    """A constant mask that is a sliding window (query i sees keys i - w + 1 .. i, as Mistral's and
    Gemma's local layers build it) keeps its buffer for PyTorch's paths, but the attention kernel
    writes the band from two aranges and is causal: no mask read, key blocks past the diagonal and
    before the window skipped, and no pass over the mask for rows without a key (every row sees its
    own key).
    Ragged lengths over several key blocks; against eager and float64."""
    fn = _window_of(width, additive)
    q, k, v = _qkv(length)
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn, dump=str(tmp_path))
    with torch.no_grad():
        got = compiled(q, k, v)
        torch.testing.assert_close(got, fn(q, k, v), rtol=1e-4, atol=1e-4)
        want64 = fn(q.double(), k.double(), v.double())
    assert (got.double() - want64).abs().max() < 1e-5
    (report,) = compiled.tilefuse_reports
    assert report["constant_masks"] == "1 attention mask(s) computed once, read from a buffer"
    groups = [g for p in report["partitions"] for g in p["groups"]]
    assert [g["kind"] for g in groups] == ["attention"], groups  # no mask read, no rows-with-a-key pass
    (source,) = (tmp_path / report["dir"] / "kernels").glob("*.py")
    text = source.read_text()
    assert f"tl.minimum({length}," in text  # the key loop stops at the block's last query
    assert f" - {width - 1}\n" in text  # and starts at the block of its first query's window


def test_masks_near_a_sliding_window_are_not_taken_for_one():
    """A window whose width differs by row, or that also hides a key inside the band, is another
    mask: it keeps its tensor, and the result is eager's."""
    from tilefuse.compiler.causal_masks import _seen_window

    rows = torch.arange(12)
    offsets = rows[:, None] - rows[None, :]
    band = (offsets >= 0) & (offsets < 4)
    assert _seen_window(band, (1, 12, 8), (1, 12, 8)) == 4
    assert _seen_window(torch.where(band, 0.0, float("-inf")), (12, 8), (12, 8)) == 4
    holed = band.clone()
    holed[7, 5] = False
    wider_at_the_end = band.clone()
    wider_at_the_end[11, 7] = True
    for mask in (holed, wider_at_the_end, torch.where(band, 0.0, -1.0)):
        assert _seen_window(mask, (12, 8), (12, 8)) is None
    assert _seen_window(offsets >= 0, (12, 8), (12, 8)) == 12  # every key up to the query's: causal
    assert _seen_window(band, (12, 8), (13, 8)) is None  # keys past a cache: not square

    def holed_fn(q, k, v):
        r, c = torch.arange(q.shape[-2]), torch.arange(k.shape[-2])
        seen = (c[None, :] <= r[:, None]) & (r[:, None] - c[None, :] < 4) & (c[None, :] != 5)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=seen)

    report = _compiled(holed_fn, *_qkv(12))
    assert report["constant_masks"] == "1 attention mask(s) computed once, read from a buffer"
    groups = [g for p in report["partitions"] for g in p["groups"]]
    assert any(g["kind"] == "reduction" for g in groups), groups  # the mask's rows-with-a-key pass
