builtin.module {
  func.func @f(%x: tensor<3x8xf32>, %h: tensor<3x5xf32>, %wq: tensor<4x8xf32> {ein.param = "wq"}, %uq: tensor<5x4xf32> {ein.param = "uq"}, %wk: tensor<4x8xf32> {ein.param = "wk"}, %uk: tensor<5x4xf32> {ein.param = "uk"}) -> (tensor<3x4xf32>, tensor<3x4xf32>) {
    %q = ein.contract "mk,nk->mn" %x, %wq : (tensor<3x8xf32>, tensor<4x8xf32>) -> tensor<3x4xf32>
    %rq = ein.contract "mk,kn->mn" %h, %uq : (tensor<3x5xf32>, tensor<5x4xf32>) -> tensor<3x4xf32>
    %eq = ein.map(%q, %rq) : (tensor<3x4xf32>, tensor<3x4xf32>) -> tensor<3x4xf32> {
    ^bb0(%a: f32, %b: f32):
      %s = arith.addf %a, %b : f32
      ein.yield %s : f32
    }
    %k = ein.contract "mk,nk->mn" %x, %wk : (tensor<3x8xf32>, tensor<4x8xf32>) -> tensor<3x4xf32>
    %rk = ein.contract "mk,kn->mn" %h, %uk : (tensor<3x5xf32>, tensor<5x4xf32>) -> tensor<3x4xf32>
    %ek = ein.map(%k, %rk) : (tensor<3x4xf32>, tensor<3x4xf32>) -> tensor<3x4xf32> {
    ^bb0(%c: f32, %d: f32):
      %t = arith.addf %c, %d : f32
      ein.yield %t : f32
    }
    func.return %eq, %ek : tensor<3x4xf32>, tensor<3x4xf32>
  }
}
