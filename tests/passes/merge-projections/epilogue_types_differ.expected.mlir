builtin.module {
  func.func @f(%x: tensor<4x8xf32>, %wq: tensor<6x8xf32> {ein.param = "q.weight"}, %wk: tensor<2x8xf32> {ein.param = "k.weight"}) -> (tensor<4x6xbf16>, tensor<4x2xf16>) {
    %q = ein.contract "mk,nk->mn" %x, %wq : (tensor<4x8xf32>, tensor<6x8xf32>) -> tensor<4x6xf32>
    %qc = ein.map(%q) : (tensor<4x6xf32>) -> tensor<4x6xbf16> {
    ^bb0(%a: f32):
      %b = arith.truncf %a : f32 to bf16
      ein.yield %b : bf16
    }
    %k = ein.contract "mk,nk->mn" %x, %wk : (tensor<4x8xf32>, tensor<2x8xf32>) -> tensor<4x2xf32>
    %kc = ein.map(%k) : (tensor<4x2xf32>) -> tensor<4x2xf16> {
    ^bb0(%c: f32):
      %d = arith.truncf %c : f32 to f16
      ein.yield %d : f16
    }
    func.return %qc, %kc : tensor<4x6xbf16>, tensor<4x2xf16>
  }
}
