builtin.module {
  func.func @sibling_view(%x: tensor<4x4xf32>, %y: tensor<4x4xf32>, %w: tensor<4x3xf32>) -> (tensor<4x3xf32>, tensor<4x4xf32>) {
    %0 = ein.map(%x, %y) : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.mulf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.contract "mk,kn->mn" %0, %w : (tensor<4x4xf32>, tensor<4x3xf32>) -> tensor<4x3xf32>
    %2 = ein.map(%y, %x) : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.subf %3, %4 : f32
      %6 = math.exp %5 : f32
      ein.yield %6 : f32
    }
    %3 = ein.view permute [1, 0] %2 : tensor<4x4xf32> -> tensor<4x4xf32>
    %4 = ein.map(%3, %y) : (tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x4xf32> {
    ^bb0(%5: f32, %6: f32):
      %7 = arith.mulf %5, %6 : f32
      ein.yield %7 : f32
    }
    func.return %1, %4 : tensor<4x3xf32>, tensor<4x4xf32>
  }
}
