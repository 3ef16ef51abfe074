builtin.module {
  func.func @logit_grad_flat(%x: tensor<6x40xf32>, %tangent: tensor<2x3x40xf32>, %w: tensor<40x8xf32>) -> (tensor<2x3x40xf32>, tensor<6x8xf32>) {
    %0 = ein.reduce sum [1] keepdim %x : tensor<6x40xf32> -> tensor<6x1xf32>
    %1 = ein.view reshape %tangent : tensor<2x3x40xf32> -> tensor<6x40xf32>
    %2 = ein.map(%1, %x, %0) : (tensor<6x40xf32>, tensor<6x40xf32>, tensor<6x1xf32>) -> tensor<6x40xf32> {
    ^bb0(%3: f32, %4: f32, %5: f32):
      %6 = arith.subf %4, %5 : f32
      %7 = arith.addf %3, %6 : f32
      ein.yield %7 : f32
    }
    %3 = ein.view reshape %2 : tensor<6x40xf32> -> tensor<2x3x40xf32>
    %4 = ein.contract "mk,kn->mn" %2, %w : (tensor<6x40xf32>, tensor<40x8xf32>) -> tensor<6x8xf32>
    func.return %3, %4 : tensor<2x3x40xf32>, tensor<6x8xf32>
  }
}
