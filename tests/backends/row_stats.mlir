// row_sum_example.mlir grown into row statistics of a ragged 7x33 matrix:
// each program owns BLOCK_M whole rows (BLOCK_N >= 33) and stores a copy, the
// row sums, the row maxima (masked lanes read -inf) and the row minima in f16.
builtin.module {
  tile.kernel "row_stats" kind "reduction" params ["BLOCK_M", "BLOCK_N"] grid ["cdiv(7, BLOCK_M)"] {
  ^bb0(%x: tensor<7x33xf32>, %copy: tensor<7x33xf32>, %sums: tensor<7xf32>, %maxes: tensor<7xf32>, %mins: tensor<7xf16>):
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
    %v = tile.load %x[%r2, %c2] : (tensor<7x33xf32>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>) -> !tile.block<["BLOCK_M", "BLOCK_N"], f32>
    %vm = tile.load %x[%r2, %c2] {other = 0xFF800000 : f32} : (tensor<7x33xf32>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>) -> !tile.block<["BLOCK_M", "BLOCK_N"], f32>
    %vh = tile.load %x[%r2, %c2] {other = 0x7F800000 : f32} : (tensor<7x33xf32>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>) -> !tile.block<["BLOCK_M", "BLOCK_N"], f32>
    %h = tile.map(%vh) : (!tile.block<["BLOCK_M", "BLOCK_N"], f32>) -> !tile.block<["BLOCK_M", "BLOCK_N"], f16> {
    ^bb0(%a: f32):
      %t = arith.truncf %a : f32 to f16
      tile.yield %t : f16
    }
    %s = tile.reduce "sum" %v axis 1 : !tile.block<["BLOCK_M", "BLOCK_N"], f32> -> !tile.block<["BLOCK_M"], f32>
    %m = tile.reduce "max" %vm axis 1 : !tile.block<["BLOCK_M", "BLOCK_N"], f32> -> !tile.block<["BLOCK_M"], f32>
    %lo = tile.reduce "min" %h axis 1 : !tile.block<["BLOCK_M", "BLOCK_N"], f16> -> !tile.block<["BLOCK_M"], f16>
    tile.store %v, %copy[%r2, %c2] : (!tile.block<["BLOCK_M", "BLOCK_N"], f32>, tensor<7x33xf32>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>)
    tile.store %s, %sums[%rows] : (!tile.block<["BLOCK_M"], f32>, tensor<7xf32>, !tile.block<["BLOCK_M"], i32>)
    tile.store %m, %maxes[%rows] : (!tile.block<["BLOCK_M"], f32>, tensor<7xf32>, !tile.block<["BLOCK_M"], i32>)
    tile.store %lo, %mins[%rows] : (!tile.block<["BLOCK_M"], f16>, tensor<7xf16>, !tile.block<["BLOCK_M"], i32>)
    tile.return
  }
}
