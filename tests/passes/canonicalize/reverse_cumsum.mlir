builtin.module {
  func.func @reverse_cumsum(%x: tensor<3x50xf32>) -> tensor<3x50xf32> {
    %0 = ein.view flip params [1] %x : tensor<3x50xf32> -> tensor<3x50xf32>
    %1 = ein.scan sum 1 %0 : tensor<3x50xf32> -> tensor<3x50xf32>
    %2 = ein.view flip params [1] %1 : tensor<3x50xf32> -> tensor<3x50xf32>
    func.return %2 : tensor<3x50xf32>
  }
}
