builtin.module {
  func.func @views(%x: tensor<4x6xf32>, %y: tensor<6x4xf32>) -> (tensor<4x6xf32>, tensor<24xf32>, tensor<4x4xf32>) {
    %0 = ein.view reshape %x : tensor<4x6xf32> -> tensor<24xf32>
    %1 = ein.contract "km,nk->mn" %y, %x : (tensor<6x4xf32>, tensor<4x6xf32>) -> tensor<4x4xf32>
    func.return %x, %0, %1 : tensor<4x6xf32>, tensor<24xf32>, tensor<4x4xf32>
  }
}
