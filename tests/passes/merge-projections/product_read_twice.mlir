// Review repro: each epilogue reads its product twice (p * p): the products merge, the maps read slices;
// the GEMM and the stacked weight are not duplicated.
builtin.module {
  func.func @f(%x: tensor<3x8xf32>, %wq: tensor<4x8xf32> {ein.param = "wq"}, %wk: tensor<2x8xf32> {ein.param = "wk"}) -> (tensor<3x4xf32>, tensor<3x2xf32>) {
    %q = ein.contract "mk,nk->mn" %x, %wq : (tensor<3x8xf32>, tensor<4x8xf32>) -> tensor<3x4xf32>
    %eq = ein.map(%q, %q) : (tensor<3x4xf32>, tensor<3x4xf32>) -> tensor<3x4xf32> {
    ^bb0(%a: f32, %b: f32):
      %s = arith.mulf %a, %b : f32
      ein.yield %s : f32
    }
    %k = ein.contract "mk,nk->mn" %x, %wk : (tensor<3x8xf32>, tensor<2x8xf32>) -> tensor<3x2xf32>
    %ek = ein.map(%k, %k) : (tensor<3x2xf32>, tensor<3x2xf32>) -> tensor<3x2xf32> {
    ^bb0(%c: f32, %d: f32):
      %t = arith.mulf %c, %d : f32
      ein.yield %t : f32
    }
    func.return %eq, %ek : tensor<3x4xf32>, tensor<3x2xf32>
  }
}
