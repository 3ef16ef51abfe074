builtin.module {
  func.func @band(%q: tensor<1x3x4x8x16xf32>, %k: tensor<1x3x4x24x16xf32>, %m: tensor<1x1x4x8x24xf32>) -> tensor<1x3x4x8x24xf32> {
    %0 = ein.view permute [0, 1, 2, 4, 3] %k : tensor<1x3x4x24x16xf32> -> tensor<1x3x4x16x24xf32>
    %1 = ein.view reshape %q : tensor<1x3x4x8x16xf32> -> tensor<12x8x16xf32>
    %2 = ein.view reshape %0 : tensor<1x3x4x16x24xf32> -> tensor<12x16x24xf32>
    %3 = ein.contract "bmk,bkn->bmn" %1, %2 : (tensor<12x8x16xf32>, tensor<12x16x24xf32>) -> tensor<12x8x24xf32>
    %4 = ein.view reshape %3 : tensor<12x8x24xf32> -> tensor<1x3x4x8x24xf32>
    %5 = ein.map(%4, %m) : (tensor<1x3x4x8x24xf32>, tensor<1x1x4x8x24xf32>) -> tensor<1x3x4x8x24xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.constant 1.250000e-01 : f32
      %9 = arith.mulf %6, %8 : f32
      %10 = arith.addf %9, %7 : f32
      ein.yield %10 : f32
    }
    func.return %5 : tensor<1x3x4x8x24xf32>
  }
}
