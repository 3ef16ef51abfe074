builtin.module {
  func.func @fused_0(%x: tensor<2x4x96x96xbf16>) -> tensor<2x4x96x96xbf16> {
    %0 = ein.map(%x) : (tensor<2x4x96x96xbf16>) -> tensor<2x4x96x96xf32> {
    ^bb0(%1: bf16):
      %2 = arith.extf %1 : bf16 to f32
      ein.yield %2 : f32
    }
    %1 = ein.reduce mean [1, 2, 3] keepdim %0 : tensor<2x4x96x96xf32> -> tensor<2x1x1x1xf32>
    %2 = ein.map(%0, %1) : (tensor<2x4x96x96xf32>, tensor<2x1x1x1xf32>) -> tensor<2x4x96x96xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.subf %3, %4 : f32
      %6 = arith.mulf %5, %5 : f32
      ein.yield %6 : f32
    }
    %3 = ein.reduce sum [1, 2, 3] keepdim %2 : tensor<2x4x96x96xf32> -> tensor<2x1x1x1xf32>
    %4 = ein.map(%0, %1, %3) : (tensor<2x4x96x96xf32>, tensor<2x1x1x1xf32>, tensor<2x1x1x1xf32>) -> tensor<2x4x96x96xbf16> {
    ^bb0(%5: f32, %6: f32, %7: f32):
      %8 = arith.constant 3.686400e+04 : f32
      %9 = arith.divf %7, %8 : f32
      %10 = arith.constant 1.000000e-05 : f32
      %11 = arith.addf %9, %10 : f32
      %12 = math.rsqrt %11 : f32
      %13 = arith.subf %5, %6 : f32
      %14 = arith.mulf %13, %12 : f32
      %15 = arith.truncf %14 : f32 to bf16
      ein.yield %15 : bf16
    }
    func.return %4 : tensor<2x4x96x96xbf16>
  }
}
