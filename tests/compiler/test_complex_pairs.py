"""Complex-valued ops written on (real, imaginary) pairs (`compiler/complex_pairs.py`): rotary
embeddings in Meta's complex form compile into kernels and match eager; complex work the rewrite
does not cover stays in PyTorch, correctly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from tilefuse.compiler.complex_pairs import complex_as_pairs, components


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Llama 4's `apply_rotary_emb`: x [B, S, H, D] by angles [S, D/2], through complex numbers."""
    freqs = torch.polar(torch.ones_like(angles), angles)
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3).type_as(x) * 2.0


def fallbacks(compiled) -> list[dict]:
    return [f for r in compiled.tilefuse_reports for f in r["fallbacks"]]


COMPLEX_OPS = {
    "aten.polar.default",
    "aten.view_as_complex.default",
    "aten.view_as_real.default",
    "aten.complex.default",
}


def complex_fallbacks(compiled) -> list[dict]:
    """Ops left to PyTorch for being complex (their dtype, or an op only complex values have)."""
    return [f for f in fallbacks(compiled) if "complex" in f["reason"] or f["op"] in COMPLEX_OPS]


def kernels(compiled) -> int:
    return sum(
        1 for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"] if g["kernel"]
    )


@settings(max_examples=4, deadline=None)
@given(
    batch=st.integers(1, 3), seq=st.integers(1, 19), heads=st.integers(1, 5), half=st.sampled_from([1, 3, 8])
)
def test_a_complex_rotation_compiles_to_kernels_and_matches_eager(batch, seq, heads, half):
    torch._dynamo.reset()  # each example compiles its own shapes (not one dynamic graph for all)
    torch.manual_seed(seq * 7 + heads)
    x = torch.randn(batch, seq, heads, 2 * half)
    angles = torch.randn(seq, half) * 3
    compiled = tilefuse.compile(rotate)
    torch.testing.assert_close(compiled(x, angles), rotate(x, angles), rtol=1e-5, atol=1e-5)
    assert not complex_fallbacks(compiled), complex_fallbacks(compiled)
    assert kernels(compiled) >= 1


def arithmetic(a: torch.Tensor, b: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Products, sums, differences, a real addend and factor, a negation, and the parts read."""
    ca, cb = torch.view_as_complex(a), torch.complex(b[..., 0], b[..., 1])
    mixed = -(ca * cb + cb) - ca * r + (r - ca) * 0.5
    out = mixed.unsqueeze(0).expand(2, *mixed.shape)[1].transpose(0, 1)
    return torch.view_as_real(out), out.real * 2, out.imag + 1


def test_complex_arithmetic_on_pairs_matches_eager():
    torch.manual_seed(0)
    a, b, r = torch.randn(5, 7, 2), torch.randn(5, 7, 2), torch.randn(5, 7)
    compiled = tilefuse.compile(arithmetic)
    for got, want in zip(compiled(a, b, r), arithmetic(a, b, r), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not complex_fallbacks(compiled), complex_fallbacks(compiled)
    assert kernels(compiled) >= 1


def test_the_rewrite_leaves_no_complex_node_and_computes_the_same():
    x, angles = torch.randn(2, 6, 3, 8), torch.randn(6, 4)
    gm = make_fx(rotate, tracing_mode="fake")(x, angles)
    assert components(gm), "the rotation is one rewritable component"
    removed = complex_as_pairs(gm)
    assert removed >= 4
    complex_left = [
        n for n in gm.graph.nodes if getattr(n.meta.get("val"), "dtype", torch.float32).is_complex
    ]
    assert not complex_left, complex_left
    torch.testing.assert_close(gm(x, angles), rotate(x, angles), rtol=1e-6, atol=1e-6)


def returns_complex(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.view_as_complex(x) * 2
    return c, torch.view_as_real(c) + 1


def divides(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(torch.view_as_complex(x) / torch.view_as_complex(y)) * 3


@pytest.mark.parametrize("fn", [returns_complex, divides], ids=["complex-output", "division"])
def test_complex_work_outside_the_rewrite_stays_in_pytorch_and_is_right(fn):
    """A complex graph output, or an op not written on pairs (a division), keeps its whole
    component complex: it runs in PyTorch with the reason in the report, and the result is eager's."""
    torch.manual_seed(1)
    args = [torch.randn(4, 3, 2) for _ in range(2 if fn is divides else 1)]
    gm = make_fx(fn, tracing_mode="fake")(*args)
    assert not components(gm)
    compiled = tilefuse.compile(fn)
    got, want = compiled(*args), fn(*args)
    for g, w in zip(
        got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want], strict=True
    ):
        torch.testing.assert_close(g, w)
    assert complex_fallbacks(compiled)


