builtin.module {
  func.func @rope_freqs(%inv_freq: tensor<1x8x1xf32>, %pos: tensor<1x1x16xf32>) -> tensor<1x16x8xf32> {
    %0 = ein.contract "bmk,bkn->bmn" %inv_freq, %pos : (tensor<1x8x1xf32>, tensor<1x1x16xf32>) -> tensor<1x8x16xf32>
    %1 = ein.view permute [0, 2, 1] %0 : tensor<1x8x16xf32> -> tensor<1x16x8xf32>
    func.return %1 : tensor<1x16x8xf32>
  }
  func.func @outer_transposed(%a: tensor<5x1xf32>, %b: tensor<3x1xf32>) -> tensor<3x5xf32> {
    %0 = ein.contract "mk,nk->nm" %a, %b : (tensor<5x1xf32>, tensor<3x1xf32>) -> tensor<3x5xf32>
    func.return %0 : tensor<3x5xf32>
  }
}
