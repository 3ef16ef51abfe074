builtin.module {
  tile.kernel "k0" kind "gemm" params ["BLOCK_M", "BLOCK_N"] grid ["cdiv(8, BLOCK_M)"] {
  ^bb0(%x: tensor<8x4xf32>, %out: tensor<8x4xf32>):
    %pid = tile.program_id 0 : i32
    %bm = tile.param "BLOCK_M" : i32
    %r = tile.arange : !tile.block<["BLOCK_M"], i32>
    %base = arith.muli %pid, %bm : i32
    %rows = tile.map(%r, %base) : (!tile.block<["BLOCK_M"], i32>, i32) -> !tile.block<["BLOCK_M"], i32> {
    ^bb0(%a: i32, %b: i32):
      %s = arith.addi %a, %b : i32
      tile.yield %s : i32
    }
    %r2 = tile.expand_dims %rows axis 1 : !tile.block<["BLOCK_M"], i32> -> !tile.block<["BLOCK_M", "1"], i32>
    %c = tile.arange : !tile.block<["BLOCK_N"], i32>
    %c2 = tile.expand_dims %c axis 0 : !tile.block<["BLOCK_N"], i32> -> !tile.block<["1", "BLOCK_N"], i32>
    %v = tile.load %x[%r2, %c2] : (tensor<8x4xf32>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>) -> !tile.block<["BLOCK_M", "BLOCK_N"], f32>
    %s = tile.reduce "sum" %v axis 1 : !tile.block<["BLOCK_M", "BLOCK_N"], f32> -> !tile.block<["BLOCK_M"], f32>
    tile.store %v, %out[%r2, %c2] : (!tile.block<["BLOCK_M", "BLOCK_N"], f32>, tensor<8x4xf32>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>)
    tile.return
  }
}
