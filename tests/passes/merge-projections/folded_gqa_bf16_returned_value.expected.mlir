builtin.module {
  func.func @fused_0(%x: tensor<2x5x24xbf16>, %norm_weight: tensor<24xbf16> {ein.param = "norm.weight"}, %wq: tensor<32x24xbf16> {ein.param = "q_proj.weight"}, %wk: tensor<8x24xbf16> {ein.param = "k_proj.weight"}, %wv: tensor<8x24xbf16> {ein.param = "v_proj.weight"}) -> (tensor<2x5x4xf32>, tensor<2x5x1xf32>, tensor<2x5x1x8xbf16>) {
    %sq = ein.map(%x) : (tensor<2x5x24xbf16>) -> tensor<2x5x24xf32> {
    ^bb0(%x0: bf16):
      %x1 = arith.extf %x0 : bf16 to f32
      %x2 = arith.mulf %x1, %x1 : f32
      ein.yield %x2 : f32
    }
    %ss = ein.reduce sum [2] keepdim %sq : tensor<2x5x24xf32> -> tensor<2x5x1xf32>
    %g0 = ein.view reshape %norm_weight : tensor<24xbf16> -> tensor<1x24xbf16>
    %0 = ein.concat dim 0 (%wq, %wk, %wv) : (tensor<32x24xbf16>, tensor<8x24xbf16>, tensor<8x24xbf16>) -> tensor<48x24xbf16>
    %1 = ein.map(%0, %g0) : (tensor<48x24xbf16>, tensor<1x24xbf16>) -> tensor<48x24xbf16> {
    ^bb0(%a0: bf16, %b0: bf16):
      %c0 = arith.extf %a0 : bf16 to f32
      %d0 = arith.extf %b0 : bf16 to f32
      %e0 = arith.mulf %c0, %d0 : f32
      %f0 = arith.truncf %e0 : f32 to bf16
      ein.yield %f0 : bf16
    }
    %2 = ein.contract "abk,nk->abn" %x, %1 : (tensor<2x5x24xbf16>, tensor<48x24xbf16>) -> tensor<2x5x48xf32>
    %3 = ein.map(%2, %ss) : (tensor<2x5x48xf32>, tensor<2x5x1xf32>) -> tensor<2x5x48xbf16> {
    ^bb0(%h0: f32, %j0: f32):
      %k0 = arith.constant 2.400000e+01 : f32
      %l0 = arith.divf %j0, %k0 : f32
      %m0 = arith.constant 1.000000e-06 : f32
      %o0 = arith.addf %l0, %m0 : f32
      %q0 = math.rsqrt %o0 : f32
      %s0 = arith.mulf %h0, %q0 : f32
      %t0 = arith.truncf %s0 : f32 to bf16
      ein.yield %t0 : bf16
    }
    %r0 = ein.view slice dim 2 [0:32:1] %3 : tensor<2x5x48xbf16> -> tensor<2x5x32xbf16>
    %r1 = ein.view slice dim 2 [32:40:1] %3 : tensor<2x5x48xbf16> -> tensor<2x5x8xbf16>
    %4 = ein.view slice dim 2 [40:48:1] %3 : tensor<2x5x48xbf16> -> tensor<2x5x8xbf16>
    %r2 = ein.map(%4) : (tensor<2x5x8xbf16>) -> tensor<2x5x8xbf16> {
    ^bb0(%5: bf16):
      ein.yield %5 : bf16
    }
    %h0 = ein.view reshape %r0 : tensor<2x5x32xbf16> -> tensor<2x5x4x8xbf16>
    %h1 = ein.view reshape %r1 : tensor<2x5x8xbf16> -> tensor<2x5x1x8xbf16>
    %h2 = ein.view reshape %r2 : tensor<2x5x8xbf16> -> tensor<2x5x1x8xbf16>
    %qsum = ein.map(%h0) : (tensor<2x5x4x8xbf16>) -> tensor<2x5x4x8xf32> {
    ^bb0(%y0: bf16):
      %y1 = arith.extf %y0 : bf16 to f32
      ein.yield %y1 : f32
    }
    %qred = ein.reduce sum [3] %qsum : tensor<2x5x4x8xf32> -> tensor<2x5x4xf32>
    %kwide = ein.map(%h1) : (tensor<2x5x1x8xbf16>) -> tensor<2x5x1x8xf32> {
    ^bb0(%z0: bf16):
      %z1 = arith.extf %z0 : bf16 to f32
      ein.yield %z1 : f32
    }
    %kred = ein.reduce max [3] %kwide : tensor<2x5x1x8xf32> -> tensor<2x5x1xf32>
    func.return %qred, %kred, %h2 : tensor<2x5x4xf32>, tensor<2x5x1xf32>, tensor<2x5x1x8xbf16>
  }
}
