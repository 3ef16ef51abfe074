"""A rewrite that builds ops and then declines must leave no trace: an op made and dropped still
holds a use of its operand, and a later pass that walks the uses (fusion's row groups) met it
outside the function. Found by a Jamba decode step (a state-by-vector `bmm` with N = 1, which
`FoldViewsIntoBatchedContract` respelled, made the operand's reshape for, then declined: no N)."""

from __future__ import annotations

import pytest
import torch
from xdsl.dialects import func

from tilefuse.compiler.cli import main as cli_main
from tilefuse.ir import einsum as ein
from tilefuse.ir import parse_module, run_function
from tilefuse.ir.module import IRError, make_context, verify
from tilefuse.passes.canonicalize import Canonicalize
from tilefuse.passes.fusion_groups import FormFusionGroups

# an RMSNorm of a [2, 1, 16] row, reshaped to [2, 16, 1] and multiplied into a [2, 128, 16] state
# (N = 1), the product reshaped to [2, 128] and read by a map
DECODE_BMM = """
builtin.module {
  func.func @decode(%s: tensor<2x128x16xf32>, %b: tensor<2x1x16xf32>, %d: tensor<2x128xf32>) -> tensor<2x128xf32> {
    %0 = ein.map(%b) : (tensor<2x1x16xf32>) -> tensor<2x1x16xf32> {
    ^bb0(%1: f32):
      %2 = arith.mulf %1, %1 : f32
      ein.yield %2 : f32
    }
    %3 = ein.reduce mean [2] keepdim %0 : tensor<2x1x16xf32> -> tensor<2x1x1xf32>
    %4 = ein.map(%b, %3) : (tensor<2x1x16xf32>, tensor<2x1x1xf32>) -> tensor<2x1x16xf32> {
    ^bb0(%5: f32, %6: f32):
      %7 = math.rsqrt %6 : f32
      %8 = arith.mulf %5, %7 : f32
      ein.yield %8 : f32
    }
    %9 = ein.view reshape %4 : tensor<2x1x16xf32> -> tensor<2x16xf32>
    %10 = ein.view reshape %9 : tensor<2x16xf32> -> tensor<2x16x1xf32>
    %11 = ein.map(%s) : (tensor<2x128x16xf32>) -> tensor<2x128x16xf32> {
    ^bb0(%12: f32):
      %13 = arith.mulf %12, %12 : f32
      ein.yield %13 : f32
    }
    %14 = ein.contract "bmk,bkn->bmn" %11, %10 : (tensor<2x128x16xf32>, tensor<2x16x1xf32>) -> tensor<2x128x1xf32>
    %15 = ein.view reshape %14 : tensor<2x128x1xf32> -> tensor<2x128xf32>
    %16 = ein.map(%15, %d) : (tensor<2x128xf32>, tensor<2x128xf32>) -> tensor<2x128xf32> {
    ^bb0(%17: f32, %18: f32):
      %19 = arith.addf %17, %18 : f32
      ein.yield %19 : f32
    }
    func.return %16 : tensor<2x128xf32>
  }
}
"""


def test_canonicalize_leaves_no_use_by_an_op_it_dropped():
    module = parse_module(DECODE_BMM)
    (fn,) = [op for op in module.ops if isinstance(op, func.FuncOp)]
    args = [torch.randn(2, 128, 16), torch.randn(2, 1, 16), torch.randn(2, 128)]
    (want,) = run_function(fn, args)
    Canonicalize().apply(make_context(), module)
    verify(module, "after canonicalize")  # raises on a value read by an op outside the module
    FormFusionGroups().apply(make_context(), module)  # walked the uses: KeyError on the dropped reshape
    (got,) = run_function(fn, args)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_the_pipeline_runs_from_the_command_line(tmp_path, capsys):
    path = tmp_path / "decode_bmm.mlir"
    path.write_text(DECODE_BMM)
    assert cli_main(["opt", str(path), "-p", "canonicalize,form-fusion-groups"]) == 0, capsys.readouterr().err
    assert "ein.contract" in capsys.readouterr().out


def test_verify_names_a_reader_outside_the_module():
    module = parse_module(DECODE_BMM)
    (fn,) = [op for op in module.ops if isinstance(op, func.FuncOp)]
    reshape = next(op for op in fn.body.block.ops if isinstance(op, ein.ViewOp))  # of the norm's map
    verify(module, "after canonicalize")
    ein.ViewOp("reshape", reshape.input, reshape.result.type)  # made, never inserted: a dangling read
    with pytest.raises(IRError, match=r"after canonicalize: .* ein.map is read by ein.view, which is not in"):
        verify(module, "after canonicalize")
