builtin.module {
  func.func @fused_0(%x: tensor<2x3x24xbf16>, %norm_weight: tensor<24xbf16> {ein.param = "norm.weight"}, %lin_weight: tensor<16x24xbf16> {ein.param = "lin.weight"}) -> tensor<2x3x16xbf16> {
    %0 = ein.view reshape %norm_weight : tensor<24xbf16> -> tensor<1x24xbf16>
    %1 = ein.map(%lin_weight, %0) : (tensor<16x24xbf16>, tensor<1x24xbf16>) -> tensor<16x24xbf16> {
    ^bb0(%2: bf16, %3: bf16):
      %4 = arith.extf %2 : bf16 to f32
      %5 = arith.extf %3 : bf16 to f32
      %6 = arith.mulf %4, %5 : f32
      %7 = arith.truncf %6 : f32 to bf16
      ein.yield %7 : bf16
    }
    %2 = ein.contract "abk,nk->abn" %x, %1 : (tensor<2x3x24xbf16>, tensor<16x24xbf16>) -> tensor<2x3x16xf32>
    %3 = ein.map(%x) : (tensor<2x3x24xbf16>) -> tensor<2x3x24xf32> {
    ^bb0(%4: bf16):
      %5 = arith.extf %4 : bf16 to f32
      %6 = arith.mulf %5, %5 : f32
      ein.yield %6 : f32
    }
    %4 = ein.reduce sum [2] keepdim %3 : tensor<2x3x24xf32> -> tensor<2x3x1xf32>
    %5 = ein.map(%2, %4) : (tensor<2x3x16xf32>, tensor<2x3x1xf32>) -> tensor<2x3x16xbf16> {
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
