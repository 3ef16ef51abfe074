builtin.module {
  func.func @label_logit(%x: tensor<6x40xf32>, %m: tensor<6x1xf32>, %t: tensor<6x1xi64>) -> tensor<6x1xf32> {
    %0 = ein.gather %x [d0, i0] (%t) : (tensor<6x40xf32>, tensor<6x1xi64>) -> tensor<6x1xf32>
    %1 = ein.constant 0 : i64 -> tensor<1x1xi64>
    %2 = ein.gather %m [d0, i1] (%t, %1) : (tensor<6x1xf32>, tensor<6x1xi64>, tensor<1x1xi64>) -> tensor<6x1xf32>
    %3 = ein.map(%0, %2) : (tensor<6x1xf32>, tensor<6x1xf32>) -> tensor<6x1xf32> {
    ^bb0(%4: f32, %5: f32):
      %6 = arith.subf %4, %5 : f32
      ein.yield %6 : f32
    }
    func.return %3 : tensor<6x1xf32>
  }
}
