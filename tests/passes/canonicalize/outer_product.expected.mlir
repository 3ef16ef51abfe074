builtin.module {
  func.func @rope_freqs(%inv_freq: tensor<1x8x1xf32>, %pos: tensor<1x1x16xf32>) -> tensor<1x16x8xf32> {
    %0 = ein.map(%inv_freq, %pos) : (tensor<1x8x1xf32>, tensor<1x1x16xf32>) -> tensor<1x8x16xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.mulf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.view permute [0, 2, 1] %0 : tensor<1x8x16xf32> -> tensor<1x16x8xf32>
    func.return %1 : tensor<1x16x8xf32>
  }
  func.func @outer_transposed(%a: tensor<5x1xf32>, %b: tensor<3x1xf32>) -> tensor<3x5xf32> {
    %0 = ein.view reshape %a : tensor<5x1xf32> -> tensor<1x5xf32>
    %1 = ein.map(%0, %b) : (tensor<1x5xf32>, tensor<3x1xf32>) -> tensor<3x5xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.mulf %2, %3 : f32
      ein.yield %4 : f32
    }
    func.return %1 : tensor<3x5xf32>
  }
}
