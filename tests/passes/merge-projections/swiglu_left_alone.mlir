// One input read by four projections: q and k (no epilogue) merge; SwiGLU's gate and up meet in one
// map (silu(gate) * up), which form-fusion-groups runs as one dual-accumulator kernel: left alone, as
// is a projection whose epilogue differs from every other's (o: a tanh).
builtin.module {
  func.func @block(%x: tensor<6x16xf32>, %wq: tensor<16x16xf32> {ein.param = "q.weight"}, %wk: tensor<8x16xf32> {ein.param = "k.weight"}, %wg: tensor<32x16xf32> {ein.param = "gate.weight"}, %wu: tensor<32x16xf32> {ein.param = "up.weight"}, %wo: tensor<8x16xf32> {ein.param = "o.weight"}) -> (tensor<6x2x8xf32>, tensor<6x1x8xf32>, tensor<6x32xf32>, tensor<6x8xf32>) {
    %q = ein.contract "mk,nk->mn" %x, %wq : (tensor<6x16xf32>, tensor<16x16xf32>) -> tensor<6x16xf32>
    %qh = ein.view reshape %q : tensor<6x16xf32> -> tensor<6x2x8xf32>
    %k = ein.contract "mk,nk->mn" %x, %wk : (tensor<6x16xf32>, tensor<8x16xf32>) -> tensor<6x8xf32>
    %kh = ein.view reshape %k : tensor<6x8xf32> -> tensor<6x1x8xf32>
    %g = ein.contract "mk,nk->mn" %x, %wg : (tensor<6x16xf32>, tensor<32x16xf32>) -> tensor<6x32xf32>
    %sg = ein.map(%g) : (tensor<6x32xf32>) -> tensor<6x32xf32> {
    ^bb0(%a: f32):
      %b = arith.negf %a : f32
      %c = math.exp %b : f32
      %d = arith.constant 1.000000e+00 : f32
      %e = arith.addf %d, %c : f32
      %f = arith.divf %a, %e : f32
      ein.yield %f : f32
    }
    %u = ein.contract "mk,nk->mn" %x, %wu : (tensor<6x16xf32>, tensor<32x16xf32>) -> tensor<6x32xf32>
    %h = ein.map(%sg, %u) : (tensor<6x32xf32>, tensor<6x32xf32>) -> tensor<6x32xf32> {
    ^bb0(%i: f32, %j: f32):
      %l = arith.mulf %i, %j : f32
      ein.yield %l : f32
    }
    %o = ein.contract "mk,nk->mn" %x, %wo : (tensor<6x16xf32>, tensor<8x16xf32>) -> tensor<6x8xf32>
    %ot = ein.map(%o) : (tensor<6x8xf32>) -> tensor<6x8xf32> {
    ^bb0(%m: f32):
      %n = math.tanh %m : f32
      ein.yield %n : f32
    }
    %q2 = ein.map(%qh) : (tensor<6x2x8xf32>) -> tensor<6x2x8xf32> {
    ^bb0(%p: f32):
      %r = arith.mulf %p, %p : f32
      ein.yield %r : f32
    }
    func.return %q2, %kh, %h, %ot : tensor<6x2x8xf32>, tensor<6x1x8xf32>, tensor<6x32xf32>, tensor<6x8xf32>
  }
}
