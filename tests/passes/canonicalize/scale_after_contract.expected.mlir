builtin.module {
  func.func @scaled_scores(%q: tensor<2x5x8xbf16>, %k: tensor<2x7x8xbf16>) -> tensor<2x5x7xbf16> {
    %0 = ein.contract "bmk,bnk->bmn" %q, %k : (tensor<2x5x8xbf16>, tensor<2x7x8xbf16>) -> tensor<2x5x7xbf16>
    %1 = ein.map(%0) : (tensor<2x5x7xbf16>) -> tensor<2x5x7xbf16> {
    ^bb0(%2: bf16):
      %3 = arith.extf %2 : bf16 to f32
      %4 = arith.constant 0.420448214 : f32
      %5 = arith.mulf %3, %4 : f32
      %6 = arith.truncf %5 : f32 to bf16
      %7 = arith.extf %6 : bf16 to f32
      %8 = arith.constant 0.420448214 : f32
      %9 = arith.mulf %7, %8 : f32
      %10 = arith.truncf %9 : f32 to bf16
      ein.yield %10 : bf16
    }
    func.return %1 : tensor<2x5x7xbf16>
  }
  func.func @divided_operand_read_twice(%x: tensor<6x4xf32>, %w: tensor<4x3xf32>, %y: tensor<4x3xf32>) -> (tensor<6x3xf32>, tensor<6x4xf32>) {
    %0 = ein.map(%x) : (tensor<6x4xf32>) -> tensor<6x4xf32> {
    ^bb0(%1: f32):
      %2 = arith.constant 3.000000e+00 : f32
      %3 = arith.mulf %2, %1 : f32
      ein.yield %3 : f32
    }
    %1 = ein.contract "mk,kn->mn" %0, %w : (tensor<6x4xf32>, tensor<4x3xf32>) -> tensor<6x3xf32>
    %2 = ein.map(%1) : (tensor<6x3xf32>) -> tensor<6x3xf32> {
    ^bb0(%3: f32):
      %4 = arith.constant 8.000000e+00 : f32
      %5 = arith.divf %3, %4 : f32
      ein.yield %5 : f32
    }
    %3 = ein.map(%0) : (tensor<6x4xf32>) -> tensor<6x4xf32> {
    ^bb0(%4: f32):
      %5 = math.exp %4 : f32
      ein.yield %5 : f32
    }
    func.return %2, %3 : tensor<6x3xf32>, tensor<6x4xf32>
  }
  func.func @scaled_weight_stays(%x: tensor<6x4xf32>, %w: tensor<3x4xf32> {ein.param = "w"}) -> tensor<6x3xf32> {
    %0 = ein.map(%w) : (tensor<3x4xf32>) -> tensor<3x4xf32> {
    ^bb0(%1: f32):
      %2 = arith.constant 5.000000e-01 : f32
      %3 = arith.mulf %1, %2 : f32
      ein.yield %3 : f32
    }
    %1 = ein.contract "mk,nk->mn" %x, %0 : (tensor<6x4xf32>, tensor<3x4xf32>) -> tensor<6x3xf32>
    func.return %1 : tensor<6x3xf32>
  }
  func.func @float16_scaled_down_stays(%q: tensor<4x8xf16>, %k: tensor<8x6xf16>) -> tensor<4x6xf16> {
    %0 = ein.map(%q) : (tensor<4x8xf16>) -> tensor<4x8xf16> {
    ^bb0(%1: f16):
      %2 = arith.extf %1 : f16 to f32
      %3 = arith.constant 1.250000e-01 : f32
      %4 = arith.mulf %2, %3 : f32
      %5 = arith.truncf %4 : f32 to f16
      ein.yield %5 : f16
    }
    %1 = ein.contract "mk,kn->mn" %0, %k : (tensor<4x8xf16>, tensor<8x6xf16>) -> tensor<4x6xf16>
    func.return %1 : tensor<4x6xf16>
  }
}
