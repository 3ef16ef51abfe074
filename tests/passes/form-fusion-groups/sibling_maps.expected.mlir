builtin.module {
  func.func @siblings(%x: tensor<4x8xf32>, %y: tensor<4x8xf32>, %z: tensor<32xf32>, %w: tensor<8x3xf32>) -> (tensor<4x8xf32>, tensor<4x3xf32>, tensor<4x8xf32>, tensor<4x8xf32>) {
    %0 = ein.map(%x, %y) {ein.group = "k0"} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.mulf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.view reshape %z : tensor<32xf32> -> tensor<4x8xf32>
    %2 = ein.map(%y, %x, %1) {ein.group = "k0"} : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%3: f32, %4: f32, %5: f32):
      %6 = arith.subf %3, %4 : f32
      %7 = arith.mulf %6, %5 : f32
      ein.yield %7 : f32
    }
    %3 = ein.map(%2, %y) {ein.group = "k0"} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%4: f32, %5: f32):
      %6 = arith.mulf %4, %5 : f32
      ein.yield %6 : f32
    }
    %4 = ein.contract "mk,kn->mn" %0, %w {ein.group = "k1"} : (tensor<4x8xf32>, tensor<8x3xf32>) -> tensor<4x3xf32>
    %5 = ein.map(%0) {ein.group = "k2"} : (tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%6: f32):
      %7 = arith.addf %6, %6 : f32
      ein.yield %7 : f32
    }
    func.return %0, %4, %5, %3 : tensor<4x8xf32>, tensor<4x3xf32>, tensor<4x8xf32>, tensor<4x8xf32>
  }
}
