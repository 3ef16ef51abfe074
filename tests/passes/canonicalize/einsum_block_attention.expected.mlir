builtin.module {
  func.func @block_attention(%q: tensor<1x2x6x8x16xf32>, %k: tensor<1x2x8x16xf32>, %m: tensor<1x1x6x8x8xf32>, %v: tensor<1x2x8x16xf32>) -> tensor<1x2x6x8x16xf32> {
    %0 = ein.contract "fabcd,faed->fabce" %q, %k : (tensor<1x2x6x8x16xf32>, tensor<1x2x8x16xf32>) -> tensor<1x2x6x8x8xf32>
    %1 = ein.map(%m, %0) : (tensor<1x1x6x8x8xf32>, tensor<1x2x6x8x8xf32>) -> tensor<1x2x6x8x8xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.constant 1.250000e-01 : f32
      %5 = arith.mulf %3, %4 : f32
      %6 = arith.addf %5, %2 : f32
      ein.yield %6 : f32
    }
    %2 = ein.reduce max [4] keepdim %1 : tensor<1x2x6x8x8xf32> -> tensor<1x2x6x8x1xf32>
    %3 = ein.map(%1, %2) : (tensor<1x2x6x8x8xf32>, tensor<1x2x6x8x1xf32>) -> tensor<1x2x6x8x8xf32> {
    ^bb0(%4: f32, %5: f32):
      %6 = arith.subf %4, %5 : f32
      %7 = math.exp %6 : f32
      ein.yield %7 : f32
    }
    %4 = ein.reduce sum [4] keepdim %3 : tensor<1x2x6x8x8xf32> -> tensor<1x2x6x8x1xf32>
    %5 = ein.map(%3, %4) : (tensor<1x2x6x8x8xf32>, tensor<1x2x6x8x1xf32>) -> tensor<1x2x6x8x8xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.divf %6, %7 : f32
      ein.yield %8 : f32
    }
    %6 = ein.view reshape %5 : tensor<1x2x6x8x8xf32> -> tensor<1x2x6x8x8x1xf32>
    %7 = ein.view reshape %v : tensor<1x2x8x16xf32> -> tensor<1x2x8x16x1x1xf32>
    %8 = ein.view permute [1, 2, 3, 4, 0, 5] %6 : tensor<1x2x6x8x8x1xf32> -> tensor<2x6x8x8x1x1xf32>
    %9 = ein.view reshape %8 : tensor<2x6x8x8x1x1xf32> -> tensor<2x48x8xf32>
    %10 = ein.view permute [1, 2, 0, 3, 4, 5] %7 : tensor<1x2x8x16x1x1xf32> -> tensor<2x8x1x16x1x1xf32>
    %11 = ein.view reshape %10 : tensor<2x8x1x16x1x1xf32> -> tensor<2x8x16xf32>
    %12 = ein.contract "bmk,bkn->bmn" %9, %11 : (tensor<2x48x8xf32>, tensor<2x8x16xf32>) -> tensor<2x48x16xf32>
    %13 = ein.view reshape %12 : tensor<2x48x16xf32> -> tensor<2x6x8x1x1x16xf32>
    %14 = ein.view permute [4, 0, 1, 2, 5, 3] %13 : tensor<2x6x8x1x1x16xf32> -> tensor<1x2x6x8x16x1xf32>
    %15 = ein.view reshape %14 : tensor<1x2x6x8x16x1xf32> -> tensor<1x2x6x8x16xf32>
    func.return %15 : tensor<1x2x6x8x16xf32>
  }
}
