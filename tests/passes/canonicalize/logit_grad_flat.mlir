builtin.module {
  func.func @logit_grad_flat(%x: tensor<6x40xf32>, %tangent: tensor<2x3x40xf32>, %w: tensor<40x8xf32>) -> (tensor<2x3x40xf32>, tensor<6x8xf32>) {
    %0 = ein.reduce sum [1] keepdim %x : tensor<6x40xf32> -> tensor<6x1xf32>
    %1 = ein.map(%x, %0) : (tensor<6x40xf32>, tensor<6x1xf32>) -> tensor<6x40xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.subf %2, %3 : f32
      ein.yield %4 : f32
    }
    %5 = ein.view reshape %1 : tensor<6x40xf32> -> tensor<2x3x40xf32>
    %6 = ein.map(%tangent, %5) : (tensor<2x3x40xf32>, tensor<2x3x40xf32>) -> tensor<2x3x40xf32> {
    ^bb0(%7: f32, %8: f32):
      %9 = arith.addf %7, %8 : f32
      ein.yield %9 : f32
    }
    %10 = ein.view reshape %6 : tensor<2x3x40xf32> -> tensor<6x40xf32>
    %11 = ein.contract "mk,kn->mn" %10, %w : (tensor<6x40xf32>, tensor<40x8xf32>) -> tensor<6x8xf32>
    func.return %6, %11 : tensor<2x3x40xf32>, tensor<6x8xf32>
  }
}
