builtin.module {
  func.func @fused_0(%w: tensor<1024x64xf32>, %b: tensor<1024xf32>, %x: tensor<40x64xf32>) -> tensor<40xf32> {
    %0 = ein.contract "mk,nk->mn" %x, %w : (tensor<40x64xf32>, tensor<1024x64xf32>) -> tensor<40x1024xf32>
    %1 = ein.map(%b, %0) : (tensor<1024xf32>, tensor<40x1024xf32>) -> tensor<40x1024xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.addf %2, %3 : f32
      ein.yield %4 : f32
    }
    %2 = ein.view reshape %1 : tensor<40x1024xf32> -> tensor<40x4x256xf32>
    %3 = ein.reduce max [2] keepdim %2 : tensor<40x4x256xf32> -> tensor<40x4x1xf32>
    %4 = ein.map(%3) : (tensor<40x4x1xf32>) -> tensor<40x4x1xf32> {
    ^bb0(%5: f32):
      %6 = math.absf %5 : f32
      %7 = arith.constant 0x7f800000 : f32
      %8 = arith.cmpf oeq, %6, %7 : f32
      %9 = arith.constant 0.000000e+00 : f32
      %10 = arith.select %8, %9, %5 : f32
      ein.yield %10 : f32
    }
    %5 = ein.map(%2, %4) : (tensor<40x4x256xf32>, tensor<40x4x1xf32>) -> tensor<40x4x256xf32> {
    ^bb0(%6: f32, %7: f32):
      %8 = arith.subf %6, %7 : f32
      %9 = math.exp %8 : f32
      ein.yield %9 : f32
    }
    %6 = ein.reduce sum [2] %5 : tensor<40x4x256xf32> -> tensor<40x4xf32>
    %7 = ein.view reshape %4 : tensor<40x4x1xf32> -> tensor<40x4xf32>
    %8 = ein.map(%6, %7) : (tensor<40x4xf32>, tensor<40x4xf32>) -> tensor<40x4xf32> {
    ^bb0(%9: f32, %10: f32):
      %11 = math.log %9 : f32
      %12 = arith.addf %11, %10 : f32
      ein.yield %12 : f32
    }
    %9 = ein.reduce max [1] keepdim %8 : tensor<40x4xf32> -> tensor<40x1xf32>
    %10 = ein.map(%9) : (tensor<40x1xf32>) -> tensor<40x1xf32> {
    ^bb0(%11: f32):
      %12 = math.absf %11 : f32
      %13 = arith.constant 0x7f800000 : f32
      %14 = arith.cmpf oeq, %12, %13 : f32
      %15 = arith.constant 0.000000e+00 : f32
      %16 = arith.select %14, %15, %11 : f32
      ein.yield %16 : f32
    }
    %11 = ein.map(%8, %10) : (tensor<40x4xf32>, tensor<40x1xf32>) -> tensor<40x4xf32> {
    ^bb0(%12: f32, %13: f32):
      %14 = arith.subf %12, %13 : f32
      %15 = math.exp %14 : f32
      ein.yield %15 : f32
    }
    %12 = ein.reduce sum [1] %11 : tensor<40x4xf32> -> tensor<40xf32>
    %13 = ein.view reshape %10 : tensor<40x1xf32> -> tensor<40xf32>
    %14 = ein.map(%12, %13) : (tensor<40xf32>, tensor<40xf32>) -> tensor<40xf32> {
    ^bb0(%15: f32, %16: f32):
      %17 = math.log %15 : f32
      %18 = arith.addf %17, %16 : f32
      ein.yield %18 : f32
    }
    func.return %14 : tensor<40xf32>
  }
}
