"""A tuning target: `tilefuse tune examples/tune_block.py --budget 32`.

`tune_target()` returns the model and its example inputs: a Llama-style block in bf16 at
1×512 tokens on a GPU; on a CPU a tiny float32 one (Triton's interpreter runs the trials,
which shows the job working, not timings that mean anything).
"""

from __future__ import annotations

import torch

from tilefuse.benchmarks.models import LlamaBlock


def tune_target() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    if torch.cuda.is_available():
        model = LlamaBlock(dim=1024, heads=16, kv_heads=4, hidden=2816).to("cuda", torch.bfloat16).eval()
        return model, (torch.randn(1, 512, 1024, device="cuda", dtype=torch.bfloat16),)
    model = LlamaBlock(dim=64, heads=4, kv_heads=2, hidden=96).eval()
    return model, (torch.randn(1, 16, 64),)
