builtin.module {
  func.func @block(%x: tensor<6x16xf32>, %wq: tensor<16x16xf32> {ein.param = "q.weight"}, %wk: tensor<8x16xf32> {ein.param = "k.weight"}, %wg: tensor<32x16xf32> {ein.param = "gate.weight"}, %wu: tensor<32x16xf32> {ein.param = "up.weight"}, %wo: tensor<8x16xf32> {ein.param = "o.weight"}) -> (tensor<6x2x8xf32>, tensor<6x1x8xf32>, tensor<6x32xf32>, tensor<6x8xf32>) {
    %0 = ein.concat dim 0 (%wq, %wk) : (tensor<16x16xf32>, tensor<8x16xf32>) -> tensor<24x16xf32>
    %1 = ein.contract "mk,nk->mn" %x, %0 : (tensor<6x16xf32>, tensor<24x16xf32>) -> tensor<6x24xf32>
    %q = ein.view slice dim 1 [0:16:1] %1 : tensor<6x24xf32> -> tensor<6x16xf32>
    %2 = ein.view slice dim 1 [16:24:1] %1 : tensor<6x24xf32> -> tensor<6x8xf32>
    %k = ein.map(%2) : (tensor<6x8xf32>) -> tensor<6x8xf32> {
    ^bb0(%3: f32):
      ein.yield %3 : f32
    }
    %qh = ein.view reshape %q : tensor<6x16xf32> -> tensor<6x2x8xf32>
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
