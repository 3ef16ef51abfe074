"""bf16 kernels in Triton's interpreter (the CPU oracle) agree with eager where the interpreter itself
errs: it compares bf16 values by their bits (-inf > 0) and converts integers to bf16 wrongly
(1 -> 0, -3 -> nan). Both were found by a sweep of KernelBench-style modules: an attention mask in
bf16 zeroed every row, a BERT-style `(1 - mask.to(bf16)) * finfo.min` mask was wrong."""

import pytest
import torch
import torch.nn.functional as F

from helpers import compile_and_compare


def test_integers_become_bf16_as_pytorch_converts_them():
    i = torch.tensor([0, 1, 2, -3, 5, 100, 1 << 20, -(1 << 30) - 3])
    compile_and_compare(lambda x, i: x * i.to(torch.bfloat16), torch.ones(8, dtype=torch.bfloat16), i, rtol=0, atol=0)


def test_a_padding_mask_built_in_bf16():
    def masked_scores(scores, pad):
        bias = (1.0 - pad.to(scores.dtype)) * torch.finfo(scores.dtype).min
        return torch.softmax(scores + bias[:, None, :], dim=-1)

    scores = torch.randn(3, 5, 7, dtype=torch.bfloat16)
    pad = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1, 0] * 3 + [1]])
    compile_and_compare(masked_scores, scores, pad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_attention_with_a_mask_in_bf16(mask_kind):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, dtype=torch.bfloat16) for n in (5, 7, 7))
    keep = torch.rand(5, 7) > 0.3
    keep[:, 0] = True  # no row fully masked
    mask = keep if mask_kind == "bool" else torch.randn(5, 7).to(torch.bfloat16).masked_fill(~keep, float("-inf"))
    compile_and_compare(lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m), q, k, v, mask,
                        rtol=2e-2, atol=2e-2)  # fmt: skip
