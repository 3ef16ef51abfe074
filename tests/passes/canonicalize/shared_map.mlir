builtin.module {
  func.func @shared(%x: tensor<8xf32>, %y: tensor<3x8xf32>) -> (tensor<3x8xf32>, tensor<8xf32>) {
    %0 = ein.map(%x) : (tensor<8xf32>) -> tensor<8xf32> {
    ^bb0(%1: f32):
      %2 = math.exp %1 : f32
      ein.yield %2 : f32
    }
    %1 = ein.map(%0, %y) : (tensor<8xf32>, tensor<3x8xf32>) -> tensor<3x8xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.mulf %2, %3 : f32
      ein.yield %4 : f32
    }
    %2 = ein.map(%y, %1) : (tensor<3x8xf32>, tensor<3x8xf32>) -> tensor<3x8xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.subf %4, %3 : f32
      ein.yield %5 : f32
    }
    func.return %2, %0 : tensor<3x8xf32>, tensor<8xf32>
  }
}
