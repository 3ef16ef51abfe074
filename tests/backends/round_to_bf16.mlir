// f32 -> bf16 conversion (arith.truncf), which must round to nearest even.
builtin.module {
  tile.kernel "round_to_bf16" kind "pointwise" params ["BLOCK"] grid ["cdiv(1000, BLOCK)"] {
  ^bb0(%x: tensor<1000xf32>, %out: tensor<1000xbf16>):
    %pid = tile.program_id 0 : i32
    %block = tile.param "BLOCK" : i32
    %start = arith.muli %pid, %block : i32
    %ar = tile.arange : !tile.block<["BLOCK"], i32>
    %i = tile.map(%ar, %start) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%a: i32, %b: i32):
      %s = arith.addi %a, %b : i32
      tile.yield %s : i32
    }
    %xv = tile.load %x[%i] : (tensor<1000xf32>, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], f32>
    %y = tile.map(%xv) : (!tile.block<["BLOCK"], f32>) -> !tile.block<["BLOCK"], bf16> {
    ^bb0(%a: f32):
      %h = arith.truncf %a : f32 to bf16
      tile.yield %h : bf16
    }
    tile.store %y, %out[%i] : (!tile.block<["BLOCK"], bf16>, tensor<1000xbf16>, !tile.block<["BLOCK"], i32>)
    tile.return
  }
}
