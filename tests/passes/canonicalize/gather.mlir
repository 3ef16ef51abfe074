builtin.module {
  func.func @embedding_norm(%w: tensor<32x8xf32>, %ids: tensor<2x5xi64>) -> tensor<2x5x8xf32> {
    %0 = ein.view reshape %ids : tensor<2x5xi64> -> tensor<2x5x1xi64>
    %1 = ein.gather %w [i0, d2] (%0) : (tensor<32x8xf32>, tensor<2x5x1xi64>) -> tensor<2x5x8xf32>
    %2 = ein.map(%1) : (tensor<2x5x8xf32>) -> tensor<2x5x8xf32> {
    ^bb0(%3: f32):
      %4 = arith.mulf %3, %3 : f32
      ein.yield %4 : f32
    }
    %5 = ein.map(%2) : (tensor<2x5x8xf32>) -> tensor<2x5x8xf32> {
    ^bb0(%6: f32):
      %7 = math.exp %6 : f32
      ein.yield %7 : f32
    }
    func.return %5 : tensor<2x5x8xf32>
  }
}
