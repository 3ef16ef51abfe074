"""`nn.TransformerEncoderLayer`'s fused inference op (`aten._transformer_encoder_layer_fwd`) is
decomposed into linears, LayerNorms and SDPA (compiler/encoder_layer.py), which compile; eager's
fused op on the same weights is the oracle, post-norm and pre-norm, GELU and ReLU, f32 and bf16,
on a ragged length (33 tokens)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import tilefuse
from helpers import fusion_groups
from tilefuse.compiler.encoder_layer import transformer_encoder_layer


def _fused_op_arguments(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> tuple:
    """The arguments `nn.TransformerEncoderLayer`'s fast path gives the fused op."""
    attention = layer.self_attn
    return (
        x, attention.embed_dim, attention.num_heads, attention.in_proj_weight, attention.in_proj_bias,
        attention.out_proj.weight, attention.out_proj.bias, layer.activation_relu_or_gelu == 2,
        layer.norm_first, layer.norm1.eps, layer.norm1.weight, layer.norm1.bias, layer.norm2.weight,
        layer.norm2.bias, layer.linear1.weight, layer.linear1.bias, layer.linear2.weight, layer.linear2.bias,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_fused_encoder_layer_compiles_and_matches_eager(dtype, norm_first, activation):
    layer = nn.TransformerEncoderLayer(
        48, 3, dim_feedforward=100, batch_first=True, norm_first=norm_first, activation=activation
    )
    layer = layer.eval().to(dtype)
    fused = lambda x: torch._transformer_encoder_layer_fwd(*_fused_op_arguments(layer, x))  # noqa: E731
    x = torch.randn(2, 33, 48, dtype=dtype)
    compiled = tilefuse.compile(fused)
    with torch.no_grad():
        out, eager = compiled(x), fused(x)
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out, eager, rtol=tolerance, atol=tolerance)
    (report,) = compiled.tilefuse_reports
    assert not report["fallbacks"]
    kinds = [g["kind"] for g in fusion_groups(compiled.tilefuse_reports)]
    assert kinds.count("gemm") >= 3 and "attention" in kinds


def test_a_mask_leaves_the_op_whole():
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    arguments = _fused_op_arguments(layer, x)
    assert transformer_encoder_layer(*arguments, mask=torch.zeros(5, 5), mask_type=0) is NotImplemented
    assert transformer_encoder_layer(*arguments) is not NotImplemented


def test_the_module_with_and_without_a_padding_mask_matches_eager():
    layer = nn.TransformerEncoderLayer(48, 3, dim_feedforward=100, batch_first=True).eval()
    x = torch.randn(2, 33, 48)
    padding = torch.zeros(2, 33, dtype=torch.bool)
    padding[1, 20:] = True
    compiled = tilefuse.compile(layer)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), layer(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            compiled(x, src_key_padding_mask=padding),
            layer(x, src_key_padding_mask=padding),
            rtol=1e-5,
            atol=1e-5,
        )
