builtin.module {
  func.func @softmax_then_norm(%x: tensor<4x10xf32>, %g: tensor<10xf32>) -> (tensor<4x10xf32>, tensor<4xf32>) {
    %0 = ein.reduce max [1] keepdim %x {ein.group = "k0"} : tensor<4x10xf32> -> tensor<4x1xf32>
    %1 = ein.map(%x, %0) {ein.group = "k0"} : (tensor<4x10xf32>, tensor<4x1xf32>) -> tensor<4x10xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.subf %2, %3 : f32
      %5 = math.exp %4 : f32
      ein.yield %5 : f32
    }
    %2 = ein.reduce sum [1] keepdim %1 {ein.group = "k0"} : tensor<4x10xf32> -> tensor<4x1xf32>
    %3 = ein.map(%1, %2, %g) {ein.group = "k0"} : (tensor<4x10xf32>, tensor<4x1xf32>, tensor<10xf32>) -> tensor<4x10xf32> {
    ^bb0(%4: f32, %5: f32, %6: f32):
      %7 = arith.divf %4, %5 : f32
      %8 = arith.mulf %7, %6 : f32
      ein.yield %8 : f32
    }
    %4 = ein.map(%x) {ein.group = "k1"} : (tensor<4x10xf32>) -> tensor<4x10xf32> {
    ^bb0(%5: f32):
      %6 = arith.mulf %5, %5 : f32
      ein.yield %6 : f32
    }
    %5 = ein.reduce mean [1] %4 {ein.group = "k1"} : tensor<4x10xf32> -> tensor<4xf32>
    %6 = ein.map(%5) {ein.group = "k1"} : (tensor<4xf32>) -> tensor<4xf32> {
    ^bb0(%7: f32):
      %8 = math.sqrt %7 : f32
      ein.yield %8 : f32
    }
    func.return %3, %6 : tensor<4x10xf32>, tensor<4xf32>
  }
}
