builtin.module {
  func.func @f(%x: tensor<3x8xf32>, %wq: tensor<4x8xf32> {ein.param = "wq"}, %wk: tensor<2x8xf32> {ein.param = "wk"}) -> (tensor<3x4xf32>, tensor<3x2xf32>) {
    %0 = ein.concat dim 0 (%wq, %wk) : (tensor<4x8xf32>, tensor<2x8xf32>) -> tensor<6x8xf32>
    %1 = ein.contract "mk,nk->mn" %x, %0 : (tensor<3x8xf32>, tensor<6x8xf32>) -> tensor<3x6xf32>
    %q = ein.view slice dim 1 [0:4:1] %1 : tensor<3x6xf32> -> tensor<3x4xf32>
    %k = ein.view slice dim 1 [4:6:1] %1 : tensor<3x6xf32> -> tensor<3x2xf32>
    %eq = ein.map(%q, %q) : (tensor<3x4xf32>, tensor<3x4xf32>) -> tensor<3x4xf32> {
    ^bb0(%a: f32, %b: f32):
      %s = arith.mulf %a, %b : f32
      ein.yield %s : f32
    }
    %ek = ein.map(%k, %k) : (tensor<3x2xf32>, tensor<3x2xf32>) -> tensor<3x2xf32> {
    ^bb0(%c: f32, %d: f32):
      %t = arith.mulf %c, %d : f32
      ein.yield %t : f32
    }
    func.return %eq, %ek : tensor<3x4xf32>, tensor<3x2xf32>
  }
}
