builtin.module {
  func.func @lm_loss_widening(%x: tensor<2x3x40xbf16>, %t: tensor<6x1xi64>) -> (tensor<6x1xf32>, tensor<6x1xf32>) {
    %0 = ein.view reshape %x : tensor<2x3x40xbf16> -> tensor<6x40xbf16>
    %1 = ein.map(%0) : (tensor<6x40xbf16>) -> tensor<6x40xf32> {
    ^bb0(%2: bf16):
      %3 = arith.extf %2 : bf16 to f32
      ein.yield %3 : f32
    }
    %2 = ein.reduce max [1] keepdim %1 : tensor<6x40xf32> -> tensor<6x1xf32>
    %3 = ein.gather %0 [d0, i0] (%t) : (tensor<6x40xbf16>, tensor<6x1xi64>) -> tensor<6x1xbf16>
    %4 = ein.constant 0 : i64 -> tensor<1x1xi64>
    %5 = ein.gather %2 [d0, i1] (%t, %4) : (tensor<6x1xf32>, tensor<6x1xi64>, tensor<1x1xi64>) -> tensor<6x1xf32>
    %6 = ein.map(%5, %3) : (tensor<6x1xf32>, tensor<6x1xbf16>) -> tensor<6x1xf32> {
    ^bb0(%7: f32, %8: bf16):
      %9 = arith.extf %8 : bf16 to f32
      %10 = arith.subf %9, %7 : f32
      ein.yield %10 : f32
    }
    func.return %2, %6 : tensor<6x1xf32>, tensor<6x1xf32>
  }
}
