// Llama's q, k and v after norm-prologue folded the RMSNorm: each reads the residual stream x against
// its weight scaled by the norm's (a reshape of the norm weight apiece), and scales its product by the
// shared row statistic; bf16 with f32 products, grouped KV heads (32, 8 and 8 columns). The folds stack
// as one map over the stacked weights (one buffer), the epilogues as one map; v is returned (as a
// dynamic cache keeps it): its slice is copied into a buffer of its own, eager's layout.
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
    %w0 = ein.map(%wq, %g0) : (tensor<32x24xbf16>, tensor<1x24xbf16>) -> tensor<32x24xbf16> {
    ^bb0(%a0: bf16, %b0: bf16):
      %c0 = arith.extf %a0 : bf16 to f32
      %d0 = arith.extf %b0 : bf16 to f32
      %e0 = arith.mulf %c0, %d0 : f32
      %f0 = arith.truncf %e0 : f32 to bf16
      ein.yield %f0 : bf16
    }
    %p0 = ein.contract "abk,nk->abn" %x, %w0 : (tensor<2x5x24xbf16>, tensor<32x24xbf16>) -> tensor<2x5x32xf32>
    %r0 = ein.map(%p0, %ss) : (tensor<2x5x32xf32>, tensor<2x5x1xf32>) -> tensor<2x5x32xbf16> {
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
    %h0 = ein.view reshape %r0 : tensor<2x5x32xbf16> -> tensor<2x5x4x8xbf16>
    %g1 = ein.view reshape %norm_weight : tensor<24xbf16> -> tensor<1x24xbf16>
    %w1 = ein.map(%wk, %g1) : (tensor<8x24xbf16>, tensor<1x24xbf16>) -> tensor<8x24xbf16> {
    ^bb0(%a1: bf16, %b1: bf16):
      %c1 = arith.extf %a1 : bf16 to f32
      %d1 = arith.extf %b1 : bf16 to f32
      %e1 = arith.mulf %c1, %d1 : f32
      %f1 = arith.truncf %e1 : f32 to bf16
      ein.yield %f1 : bf16
    }
    %p1 = ein.contract "abk,nk->abn" %x, %w1 : (tensor<2x5x24xbf16>, tensor<8x24xbf16>) -> tensor<2x5x8xf32>
    %r1 = ein.map(%p1, %ss) : (tensor<2x5x8xf32>, tensor<2x5x1xf32>) -> tensor<2x5x8xbf16> {
    ^bb0(%h1: f32, %j1: f32):
      %k1 = arith.constant 2.400000e+01 : f32
      %l1 = arith.divf %j1, %k1 : f32
      %m1 = arith.constant 1.000000e-06 : f32
      %o1 = arith.addf %l1, %m1 : f32
      %q1 = math.rsqrt %o1 : f32
      %s1 = arith.mulf %h1, %q1 : f32
      %t1 = arith.truncf %s1 : f32 to bf16
      ein.yield %t1 : bf16
    }
    %h1 = ein.view reshape %r1 : tensor<2x5x8xbf16> -> tensor<2x5x1x8xbf16>
    %g2 = ein.view reshape %norm_weight : tensor<24xbf16> -> tensor<1x24xbf16>
    %w2 = ein.map(%wv, %g2) : (tensor<8x24xbf16>, tensor<1x24xbf16>) -> tensor<8x24xbf16> {
    ^bb0(%a2: bf16, %b2: bf16):
      %c2 = arith.extf %a2 : bf16 to f32
      %d2 = arith.extf %b2 : bf16 to f32
      %e2 = arith.mulf %c2, %d2 : f32
      %f2 = arith.truncf %e2 : f32 to bf16
      ein.yield %f2 : bf16
    }
    %p2 = ein.contract "abk,nk->abn" %x, %w2 : (tensor<2x5x24xbf16>, tensor<8x24xbf16>) -> tensor<2x5x8xf32>
    %r2 = ein.map(%p2, %ss) : (tensor<2x5x8xf32>, tensor<2x5x1xf32>) -> tensor<2x5x8xbf16> {
    ^bb0(%h2: f32, %j2: f32):
      %k2 = arith.constant 2.400000e+01 : f32
      %l2 = arith.divf %j2, %k2 : f32
      %m2 = arith.constant 1.000000e-06 : f32
      %o2 = arith.addf %l2, %m2 : f32
      %q2 = math.rsqrt %o2 : f32
      %s2 = arith.mulf %h2, %q2 : f32
      %t2 = arith.truncf %s2 : f32 to bf16
      ein.yield %t2 : bf16
    }
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
