builtin.module {
  func.func @silu_backward(%gate: tensor<4x8xbf16>, %up: tensor<4x8xbf16>, %grad: tensor<4x8xbf16>) -> (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x1xf32>) {
    %0 = ein.map(%gate) : (tensor<4x8xbf16>) -> tensor<4x8xf32> {
    ^bb0(%1: bf16):
      %2 = arith.extf %1 : bf16 to f32
      ein.yield %2 : f32
    }
    %1 = ein.map(%0) : (tensor<4x8xf32>) -> tensor<4x8xf32> {
    ^bb0(%2: f32):
      %3 = arith.negf %2 : f32
      %4 = math.exp %3 : f32
      %5 = arith.constant 1.000000e+00 : f32
      %6 = arith.addf %5, %4 : f32
      %7 = arith.divf %5, %6 : f32
      ein.yield %7 : f32
    }
    %2 = ein.map(%0, %1, %up) : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xbf16>) -> tensor<4x8xbf16> {
    ^bb0(%3: f32, %4: f32, %5: bf16):
      %6 = arith.mulf %3, %4 : f32
      %7 = arith.extf %5 : bf16 to f32
      %8 = arith.mulf %6, %7 : f32
      %9 = arith.truncf %8 : f32 to bf16
      ein.yield %9 : bf16
    }
    %3 = ein.map(%1, %0, %grad) : (tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xbf16>) -> tensor<4x8xbf16> {
    ^bb0(%4: f32, %5: f32, %6: bf16):
      %7 = arith.mulf %4, %5 : f32
      %8 = arith.extf %6 : bf16 to f32
      %9 = arith.mulf %7, %8 : f32
      %10 = arith.truncf %9 : f32 to bf16
      ein.yield %10 : bf16
    }
    %4 = ein.map(%up) : (tensor<4x8xbf16>) -> tensor<4x8xf32> {
    ^bb0(%5: bf16):
      %6 = arith.extf %5 : bf16 to f32
      ein.yield %6 : f32
    }
    %5 = ein.reduce sum [1] keepdim %4 : tensor<4x8xf32> -> tensor<4x1xf32>
    %6 = ein.map(%4, %5) : (tensor<4x8xf32>, tensor<4x1xf32>) -> tensor<4x8xf32> {
    ^bb0(%7: f32, %8: f32):
      %9 = arith.subf %7, %8 : f32
      ein.yield %9 : f32
    }
    %7 = ein.reduce sum [1] keepdim %6 : tensor<4x8xf32> -> tensor<4x1xf32>
    func.return %2, %3, %7 : tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x1xf32>
  }
}
