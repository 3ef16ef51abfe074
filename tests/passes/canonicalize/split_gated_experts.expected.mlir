builtin.module {
  func.func @experts(%keep: tensor<7xi1>, %gate_up: tensor<7x10xbf16>) -> tensor<7x5xbf16> {
    %0 = ein.constant 0.000000e+00 : bf16 -> tensor<bf16>
    %1 = ein.view reshape %keep : tensor<7xi1> -> tensor<7x1xi1>
    %2 = ein.view slice dim 1 [0:5:1] %gate_up : tensor<7x10xbf16> -> tensor<7x5xbf16>
    %3 = ein.view slice dim 1 [5:10:1] %gate_up : tensor<7x10xbf16> -> tensor<7x5xbf16>
    %4 = ein.map(%1, %0, %3, %2) : (tensor<7x1xi1>, tensor<bf16>, tensor<7x5xbf16>, tensor<7x5xbf16>) -> tensor<7x5xbf16> {
    ^bb0(%5: i1, %6: bf16, %7: bf16, %8: bf16):
      %9 = arith.select %5, %6, %8 : bf16
      %10 = arith.select %5, %6, %7 : bf16
      %11 = arith.extf %9 : bf16 to f32
      %12 = arith.constant 1.000000e+00 : f32
      %13 = arith.negf %11 : f32
      %14 = math.exp %13 : f32
      %15 = arith.addf %12, %14 : f32
      %16 = arith.divf %11, %15 : f32
      %17 = arith.extf %10 : bf16 to f32
      %18 = arith.mulf %16, %17 : f32
      %19 = arith.truncf %18 : f32 to bf16
      ein.yield %19 : bf16
    }
    func.return %4 : tensor<7x5xbf16>
  }
  func.func @overlapping(%x: tensor<7x10xf32>) -> (tensor<7x6xf32>, tensor<7x6xf32>) {
    %0 = ein.map(%x) : (tensor<7x10xf32>) -> tensor<7x10xf32> {
    ^bb0(%1: f32):
      %2 = math.exp %1 : f32
      %3 = math.tanh %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.view slice dim 1 [0:6:1] %0 : tensor<7x10xf32> -> tensor<7x6xf32>
    %2 = ein.view slice dim 1 [4:10:1] %0 : tensor<7x10xf32> -> tensor<7x6xf32>
    %3 = ein.map(%1, %2) : (tensor<7x6xf32>, tensor<7x6xf32>) -> tensor<7x6xf32> {
    ^bb0(%4: f32, %5: f32):
      %6 = arith.addf %4, %5 : f32
      ein.yield %6 : f32
    }
    %4 = ein.map(%1, %2) : (tensor<7x6xf32>, tensor<7x6xf32>) -> tensor<7x6xf32> {
    ^bb0(%5: f32, %6: f32):
      %7 = arith.mulf %5, %6 : f32
      ein.yield %7 : f32
    }
    func.return %3, %4 : tensor<7x6xf32>, tensor<7x6xf32>
  }
}
