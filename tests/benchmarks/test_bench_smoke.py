"""The benchmark harness on the CPU: `--smoke` end to end on a few cases (a GEMM, an MLP, a
memory-bound norm, SDPA), every case built and checked eagerly, the GB/s columns, and a failing
candidate."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from tilefuse.benchmarks.cases import EAGER, BenchCase, benchmark_cases, llama_block
from tilefuse.benchmarks.models import LlamaBlock
from tilefuse.benchmarks.run import (
    COMPILERS,
    SMOKE_SCALE,
    Measurement,
    main,
    relative_error,
    render_table,
    run_case,
    summarize,
)

# A subset: the whole smoke run takes about a minute, mostly tilefuse's attention kernels in
# Triton's CPU interpreter. `test_every_case_builds_and_runs_eagerly` covers the rest.
CASES = {
    "gemm_square": ["tilefuse", "cuBLAS", "torch.compile"],
    "llama_mlp_half": ["tilefuse", "eager", "torch.compile"],
    "rmsnorm": ["tilefuse", "eager", "torch.compile"],
    "sdpa_small": ["tilefuse", "SDPA", "torch.compile"],
}
MEMORY_BOUND = {"rmsnorm"}


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
    assert "- copy bandwidth: " in report
    assert report in capsys.readouterr().out
    rows = table_rows(report)
    expected = [(case, candidate) for case, candidates in CASES.items() for candidate in candidates]
    assert [(r["case"], r["candidate"]) for r in rows] == expected
    for row in rows:
        assert "FAILED" not in row["notes"], row
        assert float(row["median ms"]) > 0, row
        rel_err = float(row["rel. err"])
        assert math.isfinite(rel_err) and rel_err < 1e-3, row
        if row["case"] in MEMORY_BOUND:
            assert row["TFLOP/s"] == "—" and float(row["GB/s"]) > 0, row
            assert row["% of copy"].endswith("%") and float(row["% of copy"][:-1]) >= 0, row
        else:
            assert float(row["TFLOP/s"]) > 0 and row["GB/s"] == row["% of copy"] == "—", row


@pytest.mark.parametrize("case", benchmark_cases(SMOKE_SCALE), ids=lambda case: case.name)
def test_every_case_builds_and_runs_eagerly(case: BenchCase):
    """Each case's smoke inputs are random, its function runs, and it agrees with its float64 self."""
    assert (case.flops > 0) != (case.io_elements > 0), "a case counts FLOPs or bytes, not both"
    assert all(b in COMPILERS for b in case.baselines)
    torch.manual_seed(0)
    inputs = case.make_inputs(torch.device("cpu"), torch.float32)
    assert all(x.dtype == torch.float32 and x.numel() > 1 and x.std() > 0 for x in inputs)
    out = case.fn(*inputs)
    assert torch.isfinite(out).all()
    assert relative_error(out, case.fn(*(x.double() for x in inputs))) < 1e-5
    if case.io_elements:  # x and the output, the same shape, plus vectors as long as a row
        assert case.io_elements == 2 * out.numel() + (len(inputs) - 1) * out.shape[-1]


