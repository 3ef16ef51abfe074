builtin.module {
  func.func @fused_0(%x: tensor<2x32768xbf16>) -> tensor<2x32768xbf16> {
    %0 = ein.map(%x) : (tensor<2x32768xbf16>) -> tensor<2x32768xf32> {
    ^bb0(%1: bf16):
      %2 = arith.extf %1 : bf16 to f32
      ein.yield %2 : f32
    }
    %1 = ein.reduce max [1] keepdim %0 : tensor<2x32768xf32> -> tensor<2x1xf32>
    %2 = ein.map(%0, %1) : (tensor<2x32768xf32>, tensor<2x1xf32>) -> tensor<2x32768xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.subf %3, %4 : f32
      ein.yield %5 : f32
    }
    %3 = ein.map(%2) : (tensor<2x32768xf32>) -> tensor<2x32768xf32> {
    ^bb0(%4: f32):
      %5 = math.exp %4 : f32
      ein.yield %5 : f32
    }
    %4 = ein.reduce sum [1] keepdim %3 : tensor<2x32768xf32> -> tensor<2x1xf32>
    %5 = ein.map(%2, %4) : (tensor<2x32768xf32>, tensor<2x1xf32>) -> tensor<2x32768xbf16> {
    ^bb0(%6: f32, %7: f32):
      %8 = math.log %7 : f32
      %9 = arith.subf %6, %8 : f32
      %10 = arith.truncf %9 : f32 to bf16
      ein.yield %10 : bf16
    }
    func.return %5 : tensor<2x32768xbf16>
  }
}
