"""The benchmark cases: GEMMs, GEMM epilogues and Llama-style MLPs, written in plain PyTorch.

Each case names the baselines it is compared with. Sizes are the full GPU
sizes divided by `scale` (the smoke run uses 64), so a smoke case keeps the
shape ratios of the real one: 4096 → 64, 11008 → 172, 128 → 2.
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

Tensors = tuple[Tensor, ...]
InputBuilder = Callable[[torch.device, torch.dtype], Tensors]


@dataclass(frozen=True)
class BenchCase:
    """One benchmarked function with its inputs, its work and the baselines it is compared with.

    `flops` counts the matrix products only (2 per multiply-add); the
    elementwise and normalization work around them is a rounding error.
    """

    name: str
    shape: str
    make_inputs: InputBuilder
    fn: Callable[..., Tensor]
    flops: int
    baselines: tuple[str, ...]


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


def _randn(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, std: float = 1.0) -> Tensor:
    """Random normal values drawn directly in `dtype` on `device`, times `std`."""
    return torch.randn(shape, device=device, dtype=dtype) * std


def _weight(out_features: int, in_features: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """An `nn.Linear`-style weight scaled by 1/sqrt(in), so activations stay O(1) and GELU/SiLU bend."""
    return _randn((out_features, in_features), device, dtype, std=in_features**-0.5)


def _gemm_inputs(m: int, n: int, k: int, device: torch.device, dtype: torch.dtype) -> Tensors:
    return _randn((m, k), device, dtype), _randn((k, n), device, dtype)


def _linear_inputs(
    m: int, n: int, k: int, residual: bool, device: torch.device, dtype: torch.dtype
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


def _gemm_case(name: str, m: int, n: int, k: int) -> BenchCase:
    return BenchCase(
        name=name,
        shape=f"M={m} N={n} K={k}",
        make_inputs=partial(_gemm_inputs, m, n, k),
        fn=matmul,
        flops=2 * m * n * k,
        baselines=(CUBLAS, COMPILE, MAX_AUTOTUNE),
    )


def _linear_case(name: str, fn: Callable[..., Tensor], m: int, n: int, k: int, residual: bool) -> BenchCase:
    return BenchCase(
        name=name,
        shape=f"x {m}x{k}, w {n}x{k}",
        make_inputs=partial(_linear_inputs, m, n, k, residual),
        fn=fn,
        flops=2 * m * n * k,
        baselines=(EAGER, COMPILE, MAX_AUTOTUNE),
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
    )


def benchmark_cases(scale: int = 1) -> list[BenchCase]:
    """All cases, every dimension divided by `scale` (at 1, the MLPs have Llama-7B's widths)."""
    d128, d1k, d4k, d8k = (d // scale for d in (128, 1024, 4096, 8192))
    inter = 11008 // scale
    return [
        _gemm_case("gemm_square", d4k, d4k, d4k),
        _gemm_case("gemm_tall", d8k, d4k, d4k),
        _gemm_case("gemm_wide", d1k, d8k, d8k),
        _gemm_case("gemm_skinny", d128, d8k, d8k),
        _linear_case("linear_gelu", linear_gelu, d8k, d4k, d4k, residual=False),
        _linear_case("linear_residual", linear_residual, d8k, d4k, d4k, residual=True),
        _mlp_case("swiglu_mlp", swiglu_mlp, d8k, d4k, inter, norm=False),
        _mlp_case("llama_mlp_half", llama_mlp_half, d8k, d4k, inter, norm=True),
    ]
