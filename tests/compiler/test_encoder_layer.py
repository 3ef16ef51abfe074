"""`nn.TransformerEncoderLayer`'s fused inference op (`aten._transformer_encoder_layer_fwd`) is
decomposed into linears, LayerNorms and SDPA (compiler/encoder_layer.py), which compile; eager's
fused op on the same weights is the oracle, post-norm and pre-norm, GELU and ReLU, f32 and bf16,
on a ragged length (33 tokens), without a mask and with each mask the module passes it."""

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


def _masks(batch: int, heads: int, tokens: int) -> dict:
    """Each mask the module passes the op, as (mask, mask_type): its masks arrive as 0 / -inf floats
    (a key-padding mask [batch, tokens], type 1; an attention mask with or without one, merged to
    [batch, heads, tokens, tokens], type 2); a bool mask, a [tokens, tokens] one (type 0) and a float
    mask of finite nonzero values (masked too: the op turns a float mask to bool). Batch row 2 is all
    padding: its queries see no key, and the op gives them NaN."""
    padding = torch.zeros(batch, tokens)
    padding[1, tokens // 2 :] = float("-inf")
    padding[2] = float("-inf")
    merged = torch.zeros(batch, heads, tokens, tokens) + padding[:, None, None, :]
    merged[0, 1, 3, :] = float("-inf")  # one query of one head sees nothing
    causal = torch.triu(torch.full((tokens, tokens), float("-inf")), 1)
    return {
        "padding": (padding, 1),
        "merged": (merged, 2),
        "attention": (causal, 0),
        "bool padding": (padding != 0, 1),
        "finite float": (torch.randn(batch, tokens).round(), 1),
    }


@pytest.mark.parametrize("mask_name", list(_masks(3, 3, 9)))
@pytest.mark.parametrize("norm_first", [False, True], ids=["post-norm", "pre-norm"])
def test_the_decomposition_of_a_masked_layer_is_the_op(mask_name, norm_first):
    """With a mask, the decomposition gives the op's numbers, NaN where the op's masked softmax has
    no key to weigh (0 / 0) and nowhere else."""
    layer = nn.TransformerEncoderLayer(48, 3, dim_feedforward=100, batch_first=True, norm_first=norm_first)
    layer = layer.eval()
    x = torch.randn(3, 9, 48)
    mask, mask_type = _masks(3, 3, 9)[mask_name]
    arguments = _fused_op_arguments(layer, x)
    with torch.no_grad():
        want = torch._transformer_encoder_layer_fwd(*arguments, mask, mask_type)
        got = transformer_encoder_layer(*arguments, mask=mask, mask_type=mask_type)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.isnan(want).any() == (mask_name in ("padding", "merged", "bool padding"))
    torch.testing.assert_close(got.nan_to_num(), want.nan_to_num(), rtol=1e-5, atol=1e-5)


def test_a_mask_the_op_does_not_take_from_the_module_leaves_it_whole():
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    arguments = _fused_op_arguments(layer, x)
    assert transformer_encoder_layer(*arguments, mask=torch.zeros(2, 5, 5), mask_type=1) is NotImplemented
    assert transformer_encoder_layer(*arguments, mask=torch.zeros(5, 5), mask_type=3) is NotImplemented
    assert transformer_encoder_layer(*arguments, mask=torch.zeros(2, 5), mask_type=1) is not NotImplemented
    assert transformer_encoder_layer(*arguments) is not NotImplemented


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_a_padded_encoder_stack_compiles_its_attention_with_the_mask(dtype):
    """`nn.TransformerEncoder` in inference with a key-padding mask (the nested-tensor path off, as
    under torch.compile): each layer's fused op is decomposed, its attention a generated kernel that
    reads the mask, and the output is eager's, with a batch row all padding."""
    layer = nn.TransformerEncoderLayer(48, 3, dim_feedforward=100, batch_first=True, norm_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval().to(dtype)
    x = torch.randn(3, 19, 48, dtype=dtype)
    padding = torch.zeros(3, 19, dtype=torch.bool)
    padding[1, 11:] = True
    padding[2] = True
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        out, eager = compiled(x, src_key_padding_mask=padding), model(x, src_key_padding_mask=padding)
    assert torch.equal(torch.isnan(out), torch.isnan(eager))
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out.nan_to_num(), eager.nan_to_num(), rtol=tolerance, atol=tolerance)
    (report,) = compiled.tilefuse_reports
    assert not report["fallbacks"]
    kinds = [g["kind"] for g in fusion_groups(compiled.tilefuse_reports)]
    assert kinds.count("attention") == 2 and kinds.count("gemm") >= 6


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
