builtin.module {
  func.func @mask(%a: tensor<1x1x6x8x1xf32>, %b: tensor<1x3x6x1x12xf32>, %s: tensor<1x3x4x8x12xf32>, %t: tensor<1x3x1x8x12xf32>) -> (tensor<1x3x4x8x12xf32>, tensor<1x3x1x8x12xf32>) {
    %0 = ein.map(%a, %b) : (tensor<1x1x6x8x1xf32>, tensor<1x3x6x1x12xf32>) -> tensor<1x3x6x8x12xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.mulf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.view slice dim 2 [1:5:1] %0 : tensor<1x3x6x8x12xf32> -> tensor<1x3x4x8x12xf32>
    %2 = ein.view slice dim 2 [5:6:1] %0 : tensor<1x3x6x8x12xf32> -> tensor<1x3x1x8x12xf32>
    %3 = ein.map(%s, %1) : (tensor<1x3x4x8x12xf32>, tensor<1x3x4x8x12xf32>) -> tensor<1x3x4x8x12xf32> {
    ^bb0(%4: f32, %5: f32):
      %6 = arith.constant -1.000000e+04 : f32
      %7 = arith.mulf %5, %6 : f32
      %8 = arith.addf %4, %7 : f32
      ein.yield %8 : f32
    }
    %4 = ein.map(%t, %2) : (tensor<1x3x1x8x12xf32>, tensor<1x3x1x8x12xf32>) -> tensor<1x3x1x8x12xf32> {
    ^bb0(%5: f32, %6: f32):
      %7 = arith.addf %5, %6 : f32
      ein.yield %7 : f32
    }
    func.return %3, %4 : tensor<1x3x4x8x12xf32>, tensor<1x3x1x8x12xf32>
  }
}
