"""The KernelBench-style benchmark on the CPU: every case builds and runs eagerly at its small size,
a few small cases through tilefuse (kernels in Triton's interpreter) match eager, the runner end to
end on two cases, and the table, the WRONG verdict and the summary on fake results."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import tilefuse
from tilefuse.benchmarks.cases import COMPILE, EAGER
from tilefuse.benchmarks.kernelbench import (
    CASES,
    SUBJECT,
    CaseResult,
    Outcome,
    float64_reference,
    is_wrong,
    main,
    max_relative_error,
    render_report,
    tilefuse_summary,
)

CPU = torch.device("cpu")
# A chunked wide row, a norm over the channels, a scan, a loss with labels, a loss to one element, GEMMs with a
# norm and a softmax in the epilogue, attention with a buffer mask, a whole encoder layer (without and
# with a padding mask): about a second each in the interpreter. Every small case matched eager here (float32 and bfloat16) when
# this list was made; the rest are left out for time.
THROUGH_TILEFUSE = [
    "softmax_wide",
    "cumsum",
    "rms_norm_dim1",
    "cross_entropy",
    "mse_loss",
    "linear_layernorm",
    "linear_dropout_softmax",
    "mingpt_attention",
    "transformer_encoder",
    "transformer_encoder_padded",
]


def table_rows(report: str) -> list[dict[str, str]]:
    """The markdown table of a report as one dict per row, keyed by column title."""
    lines = [line for line in report.splitlines() if line.startswith("| ")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(split[0], row)) for row in split[2:]]


@pytest.mark.parametrize("name", CASES)
def test_every_case_builds_and_runs_eagerly(name: str):
    """The module is in eval mode (training mode where the case asks: KernelBench's BatchNorm), its
    inputs random, eager float32 close to its float64 copy, and the small size names the same dims as
    the full one."""
    case = CASES[name]
    module = case.build(small=True)
    assert module.training == case.train
    inputs = case.get_inputs(CPU, torch.float32, small=True)
    floats = [x for x in inputs if x.is_floating_point()]
    assert floats and all(x.dtype == torch.float32 and x.std() > 0 for x in floats)
    with torch.no_grad():
        out = module(*inputs)
        error = max_relative_error(out, float64_reference(module, inputs))
    assert torch.isfinite(out.float()).all()
    assert error < 1e-5 and not is_wrong(error, error, torch.float32)
    assert set(case.full) == set(case.small)


@pytest.mark.parametrize("name", THROUGH_TILEFUSE)
def test_small_case_through_tilefuse_matches_eager(name: str):
    case = CASES[name]
    module = case.build(small=True)
    inputs = case.get_inputs(CPU, torch.float32, small=True)
    compiled = tilefuse.compile(module)
    with torch.no_grad():
        expected = module(*inputs)
        out = compiled(*inputs)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    reports = compiled.tilefuse_reports
    assert any(p["groups"] for r in reports for p in r["partitions"]), tilefuse_summary(reports)
    assert not any(p.get("runtime_error") for r in reports for p in r["partitions"])


def test_runner_end_to_end_on_small_cases(tmp_path: Path, capsys):
    out = tmp_path / "kernelbench.md"
    main(["--small", "--no-torch-compile", "--dtype", "both", "--cases", "linear_gelu,argmax_dim1",
          "--out", str(out)])  # fmt: skip
    report = out.read_text()
    assert report in capsys.readouterr().out and "device: CPU" in report
    rows = table_rows(report)
    assert [(r["case"], r["dtype"]) for r in rows] == [
        ("linear_gelu", "bfloat16"),
        ("linear_gelu", "float32"),
        ("argmax_dim1", "bfloat16"),
        ("argmax_dim1", "float32"),
    ]
    for row in rows:
        assert row["tilefuse"] == "ok" and "FAILED" not in row["notes"], row
        assert float(row["eager µs"]) > 0 and float(row["tilefuse µs"]) > 0 and float(row["vs eager"]) > 0
        assert "tc µs" not in row
    assert rows[0]["notes"].startswith("1 graph(s), 1 partition(s), 0 fallback(s); 1 Triton kernel(s)")
    assert rows[2]["notes"].startswith("1 graph(s), 1 partition(s), 0 fallback(s); 1 Triton kernel(s)")
    assert float(rows[1]["err tilefuse"]) < 1e-6 and float(rows[2]["err eager"]) == 0
    assert "geomean speedup of tilefuse vs eager" in report


def test_table_verdicts_and_summary_from_fake_timings():
    def result(case: str, dtype: torch.dtype, *outcomes: Outcome) -> CaseResult:
        return CaseResult(case, 1, dtype, {o.candidate: o for o in outcomes})

    results = [
        result("fast", torch.bfloat16, Outcome(EAGER, 100.0, 4e-3), Outcome(COMPILE, 60.0, 4e-3),
               Outcome(SUBJECT, 50.0, 5e-3, note="1 graph(s)")),
        # 10x eager's error + the floor is 5e-2: above it is WRONG, for tilefuse and torch.compile
        result("wrong", torch.bfloat16, Outcome(EAGER, 100.0, 4e-3), Outcome(COMPILE, 100.0, 0.06),
               Outcome(SUBJECT, 200.0, 0.06)),
        result("crash", torch.float32, Outcome(EAGER, 10.0, 1e-7), Outcome(COMPILE, failure="Boom: a | b"),
               Outcome(SUBJECT, failure="RuntimeError: no kernel")),
        result("slow", torch.float32, Outcome(EAGER, 10.0, 0.0), Outcome(COMPILE, 10.0, 0.0),
               Outcome(SUBJECT, 20.0, 5e-7)),
    ]  # fmt: skip
    report = render_report(["- header"], results)
    rows = {r["case"]: r for r in table_rows(report)}
    assert list(rows["fast"].values())[:9] == [
        "fast", "1", "bfloat16", "100.0", "60.0", "50.0", "2", "1.2", "4.0e-03",
    ]  # fmt: skip
    assert (rows["fast"]["tilefuse"], rows["fast"]["notes"]) == ("ok", "1 graph(s)")
    assert rows["wrong"]["tilefuse"] == "WRONG" and rows["wrong"]["err tc"] == "6.0e-02 WRONG"
    assert rows["wrong"]["err eager"] == "4.0e-03"
    crash = rows["crash"]
    assert (crash["tc µs"], crash["tilefuse µs"], crash["vs eager"], crash["tilefuse"]) == (
        "FAILED", "FAILED", "—", "FAILED",
    )  # fmt: skip
    assert crash["notes"] == "tc FAILED: Boom: a \\| b; tilefuse FAILED: RuntimeError: no kernel"
    assert rows["slow"]["tilefuse"] == "ok"  # 5e-7 is under fp32's floor of 1e-6
    summary = report.split("## Summary", 1)[1]
    assert f"bfloat16: geomean speedup of tilefuse vs eager {math.sqrt(2.0 * 0.5):.3f}x over 2" in summary
    assert f"vs torch.compile {math.sqrt(1.2 * 0.5):.3f}x over 2" in summary
    assert "float32: geomean speedup of tilefuse vs eager 0.500x over 1" in summary
    flagged = summary.split("FAILED:", 1)[1]
    assert "- fast" not in flagged
    assert "- wrong (bfloat16): WRONG, 0.50x eager" in flagged
    assert "- crash (float32): FAILED" in flagged and "- slow (float32): 0.50x eager" in flagged


def test_errors_and_the_wrong_threshold():
    ref = torch.tensor([1.0, -4.0, 2.0], dtype=torch.float64)
    assert max_relative_error(torch.tensor([1.0, -4.0, 2.5]), ref) == pytest.approx(0.125)
    assert max_relative_error(torch.tensor([1.0, float("nan"), 2.0]), ref) == math.inf
    with pytest.raises(ValueError, match="output shape"):
        max_relative_error(torch.zeros(2), ref)
    assert not is_wrong(1e-6, 0.0, torch.float32) and is_wrong(2e-6, 0.0, torch.float32)
    assert not is_wrong(0.05, 4e-3, torch.bfloat16) and is_wrong(0.06, 4e-3, torch.bfloat16)
    assert is_wrong(math.inf, 1e-3, torch.bfloat16) and not is_wrong(None, 1e-3, torch.bfloat16)


def test_tilefuse_summary_names_fallbacks_executors_and_the_graph_choice():
    reports = [
        {
            "partitions": [{"executor": "2 Triton kernel(s)"}, {"executor": "2 Triton kernel(s)"}],
            "fallbacks": [{"op": "aten.argmax.default", "reason": "no ein lowering"}],
            "selection": {"chosen": "tilefuse", "tilefuse_ms": 0.1, "pytorch_ms": 0.2},
        },
        {"partitions": [], "fallbacks": []},
    ]
    assert tilefuse_summary(reports) == (
        "2 graph(s), 2 partition(s), 1 fallback(s) (aten.argmax.default); 2 Triton kernel(s) (x2); "
        "graph runs tilefuse (tilefuse_ms 0.1, pytorch_ms 0.2 ms)"
    )


def test_tilefuse_summary_says_when_nothing_was_compiled():
    """KernelBench's LSTMs: Dynamo captures no graph tilefuse compiles, so the row times eager's ops
    (its ratio is the GPU's spread between two timings), and the note says so."""
    assert (
        tilefuse_summary([])
        == "0 graph(s), 0 partition(s), 0 fallback(s) (nothing compiled: eager's own ops ran)"
    )
    randn_only = [{"partitions": [], "fallbacks": [{"op": "aten.randn.default", "reason": "random"}]}]
    assert tilefuse_summary(randn_only).startswith(
        "1 graph(s), 0 partition(s), 1 fallback(s) (nothing compiled"
    )
