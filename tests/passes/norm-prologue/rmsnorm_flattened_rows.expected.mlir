builtin.module {
  func.func @fused_0(%x: tensor<2x3x24xf32>, %a: tensor<2x3x24xf32>, %norm_weight: tensor<24xf32> {ein.param = "norm.weight"}, %lin_weight: tensor<24x16xf32> {ein.param = "lin.weight"}) -> (tensor<6x16xf32>, tensor<2x3x24xf32>) {
    %0 = ein.map(%x, %a) : (tensor<2x3x24xf32>, tensor<2x3x24xf32>) -> tensor<2x3x24xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.addf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.map(%0) : (tensor<2x3x24xf32>) -> tensor<2x3x24xf32> {
    ^bb0(%2: f32):
      %3 = arith.mulf %2, %2 : f32
      ein.yield %3 : f32
    }
    %2 = ein.reduce sum [2] keepdim %1 : tensor<2x3x24xf32> -> tensor<2x3x1xf32>
    %3 = ein.view reshape %2 : tensor<2x3x1xf32> -> tensor<6x1xf32>
    %4 = ein.view reshape %norm_weight : tensor<24xf32> -> tensor<24x1xf32>
    %5 = ein.map(%lin_weight, %4) : (tensor<24x16xf32>, tensor<24x1xf32>) -> tensor<24x16xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.mulf %6, %7 : f32
      ein.yield %8 : f32
    }
    %6 = ein.view reshape %0 : tensor<2x3x24xf32> -> tensor<6x24xf32>
    %7 = ein.contract "mk,kn->mn" %6, %5 : (tensor<6x24xf32>, tensor<24x16xf32>) -> tensor<6x16xf32>
    %8 = ein.map(%7, %3) : (tensor<6x16xf32>, tensor<6x1xf32>) -> tensor<6x16xf32> {
    ^bb0(%9: f32, %10: f32):
      %11 = arith.constant 2.400000e+01 : f32
      %12 = arith.divf %10, %11 : f32
      %13 = arith.constant 1.000000e+00 : f32
      %14 = arith.constant 1.000000e-06 : f32
      %15 = arith.addf %12, %14 : f32
      %16 = math.rsqrt %15 : f32
      %17 = arith.mulf %13, %16 : f32
      %18 = arith.mulf %9, %17 : f32
      ein.yield %18 : f32
    }
    func.return %8, %0 : tensor<6x16xf32>, tensor<2x3x24xf32>
  }
}
