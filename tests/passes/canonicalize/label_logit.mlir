builtin.module {
  func.func @label_logit(%x: tensor<6x40xf32>, %m: tensor<6x1xf32>, %t: tensor<6x1xi64>) -> tensor<6x1xf32> {
    %0 = ein.map(%x, %m) : (tensor<6x40xf32>, tensor<6x1xf32>) -> tensor<6x40xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.subf %1, %2 : f32
      ein.yield %3 : f32
    }
    %4 = ein.gather %0 [d0, i0] (%t) : (tensor<6x40xf32>, tensor<6x1xi64>) -> tensor<6x1xf32>
    func.return %4 : tensor<6x1xf32>
  }
}
