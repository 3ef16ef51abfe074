"""The transformers model benchmark on the CPU: `--tiny` end to end on one model (eager and
tilefuse, the cached compile in a child process, the host-overhead microbenchmark), and its
pure parts (overhead arithmetic, profiler event counting, tables, failing cells) directly."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")

from tilefuse.benchmarks.transformers_models import (  # noqa: E402
    CANDIDATES,
    MODELS,
    ModelResult,
    Timing,
    build_model,
    compile_breakdown,
    compilers,
    float64_reference,
    host_us_per_kernel,
    interleaved_medians,
    kernel_stats,
    main,
    output_tensor,
    overhead_verdict,
    render_models_table,
    render_overhead_table,
)


def table_rows(report: str, title: str) -> list[dict[str, str]]:
    """The markdown table under the `## title...` heading, as one dict per row."""
    section = report.split(f"## {title}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    split = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]
    return [dict(zip(split[0], row)) for row in split[2:]]


def test_tiny_run_on_cpu_writes_every_row(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("TILEFUSE_INTERPRET", "1")  # generated kernels, in Triton's interpreter
    out = tmp_path / "models.md"
    main(["--tiny", "--no-torch-compile", "--models", "llama", "--out", str(out)])
    report = out.read_text()
    assert report in capsys.readouterr().out
    assert "transformers " in report and "device: CPU" in report and "torch " in report
    rows = table_rows(report, "Models")
    assert [(r["model"], r["candidate"]) for r in rows] == [("llama 2x16", c) for c in CANDIDATES]
    by_candidate = {r["candidate"]: r for r in rows}
    for candidate in ("eager", "tilefuse"):
        row = by_candidate[candidate]
        assert "FAILED" not in row["notes"], row
        assert float(row["median ms"]) > 0 and float(row["wall ms"]) > 0, row
        assert float(row["err vs fp64"]) < 1e-4 and math.isfinite(float(row["err vs eager"])), row
    tilefuse_row = by_candidate["tilefuse"]
    assert float(tilefuse_row["first call s"]) > 0 and float(tilefuse_row["cached s"]) > 0
    assert "kernel(s)" in tilefuse_row["notes"] and "new process: cache" in tilefuse_row["notes"]
    assert by_candidate["torch.compile"]["notes"].startswith("skipped")
    overhead = {r["candidate"]: r for r in table_rows(report, "Host overhead")}
    assert list(overhead) == list(CANDIDATES)
    assert "FAILED" not in overhead["tilefuse"]["notes"] and "20 kernel(s)" in overhead["tilefuse"]["notes"]
    assert float(overhead["tilefuse"]["err vs fp64"]) < 1e-4


def test_host_overhead_per_kernel():
    assert host_us_per_kernel(wall=0.5, gpu=0.1, kernels=20) == pytest.approx(20.0)
    assert host_us_per_kernel(wall=0.5, gpu=None, kernels=20) is None
    assert host_us_per_kernel(wall=0.5, gpu=0.1, kernels=0) is None


def test_kernel_stats_counts_device_events_per_call():
    from torch.autograd import DeviceType

    def event(device_type, us):
        return SimpleNamespace(device_type=device_type, time_range=SimpleNamespace(elapsed_us=lambda: us))

    events = [event(DeviceType.CPU, 1000.0)] + [event(DeviceType.CUDA, 5.0)] * 6
    gpu_ms, kernels = kernel_stats(events, calls=2)
    assert gpu_ms == pytest.approx(0.015) and kernels == 3


def test_tables_show_errors_in_cells_and_the_verdict():
    timings = [
        Timing("eager", median_ms=2.0, wall_ms=2.0, gpu_ms=1.5, kernels=50, err_eager=0.0, err_fp64=1e-3),
        Timing("torch.compile", error="OutOfMemoryError: CUDA out of memory | tried"),
        Timing("tilefuse", median_ms=1.0, wall_ms=1.1, gpu_ms=1.0, kernels=25, first_call_s=3.0, cached_s=0.4),
    ]
    table = render_models_table([ModelResult("llama", "4x512", timings)])
    lines = table.splitlines()
    assert len(lines) == 5 and lines[0].startswith("| model | candidate | median ms | vs eager |")
    assert "| llama 4x512 | tilefuse | 1 | 2.00 | 1.1 | 1 | 25 | 4 | 3 | 0.4 |" in table
    assert "FAILED: OutOfMemoryError: CUDA out of memory \\| tried" in lines[3]
    assert "| — | — |" in lines[3]
    assert render_overhead_table(timings).count("\n") == 4
    assert overhead_verdict(timings) == "tilefuse: 4 µs per kernel, target ≤ 6 µs: met"
    assert "not measured" in overhead_verdict([Timing("tilefuse", wall_ms=1.0)])


def test_compile_breakdown_sums_parts_over_graphs():
    reports = [
        {"compile_seconds": {"capture": 1.0, "passes": {"a": 0.25, "b": 0.25}, "triton_compile": 2.0, "total": 3.5}},
        {"compile_seconds": {"capture": None, "passes": {"a": 0.5}, "triton_compile": 1.0, "total": 1.5}},
        {},
    ]
    assert compile_breakdown(reports) == "; compile s: capture 1.00, passes 1.00, triton_compile 3.00"
    assert compile_breakdown([{}]) == ""


@pytest.mark.parametrize("name", ["gemma2", "opt", "falcon", "mixtral", "gpt_neo", "bigbird", "llama4"])
def test_every_model_family_builds_at_tiny_size_and_trains_without_dropout(name):
    """The families the benchmarks know build from their tiny configs and run eager; the training
    harness turns every dropout off (OPT's is named `dropout`: left at 0.1, eager and a compiled
    step drew different masks and their gradients differed by 60%)."""
    import torch

    from tilefuse.benchmarks import training
    from tilefuse.benchmarks.transformers_models import MODELS, build_model, output_tensor

    model, inputs = build_model(MODELS[name], True, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        assert torch.isfinite(output_tensor(model(**inputs))).all()
    model, ids = training.build(MODELS[name], True, torch.device("cpu"), torch.float32)
    first, again = training.step(model, model, ids), training.step(model, model, ids)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_the_skip_options_leave_their_candidates_out_with_the_reason():
    """--no-torch-compile leaves both torch.compile rows out, --no-reduce-overhead both CUDA-graph
    rows; eager and tilefuse's default mode always run."""
    runnable = lambda table: {name for name, fn in table.items() if callable(fn)}  # noqa: E731
    everything = runnable(compilers(False, False))
    assert everything == set(CANDIDATES)
    assert runnable(compilers(True, False)) == everything - {"torch.compile", "torch.compile reduce-overhead"}
    without_graphs = compilers(False, True)
    graphs = {"torch.compile reduce-overhead", "tilefuse reduce-overhead"}
    assert runnable(without_graphs) == everything - graphs
    assert without_graphs["tilefuse reduce-overhead"] == "skipped (--no-reduce-overhead)"
    assert runnable(compilers(True, True)) == {"eager", "tilefuse"}


