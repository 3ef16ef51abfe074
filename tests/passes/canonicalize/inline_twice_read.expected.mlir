builtin.module {
  func.func @twice(%x: tensor<5x3xbf16>, %y: tensor<5x3xf32>) -> (tensor<5x3xf32>, tensor<5x3xf32>) {
    %0 = ein.map(%y, %x) : (tensor<5x3xf32>, tensor<5x3xbf16>) -> tensor<5x3xf32> {
    ^bb0(%1: f32, %2: bf16):
      %3 = arith.extf %2 : bf16 to f32
      %4 = arith.mulf %3, %1 : f32
      %5 = arith.subf %4, %3 : f32
      ein.yield %5 : f32
    }
    %1 = ein.map(%y, %x) : (tensor<5x3xf32>, tensor<5x3xbf16>) -> tensor<5x3xf32> {
    ^bb0(%2: f32, %3: bf16):
      %4 = arith.extf %3 : bf16 to f32
      %5 = arith.divf %2, %4 : f32
      ein.yield %5 : f32
    }
    func.return %0, %1 : tensor<5x3xf32>, tensor<5x3xf32>
  }
}
