builtin.module {
  func.func @layer_norm_weight_and_bias_grads(%dy: tensor<3x37x20xf32>, %xhat: tensor<3x37x20xf32>) -> (tensor<20xf32>, tensor<20xf32>) {
    %0 = ein.map(%dy, %xhat) : (tensor<3x37x20xf32>, tensor<3x37x20xf32>) -> tensor<3x37x20xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.mulf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.reduce sum [0, 1] %0 : tensor<3x37x20xf32> -> tensor<20xf32>
    %2 = ein.reduce sum [0, 1] %dy : tensor<3x37x20xf32> -> tensor<20xf32>
    func.return %1, %2 : tensor<20xf32>, tensor<20xf32>
  }
  func.func @read_between(%x: tensor<9x70xf32>, %y: tensor<9x70xf32>, %z: tensor<5x70xf32>) -> (tensor<5x70xf32>, tensor<1x70xf32>) {
    %0 = ein.reduce sum [0] %x : tensor<9x70xf32> -> tensor<70xf32>
    %1 = ein.map(%0, %z) : (tensor<70xf32>, tensor<5x70xf32>) -> tensor<5x70xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.mulf %2, %3 : f32
      ein.yield %4 : f32
    }
    %2 = ein.map(%x, %y) : (tensor<9x70xf32>, tensor<9x70xf32>) -> tensor<9x70xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.subf %3, %4 : f32
      ein.yield %5 : f32
    }
    %3 = ein.reduce mean [0] keepdim %2 : tensor<9x70xf32> -> tensor<1x70xf32>
    func.return %1, %3 : tensor<5x70xf32>, tensor<1x70xf32>
  }
  func.func @other_dims_stay_apart(%x: tensor<9x70xf32>) -> (tensor<70xf32>, tensor<9xf32>) {
    %0 = ein.reduce sum [0] %x : tensor<9x70xf32> -> tensor<70xf32>
    %1 = ein.reduce max [1] %x : tensor<9x70xf32> -> tensor<9xf32>
    func.return %0, %1 : tensor<70xf32>, tensor<9xf32>
  }
}
