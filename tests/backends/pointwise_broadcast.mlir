// A pointwise kernel over the flattened 5x37 output: the flat index is split
// into (row, col) with divsi/remsi, x is f16 (math on it runs in f32), y
// broadcasts along rows, s along columns.
builtin.module {
  tile.kernel "pointwise_mix" kind "pointwise" params ["BLOCK"] grid ["cdiv(185, BLOCK)"] {
  ^bb0(%x: tensor<5x37xf16>, %y: tensor<37xf32>, %s: tensor<5x1xf32>, %out: tensor<5x37xf32>):
    %pid = tile.program_id 0 : i32
    %block = tile.param "BLOCK" : i32
    %start = arith.muli %pid, %block : i32
    %ar = tile.arange : !tile.block<["BLOCK"], i32>
    %flat = tile.map(%ar, %start) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%i: i32, %base: i32):
      %f = arith.addi %i, %base : i32
      tile.yield %f : i32
    }
    %c37 = arith.constant 37 : i32
    %row = tile.map(%flat, %c37) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%f: i32, %n: i32):
      %q = arith.divsi %f, %n : i32
      tile.yield %q : i32
    }
    %col = tile.map(%flat, %c37) : (!tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], i32> {
    ^bb0(%f: i32, %n: i32):
      %r = arith.remsi %f, %n : i32
      tile.yield %r : i32
    }
    %c0 = arith.constant 0 : i32
    %xv = tile.load %x[%row, %col] : (tensor<5x37xf16>, !tile.block<["BLOCK"], i32>, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], f16>
    %yv = tile.load %y[%col] : (tensor<37xf32>, !tile.block<["BLOCK"], i32>) -> !tile.block<["BLOCK"], f32>
    %sv = tile.load %s[%row, %c0] : (tensor<5x1xf32>, !tile.block<["BLOCK"], i32>, i32) -> !tile.block<["BLOCK"], f32>
    %result = tile.map(%xv, %yv, %sv) : (!tile.block<["BLOCK"], f16>, !tile.block<["BLOCK"], f32>, !tile.block<["BLOCK"], f32>) -> !tile.block<["BLOCK"], f32> {
    ^bb0(%a16: f16, %b: f32, %c: f32):
      %e16 = math.exp %a16 : f16
      %a = arith.extf %a16 : f16 to f32
      %gt = arith.cmpf ogt, %a, %b : f32
      %t = math.tanh %a : f32
      %tb = arith.mulf %t, %b : f32
      %d = arith.subf %b, %a : f32
      %ed = math.exp %d : f32
      %softplus = math.log1p %ed : f32
      %picked = arith.select %gt, %tb, %softplus : f32
      %floor = arith.maximumf %picked, %c : f32
      %abs = math.absf %a : f32
      %p = arith.constant 1.500000e+00 : f32
      %pow = math.powf %abs, %p : f32
      %root = math.sqrt %abs : f32
      %e = arith.extf %e16 : f16 to f32
      %sum1 = arith.addf %floor, %pow : f32
      %sum2 = arith.addf %sum1, %root : f32
      %ratio = arith.divf %sum2, %e : f32
      %neg = arith.negf %ratio : f32
      tile.yield %neg : f32
    }
    tile.store %result, %out[%row, %col] : (!tile.block<["BLOCK"], f32>, tensor<5x37xf32>, !tile.block<["BLOCK"], i32>, !tile.block<["BLOCK"], i32>)
    tile.return
  }
}
