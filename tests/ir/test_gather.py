"""`ein.gather`: the reference interpreter against torch's indexing ops, and its verifier."""

from __future__ import annotations

import pytest
import torch
from xdsl.dialects.builtin import ModuleOp, f32, i64

from tilefuse.ir import parse_module, print_module, run_function
from tilefuse.ir.builder import EinBuilder
from tilefuse.ir.module import IRError, verify


def _gather(table_shape, index_shapes, index_map, out_shape):
    b = EinBuilder("g")
    table = b.add_argument(table_shape, f32, "table")
    indices = [b.add_argument(s, i64, f"i{j}") for j, s in enumerate(index_shapes)]
    return b.finish([b.gather(table, indices, index_map, out_shape)])


def test_embedding_with_negative_positions():
    fn = _gather((10, 4), [(2, 3, 1)], [-1, 2], (2, 3, 4))
    table, ids = torch.randn(10, 4), torch.tensor([[0, 9, -1], [3, -10, 5]])
    (out,) = run_function(fn, [table, ids[..., None]])
    torch.testing.assert_close(out, table[ids], rtol=0, atol=0)


def test_an_embedding_copies_rows_with_index_select():
    """Not advanced indexing: its element-wise CUDA kernel took 44 us for 2048 rows of 2048 bf16 values
    on the H200, where a library path or a glue op gathers an embedding."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    fn = _gather((10, 4), [(2, 3, 1)], [-1, 2], (2, 3, 4))
    table, ids = torch.randn(10, 4), torch.tensor([[0, 9, -1], [3, -10, 5]])
    with Ops() as ops:
        (out,) = run_function(fn, [table, ids[..., None]])
    assert "index_select" in ops.seen and "index" not in ops.seen, ops.seen
    torch.testing.assert_close(out, table[ids], rtol=0, atol=0)


def test_index_select_gather_and_two_index_tensors():
    x = torch.randn(3, 7, 5)
    idx = torch.tensor([6, 0, 2, 2])
    (selected,) = run_function(_gather((3, 7, 5), [(1, 4, 1)], [0, -1, 2], (3, 4, 5)), [x, idx[None, :, None]])
    torch.testing.assert_close(selected, torch.index_select(x, 1, idx), rtol=0, atol=0)

    positions = torch.randint(0, 7, (3, 2, 5))
    (gathered,) = run_function(_gather((3, 7, 5), [(3, 2, 5)], [0, -1, 2], (3, 2, 5)), [x, positions])
    torch.testing.assert_close(gathered, torch.gather(x, 1, positions), rtol=0, atol=0)

    rows, cols = torch.tensor([[0], [2]]), torch.tensor([[1, 6, 3]])
    fn = _gather((3, 7, 5), [(2, 1, 1), (1, 3, 1)], [-1, -2, 2], (2, 3, 5))
    (picked,) = run_function(fn, [x, rows[..., None], cols[..., None]])
    torch.testing.assert_close(picked, x[rows, cols], rtol=0, atol=0)


def test_gather_prints_and_parses_back():
    text = print_module(ModuleOp([_gather((10, 4), [(2, 3, 1)], [-1, 2], (2, 3, 4))]))
    assert "ein.gather %table [i0, d2] (%i0)" in text
    assert print_module(parse_module(text)) == text


@pytest.mark.parametrize(
    ("index_map", "out_shape", "message"),
    [
        ([-1], (2, 3, 4), "index map has 1 entries"),
        ([-1, 5], (2, 3, 4), "cannot be read at result dim 5"),
        ([-2, 2], (2, 3, 4), "missing index tensor 1"),
        ([-1, 2], (2, 3, 9), "cannot be read at result dim 2"),
        ([-1, 2], (4, 3, 4), "does not broadcast"),
    ],
)
def test_verifier_names_what_is_wrong(index_map, out_shape, message):
    with pytest.raises(IRError, match=message):
        verify(_gather((10, 4), [(2, 3, 1)], index_map, out_shape))
