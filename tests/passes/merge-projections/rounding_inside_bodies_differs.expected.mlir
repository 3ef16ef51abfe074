builtin.module {
  func.func @f(%x: tensor<5x8xf32>, %wq: tensor<6x8xf32> {ein.param = "q.weight"}, %wk: tensor<4x8xf32> {ein.param = "k.weight"}) -> (tensor<5xf32>, tensor<5xf32>) {
    %q = ein.contract "mk,nk->mn" %x, %wq : (tensor<5x8xf32>, tensor<6x8xf32>) -> tensor<5x6xf32>
    %qr = ein.map(%q) : (tensor<5x6xf32>) -> tensor<5x6xf32> {
    ^bb0(%a: f32):
      %b = arith.truncf %a : f32 to bf16
      %c = arith.extf %b : bf16 to f32
      ein.yield %c : f32
    }
    %qs = ein.reduce sum [1] %qr : tensor<5x6xf32> -> tensor<5xf32>
    %k = ein.contract "mk,nk->mn" %x, %wk : (tensor<5x8xf32>, tensor<4x8xf32>) -> tensor<5x4xf32>
    %kr = ein.map(%k) : (tensor<5x4xf32>) -> tensor<5x4xf32> {
    ^bb0(%d: f32):
      %e = arith.truncf %d : f32 to f16
      %f = arith.extf %e : f16 to f32
      ein.yield %f : f32
    }
    %ks = ein.reduce max [1] %kr : tensor<5x4xf32> -> tensor<5xf32>
    func.return %qs, %ks : tensor<5xf32>, tensor<5xf32>
  }
}
