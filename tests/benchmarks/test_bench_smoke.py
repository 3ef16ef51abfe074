"""The benchmark harness on the CPU: `--smoke` for two cases end to end, and a failing candidate."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tilefuse.benchmarks.cases import EAGER, BenchCase
from tilefuse.benchmarks.run import main, render_table, run_case

CASES = {
    "gemm_square": ["tilefuse", "cuBLAS", "torch.compile"],
    "llama_mlp_half": ["tilefuse", "eager", "torch.compile"],
}


def table_rows(report: str) -> list[dict[str, str]]:
    """The markdown table of a results file as one dict per row, keyed by column title."""
    lines = [line for line in report.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    header, rows = split[0], split[2:]
    return [dict(zip(header, row)) for row in rows]


def test_smoke_run_writes_a_row_per_case_and_candidate(tmp_path: Path, capsys):
    out = tmp_path / "results.md"
    main(["--smoke", "--only", *CASES, "--out", str(out)])
    report = out.read_text()
    assert "# tilefuse benchmarks" in report and "torch " in report and "device: CPU" in report
    assert report in capsys.readouterr().out
    rows = table_rows(report)
    expected = [(case, candidate) for case, candidates in CASES.items() for candidate in candidates]
    assert [(r["case"], r["candidate"]) for r in rows] == expected
    for row in rows:
        assert "FAILED" not in row["notes"], row
        assert float(row["median ms"]) > 0, row
        rel_err = float(row["rel. err"])
        assert math.isfinite(rel_err) and rel_err < 1e-3, row


def fails_below_float64(x: torch.Tensor) -> torch.Tensor:
    """Right in float64 (the reference), raises in float32 (every candidate)."""
    if x.dtype != torch.float64:
        raise RuntimeError("no kernel | for this dtype")
    return x * 2


def test_a_failing_candidate_is_a_table_cell_and_the_run_goes_on():
    case = BenchCase(
        name="failing",
        shape="n=8",
        make_inputs=lambda device, dtype: (torch.randn(8, device=device, dtype=dtype),),
        fn=fails_below_float64,
        flops=8,
        baselines=(EAGER,),
    )
    results = run_case(case, torch.device("cpu"), torch.float32, smoke=True)
    assert [(m.candidate, m.median_ms) for m in results] == [("tilefuse", None), ("eager", None)]
    assert all("no kernel | for this dtype" in m.error for m in results)
    rows = table_rows(render_table([(case, results)]))
    assert [r["median ms"] for r in rows] == ["—", "—"]
    assert all(r["notes"].startswith("FAILED: ") and "\\|" in r["notes"] for r in rows)
