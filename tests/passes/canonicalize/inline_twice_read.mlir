builtin.module {
  func.func @twice(%x: tensor<5x3xbf16>, %y: tensor<5x3xf32>) -> (tensor<5x3xf32>, tensor<5x3xf32>) {
    %0 = ein.map(%x) : (tensor<5x3xbf16>) -> tensor<5x3xf32> {
    ^bb0(%1: bf16):
      %2 = arith.extf %1 : bf16 to f32
      ein.yield %2 : f32
    }
    %1 = ein.map(%0, %y, %0) : (tensor<5x3xf32>, tensor<5x3xf32>, tensor<5x3xf32>) -> tensor<5x3xf32> {
    ^bb0(%2: f32, %3: f32, %4: f32):
      %5 = arith.mulf %2, %3 : f32
      %6 = arith.subf %5, %4 : f32
      ein.yield %6 : f32
    }
    %2 = ein.map(%y, %0) : (tensor<5x3xf32>, tensor<5x3xf32>) -> tensor<5x3xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.divf %3, %4 : f32
      ein.yield %5 : f32
    }
    func.return %1, %2 : tensor<5x3xf32>, tensor<5x3xf32>
  }
}