def test_decoder_block_case_is_the_llama_block_module():
    torch.manual_seed(0)
    block = LlamaBlock(dim=64, heads=4, kv_heads=1, hidden=96).double()
    with torch.no_grad():
        block.attn_norm.weight.normal_()
        block.mlp_norm.weight.normal_()
    weights = [
        getattr(block, name).weight
        for name in ("attn_norm", "wq", "wk", "wv", "wo", "mlp_norm", "w1", "w3", "w2")
    ]
    x = torch.randn(2, 16, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(llama_block(x, *weights, heads=4, kv_heads=1), block(x))


def test_memory_bound_rows_show_gbps_against_the_copy_bandwidth():
    case = BenchCase(
        name="norm",
        shape="x 1000x1000",
        make_inputs=lambda device, dtype: (),
        fn=torch.zeros,
        flops=0,
        baselines=(EAGER,),
        io_elements=1_000_000,
    )
    measurements = [Measurement("tilefuse", 1.0, 0.0), Measurement("eager", 0.5, 0.0)]
    rows = table_rows(render_table([(case, measurements)], torch.bfloat16, copy_gbps=8.0))
    # 2 MB of bf16 in 1 ms is 2 GB/s, a quarter of the copy's 8 GB/s.
    assert [(r["GB/s"], r["% of copy"], r["TFLOP/s"]) for r in rows] == [
        ("2", "25%", "—"),
        ("4", "50%", "—"),
    ]


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


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++: CUDA C++ kernels cannot run on a CPU")
def test_the_cuda_backend_gets_its_own_row_beside_tritons(tmp_path: Path, monkeypatch):
    """`--cuda`: a row for tilefuse with the CUDA C++ backend after tilefuse's own, its speedup
    column its time over the Triton backend's; its kernels run on CPU threads (g++) here."""
    monkeypatch.setenv("TILEFUSE_INTERPRET", "1")
    out = tmp_path / "results.md"
    main(["--smoke", "--only", "rmsnorm", "--cuda", "--out", str(out)])
    rows = table_rows(out.read_text())
    assert [r["candidate"] for r in rows][:2] == ["tilefuse", "tilefuse, CUDA C++ backend"]
    cuda = rows[1]
    assert "FAILED" not in cuda["notes"] and float(cuda["rel. err"]) < 1e-3, cuda
    assert "1 in CUDA C++" in cuda["notes"] and "CUDA C++" not in rows[0]["notes"], cuda
    assert cuda["tilefuse speedup"].endswith("x"), cuda


def test_skipped_baselines_get_no_row(tmp_path: Path):
    """`--skip torch.compile`: the case's rows are tilefuse's and its other baselines', and the
    section's summary has no line for the skipped one."""
    out = tmp_path / "results.md"
    main(["--smoke", "--only", "gemm_square", "--skip", "torch.compile", "--out", str(out)])
    report = out.read_text()
    rows = table_rows(report)
    assert [r["candidate"] for r in rows] == ["tilefuse", "cuBLAS"], rows
    assert all(float(r["median ms"]) > 0 and "FAILED" not in r["notes"] for r in rows), rows
    assert "torch.compile" not in report.split("| case |")[0].split("device: CPU")[1], report


def test_an_unknown_baseline_to_skip_is_refused():
    with pytest.raises(SystemExit):
        main(["--smoke", "--skip", "inductor"])


def test_each_dtype_gets_a_section_with_its_table_and_geomeans(tmp_path: Path):
    """`--dtype float32 bfloat16`: a section per dtype, in that order, each with its copy bandwidth,
    a geomean line per baseline that matches its own table's speedups, and its own table."""
    out = tmp_path / "results.md"
    main(["--smoke", "--only", "rmsnorm", "--dtype", "float32", "bfloat16", "--out", str(out)])
    report = out.read_text()
    assert "- dtype float32, bfloat16," in report
    head, float32, bfloat16 = report.split("\n## ")
    assert float32.startswith("float32\n") and bfloat16.startswith("bfloat16\n")
    for section, name in ((float32, "float32"), (bfloat16, "bfloat16")):
        assert "- copy bandwidth: " in section and f" {name})" in section
        rows = table_rows(section)
        assert [r["candidate"] for r in rows] == ["tilefuse", "eager", "torch.compile"]
        for row in rows[1:]:
            assert "FAILED" not in row["notes"], row
            speedup = float(row["tilefuse speedup"].removesuffix("x"))
            # one case: the geomean is that case's speedup (the table rounds it to 2 places)
            line = next(x for x in section.splitlines() if x.startswith(f"- against {row['candidate']}:"))
            geomean = float(line.split("geomean ")[1].split("x")[0])
            assert abs(geomean - speedup) <= 0.006 and "over 1 case(s)" in line, line
            assert line.endswith(f"lowest {speedup:.2f}x (rmsnorm)"), line
        tolerance = 1e-3 if name == "float32" else 2e-2
        assert all(float(r["rel. err"]) < tolerance for r in rows), rows


def test_the_summary_takes_the_geometric_mean_and_names_the_missing():
    def case(name: str) -> BenchCase:
        return BenchCase(
            name=name, shape="-", make_inputs=lambda d, t: (), fn=torch.zeros, flops=1, baselines=()
        )

    results = [
        (case("a"), [Measurement("tilefuse", 1.0, 0.0), Measurement("eager", 2.0, 0.0)]),
        (case("b"), [Measurement("tilefuse", 2.0, 0.0), Measurement("eager", 1.0, 0.0)]),
        (case("c"), [Measurement("tilefuse", 1.0, 0.0), Measurement("eager", 4.0, 0.0)]),
        (case("d"), [Measurement("tilefuse", error="boom"), Measurement("eager", 1.0, 0.0)]),
    ]
    # speedups 2, 0.5, 4: geomean (2 * 0.5 * 4) ** (1/3) = 4 ** (1/3)
    assert summarize(results) == [
        f"- against eager: geomean {4 ** (1 / 3):.3f}x over 3 case(s), lowest 0.50x (b); no time for d"
    ]


def test_a_run_cut_short_keeps_the_rows_it_measured(tmp_path: Path, monkeypatch):
    """The results file is rewritten after every case: a run killed in its second case (a device
    machine's time limit) leaves the first case's rows and names the cases it did not reach."""
    import tilefuse.benchmarks.run as bench

    calls = []

    def fake_run_case(case, *args, **kwargs):
        calls.append(case.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is cut here
        return [Measurement("tilefuse", 2.0, 1e-7), Measurement("eager", 3.0, 1e-7)]

    monkeypatch.setattr(bench, "run_case", fake_run_case)
    out = tmp_path / "results.md"
    with pytest.raises(KeyboardInterrupt):
        main(["--smoke", "--only", "gemm_square", "rmsnorm", "sdpa_small", "--out", str(out)])
    report = out.read_text()
    rows = table_rows(report)
    assert [(r["case"], r["candidate"], r["tilefuse speedup"]) for r in rows] == [
        ("gemm_square", "tilefuse", "—"),
        ("gemm_square", "eager", "1.50x"),
    ]
    assert "(not yet run: rmsnorm, sdpa_small)" in report
    assert "- against eager: geomean 1.500x over 1 case(s), lowest 1.50x (gemm_square)" in report
