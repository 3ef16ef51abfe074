"""The `ein` dialect: print → parse round trips, verifier errors, parser errors with lines."""

from __future__ import annotations

import pytest

from tilefuse.compiler.cli import main as cli_main
from tilefuse.ir import IRError, parse_module, print_module

ROUND_TRIP = """\
builtin.module {
  func.func @graph(%x: tensor<2x8x32xf32>, %w: tensor<64x32xf32> {ein.param = "fc.weight"}, %b: tensor<64xf32>) -> (tensor<2x8x64xf32>, tensor<2x8x1xf32>, tensor<8x2x64xf32>, tensor<2x4x64xf32>, tensor<8x8xi1>, tensor<2x4x8x64xf32>) {
    %0 = ein.contract "bmk,nk->bmn" %x, %w : (tensor<2x8x32xf32>, tensor<64x32xf32>) -> tensor<2x8x64xf32>
    %1 = ein.map(%0, %b) : (tensor<2x8x64xf32>, tensor<64xf32>) -> tensor<2x8x64xf32> {
    ^bb0(%2: f32, %3: f32):
      %4 = arith.addf %2, %3 : f32
      %5 = math.tanh %4 : f32
      ein.yield %5 : f32
    }
    %2 = ein.reduce max [2] keepdim %1 : tensor<2x8x64xf32> -> tensor<2x8x1xf32>
    %3 = ein.view permute [1, 0, 2] %1 : tensor<2x8x64xf32> -> tensor<8x2x64xf32>
    %4 = ein.view slice dim 1 [0:8:2] %1 : tensor<2x8x64xf32> -> tensor<2x4x64xf32>
    %5 = ein.iota dim 0 : tensor<8x8xi64>
    %6 = ein.iota dim 1 : tensor<8x8xi64>
    %7 = ein.map(%5, %6) : (tensor<8x8xi64>, tensor<8x8xi64>) -> tensor<8x8xi1> {
    ^bb0(%8: i64, %9: i64):
      %10 = arith.cmpi sle, %9, %8 : i64
      ein.yield %10 : i1
    }
    %8 = ein.concat dim 0 (%4, %4) : (tensor<2x4x64xf32>, tensor<2x4x64xf32>) -> tensor<4x4x64xf32>
    %9 = ein.view reshape %8 : tensor<4x4x64xf32> -> tensor<16x64xf32>
    %10 = ein.constant 0xff800000 : f32 -> tensor<16x64xf32>
    %11 = ein.map(%9, %10) : (tensor<16x64xf32>, tensor<16x64xf32>) -> tensor<16x64xf32> {
    ^bb0(%12: f32, %13: f32):
      %14 = arith.maximumf %12, %13 : f32
      ein.yield %14 : f32
    }
    %12 = ein.view reshape %11 : tensor<16x64xf32> -> tensor<2x1x8x64xf32>
    %13 = ein.view expand %12 : tensor<2x1x8x64xf32> -> tensor<2x4x8x64xf32>
    %14 = ein.reduce sum [0, 1] %13 : tensor<2x4x8x64xf32> -> tensor<8x64xf32>
    func.return %1, %2, %3, %4, %7, %13 : tensor<2x8x64xf32>, tensor<2x8x1xf32>, tensor<8x2x64xf32>, tensor<2x4x64xf32>, tensor<8x8xi1>, tensor<2x4x8x64xf32>
  }
}
"""


def test_print_parse_round_trip_is_exact():
    module = parse_module(ROUND_TRIP)
    assert print_module(module) == ROUND_TRIP
    again = parse_module(print_module(module))
    assert print_module(again) == ROUND_TRIP


def test_generic_form_parses_back_to_the_same_module():
    module = parse_module(ROUND_TRIP)
    generic = print_module(module, generic=True)
    assert '"ein.contract"' in generic and "<{spec = " in generic
    assert print_module(parse_module(generic)) == ROUND_TRIP


def _func(body: str, args: str = "%a: tensor<4x8xf32>, %b: tensor<8x16xf32>") -> str:
    return f"builtin.module {{\n  func.func @f({args}) {{\n{body}\n    func.return\n  }}\n}}\n"


