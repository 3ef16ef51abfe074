builtin.module {
  func.func @fused_0(%w: tensor<320x32xbf16>, %x: tensor<2x7x32xbf16>) -> tensor<2x7xbf16> {
    %0 = ein.contract "abk,nk->abn" %x, %w : (tensor<2x7x32xbf16>, tensor<320x32xbf16>) -> tensor<2x7x320xbf16>
    %1 = ein.map(%0) : (tensor<2x7x320xbf16>) -> tensor<2x7x320xbf16> {
    ^bb0(%2: bf16):
      %3 = arith.extf %2 : bf16 to f32
      %4 = arith.mulf %3, %3 : f32
      %5 = arith.truncf %4 : f32 to bf16
      ein.yield %5 : bf16
    }
    %2 = ein.reduce mean [2] %1 : tensor<2x7x320xbf16> -> tensor<2x7xbf16>
    func.return %2 : tensor<2x7xbf16>
  }
}
