"""Greedy `generate` through a compiled forward, for the decoder families whose caches and attention
differ from Llama's (random init from tiny configs, fp32, CPU, Triton's interpreter): sliding windows
(Mistral, Gemma 2's alternating layers, Cohere 2), experts routed a token at a time (Qwen2-MoE). Each
gives eager's tokens with the dynamic cache, and Gemma 2's hybrid cache with
`cache_implementation="static"` too; nothing fails at run time. (A sweep of 44 families this way,
GPT-OSS's sinks among them, found no difference: benchmarks/NOTES.md, sixty-eighth session; GPT-OSS
took ~2 minutes here, too long for the suite.)"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from tiny_models import DECODER

import tilefuse

GQA = dict(DECODER, num_key_value_heads=2)
FAMILIES = {
    "mistral": (T.MistralConfig, T.MistralForCausalLM, dict(GQA, sliding_window=8)),
    "gemma2": (T.Gemma2Config, T.Gemma2ForCausalLM, dict(GQA, head_dim=16, sliding_window=8)),
    "cohere2": (T.Cohere2Config, T.Cohere2ForCausalLM, dict(GQA, sliding_window=8)),
    "qwen2_moe": (T.Qwen2MoeConfig, T.Qwen2MoeForCausalLM, dict(
        GQA, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        shared_expert_intermediate_size=64)),
}  # fmt: skip
CASES = [(name, "dynamic") for name in FAMILIES] + [("gemma2", "static")]


@pytest.mark.parametrize("name, cache", CASES, ids=[f"{n}-{c}" for n, c in CASES])
def test_greedy_generation_gives_eagers_tokens(name, cache):
    config_class, model_class, options = FAMILIES[name]
    torch.manual_seed(0)
    model = model_class(config_class(**options, pad_token_id=0)).eval()
    # 11 prompt tokens and 7 new ones: past the sliding window of 8, lengths no tile divides
    ids = torch.randint(3, 200, (2, 11), generator=torch.Generator().manual_seed(1))
    options = dict(max_new_tokens=7, min_new_tokens=7, do_sample=False)
    if cache == "static":
        options["cache_implementation"] = "static"
    with torch.no_grad():
        want = model.generate(ids, **options)
        model.forward = tilefuse.compile(model.forward)
        got = model.generate(ids, **options)
    assert torch.equal(got, want), (got, want)
    reports = model.forward.tilefuse_reports
    executors = [p["executor"] for r in reports for p in r["partitions"]]
    assert any("Triton kernel" in e for e in executors), executors  # generated kernels ran
    assert not [p for r in reports for p in r["partitions"] if p.get("runtime_error")], reports
