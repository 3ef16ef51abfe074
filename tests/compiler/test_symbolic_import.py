"""Graphs of symbolic sizes imported into `ein` with the sizes kept symbolic (`compiler/symbolic.py`):
one import, run by the reference interpreter at many sizes, against eager PyTorch; and the dump of a
dynamic graph, which shows the symbolic sizes, parses back, and costs no recompile."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from tilefuse.compiler.backend import decompositions
from tilefuse.compiler.symbolic import DUMP_FILE, dynamic_module, symbolic_regions
from tilefuse.ir import parse_module, print_module, run_function

torch.manual_seed(0)
W1, B1, G = torch.randn(40, 24), torch.randn(40), torch.randn(40)
W2 = torch.randn(24, 40)


def mlp(x, w1, b1, g, w2):
    """A transformer MLP on [batch, length, 24]: linear + GELU, LayerNorm, linear, residual, and a
    softmax over the last dim beside it."""
    h = F.layer_norm(F.gelu(F.linear(x, w1, b1)), (40,), g)
    return x + F.linear(h, w2) + torch.softmax(x, -1).mean(-1, keepdim=True)


def block(x: torch.Tensor) -> torch.Tensor:
    return mlp(x, W1, B1, G, W2)


def _symbolic_graph(fn, *shapes):
    examples = [torch.randn(s) for s in shapes]
    return make_fx(fn, tracing_mode="symbolic", decomposition_table=decompositions(training=False))(*examples)


@pytest.fixture(scope="module")
def imported():
    gm = _symbolic_graph(mlp, (2, 5, 24), *(w.shape for w in (W1, B1, G, W2)))
    module, notes = dynamic_module(gm, "block")
    assert len(list(module.ops)) == 1, notes
    return gm, next(iter(parse_module(print_module(module)).ops))


@settings(max_examples=8, deadline=None)
@given(st.integers(2, 5), st.integers(2, 40))
def test_the_import_runs_at_every_size_as_eager_does(imported, batch, length):
    gm, fn = imported
    (region,), _ = symbolic_regions(gm)
    x = torch.randn(batch, length, 24)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    values = dict(zip(placeholders, (x, W1, B1, G, W2)))
    (got,) = run_function(fn, [values[node] for node in region.inputs])
    torch.testing.assert_close(got, block(x), rtol=1e-4, atol=1e-4)


def test_nodes_without_a_symbolic_lowering_are_named_with_the_reason():
    def f(x):
        return torch.cumsum(x, 1) * 2

    gm = _symbolic_graph(f, (3, 7))
    module, notes = dynamic_module(gm, "f")
    assert any("cumsum" in n and "left out" in n for n in notes), notes
    assert "ein.map" in print_module(module)  # the multiplication still imports


def test_the_dump_of_a_dynamic_graph_shows_symbolic_sizes_and_parses_back(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_SPECIALIZE", "0")  # every size runs the dynamic graph
    compiled = tilefuse.compile(block, dynamic=True, dump=str(tmp_path))
    for batch, length in [(2, 5), (3, 7), (2, 9), (4, 3), (3, 11)]:
        x = torch.randn(batch, length, 24)
        torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)
    dumps = sorted(tmp_path.glob(f"*/{DUMP_FILE}"))
    assert len(dumps) == 1  # one compile: importing the sizes added no guard that recompiles
    text = dumps[0].read_text()
    assert '["s' in text and "tensor<?x" in text
    module = parse_module(text, str(dumps[0]))
    assert [op.sym_name.data for op in module.ops] == [f"{dumps[0].parent.name}_dyn0"]
    summary = json.loads((dumps[0].parent / "summary.json").read_text())
    assert DUMP_FILE in summary["files"]


def test_the_command_line_prints_a_dynamic_module_and_says_which_passes_take_it(tmp_path, capsys):
    from tilefuse.compiler.cli import main as cli_main

    gm = _symbolic_graph(mlp, (2, 5, 24), *(w.shape for w in (W1, B1, G, W2)))
    path = tmp_path / "dyn.mlir"
    path.write_text(print_module(dynamic_module(gm, "block")[0]))
    assert cli_main(["opt", str(path)]) == 0
    assert '["s' in capsys.readouterr().out
    passes = "canonicalize,norm-prologue,split-reduction,kmajor-f32-weights,form-fusion-groups"
    assert cli_main(["opt", str(path), "-p", passes]) == 0
    assert "ein.group" in capsys.readouterr().out
    # pointwise, row and GEMM groups lower to kernels taking their sizes (whether a GEMM of symbolic
    # sizes runs as one in a compiled model is the partitioner's choice: TILEFUSE_SYMBOLIC_GEMM)
    assert cli_main(["opt", str(path), "-p", f"{passes},lower-to-tile"]) == 0
    out = capsys.readouterr().out
    assert 'kind "row"' in out and "tile.size" in out and 'grid ["cdiv(s' in out
    assert 'kind "gemm"' in out and 'grid ["min(cdiv(s' in out
    assert cli_main(["opt", str(path), "--emit", "triton"]) == 0
    out = capsys.readouterr().out
    assert "SIZE_SYMBOLS = (" in out and '(gemm), by tilefuse.backends.triton' in out
    assert cli_main(["opt", str(path), "--emit", "cuda"]) == 0  # CUDA C++ takes static sizes: said so
    assert "no CUDA lowering for tile.size" in capsys.readouterr().out


@settings(max_examples=6, deadline=None)
@given(st.integers(2, 5), st.integers(2, 40))
def test_the_passes_before_lowering_keep_a_dynamic_function_right_at_every_size(batch, length):
    """canonicalize (maps merged, the batch flattening folded into the contraction) and
    form-fusion-groups on symbolic sizes, then the reference interpreter against eager."""
    from tilefuse.ir.module import make_context
    from tilefuse.passes import PASSES

    gm = _symbolic_graph(mlp, (2, 5, 24), *(w.shape for w in (W1, B1, G, W2)))
    module, _ = dynamic_module(gm, "block")
    for name in ("canonicalize", "norm-prologue", "split-reduction", "form-fusion-groups"):
        PASSES[name]().apply(make_context(), module)
    text = print_module(module)
    assert "ein.group" in text and '"abk,nk->abn"' in text
    (fn,) = parse_module(text).ops
    (region,), _ = symbolic_regions(gm)
    x = torch.randn(batch, length, 24)
    values = dict(zip([n for n in gm.graph.nodes if n.op == "placeholder"], (x, W1, B1, G, W2)))
    (got,) = run_function(fn, [values[n] for n in region.inputs])
    torch.testing.assert_close(got, block(x), rtol=1e-4, atol=1e-4)


def test_concatenations_and_tensors_made_at_symbolic_sizes_import_and_run():
    """A KV cache's concatenation along its symbolic length imports and runs at every length; an
    `arange` whose start is symbolic is left out (its lowering reads the start as a number), and a
    tensor made at a size none of its function's inputs binds is not imported (the function could
    not run at sizes its arguments give), each with the reason."""

    def f(cache, new):
        keys = torch.cat([cache, new], dim=1)
        n = keys.shape[1]
        pos = torch.arange(n) * 2  # its size: the sum of both lengths, bound by no input of its own
        late = torch.arange(cache.shape[1], n)  # starts at a symbolic size
        return keys * 3, pos, late

    gm = _symbolic_graph(f, (2, 5, 8), (2, 3, 8))
    module, notes = dynamic_module(gm, "f")
    assert any("arange" in n and "start is symbolic" in n for n in notes), notes
    assert any("bound by none of its inputs" in n for n in notes), notes
    (fn,) = parse_module(print_module(module)).ops
    (region,) = [r for r in symbolic_regions(gm)[0] if any(n.name == "cat" for n in r.nodes)]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for past, new in [(5, 3), (9, 1), (2, 7)]:
        cache, x = torch.randn(2, past, 8), torch.randn(2, new, 8)
        values = dict(zip(placeholders, (cache, x)))
        (got,) = run_function(fn, [values[n] for n in region.inputs])
        torch.testing.assert_close(got, f(cache, x)[0])


def test_a_symbolic_bool_read_by_a_tensor_op_leaves_that_op_to_pytorch_not_the_graph():
    """transformers' stopping criteria fill a tensor with `cur_len >= max_length` (a SymBool computed
    on the host once the length is dynamic); a partition that took it as an input failed to import
    and the whole graph ran in PyTorch. The fill now runs beside the partition, and the rest compiles."""

    def stop(ids, eos):
        done = torch.full((ids.shape[0],), False, dtype=torch.bool)
        done = done | torch.full((ids.shape[0],), ids.shape[1] >= 9, dtype=torch.bool)
        return done | torch.isin(ids[:, -1:], eos).any(-1)

    compiled = tilefuse.compile(stop)  # the second length makes it dynamic, the batch stays static
    for length in (5, 9, 12):
        ids, eos = torch.randint(0, 5, (3, length)), torch.tensor([2])
        assert torch.equal(compiled(ids, eos), stop(ids, eos))
    reasons = [f["reason"] for r in compiled.tilefuse_reports for f in r.get("fallbacks", [])]
    assert not [r for r in reasons if "whole graph" in r], reasons
    assert all(r["partitions"] for r in compiled.tilefuse_reports), compiled.tilefuse_reports
