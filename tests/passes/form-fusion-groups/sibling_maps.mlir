builtin.module {
  func.func @siblings(%x: tensor<4x8xf32>, %y: tensor<4x8xf32>, %z: tensor<32xf32>, %w: tensor<8x3xf32>) -> (tensor<4x8xf32>, tensor<4x3xf32>, tensor<4x8xf32>, tensor<4x8xf32>) {
    %0 = ein.map(%x, %y) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.mulf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.contract "mk,kn->mn" %0, %w : (tensor<4x8xf32>, tensor<8x3xf32>) -> tensor<4x3xf32>
    %2 = ein.view reshape %z : tensor<32xf32> -> tensor<4x8xf32>
    %3 = ein.map(%y, %x, %2) : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%4: f32, %5: f32, %6: f32):
      %7 = arith.subf %4, %5 : f32
      %8 = arith.mulf %7, %6 : f32
      ein.yield %8 : f32
    }
    %4 = ein.map(%0) : (tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%5: f32):
      %6 = arith.addf %5, %5 : f32
      ein.yield %6 : f32
    }
    %5 = ein.map(%3, %y) : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.mulf %6, %7 : f32
      ein.yield %8 : f32
    }
    func.return %0, %1, %4, %5 : tensor<4x8xf32>, tensor<4x3xf32>, tensor<4x8xf32>, tensor<4x8xf32>
  }
}
