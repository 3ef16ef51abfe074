builtin.module {
  func.func @mask(%a: tensor<1x1x6x8x1xf32>, %b: tensor<1x3x6x1x12xf32>, %s: tensor<1x3x4x8x12xf32>, %t: tensor<1x3x1x8x12xf32>) -> (tensor<1x3x4x8x12xf32>, tensor<1x3x1x8x12xf32>) {
    %0 = ein.view slice dim 2 [1:5:1] %a : tensor<1x1x6x8x1xf32> -> tensor<1x1x4x8x1xf32>
    %1 = ein.view slice dim 2 [1:5:1] %b : tensor<1x3x6x1x12xf32> -> tensor<1x3x4x1x12xf32>
    %2 = ein.view slice dim 2 [5:6:1] %a : tensor<1x1x6x8x1xf32> -> tensor<1x1x1x8x1xf32>
    %3 = ein.view slice dim 2 [5:6:1] %b : tensor<1x3x6x1x12xf32> -> tensor<1x3x1x1x12xf32>
    %4 = ein.map(%s, %0, %1) : (tensor<1x3x4x8x12xf32>, tensor<1x1x4x8x1xf32>, tensor<1x3x4x1x12xf32>) -> tensor<1x3x4x8x12xf32> {
    ^bb0(%5: f32, %6: f32, %7: f32):
      %8 = arith.mulf %6, %7 : f32
      %9 = arith.constant -1.000000e+04 : f32
      %10 = arith.mulf %8, %9 : f32
      %11 = arith.addf %5, %10 : f32
      ein.yield %11 : f32
    }
    %5 = ein.map(%t, %2, %3) : (tensor<1x3x1x8x12xf32>, tensor<1x1x1x8x1xf32>, tensor<1x3x1x1x12xf32>) -> tensor<1x3x1x8x12xf32> {
    ^bb0(%6: f32, %7: f32, %8: f32):
      %9 = arith.mulf %7, %8 : f32
      %10 = arith.addf %6, %9 : f32
      ein.yield %10 : f32
    }
    func.return %4, %5 : tensor<1x3x4x8x12xf32>, tensor<1x3x1x8x12xf32>
  }
}
