// out = relu(scale * (x @ w^T)) in f16 with f32 accumulation: a 2-d grid, a
// transposed weight read through its strides, a scalar load, a K loop whose
// last step is ragged (K = 40).
builtin.module {
  tile.kernel "linear_relu" kind "gemm" params ["BLOCK_M", "BLOCK_N", "BLOCK_K"] grid ["cdiv(21, BLOCK_M)", "cdiv(24, BLOCK_N)"] {
  ^bb0(%x: tensor<21x40xf16>, %w: tensor<24x40xf16>, %scale: tensor<1xf32>, %out: tensor<21x24xf16>):
    %pid_m = tile.program_id 0 : i32
    %pid_n = tile.program_id 1 : i32
    %bm = tile.param "BLOCK_M" : i32
    %bn = tile.param "BLOCK_N" : i32
    %bk = tile.param "BLOCK_K" : i32
    %c0 = arith.constant 0 : i32
    %c1 = arith.constant 1 : i32
    %k = arith.constant 40 : i32
    %row0 = arith.muli %pid_m, %bm : i32
    %ar_m = tile.arange : !tile.block<["BLOCK_M"], i32>
    %rows = tile.map(%ar_m, %row0) : (!tile.block<["BLOCK_M"], i32>, i32) -> !tile.block<["BLOCK_M"], i32> {
    ^bb0(%i: i32, %base: i32):
      %s = arith.addi %i, %base : i32
      tile.yield %s : i32
    }
    %r2 = tile.expand_dims %rows axis 1 : !tile.block<["BLOCK_M"], i32> -> !tile.block<["BLOCK_M", "1"], i32>
    %col0 = arith.muli %pid_n, %bn : i32
    %ar_n = tile.arange : !tile.block<["BLOCK_N"], i32>
    %cols = tile.map(%ar_n, %col0) : (!tile.block<["BLOCK_N"], i32>, i32) -> !tile.block<["BLOCK_N"], i32> {
    ^bb0(%i: i32, %base: i32):
      %s = arith.addi %i, %base : i32
      tile.yield %s : i32
    }
    %c2 = tile.expand_dims %cols axis 0 : !tile.block<["BLOCK_N"], i32> -> !tile.block<["1", "BLOCK_N"], i32>
    %zero = tile.full 0.000000e+00 : f32 : !tile.block<["BLOCK_M", "BLOCK_N"], f32>
    %bk_1 = arith.subi %bk, %c1 : i32
    %k_up = arith.addi %k, %bk_1 : i32
    %tiles_k = arith.divsi %k_up, %bk : i32
    %acc = scf.for %kt = %c0 to %tiles_k step %c1 iter_args(%partial = %zero) -> (!tile.block<["BLOCK_M", "BLOCK_N"], f32>) : i32 {
      %k0 = arith.muli %kt, %bk : i32
      %ar_k = tile.arange : !tile.block<["BLOCK_K"], i32>
      %ks = tile.map(%ar_k, %k0) : (!tile.block<["BLOCK_K"], i32>, i32) -> !tile.block<["BLOCK_K"], i32> {
      ^bb0(%i: i32, %base: i32):
        %s = arith.addi %i, %base : i32
        tile.yield %s : i32
      }
      %k_cols = tile.expand_dims %ks axis 0 : !tile.block<["BLOCK_K"], i32> -> !tile.block<["1", "BLOCK_K"], i32>
      %k_rows = tile.expand_dims %ks axis 1 : !tile.block<["BLOCK_K"], i32> -> !tile.block<["BLOCK_K", "1"], i32>
      %a = tile.load %x[%r2, %k_cols] : (tensor<21x40xf16>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_K"], i32>) -> !tile.block<["BLOCK_M", "BLOCK_K"], f16>
      %b = tile.load %w[%c2, %k_rows] : (tensor<24x40xf16>, !tile.block<["1", "BLOCK_N"], i32>, !tile.block<["BLOCK_K", "1"], i32>) -> !tile.block<["BLOCK_K", "BLOCK_N"], f16>
      %next = tile.dot %a, %b, %partial : !tile.block<["BLOCK_M", "BLOCK_K"], f16>, !tile.block<["BLOCK_K", "BLOCK_N"], f16>, !tile.block<["BLOCK_M", "BLOCK_N"], f32> -> !tile.block<["BLOCK_M", "BLOCK_N"], f32>
      scf.yield %next : !tile.block<["BLOCK_M", "BLOCK_N"], f32>
    }
    %s = tile.load %scale[%c0] : (tensor<1xf32>, i32) -> !tile.block<[], f32>
    %y = tile.map(%acc, %s) : (!tile.block<["BLOCK_M", "BLOCK_N"], f32>, !tile.block<[], f32>) -> !tile.block<["BLOCK_M", "BLOCK_N"], f16> {
    ^bb0(%v: f32, %sv: f32):
      %scaled = arith.mulf %v, %sv : f32
      %zero_f = arith.constant 0.000000e+00 : f32
      %relu = arith.maximumf %scaled, %zero_f : f32
      %h = arith.truncf %relu : f32 to f16
      tile.yield %h : f16
    }
    tile.store %y, %out[%r2, %c2] : (!tile.block<["BLOCK_M", "BLOCK_N"], f16>, tensor<21x24xf16>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>)
    tile.return
  }
}
