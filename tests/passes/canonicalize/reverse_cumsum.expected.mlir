builtin.module {
  func.func @reverse_cumsum(%x: tensor<3x50xf32>) -> tensor<3x50xf32> {
    %0 = ein.scan sum 1 reverse %x : tensor<3x50xf32> -> tensor<3x50xf32>
    func.return %0 : tensor<3x50xf32>
  }
}
