builtin.module {
  func.func @fused_0(%x: tensor<4x32xf32>, %norm_weight: tensor<32xf32> {ein.param = "norm.weight"}, %norm_bias: tensor<32xf32> {ein.param = "norm.bias"}, %lin_weight: tensor<16x32xf32> {ein.param = "lin.weight"}, %lin_bias: tensor<16xf32> {ein.param = "lin.bias"}) -> tensor<4x16xf32> {
    %0 = ein.map(%x) : (tensor<4x32xf32>) -> tensor<4x32xf32> {
    ^bb0(%1: f32):
      ein.yield %1 : f32
    }
    %1 = ein.reduce sum [1] keepdim %0 : tensor<4x32xf32> -> tensor<4x1xf32>
    %2 = ein.map(%x) : (tensor<4x32xf32>) -> tensor<4x32xf32> {
    ^bb0(%3: f32):
      %4 = arith.mulf %3, %3 : f32
      ein.yield %4 : f32
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
      %20 = arith.mulf %14, %14 : f32
      %21 = arith.divf %20, %18 : f32
      %22 = arith.subf %15, %21 : f32
      %23 = arith.constant 1.000000e+00 : f32
      %24 = arith.constant 3.200000e+01 : f32
      %25 = arith.divf %22, %24 : f32
      %26 = arith.constant 1.000000e-05 : f32
      %27 = arith.addf %25, %26 : f32
      %28 = math.rsqrt %27 : f32
      %29 = arith.mulf %23, %28 : f32
      %30 = arith.mulf %13, %29 : f32
      %31 = arith.constant -1.000000e+00 : f32
      %32 = arith.mulf %31, %19 : f32
      %33 = arith.mulf %32, %28 : f32
      %34 = arith.mulf %33, %16 : f32
      %35 = arith.addf %30, %34 : f32
      %36 = arith.constant 1.000000e+00 : f32
      %37 = arith.mulf %36, %17 : f32
      %38 = arith.addf %35, %37 : f32
      ein.yield %38 : f32
    }
    %13 = ein.map(%lin_bias, %12) : (tensor<16xf32>, tensor<4x16xf32>) -> tensor<4x16xf32> {
    ^bb0(%14: f32, %15: f32):
      %16 = arith.addf %14, %15 : f32
      ein.yield %16 : f32
    }
    func.return %13 : tensor<4x16xf32>
  }
}
