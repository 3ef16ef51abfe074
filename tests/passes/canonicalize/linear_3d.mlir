builtin.module {
  func.func @linear(%x: tensor<2x5x8xf32>, %w: tensor<16x8xf32>, %b: tensor<16xf32>) -> tensor<2x5x16xf32> {
    %0 = ein.view permute [1, 0] %w : tensor<16x8xf32> -> tensor<8x16xf32>
    %1 = ein.view reshape %x : tensor<2x5x8xf32> -> tensor<10x8xf32>
    %2 = ein.contract "mk,kn->mn" %1, %0 : (tensor<10x8xf32>, tensor<8x16xf32>) -> tensor<10x16xf32>
    %3 = ein.view reshape %2 : tensor<10x16xf32> -> tensor<2x5x16xf32>
    %4 = ein.map(%3, %b) : (tensor<2x5x16xf32>, tensor<16xf32>) -> tensor<2x5x16xf32> {
    ^bb0(%5: f32, %6: f32):
      %7 = arith.addf %5, %6 : f32
      ein.yield %7 : f32
    }
    %5 = ein.map(%4) : (tensor<2x5x16xf32>) -> tensor<2x5x16xf32> {
    ^bb0(%6: f32):
      %7 = arith.constant 0.000000e+00 : f32
      %8 = arith.maximumf %6, %7 : f32
      ein.yield %8 : f32
    }
    func.return %5 : tensor<2x5x16xf32>
  }
}