def test_interleaved_rounds_visit_the_candidates_in_turn():
    """After every candidate's own timing, rounds time each kept candidate in turn; a row's median is
    the median of its timings, listed in its note; a candidate that failed or was not kept is left
    as it was, and a round that fails is named in the note."""
    order = []
    speeds = {"eager": [4.0, 9.0, 4.2], "tilefuse": [2.0, 2.1, None]}

    def timer(fn, device):
        name = fn()
        order.append(name)
        value = speeds[name][sum(1 for o in order if o == name) - 1]
        if value is None:
            raise RuntimeError("lost the device")
        return value

    timings = {
        "eager": Timing("eager", median_ms=4.1),
        "tilefuse": Timing("tilefuse", median_ms=6.0, note="54 kernel(s)"),
        "torch.compile": Timing("torch.compile", error="RuntimeError: no"),
    }
    kept = {"eager": "eager", "tilefuse": "tilefuse"}
    out = interleaved_medians(timings, kept, lambda c: c, None, timer=timer)
    assert order == ["eager", "tilefuse"] * 3
    assert out["eager"].median_ms == pytest.approx(4.15)  # of 4.1, 4.0, 9.0, 4.2
    assert out["tilefuse"].median_ms == pytest.approx(2.1)  # of 6.0, 2.0, 2.1 (the failed round left out)
    listed = "medians (its own, then 3 interleaved rounds): 6, 2, 2.1, failed ms"
    assert out["tilefuse"].note == f"54 kernel(s); {listed}"
    assert out["torch.compile"] == timings["torch.compile"]


def test_the_float64_reference_of_a_mixture_of_experts_runs_its_experts_one_by_one():
    """Mixtral's experts call `torch._grouped_mm` on a GPU, which takes no float64: the benchmark's
    float64 copy runs transformers' eager experts instead (the Mixtral rows had no float64 error), and
    the model itself keeps its grouped experts."""
    model, inputs = build_model(MODELS["mixtral"], True, torch.device("cpu"), torch.float32)
    assert model.config._experts_implementation == "grouped_mm"
    calls = []
    experts = type(model.model.layers[0].mlp.experts)
    with pytest.MonkeyPatch.context() as patch:  # record which implementation each experts call takes
        forward = experts.forward
        patch.setattr(experts, "forward", lambda self, *a, **k: calls.append(self.config._experts_implementation)
                      or forward(self, *a, **k))  # fmt: skip
        reference = float64_reference(model, inputs)
    assert calls == ["eager"] and model.config._experts_implementation == "grouped_mm"
    with torch.no_grad():
        out = output_tensor(model(**inputs)).double()
    assert reference.dtype == torch.float64
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
