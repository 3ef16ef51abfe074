builtin.module {
  func.func @sibling_view(%x: tensor<4x4xf32>, %y: tensor<4x4xf32>, %w: tensor<4x3xf32>) -> (tensor<4x3xf32>, tensor<4x4xf32>) {
    %0 = ein.map(%x, %y) {ein.group = "k0"} : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.mulf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.map(%y, %x) {ein.group = "k0"} : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.subf %2, %3 : f32
      %5 = math.exp %4 : f32
      ein.yield %5 : f32
    }
    %2 = ein.view permute [1, 0] %1 : tensor<4x4xf32> -> tensor<4x4xf32>
    %3 = ein.map(%2, %y) {ein.group = "k0"} : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32> {
    ^bb0(%4: f32, %5: f32):
      %6 = arith.mulf %4, %5 : f32
      ein.yield %6 : f32
    }
    %4 = ein.contract "mk,kn->mn" %0, %w {ein.group = "k1"} : (tensor<4x4xf32>, tensor<4x3xf32>) -> tensor<4x3xf32>
    func.return %4, %3 : tensor<4x3xf32>, tensor<4x4xf32>
  }
}
