builtin.module {
  func.func @fused_0(%x: tensor<4x32xf32>, %norm_weight: tensor<32xf32> {ein.param = "norm.weight"}, %norm_bias: tensor<32xf32> {ein.param = "norm.bias"}, %lin_weight: tensor<16x32xf32> {ein.param = "lin.weight"}, %lin_bias: tensor<16xf32> {ein.param = "lin.bias"}) -> tensor<4x16xf32> {
    %0 = ein.map(%x) : (tensor<4x32xf32>) -> tensor<4x32xf32> {
    ^bb0(%1: f32):
      ein.yield %1 : f32
    }
    %1 = ein.reduce sum [1] keepdim %0 : tensor<4x32xf32> -> tensor<4x1xf32>
    %2 = ein.map(%x, %1) : (tensor<4x32xf32>, tensor<4x1xf32>) -> tensor<4x32xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.constant 3.200000e+01 : f32
      %6 = arith.divf %4, %5 : f32
      %7 = arith.subf %3, %6 : f32
      %8 = arith.mulf %7, %7 : f32
      ein.yield %8 : f32
    }
    %3 = ein.reduce sum [1] keepdim %2 : tensor<4x32xf32> -> tensor<4x1xf32>
    %4 = ein.view reshape %norm_weight : tensor<32xf32> -> tensor<1x32xf32>
    %5 = ein.map(%lin_weight, %4) : (tensor<16x32xf32>, tensor<1x32xf32>) -> tensor<16x32xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.mulf %6, %7 : f32
      ein.yield %8 : f32
    }
    %6 = ein.contract "mk,nk->mn" %x, %5 : (tensor<4x32xf32>, tensor<16x32xf32>) -> tensor<4x16xf32>
    %7 = ein.map(%5) : (tensor<16x32xf32>) -> tensor<16x32xf32> {
    ^bb0(%8: f32):
      ein.yield %8 : f32
    }
    %8 = ein.reduce sum [1] %7 : tensor<16x32xf32> -> tensor<16xf32>
    %9 = ein.view reshape %norm_bias : tensor<32xf32> -> tensor<1x32xf32>
    %10 = ein.map(%lin_weight, %9) : (tensor<16x32xf32>, tensor<1x32xf32>) -> tensor<16x32xf32> {
    ^bb0(%11: f32, %12: f32):
      %13 = arith.mulf %11, %12 : f32
      ein.yield %13 : f32
    }
    %11 = ein.reduce sum [1] %10 : tensor<16x32xf32> -> tensor<16xf32>
    %12 = ein.map(%6, %1, %3, %8, %11) : (tensor<4x16xf32>, tensor<4x1xf32>, tensor<4x1xf32>, tensor<16xf32>, tensor<16xf32>) -> tensor<4x16xf32> {
    ^bb0(%13: f32, %14: f32, %15: f32, %16: f32, %17: f32):
      %18 = arith.constant 3.200000e+01 : f32
      %19 = arith.divf %14, %18 : f32
      %20 = arith.constant 1.000000e+00 : f32
      %21 = arith.constant 3.200000e+01 : f32
      %22 = arith.divf %15, %21 : f32
      %23 = arith.constant 1.000000e-05 : f32
      %24 = arith.addf %22, %23 : f32
      %25 = math.rsqrt %24 : f32
      %26 = arith.mulf %20, %25 : f32
      %27 = arith.mulf %13, %26 : f32
      %28 = arith.constant -1.000000e+00 : f32
      %29 = arith.mulf %28, %19 : f32
      %30 = arith.mulf %29, %25 : f32
      %31 = arith.mulf %30, %16 : f32
      %32 = arith.addf %27, %31 : f32
      %33 = arith.constant 1.000000e+00 : f32
      %34 = arith.mulf %33, %17 : f32
      %35 = arith.addf %32, %34 : f32
      ein.yield %35 : f32
    }
    %13 = ein.map(%lin_bias, %12) : (tensor<16xf32>, tensor<4x16xf32>) -> tensor<4x16xf32> {
    ^bb0(%14: f32, %15: f32):
      %16 = arith.addf %14, %15 : f32
      ein.yield %16 : f32
    }
    func.return %13 : tensor<4x16xf32>
  }
}
