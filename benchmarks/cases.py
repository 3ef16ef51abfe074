"""The benchmark cases, written in plain PyTorch: GEMMs, GEMM epilogues, Llama-style MLPs,
norm prologues (rmsnorm/layernorm → linear), linear → softmax, standalone softmax and norms
(memory bound), attention against SDPA, and a whole Llama decoder block.

Each case names the baselines it is compared with. Sizes are the full GPU
sizes divided by `scale` (the smoke run uses 64), so a smoke case keeps the
shape ratios of the real one: 4096 → 64, 11008 → 172, 128 → 2. Attention
keeps its shapes valid instead: the batch never drops below 1, head counts
are divided by at most 8 (32 → 4, 8 → 1) and the head dim never drops below 16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

EAGER = "eager"
CUBLAS = "cuBLAS"  # eager `x @ w`: PyTorch dispatches a plain GEMM to cuBLAS
COMPILE = "torch.compile"
MAX_AUTOTUNE = "max-autotune"  # torch.compile(mode="max-autotune-no-cudagraphs")
SDPA = "SDPA"  # the attention cases' function called eagerly: PyTorch's fused (flash) SDPA kernel

Tensors = tuple[Tensor, ...]
InputBuilder = Callable[[torch.device, torch.dtype], Tensors]


def key_padding(batch: int, tokens: int, device: torch.device | str = "cpu") -> Tensor:
    """The padding of the benchmarks' padded rows, [batch, tokens], True where padded: row i keeps
    tokens - i * (tokens // (2 batch)) tokens, so every row has some and most have padding. Built from
    aranges on `device` (inside a module's forward it is part of the traced graph)."""
    lengths = tokens - torch.arange(batch, device=device) * (tokens // (2 * batch))
    return torch.arange(tokens, device=device)[None, :] >= lengths[:, None]


@dataclass(frozen=True)
class BenchCase:
    """One benchmarked function with its inputs, its work and the baselines it is compared with.

    `flops` counts the matrix products only (2 per multiply-add, attention's
    two products included); the elementwise and normalization work around
    them is a rounding error. `io_elements` is set for the memory-bound cases
    only: the elements an ideal kernel moves, every input read once and the
    output written once; times the dtype's size it gives the bytes behind
    the table's GB/s. With `activations` set, the inputs after the first
    `activations` are the weights of a module (see run.py), as in a model.
    """

    name: str
    shape: str
    make_inputs: InputBuilder
    fn: Callable[..., Tensor]
    flops: int
    baselines: tuple[str, ...]
    io_elements: int = 0
    activations: int = 0


def matmul(x: Tensor, w: Tensor) -> Tensor:
    """A plain GEMM: x (M×K) @ w (K×N)."""
    return x @ w


def linear_gelu(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Linear layer with bias, then exact (erf) GELU."""
    return F.gelu(F.linear(x, w, b))


def linear_residual(x: Tensor, w: Tensor, b: Tensor, r: Tensor) -> Tensor:
    """Linear layer with bias, plus a residual."""
    return F.linear(x, w, b) + r


def swiglu_mlp(x: Tensor, w1: Tensor, w3: Tensor, w2: Tensor) -> Tensor:
    """Llama's feed-forward: down(silu(gate(x)) * up(x))."""
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def llama_mlp_half(h: Tensor, g: Tensor, w1: Tensor, w3: Tensor, w2: Tensor) -> Tensor:
    """The MLP half of a Llama block: h + mlp(rms_norm(h))."""
    return h + swiglu_mlp(F.rms_norm(h, (h.shape[-1],), g, eps=1e-6), w1, w3, w2)


def rmsnorm_linear(x: Tensor, g: Tensor, w: Tensor) -> Tensor:
    """RMSNorm, then a linear layer without bias: a norm prologue of a GEMM."""
    return F.linear(F.rms_norm(x, (x.shape[-1],), g, eps=1e-6), w)


def layernorm_linear(x: Tensor, g: Tensor, b: Tensor, w: Tensor, bias: Tensor) -> Tensor:
    """LayerNorm with weight and bias, then a linear layer with bias."""
    return F.linear(F.layer_norm(x, (x.shape[-1],), g, b, eps=1e-5), w, bias)


def linear_softmax(x: Tensor, w: Tensor) -> Tensor:
    """A linear layer, then softmax over its output features (a row of N per token)."""
    return torch.softmax(F.linear(x, w), dim=-1)


def linear_logsumexp(x: Tensor, w: Tensor) -> Tensor:
    """An LM head's logsumexp (cross-entropy's normalizer): a linear layer, then logsumexp over
    its N outputs, too wide for one tile (a split reduction)."""
    return torch.logsumexp(F.linear(x, w), dim=-1)


def softmax(x: Tensor) -> Tensor:
    """Softmax over the last dim."""
    return torch.softmax(x, dim=-1)


def layernorm(x: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """LayerNorm over the last dim, with weight and bias."""
    return F.layer_norm(x, (x.shape[-1],), g, b, eps=1e-5)


def rmsnorm(x: Tensor, g: Tensor) -> Tensor:
    """RMSNorm over the last dim, with weight."""
    return F.rms_norm(x, (x.shape[-1],), g, eps=1e-6)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA, no mask: q, k, v are (batch, heads, seq, head dim)."""
    return F.scaled_dot_product_attention(q, k, v)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal SDPA."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def gqa_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal SDPA with grouped-query attention: k and v have fewer heads than q."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def explicit_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention written out by hand: softmax(q kᵀ / √d) v, the score matrix materialized in eager."""
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    return torch.softmax(scores, dim=-1) @ v


def explicit_causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """As `explicit_attention`, keys after the query masked out with -inf."""
    s = q.shape[-2]
    scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    future = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1) @ v


def llama_block(
    x: Tensor,
    attn_norm: Tensor,
    wq: Tensor,
    wk: Tensor,
    wv: Tensor,
    wo: Tensor,
    mlp_norm: Tensor,
    w1: Tensor,
    w3: Tensor,
    w2: Tensor,
    *,
    heads: int,
    kv_heads: int,
) -> Tensor:
    """`models.LlamaBlock.forward` written with functional calls, its weights passed as tensors.

    x is (batch, seq, dim); RMSNorm, causal GQA attention (k and v repeated
    per query head, then SDPA), SwiGLU MLP, two residuals.
    """
    b, s, d = x.shape
    head_dim = d // heads
    a = F.rms_norm(x, (d,), attn_norm, eps=1e-6)
    q = F.linear(a, wq).view(b, s, heads, head_dim).transpose(1, 2)
    k = F.linear(a, wk).view(b, s, kv_heads, head_dim).transpose(1, 2)
    v = F.linear(a, wv).view(b, s, kv_heads, head_dim).transpose(1, 2)
    k, v = k.repeat_interleave(heads // kv_heads, dim=1), v.repeat_interleave(heads // kv_heads, dim=1)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    h = x + F.linear(o.transpose(1, 2).reshape(b, s, d), wo)
    return h + swiglu_mlp(F.rms_norm(h, (d,), mlp_norm, eps=1e-6), w1, w3, w2)


def _randn(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, std: float = 1.0) -> Tensor:
    """Random normal values drawn directly in `dtype` on `device`, times `std`."""
    return torch.randn(shape, device=device, dtype=dtype) * std


def _weight(out_features: int, in_features: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """An `nn.Linear`-style weight scaled by 1/sqrt(in), so activations stay O(1) and GELU/SiLU bend."""
    return _randn((out_features, in_features), device, dtype, std=in_features**-0.5)


def _gemm_inputs(m: int, n: int, k: int, device: torch.device, dtype: torch.dtype) -> Tensors:
    return _randn((m, k), device, dtype), _randn((k, n), device, dtype)


def _linear_inputs(
    m: int, n: int, k: int, device: torch.device, dtype: torch.dtype, *, residual: bool
) -> Tensors:
    x, w, b = _randn((m, k), device, dtype), _weight(n, k, device, dtype), _randn((n,), device, dtype)
    return (x, w, b, _randn((m, n), device, dtype)) if residual else (x, w, b)


def _mlp_inputs(
    tokens: int, hidden: int, inter: int, norm: bool, device: torch.device, dtype: torch.dtype
) -> Tensors:
    x = _randn((tokens, hidden), device, dtype)
    weights = (
        _weight(inter, hidden, device, dtype),
        _weight(inter, hidden, device, dtype),
        _weight(hidden, inter, device, dtype),
    )
    return (x, _randn((hidden,), device, dtype), *weights) if norm else (x, *weights)


def _norm_linear_inputs(
    m: int, n: int, k: int, device: torch.device, dtype: torch.dtype, *, layer: bool
) -> Tensors:
    """x, the norm's weight (and bias for LayerNorm), the linear weight (and bias for LayerNorm)."""
    x, g, w = _randn((m, k), device, dtype), _randn((k,), device, dtype), _weight(n, k, device, dtype)
    if not layer:
        return x, g, w
    return x, g, _randn((k,), device, dtype), w, _randn((n,), device, dtype)


def _linear_softmax_inputs(m: int, n: int, k: int, device: torch.device, dtype: torch.dtype) -> Tensors:
    return _randn((m, k), device, dtype), _weight(n, k, device, dtype)


def _rowwise_inputs(m: int, n: int, params: int, device: torch.device, dtype: torch.dtype) -> Tensors:
    """x (m×n), then `params` vectors of n (a norm's weight, bias)."""
    return (_randn((m, n), device, dtype), *(_randn((n,), device, dtype) for _ in range(params)))


def _attention_inputs(
    batch: int, heads: int, kv_heads: int, seq: int, head_dim: int, device: torch.device, dtype: torch.dtype
) -> Tensors:
    """q (batch, heads, seq, head dim); k and v with `kv_heads` heads."""
    q = _randn((batch, heads, seq, head_dim), device, dtype)
    return q, *(_randn((batch, kv_heads, seq, head_dim), device, dtype) for _ in range(2))


def _block_inputs(
    batch: int,
    seq: int,
    dim: int,
    kv_dim: int,
    hidden: int,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensors:
    """x (batch, seq, dim) and `llama_block`'s weights in its argument order."""
    return (
        _randn((batch, seq, dim), device, dtype),
        _randn((dim,), device, dtype),
        _weight(dim, dim, device, dtype),
        _weight(kv_dim, dim, device, dtype),
        _weight(kv_dim, dim, device, dtype),
        _weight(dim, dim, device, dtype),
        _randn((dim,), device, dtype),
        _weight(hidden, dim, device, dtype),
        _weight(hidden, dim, device, dtype),
        _weight(dim, hidden, device, dtype),
    )


def _gemm_case(name: str, m: int, n: int, k: int) -> BenchCase:
    return BenchCase(
        name=name,
        shape=f"M={m} N={n} K={k}",
        make_inputs=partial(_gemm_inputs, m, n, k),
        fn=matmul,
        flops=2 * m * n * k,
        baselines=(CUBLAS, COMPILE, MAX_AUTOTUNE),
    )


def _linear_case(
    name: str, fn: Callable[..., Tensor], m: int, n: int, k: int, inputs: Callable[..., Tensors],
    activations: int = 0,
) -> BenchCase:  # fmt: skip
    """One linear layer (x m×k, w n×k) with what surrounds it in `fn`; `inputs(m, n, k, device, dtype)`."""
    return BenchCase(
        name=name,
        shape=f"x {m}x{k}, w {n}x{k}",
        make_inputs=partial(inputs, m, n, k),
        fn=fn,
        flops=2 * m * n * k,
        baselines=(EAGER, COMPILE, MAX_AUTOTUNE),
        activations=activations,
    )


def _mlp_case(
    name: str, fn: Callable[..., Tensor], tokens: int, hidden: int, inter: int, norm: bool
) -> BenchCase:
    return BenchCase(
        name=name,
        shape=f"tokens {tokens}, hidden {hidden}, inter {inter}",
        make_inputs=partial(_mlp_inputs, tokens, hidden, inter, norm),
        fn=fn,
        flops=3 * 2 * tokens * hidden * inter,
        baselines=(EAGER, COMPILE, MAX_AUTOTUNE),
        activations=1,
    )


def _rowwise_case(name: str, fn: Callable[..., Tensor], m: int, n: int, params: int) -> BenchCase:
    """A memory-bound case: x read once, the output (x's shape) written once, `params` vectors of n read."""
    return BenchCase(
        name=name,
        shape=f"x {m}x{n}",
        make_inputs=partial(_rowwise_inputs, m, n, params),
        fn=fn,
        flops=0,
        baselines=(EAGER, COMPILE),
        io_elements=2 * m * n + params * n,
    )


def _attention_case(
    name: str,
    fn: Callable[..., Tensor],
    batch: int,
    heads: int,
    kv_heads: int,
    seq: int,
    head_dim: int,
    causal: bool,
    baselines: tuple[str, ...] = (SDPA, COMPILE),
) -> BenchCase:
    """Attention's two products, 4·b·h·s²·d; causal attention needs half of them."""
    shape = f"q,k,v {batch}x{heads}x{seq}x{head_dim}"
    if kv_heads != heads:
        shape = f"q {batch}x{heads}x{seq}x{head_dim}, k,v {batch}x{kv_heads}x{seq}x{head_dim}"
    return BenchCase(
        name=name,
        shape=shape + (", causal" if causal else ""),
        make_inputs=partial(_attention_inputs, batch, heads, kv_heads, seq, head_dim),
        fn=fn,
        flops=4 * batch * heads * seq * seq * head_dim // (2 if causal else 1),
        baselines=baselines,
    )


def _block_case(
    name: str, batch: int, seq: int, dim: int, heads: int, kv_heads: int, hidden: int
) -> BenchCase:
    """The seven GEMMs (q, k, v, o, gate, up, down) plus causal attention."""
    tokens, head_dim = batch * seq, dim // heads
    kv_dim = kv_heads * head_dim
    gemms = 2 * tokens * dim * (2 * dim + 2 * kv_dim) + 3 * 2 * tokens * dim * hidden
    fn = partial(llama_block, heads=heads, kv_heads=kv_heads)
    fn.__name__ = llama_block.__name__  # tilefuse names its reports and dump folders after it
    return BenchCase(
        name=name,
        shape=f"x {batch}x{seq}x{dim}, heads {heads}/{kv_heads}, hidden {hidden}",
        make_inputs=partial(_block_inputs, batch, seq, dim, kv_dim, hidden),
        fn=fn,
        flops=gemms + 2 * batch * heads * seq * seq * head_dim,
        baselines=(EAGER, COMPILE, MAX_AUTOTUNE),
        activations=1,
    )


def rowwise_shape(scale: int = 1) -> tuple[int, int]:
    """The memory-bound cases' x; `run.py` times a device copy of a tensor this size for its GB/s ratios."""
    return 8192 // scale, 8192 // scale


def benchmark_cases(scale: int = 1) -> list[BenchCase]:
    """All cases, every dimension divided by `scale` (at 1, the MLPs and the block have Llama-7B's widths).

    Attention's batch never drops below 1, head counts are divided by at most
    8 and head dims never drop below 16, so a smoke case keeps a valid head
    split and a GQA group of 4.
    """
    d128, d1k, d2k, d4k, d8k = (d // scale for d in (128, 1024, 2048, 4096, 8192))
    inter = 11008 // scale
    rows, cols = rowwise_shape(scale)
    h32, h8 = (h // min(scale, 8) for h in (32, 8))
    rms_inputs, layer_inputs = (partial(_norm_linear_inputs, layer=layer) for layer in (False, True))
    hd128, hd64 = (max(d // scale, 16) for d in (128, 64))
    b4 = max(4 // scale, 1)
    long, short, gqa = (b4, h32, h32, d4k, hd128), (b4, h32, h32, d1k, hd64), (b4, h32, h8, d4k, hd128)
    by_hand = (EAGER, COMPILE)
    return [
        _gemm_case("gemm_square", d4k, d4k, d4k),
        _gemm_case("gemm_tall", d8k, d4k, d4k),
        _gemm_case("gemm_wide", d1k, d8k, d8k),
        _gemm_case("gemm_skinny", d128, d8k, d8k),
        _linear_case("linear_gelu", linear_gelu, d8k, d4k, d4k, partial(_linear_inputs, residual=False)),
        _linear_case(
            "linear_residual", linear_residual, d8k, d4k, d4k, partial(_linear_inputs, residual=True)
        ),
        _mlp_case("swiglu_mlp", swiglu_mlp, d8k, d4k, inter, norm=False),
        _mlp_case("llama_mlp_half", llama_mlp_half, d8k, d4k, inter, norm=True),
        _linear_case("rmsnorm_linear", rmsnorm_linear, d8k, d4k, d4k, rms_inputs, activations=1),
        _linear_case("layernorm_linear", layernorm_linear, d8k, d4k, d4k, layer_inputs, activations=1),
        _linear_case(
            "linear_softmax_narrow", linear_softmax, d8k, 256 // scale or 4, d4k, _linear_softmax_inputs
        ),
        _linear_case("linear_softmax", linear_softmax, d8k, d1k, d4k, _linear_softmax_inputs),
        _linear_case("linear_softmax_wide", linear_softmax, d8k, d4k, d4k, _linear_softmax_inputs),
        _linear_case("linear_logsumexp", linear_logsumexp, d2k, 32000 // scale, d4k, _linear_softmax_inputs),
        _rowwise_case("softmax", softmax, rows, cols, params=0),
        _rowwise_case("layernorm", layernorm, rows, cols, params=2),
        _rowwise_case("rmsnorm", rmsnorm, rows, cols, params=1),
        _attention_case("sdpa", attention, *long, causal=False),
        _attention_case("sdpa_causal", causal_attention, *long, causal=True),
        _attention_case("sdpa_small", attention, *short, causal=False),
        _attention_case("sdpa_small_causal", causal_attention, *short, causal=True),
        _attention_case("sdpa_gqa_causal", gqa_causal_attention, *gqa, causal=True),
        _attention_case("attention_explicit", explicit_attention, *short, causal=False, baselines=by_hand),
        _attention_case(
            "attention_explicit_causal", explicit_causal_attention, *short, causal=True, baselines=by_hand
        ),
        _block_case("decoder_block", 1, d2k, d4k, h32, h8, inter),
    ]
