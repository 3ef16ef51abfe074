"""A kernel's arguments are its inputs, then its outputs in the group's order: the order every launch
passes them in (`LoweredGroup`). A looped row kernel writes its statistics before the pass that reads
the norm's weight and bias; it used to take its arguments in that interleaved order, and on the H200
the launch of a ResNet-50 training step's first BatchNorm handed a pointer where a stride goes
(Triton: "invalid operands of type pointer<bf16> and int32")."""

from __future__ import annotations

import torch

from tilefuse.backends.triton import TritonOptions, emit, load
from tilefuse.ir import parse_module, run_module
from tilefuse.ir.dtypes import shape_of
from tilefuse.ir.module import functions
from tilefuse.passes.fusion_groups import MAX_ROW, annotate, form_groups
from tilefuse.passes.lower_to_tile import lower_function

N, C, H, W = 2, 4, 130, 129  # a channel's statistics cover 33540 elements: more than a row kernel holds
COUNT = N * H * W

# a training BatchNorm + ReLU as the ResNet-50 step's graph had it (bf16 there; f32 here, for the
# interpreter): mean and variance of a channel, its rstd, the normalized and activated output
BATCH_NORM = f"""
builtin.module {{
  func.func @bn(%conv: tensor<{N}x{C}x{H}x{W}xf32>, %weight: tensor<{C}xf32>, %bias: tensor<{C}xf32>)
      -> (tensor<1x{C}x1x1xf32>, tensor<1x{C}x1x1xf32>, tensor<1x{C}x1x1xf32>, tensor<{N}x{C}x{H}x{W}xf32>) {{
    %mean = ein.reduce mean [0, 2, 3] keepdim %conv : tensor<{N}x{C}x{H}x{W}xf32> -> tensor<1x{C}x1x1xf32>
    %sq = ein.map(%conv, %mean) : (tensor<{N}x{C}x{H}x{W}xf32>, tensor<1x{C}x1x1xf32>) -> tensor<{N}x{C}x{H}x{W}xf32> {{
    ^bb0(%a: f32, %m: f32):
      %d = arith.subf %a, %m : f32
      %s = arith.mulf %d, %d : f32
      ein.yield %s : f32
    }}
    %ss = ein.reduce sum [0, 2, 3] keepdim %sq : tensor<{N}x{C}x{H}x{W}xf32> -> tensor<1x{C}x1x1xf32>
    %var = ein.map(%ss) : (tensor<1x{C}x1x1xf32>) -> tensor<1x{C}x1x1xf32> {{
    ^bb0(%a: f32):
      %n = arith.constant {float(COUNT)!r} : f32
      %v = arith.divf %a, %n : f32
      ein.yield %v : f32
    }}
    %rstd = ein.map(%var) : (tensor<1x{C}x1x1xf32>) -> tensor<1x{C}x1x1xf32> {{
    ^bb0(%a: f32):
      %e = arith.constant 1.000000e-05 : f32
      %b = arith.addf %a, %e : f32
      %r = math.rsqrt %b : f32
      ein.yield %r : f32
    }}
    %w = ein.view reshape %weight : tensor<{C}xf32> -> tensor<{C}x1x1xf32>
    %b = ein.view reshape %bias : tensor<{C}xf32> -> tensor<{C}x1x1xf32>
    %y = ein.map(%b, %w, %rstd, %conv, %mean) : (tensor<{C}x1x1xf32>, tensor<{C}x1x1xf32>, tensor<1x{C}x1x1xf32>, tensor<{N}x{C}x{H}x{W}xf32>, tensor<1x{C}x1x1xf32>) -> tensor<{N}x{C}x{H}x{W}xf32> {{
    ^bb0(%bb: f32, %ww: f32, %r: f32, %x: f32, %m: f32):
      %d = arith.subf %x, %m : f32
      %n = arith.mulf %d, %r : f32
      %s = arith.mulf %n, %ww : f32
      %t = arith.addf %s, %bb : f32
      %z = arith.constant 0.000000e+00 : f32
      %o = arith.maximumf %t, %z : f32
      ein.yield %o : f32
    }}
    func.return %var, %mean, %rstd, %y : tensor<1x{C}x1x1xf32>, tensor<1x{C}x1x1xf32>, tensor<1x{C}x1x1xf32>, tensor<{N}x{C}x{H}x{W}xf32>
  }}
}}
"""


def test_a_looped_row_kernel_takes_its_inputs_then_its_outputs(tmp_path):
    assert COUNT > MAX_ROW
    module = parse_module(BATCH_NORM)
    torch.manual_seed(0)
    args = [torch.randn(N, C, H, W) * 3 + 1, torch.rand(C) + 0.5, torch.randn(C)]
    refs = run_module(module, "bn", args)

    (fn,) = functions(module)
    groups = form_groups(fn)
    annotate(groups)
    (lowered,) = lower_function(fn)
    assert lowered.group.kind == "row" and lowered.kernel is not None, lowered.error
    kernel_args = list(lowered.kernel.body.block.args)
    launched = [*lowered.inputs, *lowered.outputs]
    assert [a.type for a in kernel_args] == [v.type for v in launched]
    assert len(lowered.inputs) == 3 and len(lowered.outputs) == 4

    kernel = lowered.kernel
    built = load(emit(kernel, TritonOptions(libdevice=False)), kernel.sym_name.data, cache_dir=tmp_path)
    env = dict(zip(fn.body.block.args, args))
    inputs = [env[v] for v in lowered.inputs]
    outputs = [torch.empty(tuple(shape_of(v.type))) for v in lowered.outputs]
    built([*inputs, *outputs], {"BLOCK_R": 1, "BLOCK_C": 4096})
    returned = list(fn.body.block.last_op.operands)
    for value, got in zip(lowered.outputs, outputs):
        torch.testing.assert_close(got, refs[returned.index(value)], rtol=1e-4, atol=1e-4)
