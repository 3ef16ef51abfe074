builtin.module {
  func.func @fused_0(%x: tensor<2x4x96x96xbf16>) -> tensor<2x4x96x96xbf16> {
    %0 = ein.view reshape %x : tensor<2x4x96x96xbf16> -> tensor<2x9x4096xbf16>
    %1 = ein.map(%0) : (tensor<2x9x4096xbf16>) -> tensor<2x9x4096xf32> {
    ^bb0(%2: bf16):
      %3 = arith.extf %2 : bf16 to f32
      ein.yield %3 : f32
    }
    %2 = ein.reduce mean [2] keepdim %1 : tensor<2x9x4096xf32> -> tensor<2x9x1xf32>
    %3 = ein.map(%1, %2) : (tensor<2x9x4096xf32>, tensor<2x9x1xf32>) -> tensor<2x9x4096xf32> {
    ^bb0(%4: f32, %5: f32):
      %6 = arith.subf %4, %5 : f32
      %7 = arith.mulf %6, %6 : f32
      ein.yield %7 : f32
    }
    %4 = ein.reduce sum [2] %3 : tensor<2x9x4096xf32> -> tensor<2x9xf32>
    %5 = ein.view reshape %2 : tensor<2x9x1xf32> -> tensor<2x9x1x1xf32>
    %6 = ein.view reshape %4 : tensor<2x9xf32> -> tensor<2x9x1x1xf32>
    %7 = ein.reduce mean [1, 2, 3] keepdim %5 : tensor<2x9x1x1xf32> -> tensor<2x1x1x1xf32>
    %8 = ein.map(%6, %5, %7) : (tensor<2x9x1x1xf32>, tensor<2x9x1x1xf32>, tensor<2x1x1x1xf32>) -> tensor<2x9x1x1xf32> {
    ^bb0(%9: f32, %10: f32, %11: f32):
      %12 = arith.subf %10, %11 : f32
      %13 = arith.mulf %12, %12 : f32
      %14 = arith.constant 4.096000e+03 : f32
      %15 = arith.mulf %13, %14 : f32
      %16 = arith.addf %9, %15 : f32
      ein.yield %16 : f32
    }
    %9 = ein.reduce sum [1, 2, 3] %8 : tensor<2x9x1x1xf32> -> tensor<2xf32>
    %10 = ein.view reshape %9 : tensor<2xf32> -> tensor<2x1x1x1xf32>
    %11 = ein.map(%7, %10, %x) : (tensor<2x1x1x1xf32>, tensor<2x1x1x1xf32>, tensor<2x4x96x96xbf16>) -> tensor<2x4x96x96xbf16> {
    ^bb0(%12: f32, %13: f32, %14: bf16):
      %15 = arith.extf %14 : bf16 to f32
      %16 = arith.constant 3.686400e+04 : f32
      %17 = arith.divf %13, %16 : f32
      %18 = arith.constant 1.000000e-05 : f32
      %19 = arith.addf %17, %18 : f32
      %20 = math.rsqrt %19 : f32
      %21 = arith.subf %15, %12 : f32
      %22 = arith.mulf %21, %20 : f32
      %23 = arith.truncf %22 : f32 to bf16
      ein.yield %23 : bf16
    }
    func.return %11 : tensor<2x4x96x96xbf16>
  }
}