INVALID = {
    "spec rank": (
        '    %0 = ein.contract "ik,kj->ij" %a, %a : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4x8xf32>',
        "index 'k' has size 8 in one place and 4 in another",
    ),
    "spec arity": (
        '    %0 = ein.contract "ijk,kj->ij" %a, %b : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>',
        "lhs has rank 2 but spec",
    ),
    "spec letters": (
        '    %0 = ein.contract "i1,1j->ij" %a, %b : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>',
        "must be letters",
    ),
    "spec output": (
        '    %0 = ein.contract "ik,kj->iz" %a, %b : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>',
        "result index z is in no operand",
    ),
    "result shape": (
        '    %0 = ein.contract "ik,kj->ij" %a, %b : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x8xf32>',
        "result shape (4, 8) should be (4, 16)",
    ),
    "dtype mismatch": (
        '    %0 = ein.contract "ik,kj->ij" %a, %b : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf16>',
        "element types must match",
    ),
    "map broadcast": (
        "    %0 = ein.map(%a, %b) : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x8xf32> {\n"
        "    ^bb0(%x: f32, %y: f32):\n      ein.yield %x : f32\n    }",
        "does not broadcast to result shape (4, 8)",
    ),
    "map yield type": (
        "    %0 = ein.map(%a) : (tensor<4x8xf32>) -> tensor<4x8xf16> {\n"
        "    ^bb0(%x: f32):\n      ein.yield %x : f32\n    }",
        "body yields f32 but result element type is f16",
    ),
    "map arity": (
        "    %0 = ein.map(%a) : (tensor<4x8xf32>) -> tensor<4x8xf32> {\n"
        "    ^bb0(%x: f32, %y: f32):\n      ein.yield %x : f32\n    }",
        "body has 2 arguments for 1 operands",
    ),
    "reduce dims": (
        "    %0 = ein.reduce sum [2] %a : tensor<4x8xf32> -> tensor<4xf32>",
        "dims [2] invalid for rank 2",
    ),
    "reduce kind": (
        "    %0 = ein.reduce median [1] %a : tensor<4x8xf32> -> tensor<4xf32>",
        "kind 'median' is not one of",
    ),
    "reduce shape": (
        "    %0 = ein.reduce sum [1] keepdim %a : tensor<4x8xf32> -> tensor<4xf32>",
        "result shape (4,) should be (4, 1)",
    ),
    "reshape count": (
        "    %0 = ein.view reshape %a : tensor<4x8xf32> -> tensor<5x8xf32>",
        "differ in element count",
    ),
    "permute": (
        "    %0 = ein.view permute [0, 0] %a : tensor<4x8xf32> -> tensor<4x4xf32>",
        "is not a permutation",
    ),
    "expand": (
        "    %0 = ein.view expand %a : tensor<4x8xf32> -> tensor<4x9xf32>",
        "cannot expand",
    ),
    "slice": (
        "    %0 = ein.view slice dim 1 [2:10:1] %a : tensor<4x8xf32> -> tensor<4x8xf32>",
        "bad slice",
    ),
    "concat": (
        "    %0 = ein.concat dim 1 (%a, %b) : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x24xf32>",
        "does not fit result",
    ),
    "constant type": (
        "    %0 = ein.constant 1.000000e+00 : f16 -> tensor<4xf32>",
        "differs from result element type",
    ),
    "iota dim": ("    %0 = ein.iota dim 3 : tensor<4x8xi64>", "dim 3 out of range"),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_verifier_rejects_with_a_clear_message(case):
    body, message = INVALID[case]
    with pytest.raises(IRError, match="verification failed") as info:
        parse_module(_func(body))
    assert message in str(info.value)


def test_map_body_rejects_non_scalar_dialects():
    body = (
        "    %0 = ein.map(%a) : (tensor<4x8xf32>) -> tensor<4x8xf32> {\n"
        "    ^bb0(%x: f32):\n"
        '      %y = "test.op"(%x) : (f32) -> f32\n'
        "      ein.yield %y : f32\n    }"
    )
    with pytest.raises(IRError):
        parse_module(_func(body))


def test_parse_error_names_the_line():
    text = _func("    %0 = ein.reduce sum [1] %a : tensor<4x8xf32> -> \n")
    with pytest.raises(IRError) as info:
        parse_module(text, "bad.mlir")
    message = str(info.value)
    assert message.startswith("bad.mlir:5:")
    assert "error:" in message


def test_verifier_error_names_the_line_of_the_op():
    body = (
        "    %first = ein.view reshape %a : tensor<4x8xf32> -> tensor<32xf32>\n"
        "    %second = ein.view reshape %first : tensor<32xf32> -> tensor<5x8xf32>"
    )
    with pytest.raises(IRError, match=r"^f.mlir:4: error: verification failed: .*element count"):
        parse_module(_func(body), "f.mlir")


def test_unterminated_string_is_reported_not_hung_on():
    text = _func('    %0 = ein.contract "mk,kn->mn %a, %b : (tensor<4x8xf32>, tensor<8x16xf32>) -> tensor<4x16xf32>')
    with pytest.raises(IRError, match=r"^<input>:3:23: error: unterminated string literal"):
        parse_module(text)


def test_unknown_op_names_the_line():
    text = _func("    %0 = ein.frobnicate %a : tensor<4x8xf32>")
    with pytest.raises(IRError, match=r"<input>:3:\d+: error: .*ein.frobnicate"):
        parse_module(text)


def test_cli_opt_round_trips_and_reports_errors(tmp_path, capsys):
    good = tmp_path / "good.mlir"
    good.write_text(ROUND_TRIP)
    assert cli_main(["opt", str(good)]) == 0
    assert capsys.readouterr().out == ROUND_TRIP
    bad = tmp_path / "bad.mlir"
    bad.write_text(_func("    %0 = ein.view reshape %a : tensor<4x8xf32> -> tensor<5x8xf32>"))
    assert cli_main(["opt", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.mlir" in err and "element count" in err and "Traceback" not in err


def test_modules_are_verified_between_passes_in_debug_mode_only(monkeypatch):
    """`verify_between_passes` verifies with `TILEFUSE_VERIFY_EACH=1` (the tests' debug mode) and
    does nothing otherwise: the driver verifies the module once after fusion, before lowering."""
    from xdsl.utils.exceptions import VerifyException

    from tilefuse.ir.module import VERIFY_EACH_ENV, verify_between_passes

    class Broken:
        def verify(self):
            raise VerifyException("broken on purpose")

        def walk(self):
            return iter(())

    monkeypatch.setenv(VERIFY_EACH_ENV, "1")
    with pytest.raises(IRError, match="after canonicalize: error: verification failed: broken on purpose"):
        verify_between_passes(Broken(), "after canonicalize")
    monkeypatch.delenv(VERIFY_EACH_ENV)
    verify_between_passes(Broken(), "after canonicalize")
