// out = gelu_tanh(x @ w + bias) on a ragged 33x65x17 problem: grouped tile
// order, a K loop carrying the accumulator, masked edges, a fused epilogue.
builtin.module {
  tile.kernel "gemm_bias_gelu" kind "gemm" params ["BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"] grid ["cdiv(33, BLOCK_M) * cdiv(65, BLOCK_N)"] {
  ^bb0(%x: tensor<33x17xf32>, %w: tensor<17x65xf32>, %bias: tensor<65xf32>, %out: tensor<33x65xf32>):
    %pid = tile.program_id 0 : i32
    %bm = tile.param "BLOCK_M" : i32
    %bn = tile.param "BLOCK_N" : i32
    %bk = tile.param "BLOCK_K" : i32
    %group = tile.param "GROUP_M" : i32
    %c0 = arith.constant 0 : i32
    %c1 = arith.constant 1 : i32
    %m = arith.constant 33 : i32
    %n = arith.constant 65 : i32
    %k = arith.constant 17 : i32
    %bm_1 = arith.subi %bm, %c1 : i32
    %m_up = arith.addi %m, %bm_1 : i32
    %tiles_m = arith.divsi %m_up, %bm : i32
    %bn_1 = arith.subi %bn, %c1 : i32
    %n_up = arith.addi %n, %bn_1 : i32
    %tiles_n = arith.divsi %n_up, %bn : i32
    %pid_m, %pid_n = tile.grouped_order %pid, %tiles_m, %tiles_n, %group : i32, i32
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
      %a = tile.load %x[%r2, %k_cols] : (tensor<33x17xf32>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_K"], i32>) -> !tile.block<["BLOCK_M", "BLOCK_K"], f32>
      %b = tile.load %w[%k_rows, %c2] : (tensor<17x65xf32>, !tile.block<["BLOCK_K", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>) -> !tile.block<["BLOCK_K", "BLOCK_N"], f32>
      %next = tile.dot %a, %b, %partial : !tile.block<["BLOCK_M", "BLOCK_K"], f32>, !tile.block<["BLOCK_K", "BLOCK_N"], f32>, !tile.block<["BLOCK_M", "BLOCK_N"], f32> -> !tile.block<["BLOCK_M", "BLOCK_N"], f32>
      scf.yield %next : !tile.block<["BLOCK_M", "BLOCK_N"], f32>
    }
    %bias_row = tile.load %bias[%c2] : (tensor<65xf32>, !tile.block<["1", "BLOCK_N"], i32>) -> !tile.block<["1", "BLOCK_N"], f32>
    %y = tile.map(%acc, %bias_row) : (!tile.block<["BLOCK_M", "BLOCK_N"], f32>, !tile.block<["1", "BLOCK_N"], f32>) -> !tile.block<["BLOCK_M", "BLOCK_N"], f32> {
    ^bb0(%v: f32, %bv: f32):
      %h = arith.addf %v, %bv : f32
      %half = arith.constant 5.000000e-01 : f32
      %one = arith.constant 1.000000e+00 : f32
      %kappa = arith.constant 0.7978845608028654 : f32
      %beta = arith.constant 4.471500e-02 : f32
      %h2 = arith.mulf %h, %h : f32
      %h3 = arith.mulf %h2, %h : f32
      %bh3 = arith.mulf %beta, %h3 : f32
      %inner = arith.addf %h, %bh3 : f32
      %arg = arith.mulf %kappa, %inner : f32
      %t = math.tanh %arg : f32
      %onet = arith.addf %one, %t : f32
      %hh = arith.mulf %half, %h : f32
      %gelu = arith.mulf %hh, %onet : f32
      tile.yield %gelu : f32
    }
    tile.store %y, %out[%r2, %c2] : (!tile.block<["BLOCK_M", "BLOCK_N"], f32>, tensor<33x65xf32>, !tile.block<["BLOCK_M", "1"], i32>, !tile.block<["1", "BLOCK_N"], i32>)
    tile.return
  }
}
