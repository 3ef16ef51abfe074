builtin.module {
  func.func @f(%x: tensor<4x8xf32>, %wq: tensor<6x8xf32> {ein.param = "q.weight"}, %bq: tensor<1x6xf32> {ein.param = "q.bias"}, %wk: tensor<2x8xf32> {ein.param = "k.weight"}, %bk: tensor<2xf32> {ein.param = "k.bias"}) -> (tensor<4x6xf32>, tensor<4x2xf32>) {
    %q = ein.contract "mk,nk->mn" %x, %wq : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
    %qb = ein.map(%q, %bq) : (tensor<4x6xf32>, tensor<1x6xf32>) -> tensor<4x6xf32> {
    ^bb0(%a: f32, %b: f32):
      %s = arith.addf %a, %b : f32
      ein.yield %s : f32
    }
    %k = ein.contract "mk,nk->mn" %x, %wk : (tensor<4x8xf32>, tensor<2x8xf32>) -> tensor<4x2xf32>
    %kb = ein.map(%k, %bk) : (tensor<4x2xf32>, tensor<2xf32>) -> tensor<4x2xf32> {
    ^bb0(%c: f32, %d: f32):
      %t = arith.addf %c, %d : f32
      ein.yield %t : f32
    }
    func.return %qb, %kb : tensor<4x6xf32>, tensor<4x2xf32>
  }
}
