builtin.module {
  func.func @fused_0(%w: tensor<1024x64xf32>, %b: tensor<1024xf32>, %x: tensor<40x64xf32>) -> tensor<40xf32> {
    %0 = ein.contract "mk,nk->mn" %x, %w : (tensor<40x64xf32>, tensor<1024x64xf32>) -> tensor<40x1024xf32>
    %1 = ein.map(%b, %0) : (tensor<1024xf32>, tensor<40x1024xf32>) -> tensor<40x1024xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.addf %2, %3 : f32
      ein.yield %4 : f32
    }
    %2 = ein.reduce max [1] keepdim %1 : tensor<40x1024xf32> -> tensor<40x1xf32>
    %3 = ein.constant 0.000000e+00 : f32 -> tensor<f32>
    %4 = ein.map(%3, %2) : (tensor<f32>, tensor<40x1xf32>) -> tensor<40x1xf32> {
    ^bb0(%5: f32, %6: f32):
      %7 = math.absf %6 : f32
      %8 = arith.constant 0x7f800000 : f32
      %9 = arith.cmpf oeq, %7, %8 : f32
      %10 = arith.select %9, %5, %6 : f32
      ein.yield %10 : f32
    }
    %5 = ein.view reshape %4 : tensor<40x1xf32> -> tensor<40xf32>
    %6 = ein.map(%1, %4) : (tensor<40x1024xf32>, tensor<40x1xf32>) -> tensor<40x1024xf32> {
    ^bb0(%7: f32, %8: f32):
      %9 = arith.subf %7, %8 : f32
      %10 = math.exp %9 : f32
      ein.yield %10 : f32
    }
    %7 = ein.reduce sum [1] %6 : tensor<40x1024xf32> -> tensor<40xf32>
    %8 = ein.map(%5, %7) : (tensor<40xf32>, tensor<40xf32>) -> tensor<40xf32> {
    ^bb0(%9: f32, %10: f32):
      %11 = math.log %10 : f32
      %12 = arith.addf %11, %9 : f32
      ein.yield %12 : f32
    }
    func.return %8 : tensor<40xf32>
  }
}
