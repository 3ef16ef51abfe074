"""Helpers for tests: compile with tilefuse and compare against eager PyTorch."""

from __future__ import annotations

import torch

import tilefuse


def compile_and_compare(fn, *args, rtol=1e-5, atol=1e-5, allow_fallbacks=False, **compile_kw):
    """Compile `fn` with tilefuse, run it on `args`, and compare with eager PyTorch.

    Fails if tilefuse compiled nothing, or (unless allowed) if any op fell
    back to PyTorch. Returns the compiled function's graph reports.
    """
    compiled = tilefuse.compile(fn, **compile_kw)
    with torch.no_grad():
        expected = fn(*args)
        actual = compiled(*args)
    reports = compiled.tilefuse_reports
    assert reports, "tilefuse compiled no graph (Dynamo fell back?)"
    fallbacks = [f for r in reports for f in r["fallbacks"]]
    if not allow_fallbacks:
        assert not fallbacks, f"unexpected fallbacks: {fallbacks}"
        assert any(r["partitions"] for r in reports), "no partition was compiled"
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    return reports


def step_matches_eager(compiled, module, x, rtol=1e-4, atol=1e-5):
    """One training step through `compiled` (`module` compiled) gives the gradients eager's step
    gives."""
    module.zero_grad()
    compiled(x).square().sum().backward()
    got = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    module(x).square().sum().backward()
    for g, expected in zip(got, (p.grad for p in module.parameters())):
        torch.testing.assert_close(g, expected, rtol=rtol, atol=atol)


def train_update(
    module: torch.nn.Module, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None, lr: float
) -> torch.Tensor:
    """One training update of `module` after `loss`: backward, then `optimizer`'s step, or without
    one the hand-written `p.data.add_(p.grad, alpha=-lr)` (which leaves the version counters as they
    were); gradients cleared. Returns the loss, detached."""
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    else:
        for p in module.parameters():
            p.data.add_(p.grad, alpha=-lr)
    module.zero_grad(set_to_none=True)
    return loss.detach()


def compiled_aten_ops(reports) -> set[str]:
    """aten op names (without overload) that ran inside compiled partitions."""
    return {op.rsplit(".", 1)[0] for r in reports for p in r["partitions"] for op in p["aten_ops"]}


def fusion_groups(reports) -> list[dict]:
    """Every fusion group of every compiled partition, as the reports list them."""
    return [g for r in reports for p in r["partitions"] for g in p["groups"]]


class TinyBlock(torch.nn.Module):
    """Attention with a causal mask and an MLP, over [batch, sequence, 16] (LayerNorms, biases, GELU)."""

    def __init__(self):
        super().__init__()
        self.qkv, self.out = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)
        self.up, self.down = torch.nn.Linear(16, 40), torch.nn.Linear(40, 16)

    def forward(self, x):
        F = torch.nn.functional
        b, s, _ = x.shape
        q, k, v = self.qkv(F.layer_norm(x, (16,))).view(b, s, 3, 2, 8).permute(2, 0, 3, 1, 4)
        h = x + self.out(
            F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, s, 16)
        )
        return h + self.down(F.gelu(self.up(F.layer_norm(h, (16,)))))


def gpu_sources(fn, args, tmp_path) -> list[tuple[str, str]]:
    """(kind, Triton source for a GPU) of each kernel `fn` compiles to, read back from its dump (the
    compile runs here, on the interpreter; the source is emitted again with a GPU's options)."""
    from tilefuse.backends.triton import TritonOptions, emit
    from tilefuse.ir import tile
    from tilefuse.ir.module import parse_module

    torch._dynamo.reset()
    compiled = tilefuse.compile(fn, dump=tmp_path)
    with torch.no_grad():
        compiled(*args)
    (report,) = compiled.tilefuse_reports
    module = parse_module((tmp_path / report["dir"] / "tile.mlir").read_text())
    return [(k.kind.data, emit(k, TritonOptions())) for k in module.ops if isinstance(k, tile.KernelOp)]


def kernel_function(source: str) -> str:
    """The first kernel function `source` defines."""
    return next(line[4:].split("(")[0] for line in source.splitlines() if line.startswith("def "))


def offline_usage(source: str, config):
    """`backends.triton.offline.usage` of `source`'s kernel at `config` (a KernelConfig), compiled for
    sm_90 without a GPU; skipped, saying why, where this Triton cannot do that."""
    import pytest

    from tilefuse.backends.triton.offline import OfflineCompileUnavailable, usage

    try:
        return usage(source, kernel_function(source), config.params, config.num_warps, config.num_stages)
    except OfflineCompileUnavailable as e:
        pytest.skip(f"Triton here cannot compile for sm_90 without a GPU: {e}")
