builtin.module {
  func.func @fused_0(%x: tensor<2x3x24xf32>, %a: tensor<2x3x24xf32>, %norm_weight: tensor<24xf32> {ein.param = "norm.weight"}, %lin_weight: tensor<24x100xf32> {ein.param = "lin.weight"}) -> (tensor<6x100xf32>, tensor<2x3x24xf32>) {
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
    %2 = ein.reduce mean [2] keepdim %1 : tensor<2x3x24xf32> -> tensor<2x3x1xf32>
    %3 = ein.map(%norm_weight, %0, %2) : (tensor<24xf32>, tensor<2x3x24xf32>, tensor<2x3x1xf32>) -> tensor<2x3x24xf32> {
    ^bb0(%4: f32, %5: f32, %6: f32):
      %7 = arith.constant 1.000000e-06 : f32
      %8 = arith.addf %6, %7 : f32
      %9 = math.rsqrt %8 : f32
      %10 = arith.mulf %5, %9 : f32
      %11 = arith.mulf %10, %4 : f32
      ein.yield %11 : f32
    }
    %4 = ein.view reshape %3 : tensor<2x3x24xf32> -> tensor<6x24xf32>
    %5 = ein.contract "mk,kn->mn" %4, %lin_weight : (tensor<6x24xf32>, tensor<24x100xf32>) -> tensor<6x100xf32>
    func.return %5, %0 : tensor<6x100xf32>, tensor<2x3x24xf32>
  }
}
