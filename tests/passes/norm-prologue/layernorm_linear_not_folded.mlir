builtin.module {
  func.func @fused_0(%x: tensor<4x32xf32>, %norm_weight: tensor<32xf32> {ein.param = "norm.weight"}, %norm_bias: tensor<32xf32> {ein.param = "norm.bias"}, %lin_weight: tensor<16x32xf32> {ein.param = "lin.weight"}, %lin_bias: tensor<16xf32> {ein.param = "lin.bias"}) -> tensor<4x16xf32> {
    %0 = ein.reduce mean [1] keepdim %x : tensor<4x32xf32> -> tensor<4x1xf32>
    %1 = ein.map(%x, %0) : (tensor<4x32xf32>, tensor<4x1xf32>) -> tensor<4x32xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.subf %2, %3 : f32
      %5 = arith.mulf %4, %4 : f32
      ein.yield %5 : f32
    }
    %2 = ein.reduce sum [1] keepdim %1 : tensor<4x32xf32> -> tensor<4x1xf32>
    %3 = ein.map(%norm_bias, %norm_weight, %x, %0, %2) : (tensor<32xf32>, tensor<32xf32>, tensor<4x32xf32>, tensor<4x1xf32>, tensor<4x1xf32>) -> tensor<4x32xf32> {
    ^bb0(%4: f32, %5: f32, %6: f32, %7: f32, %8: f32):
      %9 = arith.constant 3.200000e+01 : f32
      %10 = arith.divf %8, %9 : f32
      %11 = arith.constant 1.000000e-05 : f32
      %12 = arith.addf %10, %11 : f32
      %13 = math.rsqrt %12 : f32
      %14 = arith.subf %6, %7 : f32
      %15 = arith.mulf %14, %13 : f32
      %16 = arith.mulf %15, %5 : f32
      %17 = arith.addf %16, %4 : f32
      ein.yield %17 : f32
    }
    %4 = ein.contract "mk,nk->mn" %3, %lin_weight : (tensor<4x32xf32>, tensor<16x32xf32>) -> tensor<4x16xf32>
    %5 = ein.map(%lin_bias, %4) : (tensor<16xf32>, tensor<4x16xf32>) -> tensor<4x16xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.addf %6, %7 : f32
      ein.yield %8 : f32
    }
    func.return %5 : tensor<4x16xf32>
  }
}
