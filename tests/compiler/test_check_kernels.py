"""The per-kernel checker finds no bad kernel in a correct model, and names a broken one."""

from __future__ import annotations

import torch

from tilefuse.benchmarks.models import MLP
from tilefuse.compiler.check_kernels import check_kernels


def test_every_kernel_of_a_correct_model_matches_the_interpreter():
    checks = check_kernels(MLP(32, 64), torch.randn(2, 7, 32))
    assert checks and not [c for c in checks if c.bad(1e-4)]


def test_a_wrong_kernel_is_named(monkeypatch):
    from tilefuse.backends.triton.launcher import TritonKernel

    real = TritonKernel.__call__

    def wrong(self, tensors, config, num_warps=4, num_stages=2):
        real(self, tensors, config, num_warps, num_stages)
        tensors[-1].mul_(2)  # every output twice what it should be

    fn = lambda x: torch.softmax(x * 3, -1)  # noqa: E731
    x = torch.randn(4, 8)
    tilefuse_checks = check_kernels(fn, x)
    monkeypatch.setattr(TritonKernel, "__call__", wrong)
    broken = check_kernels(fn, x)
    assert not any(c.bad(1e-4) for c in tilefuse_checks)
    assert broken and all(c.bad(1e-4) for c in broken)


def test_the_command_checks_a_transformers_llama():
    from tilefuse.compiler.check_kernels import main

    assert main(["--dtype", "float32", "--seq", "8"]) == 0
