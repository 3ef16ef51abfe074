"""Conformance with upstream MLIR (the `iree-base-compiler` Python bindings): every dump parses
(generic form, unregistered dialects allowed) and verifies, and `export-linalg` turns an `ein`
module into upstream ops that verify and go through an upstream pass pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.compiler.cli import main as cli_main
from tilefuse.ir import parse_module, print_module
from tilefuse.passes.export_linalg import export_module

ir = pytest.importorskip("iree.compiler.ir", reason="iree-base-compiler is a test dependency")
passmanager = pytest.importorskip("iree.compiler.passmanager")

PIPELINE = "builtin.module(canonicalize,func.func(linalg-fuse-elementwise-ops),canonicalize)"


def _model(x, w1, w2, g, q, k, v):
    h = F.layer_norm(torch.relu(x @ w1) @ w2, (w2.shape[1],), g)
    attention = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    rotated = torch.cat([-q[..., 4:], q[..., :4]], -1)  # RoPE's rotate-half: slices and a concat
    return torch.softmax(h, -1), torch.logsumexp(x @ w1.repeat(1, 6), -1), attention.transpose(1, 2), rotated


def _dump(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TILEFUSE_CACHE", "0")  # a cache hit skips the passes, and their dumps say only that
    args = (torch.randn(9, 16), torch.randn(16, 64), torch.randn(64, 24), torch.randn(24),
            *(torch.randn(2, 2, 7, 8) for _ in range(3)))  # fmt: skip
    compiled = tilefuse.compile(_model, dump=tmp_path / "dump")
    with torch.no_grad():
        compiled(*args)
    (graph,) = [d for d in Path(compiled.tilefuse_dump_dir).iterdir() if d.is_dir()]
    return graph


def _upstream(text: str):
    ctx = ir.Context()
    ctx.allow_unregistered_dialects = True
    with ctx:
        module = ir.Module.parse(text)
        assert module.operation.verify()
        return module, ctx


def test_every_dump_parses_in_upstream_mlir(tmp_path, monkeypatch):
    files = sorted(_dump(tmp_path, monkeypatch).glob("*.mlir"))
    # ein, canonicalize, norm-prologue, merge-projections, split-reduction, kmajor-f32-weights, groups, tile
    assert len(files) == 8
    for path in files:
        generic = print_module(parse_module(path.read_text(), str(path)), generic=True)
        _upstream(generic)


def test_exported_linalg_verifies_and_fuses_upstream(tmp_path, monkeypatch):
    graph = _dump(tmp_path, monkeypatch)
    for name in ("ein.mlir", "ein.canonicalize.mlir", "ein.groups.mlir"):
        exported = print_module(export_module(parse_module((graph / name).read_text())), generic=True)
        assert "ein." not in exported and "linalg.generic" in exported
        module, ctx = _upstream(exported)
        before = str(module).count("linalg.generic")
        with ctx:
            passmanager.PassManager.parse(PIPELINE).run(module.operation)
            assert module.operation.verify()
        assert str(module).count("linalg.generic") < before  # elementwise chains fused upstream


def test_opt_runs_export_linalg(capsys):
    case = Path(__file__).parent / "split-reduction" / "logsumexp_linear.mlir"
    assert cli_main(["opt", str(case), "-p", "split-reduction,export-linalg", "--generic"]) == 0
    _upstream(capsys.readouterr().out)
