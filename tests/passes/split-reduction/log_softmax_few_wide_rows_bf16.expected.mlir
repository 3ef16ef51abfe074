builtin.module {
  func.func @fused_0(%x: tensor<2x32768xbf16>) -> tensor<2x32768xbf16> {
    %0 = ein.view reshape %x : tensor<2x32768xbf16> -> tensor<2x8x4096xbf16>
    %1 = ein.map(%0) : (tensor<2x8x4096xbf16>) -> tensor<2x8x4096xf32> {
    ^bb0(%2: bf16):
      %3 = arith.extf %2 : bf16 to f32
      ein.yield %3 : f32
    }
    %2 = ein.reduce max [2] keepdim %1 : tensor<2x8x4096xf32> -> tensor<2x8x1xf32>
    %3 = ein.map(%1, %2) : (tensor<2x8x4096xf32>, tensor<2x8x1xf32>) -> tensor<2x8x4096xf32> {
    ^bb0(%4: f32, %5: f32):
      %6 = arith.constant 0xff800000 : f32
      %7 = arith.cmpf oeq, %5, %6 : f32
      %8 = arith.constant 0.000000e+00 : f32
      %9 = arith.select %7, %8, %5 : f32
      %10 = arith.subf %4, %9 : f32
      %11 = math.exp %10 : f32
      ein.yield %11 : f32
    }
    %4 = ein.reduce sum [2] %3 : tensor<2x8x4096xf32> -> tensor<2x8xf32>
    %5 = ein.view reshape %2 : tensor<2x8x1xf32> -> tensor<2x8xf32>
    %6 = ein.reduce max [1] keepdim %5 : tensor<2x8xf32> -> tensor<2x1xf32>
    %7 = ein.map(%4, %5, %6) : (tensor<2x8xf32>, tensor<2x8xf32>, tensor<2x1xf32>) -> tensor<2x8xf32> {
    ^bb0(%8: f32, %9: f32, %10: f32):
      %11 = arith.subf %9, %10 : f32
      %12 = math.exp %11 : f32
      %13 = arith.mulf %8, %12 : f32
      ein.yield %13 : f32
    }
    %8 = ein.reduce sum [1] %7 : tensor<2x8xf32> -> tensor<2xf32>
    %9 = ein.view reshape %8 : tensor<2xf32> -> tensor<2x1xf32>
    %10 = ein.map(%9, %6, %x) : (tensor<2x1xf32>, tensor<2x1xf32>, tensor<2x32768xbf16>) -> tensor<2x32768xbf16> {
    ^bb0(%11: f32, %12: f32, %13: bf16):
      %14 = arith.extf %13 : bf16 to f32
      %15 = arith.subf %14, %12 : f32
      %16 = math.log %11 : f32
      %17 = arith.subf %15, %16 : f32
      %18 = arith.truncf %17 : f32 to bf16
      ein.yield %18 : bf16
    }
    func.return %10 : tensor<2x32768xbf16>
  }
}
