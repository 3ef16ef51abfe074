builtin.module {
  func.func @qkv(%x: tensor<37x40xf32>, %wq: tensor<48x40xf32> {ein.param = "q.weight"}, %bq: tensor<48xf32> {ein.param = "q.bias"}, %wk: tensor<24x40xf32> {ein.param = "k.weight"}, %bk: tensor<24xf32> {ein.param = "k.bias"}, %wv: tensor<24x40xf32> {ein.param = "v.weight"}, %bv: tensor<24xf32> {ein.param = "v.bias"}) -> (tensor<37xf32>, tensor<37xf32>, tensor<37xf32>) {
    %0 = ein.concat dim 0 (%bq, %bk, %bv) : (tensor<48xf32>, tensor<24xf32>, tensor<24xf32>) -> tensor<96xf32>
    %1 = ein.concat dim 0 (%wq, %wk, %wv) : (tensor<48x40xf32>, tensor<24x40xf32>, tensor<24x40xf32>) -> tensor<96x40xf32>
    %2 = ein.contract "mk,nk->mn" %x, %1 : (tensor<37x40xf32>, tensor<96x40xf32>) -> tensor<37x96xf32>
    %3 = ein.map(%0) : (tensor<96xf32>) -> tensor<96xf32> {
    ^bb0(%4: f32):
      ein.yield %4 : f32
    }
    %4 = ein.map(%3, %2) : (tensor<96xf32>, tensor<37x96xf32>) -> tensor<37x96xf32> {
    ^bb0(%a: f32, %b: f32):
      %s = arith.addf %a, %b : f32
      ein.yield %s : f32
    }
    %qb = ein.view slice dim 1 [0:48:1] %4 : tensor<37x96xf32> -> tensor<37x48xf32>
    %kb = ein.view slice dim 1 [48:72:1] %4 : tensor<37x96xf32> -> tensor<37x24xf32>
    %vb = ein.view slice dim 1 [72:96:1] %4 : tensor<37x96xf32> -> tensor<37x24xf32>
    %qs = ein.reduce sum [1] %qb : tensor<37x48xf32> -> tensor<37xf32>
    %ks = ein.reduce max [1] %kb : tensor<37x24xf32> -> tensor<37xf32>
    %vs = ein.reduce min [1] %vb : tensor<37x24xf32> -> tensor<37xf32>
    func.return %qs, %ks, %vs : tensor<37xf32>, tensor<37xf32>, tensor<37xf32>
  }
}
