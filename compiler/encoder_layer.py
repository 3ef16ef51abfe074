"""`nn.TransformerEncoderLayer`'s fast path, decomposed so its parts fuse.

In inference (`torch.no_grad()`, eval mode, `batch_first=True`) an `nn.TransformerEncoderLayer`
calls one fused ATen op, `aten._transformer_encoder_layer_fwd`: its QKV projection, attention,
output projection, residuals, two LayerNorms and feed-forward network in one call that tilefuse
could only leave to PyTorch (KernelBench's `transformer_encoder` ran PyTorch's graph: 0.98x
torch.compile in bf16 on the H200). The decomposition below is the op's own definition
(`transformer_encoder_layer_forward` in ATen's `transformer.cpp`) in ops tilefuse compiles: linears
whose bias, GELU or ReLU and residual fold into the GEMM, LayerNorms as row kernels or prologues,
and `scaled_dot_product_attention` for the attention (selection measures it against the generated
kernel). A mask (a key-padding mask, an attention mask, or the two merged, as the module passes
them) becomes SDPA's boolean mask, and a query that sees no key gets NaN as in the op's masked
softmax; a nested input (`nn.TransformerEncoder`'s padding path in eager) leaves the op whole.
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
    """`aten._transformer_encoder_layer_fwd` on a [batch, tokens, embed_dim] input, with no mask or
    the masks `nn.TransformerEncoderLayer` passes (`_attention_keeps`); anything else is left to the op
    (NotImplemented)."""
    if src.is_nested or src.dim() != 3 or embed_dim % num_heads:
        return NotImplemented
    batch, tokens, _ = src.shape
    keeps = None if mask is None else _attention_keeps(mask, mask_type, batch, num_heads, tokens)
    if keeps is NotImplemented:
        return NotImplemented

    def norm(t, weight, bias):
        return F.layer_norm(t, (embed_dim,), weight, bias, eps)

    x = src
    h = norm(x, norm_weight_1, norm_bias_1) if norm_first else x
    qkv = F.linear(h, qkv_weight, qkv_bias).view(batch, tokens, 3, num_heads, embed_dim // num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if keeps is None:
        attention = F.scaled_dot_product_attention(q, k, v)
    else:  # a query that sees no key gets NaN, as from the op's masked softmax (0 / 0), CPU and CUDA
        attention = F.scaled_dot_product_attention(q, k, v, attn_mask=keeps)
        attention = torch.where(keeps.any(-1, keepdim=True), attention, float("nan"))
    x = x + F.linear(attention.transpose(1, 2).reshape(batch, tokens, embed_dim), proj_weight, proj_bias)
    if not norm_first:
        x = norm(x, norm_weight_1, norm_bias_1)
    h = norm(x, norm_weight_2, norm_bias_2) if norm_first else x
    h = F.linear(h, ffn_weight_1, ffn_bias_1)
    x = x + F.linear(F.gelu(h) if use_gelu else F.relu(h), ffn_weight_2, ffn_bias_2)
    return x if norm_first else norm(x, norm_weight_2, norm_bias_2)


def _attention_keeps(mask, mask_type, batch, heads, tokens):
    """Which keys each query sees, as SDPA's boolean mask, from the op's mask: the op turns a float
    mask to bool (nonzero: masked; `nn.TransformerEncoderLayer` passes its masks as 0 / -inf floats)
    and then masks by `mask_type`: 1 a key-padding mask [batch, tokens], 0 one [tokens, tokens] mask
    for every batch row and head, 2 a mask [batch, heads, tokens, tokens] (a padding and an attention
    mask merged). Any other shape or type: NotImplemented."""
    shapes = {0: (tokens, tokens), 1: (batch, tokens), 2: (batch, heads, tokens, tokens)}
    if mask_type not in shapes or tuple(mask.shape) != shapes[mask_type]:
        return NotImplemented
    masked = mask if mask.dtype == torch.bool else mask != 0
    if mask_type == 1:
        masked = masked[:, None, None, :]
    return ~masked


DECOMPOSITIONS = {aten._transformer_encoder_layer_fwd.default: transformer_encoder_layer}
