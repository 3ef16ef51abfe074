// One elementwise op over 1-d f32 tensors; the tests put an op in place of
// __OP__ (a unary op on %a, or a binary op of %a and %b) and a size for __N__.
builtin.module {
  tile.kernel "elementwise" kind "pointwise" params ["BLOCK"] grid ["cdiv(__N__, BLOCK)"] {
  ^bb0(%x: tensor<__N__xf32>, %y: tensor<__N__xf32>, %out: tensor<__N__xf32>):
    %pid = tile.program_id 0 : i32
    %block = tile.param "BLOCK" : i32
    %start = arith.muli %pid, %block : i32
    %ar = tile.arange : !tile.block<["BLOCK"], i32>
    %i = tile.map(%ar, %start) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%a: i32, %b: i32):
      %s = arith.addi %a, %b : i32
      tile.yield %s : i32
    }
    %xv = tile.load %x[%i] : (tensor<__N__xf32>, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], f32>
    %yv = tile.load %y[%i] : (tensor<__N__xf32>, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], f32>
    %r = tile.map(%xv, %yv) : (!tile.block<["BLOCK"], f32>, !tile.block<["BLOCK"], f32>) -> !tile.block<["BLOCK"], f32> {
    ^bb0(%a: f32, %b: f32):
      %v = __OP__ : f32
      tile.yield %v : f32
    }
    tile.store %r, %out[%i] : (!tile.block<["BLOCK"], f32>, tensor<__N__xf32>, !tile.block<["BLOCK"], i32>)
    tile.return
  }
}
