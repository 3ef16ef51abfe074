builtin.module {
  func.func @lm_loss_widening(%x: tensor<2x3x40xbf16>, %t: tensor<6x1xi64>) -> (tensor<6x1xf32>, tensor<6x1xf32>) {
    %0 = ein.map(%x) : (tensor<2x3x40xbf16>) -> tensor<2x3x40xf32> {
    ^bb0(%1: bf16):
      %2 = arith.extf %1 : bf16 to f32
      ein.yield %2 : f32
    }
    %3 = ein.view reshape %0 : tensor<2x3x40xf32> -> tensor<6x40xf32>
    %4 = ein.reduce max [1] keepdim %3 : tensor<6x40xf32> -> tensor<6x1xf32>
    %5 = ein.map(%3, %4) : (tensor<6x40xf32>, tensor<6x1xf32>) -> tensor<6x40xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.subf %6, %7 : f32
      ein.yield %8 : f32
    }
    %9 = ein.gather %5 [d0, i0] (%t) : (tensor<6x40xf32>, tensor<6x1xi64>) -> tensor<6x1xf32>
    func.return %4, %9 : tensor<6x1xf32>, tensor<6x1xf32>
  }
}
