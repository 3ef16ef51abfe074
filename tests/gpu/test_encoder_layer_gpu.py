"""`nn.TransformerEncoder` in inference with a key-padding mask on the GPU: the fused layer op's
decomposition (compiler/encoder_layer.py) runs as generated kernels and matches eager, including a
batch row that is all padding, where PyTorch's op gives NaN (its masked softmax divides 0 by 0 on
CUDA as on the CPU) and so must the compiled stack."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import tilefuse
from helpers import fusion_groups
from tilefuse.compiler.lower_structured import EXACT_F32_ATTENTION

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _generated_kernels(monkeypatch):
    """The generated kernels run, unmeasured against PyTorch (whose graph the selection may keep)."""
    monkeypatch.setenv("TILEFUSE_SELECT", "0")
    monkeypatch.setenv("TILEFUSE_CACHE", "0")
    yield


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_padded_encoder_stack_matches_eager_with_a_row_all_padding(dtype):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 128, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval().to(CUDA, dtype)
    x = torch.randn(3, 37, 64, device=CUDA, dtype=dtype)
    padding = torch.zeros(3, 37, dtype=torch.bool, device=CUDA)
    padding[1, 20:] = True
    padding[2] = True
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        eager = model(x, src_key_padding_mask=padding)
        out = compiled(x, src_key_padding_mask=padding)
    assert torch.equal(torch.isnan(out), torch.isnan(eager))
    assert torch.isnan(eager[2]).all() and not torch.isnan(eager[:2]).any()
    tolerance = 1e-4 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(out[:2], eager[:2], rtol=tolerance, atol=tolerance)
    kinds = [g["kind"] for g in fusion_groups(compiled.tilefuse_reports)]
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        # exact f32 attention runs as PyTorch's SDPA on the GPU (an exact flash kernel has no tensor
        # cores), with the mask the decomposition made; the rest of each layer is generated kernels
        assert kinds.count("attention") == 0 and kinds.count("gemm") >= 4, kinds
        assert EXACT_F32_ATTENTION in str(compiled.tilefuse_reports)
    else:
        assert kinds.count("attention") == 2, kinds
