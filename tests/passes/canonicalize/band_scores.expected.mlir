builtin.module {
  func.func @band(%q: tensor<1x3x4x8x16xf32>, %k: tensor<1x3x4x24x16xf32>, %m: tensor<1x1x4x8x24xf32>) -> tensor<1x3x4x8x24xf32> {
    %0 = ein.contract "acdmk,acdnk->acdmn" %q, %k : (tensor<1x3x4x8x16xf32>, tensor<1x3x4x24x16xf32>) -> tensor<1x3x4x8x24xf32>
    %1 = ein.map(%0, %m) : (tensor<1x3x4x8x24xf32>, tensor<1x1x4x8x24xf32>) -> tensor<1x3x4x8x24xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.constant 1.250000e-01 : f32
      %5 = arith.mulf %2, %4 : f32
      %6 = arith.addf %5, %3 : f32
      ein.yield %6 : f32
    }
    func.return %1 : tensor<1x3x4x8x24xf32>
  }
}
