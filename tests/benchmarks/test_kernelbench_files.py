"""The runner of KernelBench's own problem files, on problem files written here in KernelBench's form
(`Model`, `get_init_inputs`, `get_inputs`, module-level sizes): shrunk sizes, scalar inputs, tuple
outputs, a crashing problem in an isolated child, resuming from the results file."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from tilefuse.benchmarks import kernelbench_files as kbf
from tilefuse.benchmarks.kernelbench import max_relative_error

PROBLEMS = {
    "level1/1_Scaled_ReLU.py": """
        import torch
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self, scale):
                super().__init__()
                self.scale = scale

            def forward(self, x, shift):
                return torch.relu(x) * self.scale + shift

        batch_size = 4096
        dim = 100

        def get_inputs():
            return [torch.randn(batch_size, dim), 0.5]

        def get_init_inputs():
            return [3.0]
    """,
    "level1/2_Linear_Pair.py": """
        import torch
        import torch.nn as nn

        class Model(nn.Module):
            def __init__(self, features, out):
                super().__init__()
                self.linear = nn.Linear(features, out)

            def forward(self, x):
                y = self.linear(x)
                return y, torch.softmax(y, dim=-1)

        batch_size = 70
        features = 1100
        out = 33

        def get_inputs():
            return [torch.randn(batch_size, features)]

        def get_init_inputs():
            return [features, out]
    """,
    "level1/10_Crash.py": """
        import os
        import torch.nn as nn
        import torch

        class Model(nn.Module):
            def forward(self, x):
                os._exit(7)

        def get_inputs():
            return [torch.randn(3)]

        def get_init_inputs():
            return []
    """,
}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for name, text in PROBLEMS.items():
        path = tmp_path / "KernelBench" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path / "KernelBench"


def test_problems_are_found_in_numeric_order_and_filtered(root: Path):
    assert [p.name for p in kbf.find_problems(root, [1], [])] == [
        "1_Scaled_ReLU",
        "2_Linear_Pair",
        "10_Crash",
    ]
    assert [p.name for p in kbf.find_problems(root, [1], ["2", "10_Crash"])] == ["2_Linear_Pair", "10_Crash"]
    with pytest.raises(FileNotFoundError, match="level2"):
        kbf.find_problems(root, [2], [])


def test_shrink_scales_module_sizes_and_keeps_small_ones(root: Path, capsys):
    problem = kbf.find_problems(root, [1], ["2"])[0]
    namespace = problem.namespace(shrink=True)
    assert (namespace["batch_size"], namespace["features"], namespace["out"]) == (70 // 8, 1100 // 32 + 3, 33)
    assert "shrunk: batch_size 70 -> 8, features 1100 -> 37" in capsys.readouterr().err
    assert kbf.shrink_size(4096) == 131 and kbf.shrink_size(16) == 16
    case = kbf.ProblemCase(problem, torch.device("cpu"), shrink=True)
    module, inputs = case.build(True), case.get_inputs(torch.device("cpu"), torch.float32, True)
    assert inputs[0].shape == (8, 37) and module.linear.in_features == 37 and module.training


def test_output_error_compares_tuples_and_refuses_a_wrong_arity():
    ref = (torch.ones(3), torch.full((2,), 2.0))
    assert max_relative_error((torch.ones(3), torch.full((2,), 2.5)), ref) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="expected 2 outputs"):
        max_relative_error(torch.ones(3), ref)


def test_runner_checks_against_float64_and_resumes(root: Path, tmp_path: Path, capsys):
    results = tmp_path / "results.jsonl"
    args = ["--root", str(root), "--problems", "1,2", "--shrink", "--results", str(results)]
    report = kbf.main([*args, "--out", str(tmp_path / "kb.md")])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["case"] for r in rows] == ["1_Scaled_ReLU", "2_Linear_Pair"]
    for row in rows:
        subject = row["outcomes"]["tilefuse"]
        assert subject["failure"] is None and subject["error"] < 1e-5, subject
        assert "fallback" in subject["note"]
    assert "| 2_Linear_Pair | 1 | float32 |" in report and "| FAILED |" not in report
    assert "times measure nothing" in report and "vs tc" not in report
    kbf.main(args)  # every problem has its row: nothing runs again
    assert len(results.read_text().splitlines()) == 2


def test_a_crashing_problem_is_a_failed_row_and_the_run_goes_on(root: Path, tmp_path: Path):
    results = tmp_path / "results.jsonl"
    args = ["--root", str(root), "--problems", "10,1", "--shrink", "--isolate", "--results", str(results)]
    report = kbf.main(args)
    rows = {json.loads(line)["case"]: json.loads(line) for line in results.read_text().splitlines()}
    assert set(rows) == {"1_Scaled_ReLU", "10_Crash"}
    assert "process died (exit 7)" in rows["10_Crash"]["outcomes"]["tilefuse"]["failure"]
    assert rows["1_Scaled_ReLU"]["outcomes"]["tilefuse"]["failure"] is None
    assert "10_Crash (float32): FAILED" in report


def test_the_report_is_written_after_each_problem(root: Path, tmp_path: Path, monkeypatch):
    """A run killed mid-way (an outer timeout, ^C) keeps the report of the problems it finished, as
    well as their results."""
    out, results = tmp_path / "kb.md", tmp_path / "results.jsonl"
    real = kbf.run_problem

    def killed_at_the_second(problem, *args, **kwargs):
        if problem.name != "1_Scaled_ReLU":
            raise KeyboardInterrupt
        return real(problem, *args, **kwargs)

    monkeypatch.setattr(kbf, "run_problem", killed_at_the_second)
    args = ["--root", str(root), "--problems", "1,2", "--shrink", "--results", str(results)]
    with pytest.raises(KeyboardInterrupt):
        kbf.main([*args, "--out", str(out)])
    report = out.read_text()
    assert "| 1_Scaled_ReLU | 1 | float32 |" in report and "2_Linear_Pair" not in report
