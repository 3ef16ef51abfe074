builtin.module {
  func.func @fused_0(%x: tensor<2x3x24xbf16>, %norm_weight: tensor<24xbf16> {ein.param = "norm.weight"}, %lin_weight: tensor<16x24xbf16> {ein.param = "lin.weight"}) -> tensor<2x3x16xbf16> {
    %0 = ein.map(%x) : (tensor<2x3x24xbf16>) -> tensor<2x3x24xf32> {
    ^bb0(%1: bf16):
      %2 = arith.extf %1 : bf16 to f32
      %3 = arith.mulf %2, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.reduce sum [2] keepdim %0 : tensor<2x3x24xf32> -> tensor<2x3x1xf32>
    %2 = ein.view reshape %norm_weight : tensor<24xbf16> -> tensor<1x24xbf16>
    %3 = ein.map(%lin_weight, %2) : (tensor<16x24xbf16>, tensor<1x24xbf16>) -> tensor<16x24xbf16> {
    ^bb0(%4: bf16, %5: bf16):
      %6 = arith.extf %4 : bf16 to f32
      %7 = arith.extf %5 : bf16 to f32
      %8 = arith.mulf %6, %7 : f32
      %9 = arith.truncf %8 : f32 to bf16
      ein.yield %9 : bf16
    }
    %4 = ein.contract "abk,nk->abn" %x, %3 : (tensor<2x3x24xbf16>, tensor<16x24xbf16>) -> tensor<2x3x16xf32>
    %5 = ein.map(%4, %1) : (tensor<2x3x16xf32>, tensor<2x3x1xf32>) -> tensor<2x3x16xbf16> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.constant 2.400000e+01 : f32
      %9 = arith.divf %7, %8 : f32
      %10 = arith.constant 1.000000e+00 : f32
      %11 = arith.constant 1.000000e-06 : f32
      %12 = arith.addf %9, %11 : f32
      %13 = math.rsqrt %12 : f32
      %14 = arith.mulf %10, %13 : f32
      %15 = arith.mulf %6, %14 : f32
      %16 = arith.truncf %15 : f32 to bf16
      ein.yield %16 : bf16
    }
    func.return %5 : tensor<2x3x16xbf16>
  }
}
