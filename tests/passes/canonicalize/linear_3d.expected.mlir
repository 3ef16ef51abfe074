builtin.module {
  func.func @linear(%x: tensor<2x5x8xf32>, %w: tensor<16x8xf32>, %b: tensor<16xf32>) -> tensor<2x5x16xf32> {
    %0 = ein.contract "abk,nk->abn" %x, %w : (tensor<2x5x8xf32>, tensor<16x8xf32>) -> tensor<2x5x16xf32>
    %1 = ein.map(%0, %b) : (tensor<2x5x16xf32>, tensor<16xf32>) -> tensor<2x5x16xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.addf %2, %3 : f32
      %5 = arith.constant 0.000000e+00 : f32
      %6 = arith.maximumf %4, %5 : f32
      ein.yield %6 : f32
    }
    func.return %1 : tensor<2x5x16xf32>
  }
}
