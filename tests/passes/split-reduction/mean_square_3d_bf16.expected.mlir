builtin.module {
  func.func @fused_0(%w: tensor<320x32xbf16>, %x: tensor<2x7x32xbf16>) -> tensor<2x7xbf16> {
    %0 = ein.contract "abk,nk->abn" %x, %w : (tensor<2x7x32xbf16>, tensor<320x32xbf16>) -> tensor<2x7x320xbf16>
    %1 = ein.view reshape %0 : tensor<2x7x320xbf16> -> tensor<2x7x5x64xbf16>
    %2 = ein.map(%1) : (tensor<2x7x5x64xbf16>) -> tensor<2x7x5x64xf32> {
    ^bb0(%3: bf16):
      %4 = arith.extf %3 : bf16 to f32
      %5 = arith.mulf %4, %4 : f32
      %6 = arith.truncf %5 : f32 to bf16
      %7 = arith.extf %6 : bf16 to f32
      ein.yield %7 : f32
    }
    %3 = ein.reduce mean [3] %2 : tensor<2x7x5x64xf32> -> tensor<2x7x5xf32>
    %4 = ein.reduce mean [2] %3 : tensor<2x7x5xf32> -> tensor<2x7xf32>
    %5 = ein.map(%4) : (tensor<2x7xf32>) -> tensor<2x7xbf16> {
    ^bb0(%6: f32):
      %7 = arith.truncf %6 : f32 to bf16
      ein.yield %7 : bf16
    }
    func.return %5 : tensor<2x7xbf16>
  }
}
