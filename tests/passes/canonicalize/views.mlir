builtin.module {
  func.func @views(%x: tensor<4x6xf32>, %y: tensor<6x4xf32>) -> (tensor<4x6xf32>, tensor<24xf32>, tensor<4x4xf32>) {
    %0 = ein.view permute [1, 0] %x : tensor<4x6xf32> -> tensor<6x4xf32>
    %1 = ein.view permute [1, 0] %0 : tensor<6x4xf32> -> tensor<4x6xf32>
    %2 = ein.view reshape %x : tensor<4x6xf32> -> tensor<2x12xf32>
    %3 = ein.view reshape %2 : tensor<2x12xf32> -> tensor<24xf32>
    %4 = ein.view reshape %3 : tensor<24xf32> -> tensor<24xf32>
    %5 = ein.view permute [1, 0] %y : tensor<6x4xf32> -> tensor<4x6xf32>
    %6 = ein.contract "mk,kn->mn" %5, %0 : (tensor<4x6xf32>, tensor<6x4xf32>) -> tensor<4x4xf32>
    %7 = ein.view reshape %x : tensor<4x6xf32> -> tensor<2x2x6xf32>
    func.return %1, %4, %6 : tensor<4x6xf32>, tensor<24xf32>, tensor<4x4xf32>
  }
}
