builtin.module {
  func.func @silu_backward(%gate: tensor<4x8xbf16>, %up: tensor<4x8xbf16>, %grad: tensor<4x8xbf16>) -> (tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x1xf32>) {
    %0 = ein.map(%up, %gate) : (tensor<4x8xbf16>, tensor<4x8xbf16>) -> tensor<4x8xbf16> {
    ^bb0(%1: bf16, %2: bf16):
      %3 = arith.extf %2 : bf16 to f32
      %4 = arith.negf %3 : f32
      %5 = math.exp %4 : f32
      %6 = arith.constant 1.000000e+00 : f32
      %7 = arith.addf %6, %5 : f32
      %8 = arith.divf %6, %7 : f32
      %9 = arith.extf %2 : bf16 to f32
      %10 = arith.mulf %9, %8 : f32
      %11 = arith.extf %1 : bf16 to f32
      %12 = arith.mulf %10, %11 : f32
      %13 = arith.truncf %12 : f32 to bf16
      ein.yield %13 : bf16
    }
    %1 = ein.map(%grad, %gate) : (tensor<4x8xbf16>, tensor<4x8xbf16>) -> tensor<4x8xbf16> {
    ^bb0(%2: bf16, %3: bf16):
      %4 = arith.extf %3 : bf16 to f32
      %5 = arith.negf %4 : f32
      %6 = math.exp %5 : f32
      %7 = arith.constant 1.000000e+00 : f32
      %8 = arith.addf %7, %6 : f32
      %9 = arith.divf %7, %8 : f32
      %10 = arith.extf %3 : bf16 to f32
      %11 = arith.mulf %9, %10 : f32
      %12 = arith.extf %2 : bf16 to f32
      %13 = arith.mulf %11, %12 : f32
      %14 = arith.truncf %13 : f32 to bf16
      ein.yield %14 : bf16
    }
    %2 = ein.map(%up) : (tensor<4x8xbf16>) -> tensor<4x8xf32> {
    ^bb0(%3: bf16):
      %4 = arith.extf %3 : bf16 to f32
      ein.yield %4 : f32
    }
    %3 = ein.reduce sum [1] keepdim %2 : tensor<4x8xf32> -> tensor<4x1xf32>
    %4 = ein.map(%2, %3) : (tensor<4x8xf32>, tensor<4x1xf32>) -> tensor<4x8xf32> {
    ^bb0(%5: f32, %6: f32):
      %7 = arith.subf %5, %6 : f32
      ein.yield %7 : f32
    }
    %5 = ein.reduce sum [1] keepdim %4 : tensor<4x8xf32> -> tensor<4x1xf32>
    func.return %0, %1, %5 : tensor<4x8xbf16>, tensor<4x8xbf16>, tensor<4x1xf32>
  }
}
