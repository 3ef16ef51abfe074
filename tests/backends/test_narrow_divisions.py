"""Divisions of a tile's own indices computed once from its start (`emit._narrow_divisions`).

A kernel over [tokens, hidden] rows that gathers each row through an index per token (a mixture of
experts' combine, read through the experts' permutation) divides its row index by the hidden size to
find the token. Where the tile's size divides that size, every row of the tile has the tile start's
quotient: the kernel computes it once, as a one-element block, and the index loads after it are
one-element blocks too (a constexpr test picks the form, so both are checked here against eager on
sizes the tile divides and does not). The analysis refuses kernels where a narrow value would meet a
reduction along the tile, a store through a narrow pointer, or a merged run of dims.
"""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import fusion_groups, gpu_sources, offline_usage
from tilefuse.backends.triton.emit import TritonOptions, _narrow_divisions, emit
from tilefuse.ir import tile
from tilefuse.ir.module import parse_module


def _combine(y, perm, w):
    """A mixture of experts' combine: each token's k expert outputs, gathered through the experts'
    permutation, weighted and summed."""
    t, k = w.shape
    return (w[..., None] * y[perm].view(t, k, -1)).sum(1)


def _sources(compiled, tmp_path) -> list[str]:
    dirs = [tmp_path / r["dir"] for r in compiled.tilefuse_reports]
    return [p.read_text() for d in dirs for p in d.glob("kernels/*.py")]


@settings(max_examples=8, deadline=None)
@given(
    tokens=st.integers(1, 19),
    experts=st.integers(1, 3),
    hidden=st.sampled_from([8, 40, 64, 96]),
    block=st.sampled_from([8, 16, 32]),
)
def test_combine_through_a_permutation_matches_eager(tokens, experts, hidden, block):
    """The gathered combine at tile sizes that divide the hidden size (one quotient a tile) and that do
    not (a quotient per row), ragged token counts included."""
    torch._dynamo.reset()
    torch.manual_seed(tokens * 7 + hidden)
    y = torch.randn(tokens * experts, hidden)
    perm = torch.randperm(tokens * experts)
    w = torch.rand(tokens, experts)
    override = {kind: {"BLOCK_R": block} for kind in ("row", "reduction")}
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TILEFUSE_KERNEL_CONFIG", json.dumps(override))
        compiled = tilefuse.compile(_combine, dynamic=False)
        with torch.no_grad():
            got = compiled(y, perm, w)
    torch.testing.assert_close(got, _combine(y, perm, w), rtol=1e-5, atol=1e-5)
    assert [g["kind"] for g in fusion_groups(compiled.tilefuse_reports)] in (["row"], ["reduction"])


def test_combine_kernel_computes_the_token_once_a_tile(tmp_path, monkeypatch):
    """The kernel's source divides the tile's start where its size divides the hidden size; with
    TILEFUSE_NARROW_DIVISIONS=0 it divides every row's index."""
    y, perm, w = torch.randn(24, 64), torch.randperm(24), torch.rand(12, 2)
    sources = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("TILEFUSE_NARROW_DIVISIONS", setting)
        torch._dynamo.reset()
        compiled = tilefuse.compile(_combine, dump=tmp_path / setting)
        with torch.no_grad():
            torch.testing.assert_close(compiled(y, perm, w), _combine(y, perm, w), rtol=1e-5, atol=1e-5)
        (sources[setting],) = _sources(compiled, tmp_path / setting)
    assert "tl.zeros([1], tl.int32) if 64 % BLOCK_R == 0 else" in sources["1"]
    assert "tl.zeros([1]" not in sources["0"]


