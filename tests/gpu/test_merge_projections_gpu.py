"""merge-projections on the GPU (on by default; TILEFUSE_MERGE_PROJECTIONS=1 set here all the same): q, k and
v of one input as one GEMM, in fp32 and bf16, against float64 (no further from it than eager is, with
a margin), and greedy generation through a merged static-cache decode step gives eager's tokens."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tilefuse
from helpers import fusion_groups

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


class Projections(nn.Module):
    def __init__(self, hidden: int, q: int, kv: int):
        super().__init__()
        self.norm = nn.RMSNorm(hidden)
        self.q, self.k, self.v = (nn.Linear(hidden, n) for n in (q, kv, kv))

    def forward(self, x):
        # each projection read as it is (a product of k and v would meet in one map, which the pass
        # leaves to the dual-accumulator kernel: the first GPU run found this test's model so)
        h = self.norm(x)
        return torch.cat([self.q(h), self.k(h), self.v(h)], dim=-1) * 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 7, 1000])
def test_merged_projections_are_as_close_to_float64_as_eager(monkeypatch, dtype, rows):
    monkeypatch.setenv("TILEFUSE_MERGE_PROJECTIONS", "1")
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Projections(512, 512, 128).to(CUDA, dtype).eval()
    exact = copy.deepcopy(model).double()
    x = torch.randn(rows, 512, device=CUDA, dtype=dtype)
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        out, eager, ref = compiled(x), model(x), exact(x.double())
    error = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    eager_error = ((eager.double() - ref).abs().max() / ref.abs().max()).item()
    assert error <= 2 * eager_error + 1e-6, (error, eager_error)
    gemms = [g for g in fusion_groups(compiled.tilefuse_reports) if g["kind"] == "gemm"]
    assert len(gemms) == 1, gemms


def test_greedy_generation_with_merged_projections_gives_eagers_tokens(monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("TILEFUSE_MERGE_PROJECTIONS", "1")
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, vocab_size=1000, max_position_embeddings=256,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).to(CUDA).eval()
    ids = torch.randint(1, 1000, (2, 24), device=CUDA)
    options = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(ids))
    forward = model.forward
    for static in (False, True):
        extra = dict(cache_implementation="static", disable_compile=True) if static else {}
        want = model.generate(ids, **options, **extra)
        model.forward = tilefuse.compile(forward, mode="reduce-overhead" if static else None)
        try:
            assert torch.equal(model.generate(ids, **options, **extra), want), static
        finally:
            model.forward = forward
