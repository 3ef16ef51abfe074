// BERT's q, k and v: one input, three weights of 48, 24 and 24 rows (grouped KV heads), a bias each
// (the bias first among the map's operands, as the import writes it); 37 rows, K = 40: no size a tile
// divides. One GEMM over the stacked weights, one bias map over the stacked biases, three slices.
builtin.module {
  func.func @qkv(%x: tensor<37x40xf32>, %wq: tensor<48x40xf32> {ein.param = "q.weight"}, %bq: tensor<48xf32> {ein.param = "q.bias"}, %wk: tensor<24x40xf32> {ein.param = "k.weight"}, %bk: tensor<24xf32> {ein.param = "k.bias"}, %wv: tensor<24x40xf32> {ein.param = "v.weight"}, %bv: tensor<24xf32> {ein.param = "v.bias"}) -> (tensor<37xf32>, tensor<37xf32>, tensor<37xf32>) {
    %q = ein.contract "mk,nk->mn" %x, %wq : (tensor<37x40xf32>, tensor<48x40xf32>) -> tensor<37x48xf32>
    %qb = ein.map(%bq, %q) : (tensor<48xf32>, tensor<37x48xf32>) -> tensor<37x48xf32> {
    ^bb0(%a: f32, %b: f32):
      %s = arith.addf %a, %b : f32
      ein.yield %s : f32
    }
    %qs = ein.reduce sum [1] %qb : tensor<37x48xf32> -> tensor<37xf32>
    %k = ein.contract "mk,nk->mn" %x, %wk : (tensor<37x40xf32>, tensor<24x40xf32>) -> tensor<37x24xf32>
    %kb = ein.map(%bk, %k) : (tensor<24xf32>, tensor<37x24xf32>) -> tensor<37x24xf32> {
    ^bb0(%c: f32, %d: f32):
      %t = arith.addf %c, %d : f32
      ein.yield %t : f32
    }
    %ks = ein.reduce max [1] %kb : tensor<37x24xf32> -> tensor<37xf32>
    %v = ein.contract "mk,nk->mn" %x, %wv : (tensor<37x40xf32>, tensor<24x40xf32>) -> tensor<37x24xf32>
    %vb = ein.map(%bv, %v) : (tensor<24xf32>, tensor<37x24xf32>) -> tensor<37x24xf32> {
    ^bb0(%e: f32, %f: f32):
      %u = arith.addf %e, %f : f32
      ein.yield %u : f32
    }
    %vs = ein.reduce min [1] %vb : tensor<37x24xf32> -> tensor<37xf32>
    func.return %qs, %ks, %vs : tensor<37xf32>, tensor<37xf32>, tensor<37xf32>
  }
}
