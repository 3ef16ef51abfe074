// divsi/remsi truncate toward zero, on tiles of either sign and on Python-level
// scalars (-7 / 2 must be -3, not Python's -4); a map that yields a constant
// still gives a full tile.
builtin.module {
  tile.kernel "signed_division" kind "pointwise" params ["BLOCK"] grid ["cdiv(100, BLOCK)"] {
  ^bb0(%quotients: tensor<100xi32>, %remainders: tensor<100xi32>):
    %pid = tile.program_id 0 : i32
    %block = tile.param "BLOCK" : i32
    %start = arith.muli %pid, %block : i32
    %ar = tile.arange : !tile.block<["BLOCK"], i32>
    %c50 = arith.constant 50 : i32
    %c7 = arith.constant 7 : i32
    %cm3 = arith.constant -3 : i32
    %cm7 = arith.constant -7 : i32
    %c2 = arith.constant 2 : i32
    %sq = arith.divsi %cm7, %c2 : i32
    %sr = arith.remsi %cm7, %c2 : i32
    %flat = tile.map(%ar, %start) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%i: i32, %base: i32):
      %f = arith.addi %i, %base : i32
      tile.yield %f : i32
    }
    %q = tile.map(%flat, %c50, %c7, %sq) : (!tile.block<["BLOCK"], i32>, i32, i32, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%f: i32, %off: i32, %d: i32, %scalar: i32):
      %v = arith.subi %f, %off : i32
      %t = arith.divsi %v, %d : i32
      %sum = arith.addi %t, %scalar : i32
      tile.yield %sum : i32
    }
    %one = tile.map(%flat) : (!tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%f: i32):
      %c1 = arith.constant 1 : i32
      tile.yield %c1 : i32
    }
    %r = tile.map(%flat, %c50, %cm3, %sr, %one) : (!tile.block<["BLOCK"], i32>, i32, i32, i32, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%f: i32, %off: i32, %d: i32, %scalar: i32, %o: i32):
      %v = arith.subi %f, %off : i32
      %t = arith.remsi %v, %d : i32
      %sum = arith.addi %t, %scalar : i32
      %plus = arith.addi %sum, %o : i32
      tile.yield %plus : i32
    }
    tile.store %q, %quotients[%flat] : (!tile.block<["BLOCK"], i32>, tensor<100xi32>, !tile.block<["BLOCK"], i32>)
    tile.store %r, %remainders[%flat] : (!tile.block<["BLOCK"], i32>, tensor<100xi32>, !tile.block<["BLOCK"], i32>)
    tile.return
  }
}
