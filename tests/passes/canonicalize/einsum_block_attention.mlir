builtin.module {
  func.func @block_attention(%q: tensor<1x2x6x8x16xf32>, %k: tensor<1x2x8x16xf32>, %m: tensor<1x1x6x8x8xf32>, %v: tensor<1x2x8x16xf32>) -> tensor<1x2x6x8x16xf32> {
    %0 = ein.view reshape %q : tensor<1x2x6x8x16xf32> -> tensor<1x2x6x8x16x1xf32>
    %1 = ein.view permute [0, 1, 2, 3, 5, 4] %0 : tensor<1x2x6x8x16x1xf32> -> tensor<1x2x6x8x1x16xf32>
    %2 = ein.view reshape %k : tensor<1x2x8x16xf32> -> tensor<1x2x8x16x1xf32>
    %3 = ein.view reshape %2 : tensor<1x2x8x16x1xf32> -> tensor<1x2x8x16x1x1xf32>
    %4 = ein.view permute [0, 1, 4, 5, 2, 3] %3 : tensor<1x2x8x16x1x1xf32> -> tensor<1x2x1x1x8x16xf32>
    %5 = ein.view permute [1, 2, 3, 5, 0, 4] %1 : tensor<1x2x6x8x1x16xf32> -> tensor<2x6x8x16x1x1xf32>
    %6 = ein.view reshape %5 : tensor<2x6x8x16x1x1xf32> -> tensor<2x48x16xf32>
    %7 = ein.view permute [1, 5, 0, 4, 2, 3] %4 : tensor<1x2x1x1x8x16xf32> -> tensor<2x16x1x8x1x1xf32>
    %8 = ein.view reshape %7 : tensor<2x16x1x8x1x1xf32> -> tensor<2x16x8xf32>
    %9 = ein.contract "bmk,bkn->bmn" %6, %8 : (tensor<2x48x16xf32>, tensor<2x16x8xf32>) -> tensor<2x48x8xf32>
    %10 = ein.view reshape %9 : tensor<2x48x8xf32> -> tensor<2x6x8x1x1x8xf32>
    %11 = ein.view permute [4, 0, 1, 2, 5, 3] %10 : tensor<2x6x8x1x1x8xf32> -> tensor<1x2x6x8x8x1xf32>
    %12 = ein.view reshape %11 : tensor<1x2x6x8x8x1xf32> -> tensor<1x2x6x8x8xf32>
    %13 = ein.map(%12) : (tensor<1x2x6x8x8xf32>) -> tensor<1x2x6x8x8xf32> {
    ^bb0(%14: f32):
      %15 = arith.constant 1.250000e-01 : f32
      %16 = arith.mulf %14, %15 : f32
      ein.yield %16 : f32
    }
    %14 = ein.map(%13, %m) : (tensor<1x2x6x8x8xf32>, tensor<1x1x6x8x8xf32>) -> tensor<1x2x6x8x8xf32> {
    ^bb0(%15: f32, %16: f32):
      %17 = arith.addf %15, %16 : f32
      ein.yield %17 : f32
    }
    %15 = ein.reduce max [4] keepdim %14 : tensor<1x2x6x8x8xf32> -> tensor<1x2x6x8x1xf32>
    %16 = ein.map(%14, %15) : (tensor<1x2x6x8x8xf32>, tensor<1x2x6x8x1xf32>) -> tensor<1x2x6x8x8xf32> {
    ^bb0(%17: f32, %18: f32):
      %19 = arith.subf %17, %18 : f32
      ein.yield %19 : f32
    }
    %17 = ein.map(%16) : (tensor<1x2x6x8x8xf32>) -> tensor<1x2x6x8x8xf32> {
    ^bb0(%18: f32):
      %19 = math.exp %18 : f32
      ein.yield %19 : f32
    }
    %18 = ein.reduce sum [4] keepdim %17 : tensor<1x2x6x8x8xf32> -> tensor<1x2x6x8x1xf32>
    %19 = ein.map(%17, %18) : (tensor<1x2x6x8x8xf32>, tensor<1x2x6x8x1xf32>) -> tensor<1x2x6x8x8xf32> {
    ^bb0(%20: f32, %21: f32):
      %22 = arith.divf %20, %21 : f32
      ein.yield %22 : f32
    }
    %20 = ein.view reshape %19 : tensor<1x2x6x8x8xf32> -> tensor<1x2x6x8x8x1xf32>
    %21 = ein.view permute [0, 1, 2, 3, 5, 4] %20 : tensor<1x2x6x8x8x1xf32> -> tensor<1x2x6x8x1x8xf32>
    %22 = ein.view reshape %v : tensor<1x2x8x16xf32> -> tensor<1x2x8x16x1xf32>
    %23 = ein.view reshape %22 : tensor<1x2x8x16x1xf32> -> tensor<1x2x8x16x1x1xf32>
    %24 = ein.view permute [0, 1, 4, 5, 3, 2] %23 : tensor<1x2x8x16x1x1xf32> -> tensor<1x2x1x1x16x8xf32>
    %25 = ein.view permute [1, 2, 3, 5, 0, 4] %21 : tensor<1x2x6x8x1x8xf32> -> tensor<2x6x8x8x1x1xf32>
    %26 = ein.view reshape %25 : tensor<2x6x8x8x1x1xf32> -> tensor<2x48x8xf32>
    %27 = ein.view permute [1, 5, 0, 4, 2, 3] %24 : tensor<1x2x1x1x16x8xf32> -> tensor<2x8x1x16x1x1xf32>
    %28 = ein.view reshape %27 : tensor<2x8x1x16x1x1xf32> -> tensor<2x8x16xf32>
    %29 = ein.contract "bmk,bkn->bmn" %26, %28 : (tensor<2x48x8xf32>, tensor<2x8x16xf32>) -> tensor<2x48x16xf32>
    %30 = ein.view reshape %29 : tensor<2x48x16xf32> -> tensor<2x6x8x1x1x16xf32>
    %31 = ein.view permute [4, 0, 1, 2, 5, 3] %30 : tensor<2x6x8x1x1x16xf32> -> tensor<1x2x6x8x16x1xf32>
    %32 = ein.view reshape %31 : tensor<1x2x6x8x16x1xf32> -> tensor<1x2x6x8x16xf32>
    func.return %32 : tensor<1x2x6x8x16xf32>
  }
}
