builtin.module {
  func.func @pre_rms_norm(%x: tensor<6x40xf32>, %y: tensor<6x40xf32>, %g: tensor<40xf32>, %w: tensor<40x40xf32>) -> tensor<6x40xf32> {
    %0 = ein.map(%x, %y) : (tensor<6x40xf32>, tensor<6x40xf32>) -> tensor<6x40xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.addf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.map(%0) : (tensor<6x40xf32>) -> tensor<6x40xf32> {
    ^bb0(%2: f32):
      %3 = arith.mulf %2, %2 : f32
      ein.yield %3 : f32
    }
    %2 = ein.reduce mean [1] keepdim %1 : tensor<6x40xf32> -> tensor<6x1xf32>
    %3 = ein.map(%0, %2, %g) : (tensor<6x40xf32>, tensor<6x1xf32>, tensor<40xf32>) -> tensor<6x40xf32> {
    ^bb0(%4: f32, %5: f32, %6: f32):
      %7 = arith.constant 1.000000e-06 : f32
      %8 = arith.addf %5, %7 : f32
      %9 = math.rsqrt %8 : f32
      %10 = arith.mulf %4, %9 : f32
      %11 = arith.mulf %10, %6 : f32
      ein.yield %11 : f32
    }
    %4 = ein.contract "mk,nk->mn" %3, %w : (tensor<6x40xf32>, tensor<40x40xf32>) -> tensor<6x40xf32>
    %5 = ein.map(%4, %0) : (tensor<6x40xf32>, tensor<6x40xf32>) -> tensor<6x40xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.addf %6, %7 : f32
      ein.yield %8 : f32
    }
    func.return %5 : tensor<6x40xf32>
  }
  func.func @pre_layer_norm(%x: tensor<2x3x40xf32>, %y: tensor<2x3x40xf32>) -> (tensor<2x3x40xf32>, tensor<2x3x40xf32>) {
    %0 = ein.map(%x, %y) : (tensor<2x3x40xf32>, tensor<2x3x40xf32>) -> tensor<2x3x40xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.addf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.reduce mean [2] keepdim %0 : tensor<2x3x40xf32> -> tensor<2x3x1xf32>
    %2 = ein.map(%0, %1) : (tensor<2x3x40xf32>, tensor<2x3x1xf32>) -> tensor<2x3x40xf32> {
    ^bb0(%3: f32, %4: f32):
      %5 = arith.subf %3, %4 : f32
      %6 = arith.mulf %5, %5 : f32
      ein.yield %6 : f32
    }
    %3 = ein.reduce mean [2] keepdim %2 : tensor<2x3x40xf32> -> tensor<2x3x1xf32>
    %4 = ein.map(%0, %1, %3) : (tensor<2x3x40xf32>, tensor<2x3x1xf32>, tensor<2x3x1xf32>) -> tensor<2x3x40xf32> {
    ^bb0(%5: f32, %6: f32, %7: f32):
      %8 = arith.constant 1.000000e-05 : f32
      %9 = arith.addf %7, %8 : f32
      %10 = math.rsqrt %9 : f32
      %11 = arith.subf %5, %6 : f32
      %12 = arith.mulf %11, %10 : f32
      ein.yield %12 : f32
    }
    func.return %4, %0 : tensor<2x3x40xf32>, tensor<2x3x40xf32>
  }
  func.func @stream_read_through_a_view(%x: tensor<6x40xf32>, %y: tensor<6x40xf32>, %g: tensor<40xf32>) -> (tensor<6x40xf32>, tensor<6x40xf32>) {
    %0 = ein.map(%x, %y) : (tensor<6x40xf32>, tensor<6x40xf32>) -> tensor<6x40xf32> {
    ^bb0(%1: f32, %2: f32):
      %3 = arith.addf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.view reshape %0 : tensor<6x40xf32> -> tensor<6x40xf32>
    %2 = ein.map(%1) : (tensor<6x40xf32>) -> tensor<6x40xf32> {
    ^bb0(%3: f32):
      %4 = arith.mulf %3, %3 : f32
      ein.yield %4 : f32
    }
    %3 = ein.reduce mean [1] keepdim %2 : tensor<6x40xf32> -> tensor<6x1xf32>
    %4 = ein.map(%0, %3, %g) : (tensor<6x40xf32>, tensor<6x1xf32>, tensor<40xf32>) -> tensor<6x40xf32> {
    ^bb0(%5: f32, %6: f32, %7: f32):
      %8 = arith.constant 1.000000e-06 : f32
      %9 = arith.addf %6, %8 : f32
      %10 = math.rsqrt %9 : f32
      %11 = arith.mulf %5, %10 : f32
      %12 = arith.mulf %11, %7 : f32
      ein.yield %12 : f32
    }
    func.return %4, %0 : tensor<6x40xf32>, tensor<6x40xf32>
  }
}
