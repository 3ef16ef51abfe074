"""`nn.TransformerEncoderLayer`'s fast path, decomposed so its parts fuse.

In inference (`torch.no_grad()`, eval mode, `batch_first=True`) an `nn.TransformerEncoderLayer`
calls one fused ATen op, `aten._transformer_encoder_layer_fwd`: its QKV projection, attention,
output projection, residuals, two LayerNorms and feed-forward network in one call that tilefuse
could only leave to PyTorch (KernelBench's `transformer_encoder` ran PyTorch's graph: 0.98x
torch.compile in bf16 on the H200). The decomposition below is the op's own definition
(`transformer_encoder_layer_forward` in ATen's `transformer.cpp`) in ops tilefuse compiles: linears
whose bias, GELU or ReLU and residual fold into the GEMM, LayerNorms as row kernels or prologues,
and `scaled_dot_product_attention` for the attention (selection measures it against the generated
kernel). With a mask (the op then runs on nested tensors for padding) the op stays whole.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

aten = torch.ops.aten


def transformer_encoder_layer(
    src, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, use_gelu, norm_first, eps,
    norm_weight_1, norm_bias_1, norm_weight_2, norm_bias_2,
    ffn_weight_1, ffn_bias_1, ffn_weight_2, ffn_bias_2, mask=None, mask_type=None,
):  # fmt: skip
    """`aten._transformer_encoder_layer_fwd` without a mask, on a [batch, tokens, embed_dim] input;
    anything else is left to the op (NotImplemented)."""
    if mask is not None or src.is_nested or src.dim() != 3 or embed_dim % num_heads:
        return NotImplemented

    def norm(t, weight, bias):
        return F.layer_norm(t, (embed_dim,), weight, bias, eps)

    batch, tokens, _ = src.shape
    x = src
    h = norm(x, norm_weight_1, norm_bias_1) if norm_first else x
    qkv = F.linear(h, qkv_weight, qkv_bias).view(batch, tokens, 3, num_heads, embed_dim // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    attention = F.scaled_dot_product_attention(q, k, v)
    x = x + F.linear(attention.transpose(1, 2).reshape(batch, tokens, embed_dim), proj_weight, proj_bias)
    if not norm_first:
        x = norm(x, norm_weight_1, norm_bias_1)
    h = norm(x, norm_weight_2, norm_bias_2) if norm_first else x
    h = F.linear(h, ffn_weight_1, ffn_bias_1)
    x = x + F.linear(F.gelu(h) if use_gelu else F.relu(h), ffn_weight_2, ffn_bias_2)
    return x if norm_first else norm(x, norm_weight_2, norm_bias_2)


DECOMPOSITIONS = {aten._transformer_encoder_layer_fwd.default: transformer_encoder_layer}
