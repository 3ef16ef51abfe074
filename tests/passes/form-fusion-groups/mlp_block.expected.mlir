builtin.module {
  func.func @swiglu(%x: tensor<6x8xf32>, %w1: tensor<16x8xf32>, %w3: tensor<16x8xf32>, %w2: tensor<8x16xf32>, %r: tensor<6x8xf32>) -> (tensor<6x8xf32>, tensor<6x1xf32>) {
    %0 = ein.contract "mk,nk->mn" %x, %w1 {ein.group = "k0"} : (tensor<6x8xf32>, tensor<16x8xf32>) -> tensor<6x16xf32>
    %1 = ein.contract "mk,nk->mn" %x, %w3 {ein.group = "k0"} : (tensor<6x8xf32>, tensor<16x8xf32>) -> tensor<6x16xf32>
    %2 = ein.map(%0, %1) {ein.group = "k0"} : (tensor<6x16xf32>, tensor<6x16xf32>) -> tensor<6x16xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.constant 1.000000e+00 : f32
      %6 = arith.negf %3 : f32
      %7 = math.exp %6 : f32
      %8 = arith.addf %5, %7 : f32
      %9 = arith.divf %3, %8 : f32
      %10 = arith.mulf %9, %4 : f32
      ein.yield %10 : f32
    }
    %3 = ein.contract "mk,nk->mn" %2, %w2 {ein.group = "k1"} : (tensor<6x16xf32>, tensor<8x16xf32>) -> tensor<6x8xf32>
    %4 = ein.map(%3, %r) {ein.group = "k1"} : (tensor<6x8xf32>, tensor<6x8xf32>) -> tensor<6x8xf32> {
    ^bb0(%5: f32, %6: f32):
      %7 = arith.addf %5, %6 : f32
      ein.yield %7 : f32
    }
    %5 = ein.map(%4) {ein.group = "k1"} : (tensor<6x8xf32>) -> tensor<6x8xf32> {
    ^bb0(%6: f32):
      %7 = math.exp %6 : f32
      ein.yield %7 : f32
    }
    %6 = ein.reduce sum [1] keepdim %5 {ein.group = "k1"} : tensor<6x8xf32> -> tensor<6x1xf32>
    %7 = ein.map(%4, %6) {ein.group = "k1"} : (tensor<6x8xf32>, tensor<6x1xf32>) -> tensor<6x8xf32> {
    ^bb0(%8: f32, %9: f32):
      %10 = arith.divf %8, %9 : f32
      ein.yield %10 : f32
    }
    func.return %7, %6 : tensor<6x8xf32>, tensor<6x1xf32>
  }
}
