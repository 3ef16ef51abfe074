builtin.module {
  func.func @fused_0(%x: tensor<2x3x24xbf16>, %norm_weight: tensor<24xbf16> {ein.param = "norm.weight"}, %lin_weight: tensor<16x24xbf16> {ein.param = "lin.weight"}) -> tensor<2x3x16xbf16> {
    %0 = ein.map(%x) : (tensor<2x3x24xbf16>) -> tensor<2x3x24xf32> {
    ^bb0(%1: bf16):
      %2 = arith.extf %1 : bf16 to f32
      ein.yield %2 : f32
    }
    %1 = ein.map(%0) : (tensor<2x3x24xf32>) -> tensor<2x3x24xf32> {
    ^bb0(%2: f32):
      %3 = arith.mulf %2, %2 : f32
      ein.yield %3 : f32
    }
    %2 = ein.reduce mean [2] keepdim %1 : tensor<2x3x24xf32> -> tensor<2x3x1xf32>
    %3 = ein.map(%norm_weight, %0, %2) : (tensor<24xbf16>, tensor<2x3x24xf32>, tensor<2x3x1xf32>) -> tensor<2x3x24xbf16> {
    ^bb0(%4: bf16, %5: f32, %6: f32):
      %7 = arith.constant 1.000000e-06 : f32
      %8 = arith.addf %6, %7 : f32
      %9 = math.rsqrt %8 : f32
      %10 = arith.mulf %5, %9 : f32
      %11 = arith.extf %4 : bf16 to f32
      %12 = arith.mulf %10, %11 : f32
      %13 = arith.truncf %12 : f32 to bf16
      ein.yield %13 : bf16
    }
    %4 = ein.contract "abk,nk->abn" %3, %lin_weight : (tensor<2x3x24xbf16>, tensor<16x24xbf16>) -> tensor<2x3x16xbf16>
    func.return %4 : tensor<2x3x16xbf16>
  }
}