def test_llama4s_rotary_embedding_runs_as_kernels():
    """Llama 4 (tiny config, random init): no complex op is left in PyTorch; only the router's topk."""
    transformers = pytest.importorskip("transformers")
    config = transformers.Llama4TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, intermediate_size_mlp=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_local_experts=2, num_experts_per_tok=1,
        max_position_embeddings=64, attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Llama4ForCausalLM(config).eval()
    ids = torch.randint(1, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        want, got = model(input_ids=ids).logits, compiled(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    left = {f["op"] for f in fallbacks(compiled)}
    assert left <= {"aten.topk.default"}, left


class ComplexRotation(torch.nn.Module):
    """A projection rotated through complex numbers, as Llama 4's attention does to queries."""

    def __init__(self):
        super().__init__()
        self.q = torch.nn.Linear(16, 16, bias=False)

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        return rotate(self.q(x).view(*x.shape[:-1], 2, 8), angles)


@pytest.mark.parametrize("training", ["1", "compile"])
def test_a_complex_rotation_trains_like_eager(monkeypatch, training):
    """The forward saves the conjugate of the angles' complex numbers for its backward (a conjugate
    view): the weight's gradient matches eager's, whether PyTorch or tilefuse runs the backward. The
    training outputs' views re-made over their storage (`outputs_of_their_own`) lost the conjugate
    bit, and the gradient came out rotated the wrong way (an error as large as the gradient)."""
    monkeypatch.setenv("TILEFUSE_TRAINING", training)
    torch.manual_seed(0)
    model, x, angles = ComplexRotation(), torch.randn(2, 6, 16), torch.randn(6, 4)
    weights = torch.linspace(-1, 1, 8)

    def grad(call) -> tuple[torch.Tensor, torch.Tensor]:
        loss = (call(x, angles) * weights).sum()
        loss.backward()
        g = model.q.weight.grad.clone()
        model.zero_grad(set_to_none=True)
        return loss.detach(), g

    want_loss, want = grad(model)
    got_loss, got = grad(tilefuse.compile(model))
    torch.testing.assert_close(got_loss, want_loss)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_a_tensor_remade_over_its_storage_keeps_its_conjugate_and_negative_bits():
    from tilefuse.compiler.program import over_storage

    c = torch.polar(torch.ones(5), torch.randn(5))
    for view in (c.conj(), torch._neg_view(c), c.conj()[1:4]):
        remade = over_storage(view, view.untyped_storage())
        assert remade._base is None
        assert (remade.is_conj(), remade.is_neg()) == (view.is_conj(), view.is_neg())
        torch.testing.assert_close(remade.resolve_conj().resolve_neg(), view.resolve_conj().resolve_neg())


class MetaAttention(torch.nn.Module):
    """Meta's reference Llama attention: `freqs_cis` a complex buffer, sliced to the sequence and
    multiplied into the queries and keys viewed as complex; grouped key heads, causal SDPA."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2, max_len: int = 64):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wq = torch.nn.Linear(dim, dim, bias=False)
        self.wk = torch.nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        half = self.head_dim // 2
        angles = torch.outer(
            torch.arange(max_len, dtype=torch.float32), 10000 ** (-torch.arange(half) / half)
        )
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(angles), angles))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.wq(x).view(b, n, self.heads, self.head_dim)
        k = self.wk(x).view(b, n, self.kv_heads, self.head_dim)
        fc = self.freqs_cis[:n].view(1, n, 1, -1)
        q = torch.view_as_real(torch.view_as_complex(q.float().reshape(b, n, self.heads, -1, 2)) * fc)
        k = torch.view_as_real(torch.view_as_complex(k.float().reshape(b, n, self.kv_heads, -1, 2)) * fc)
        q, k = q.flatten(3).transpose(1, 2), k.flatten(3).repeat_interleave(2, 2).transpose(1, 2)
        return torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True)


@pytest.mark.parametrize("seq", [1, 11, 33])
def test_a_complex_buffer_is_read_as_real_pairs_in_one_partition(seq):
    """The complex `freqs_cis` buffer is a graph input: read through `view_as_real` beside the
    kernels (the only op left to PyTorch), the rotation and attention in one partition, eager's result."""
    torch._dynamo.reset()
    torch.manual_seed(seq)
    model, x = MetaAttention().eval(), torch.randn(2, seq, 32)
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert {f["op"] for f in fallbacks(compiled)} <= {"aten.view_as_real.default"}
    assert len([p for r in compiled.tilefuse_reports for p in r["partitions"]]) == 1