def test_embedding_rows_addressed_by_a_flat_index_stay_per_element(tmp_path):
    """An embedding's ids are read through a run of dims merged into the flat index (full along the
    tile): the division is not narrowed there, and the kernel matches eager."""
    table, ids, pos = torch.randn(50, 64), torch.randint(0, 50, (3, 8)), torch.randn(8, 64)
    fn = lambda table, ids, pos: table[ids] * 2.0 + pos  # noqa: E731
    compiled = tilefuse.compile(fn, dump=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(compiled(table, ids, pos), fn(table, ids, pos))
    assert all("tl.zeros([1]" not in s for s in _sources(compiled, tmp_path))


_KERNEL = """
builtin.module {
  tile.kernel "k0" kind "pointwise" params ["BLOCK"] grid ["cdiv(64, BLOCK)"] {
  ^bb0(%idx: tensor<16xi32>, %table: tensor<10x4xf32>, %out: tensor<64xf32>, %sums: tensor<4xf32>):
    %pid = tile.program_id 0 : i32
    %b = tile.param "BLOCK" : i32
    %r = tile.arange : !tile.block<["BLOCK"], i32>
    %base = arith.muli %pid, %b : i32
    %x = tile.map(%r, %base) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%a: i32, %c: i32):
      %s = arith.addi %a, %c : i32
      tile.yield %s : i32
    }
    %four = arith.constant 4 : i32
    %q = tile.map(%x, %four) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%a: i32, %c: i32):
      %s = arith.divsi %a, %c : i32
      tile.yield %s : i32
    }
    %m = tile.map(%x, %four) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%a: i32, %c: i32):
      %s = arith.remsi %a, %c : i32
      tile.yield %s : i32
    }
    %i = tile.load %idx[%q] : (tensor<16xi32>, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], i32>
    %v = tile.load %table[%i, %m] : (tensor<10x4xf32>, !tile.block<["BLOCK"], i32>, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], f32>
    %z = tile.load %table[%i, %i] : (tensor<10x4xf32>, !tile.block<["BLOCK"], i32>, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], f32>
    TAIL
    tile.return
  }
}
"""
_STORE_GATHERED = (
    'tile.store %v, %out[%x] : (!tile.block<["BLOCK"], f32>, tensor<64xf32>, !tile.block<["BLOCK"], i32>)'
)


def _kernel(tail: str) -> tile.KernelOp:
    module = parse_module(_KERNEL.replace("TAIL", tail))
    return next(op for op in module.walk() if isinstance(op, tile.KernelOp))


def test_a_gather_after_the_division_is_narrowed():
    """x // 4 of the tile's indices, a load through it, a gather mixing in x % 4, a store at x: the
    division is narrowed, and the source picks its form by whether BLOCK divides 4."""
    kernel = _kernel(_STORE_GATHERED)
    (division,) = _narrow_divisions(kernel).values()
    assert (division.block, division.divisor) == ("BLOCK", 4)
    source = emit(kernel, TritonOptions())
    assert "tl.zeros([1], tl.int32) if 4 % BLOCK == 0 else" in source


@pytest.mark.parametrize(
    "tail",
    [
        # a sum along the tile of a value that is one element wide there
        'tile.store %v, %out[%x] : (!tile.block<["BLOCK"], f32>, tensor<64xf32>, !tile.block<["BLOCK"], i32>)\n'
        '    %s = tile.reduce "sum" %z axis 0 : !tile.block<["BLOCK"], f32> -> !tile.block<[], f32>',
        # a store through a pointer that is one element wide along the tile
        'tile.store %v, %out[%q] : (!tile.block<["BLOCK"], f32>, tensor<64xf32>, !tile.block<["BLOCK"], i32>)',
    ],
    ids=["reduce_along_the_tile", "store_through_a_narrow_pointer"],
)
def test_kernels_a_narrow_value_would_break_keep_full_divisions(tail):
    kernel = _kernel(tail)
    assert _narrow_divisions(kernel) == {}
    assert "tl.zeros([1]" not in emit(kernel, TritonOptions())


@pytest.mark.parametrize("block", [16, 32], ids=["divides", "does_not_divide"])
def test_the_gpu_source_compiles_for_sm90_in_both_forms(tmp_path, block):
    """The combine's kernel as a GPU gets it (no interpreter options), compiled for Hopper without a GPU
    (`backends/triton/offline`): at a tile that divides the hidden size (48 = 16 x 3) the one-element
    form is compiled, at one that does not the per-element form; Triton accepts both."""
    from tilefuse.autotune.heuristics import KernelConfig

    ((kind, source),) = gpu_sources(
        _combine, (torch.randn(24, 48), torch.randperm(24), torch.rand(12, 2)), tmp_path
    )
    assert kind in ("row", "reduction") and "if 48 % BLOCK_R == 0 else" in source
    used = offline_usage(source, KernelConfig({"BLOCK_R": block, "BLOCK_C": 2}, 4, 1))
    assert used.registers > 0 and used.stack_bytes == 0
