"""KernelBench's own problem files (github.com/ScalingIntelligence/KernelBench), run as its harness
runs them: eager PyTorch, optionally `torch.compile`, and tilefuse, each checked against float64 and
timed.

    python -m tilefuse.benchmarks.kernelbench_files --root PATH/KernelBench [--levels 1,2]
        [--problems 19,23_Softmax] [--dtype float32|bfloat16|both] [--out FILE.md]
        [--results FILE.jsonl] [--deadline SECONDS] [--torch-compile] [--shrink] [--isolate]

Nothing of KernelBench ships with tilefuse: `--root` is a checkout's `KernelBench` folder (the one
holding `level1/`, `level2/`, ...). Each problem file defines `Model`, `get_init_inputs()` and
`get_inputs()`; the module is built from the init inputs (seeded, in train mode as KernelBench's
harness leaves it, on the device, cast to the dtype), its inputs made on the device, floats cast to
the dtype. Errors, timing and the table are those of `tilefuse.benchmarks.kernelbench`.

`--shrink` scales the problem's module-level integer sizes down (the CPU's interpreter cannot run
KernelBench's sizes): 1024 and above to n // 32 + 3 (ragged), 64 to 1023 to n // 8, the rest as they
are (kernel sizes, strides, groups). `--isolate` runs the problems in a child process and starts a
new one after a crash (a CUDA error poisons its process): the crashed problem is a FAILED row.
`--results` keeps one JSON line per finished problem; a run given the same file skips them (a killed
run resumes where it stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .kernelbench import CaseResult, Outcome, candidates, dtype_name, render_report, run_case
from .run import describe_error, environment_lines

DTYPES = {"bfloat16": (torch.bfloat16,), "float32": (torch.float32,), "both": (torch.float32, torch.bfloat16)}


def shrink_size(n: int) -> int:
    """A KernelBench size scaled for the CPU's interpreter (see the module's docstring)."""
    if n >= 1024:
        return n // 32 + 3
    if n >= 64:
        return n // 8
    return n


@dataclass(frozen=True)
class Problem:
    """One problem file: `level`, and its name (the file's stem, `19_ReLU`)."""

    path: Path
    level: int

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def number(self) -> str:
        return self.name.split("_", 1)[0]

    def namespace(self, shrink: bool) -> dict:
        """The file executed as a module of its own; with `shrink`, its integer sizes scaled down (and
        each change said on stderr)."""
        namespace: dict = {
            "__name__": f"kernelbench_level{self.level}_{self.number}",
            "__file__": str(self.path),
        }
        exec(compile(self.path.read_text(), str(self.path), "exec"), namespace)
        if shrink:
            changed = []
            for key, value in list(namespace.items()):
                if type(value) is int and not key.startswith("_") and shrink_size(value) != value:
                    namespace[key] = shrink_size(value)
                    changed.append(f"{key} {value} -> {namespace[key]}")
            if changed:
                print(f"[{self.level}/{self.name}] shrunk: {', '.join(changed)}", file=sys.stderr, flush=True)
        return namespace


def find_problems(root: Path, levels: Sequence[int], wanted: Sequence[str]) -> list[Problem]:
    """The problem files of `levels` under `root`, in KernelBench's numeric order; with `wanted`,
    those whose number or name is listed."""
    problems = []
    for level in levels:
        folder = root / f"level{level}"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is not a folder: --root names a checkout's KernelBench folder")
        files = sorted(folder.glob("*.py"), key=lambda p: (int(p.stem.split("_", 1)[0]), p.stem))
        problems += [Problem(p, level) for p in files if p.stem.split("_", 1)[0].isdigit()]
    if wanted:
        problems = [
            p for p in problems if p.number in wanted or p.name in wanted or f"{p.level}/{p.number}" in wanted
        ]
    return problems


def cast_input(value: object, device: torch.device, dtype: torch.dtype) -> object:
    if isinstance(value, Tensor):
        value = value.to(device)
        return value.to(dtype) if value.is_floating_point() else value
    return value


class ProblemCase:
    """A problem as `kernelbench.run_case` takes a case: `build` and `get_inputs` execute its file
    once (module and inputs made on `device`, its default device meanwhile; seeded by run_case)."""

    def __init__(self, problem: Problem, device: torch.device, shrink: bool):
        self.name, self.level = problem.name, problem.level
        self.namespace = problem.namespace(shrink)
        self.device = device

    def build(self, small: bool) -> nn.Module:
        with torch.device(self.device):  # KernelBench leaves it in train mode
            return self.namespace["Model"](*self.namespace["get_init_inputs"]())

    def get_inputs(self, device: torch.device, dtype: torch.dtype, small: bool) -> tuple:
        torch.manual_seed(1)
        with torch.device(device):
            return tuple(cast_input(x, device, dtype) for x in self.namespace["get_inputs"]())


def run_problem(
    problem: Problem, dtype: torch.dtype, device: torch.device, shrink: bool,
    compilers: dict[str, Callable[[nn.Module], Callable]],
) -> CaseResult:  # fmt: skip
    """Every candidate on one problem in one dtype (under `torch.no_grad()`, as KernelBench times)."""
    try:
        case = ProblemCase(problem, device, shrink)
    except Exception as exc:  # a file that does not run is a row of failures
        result = CaseResult(problem.name, problem.level, dtype)
        result.outcomes = {c: Outcome(c, failure=f"not built: {describe_error(exc)}") for c in compilers}
        return result
    return run_case(case, dtype, device, shrink, compilers)


# Results as JSON lines


def result_to_json(result: CaseResult) -> str:
    return json.dumps({
        "case": result.case, "level": result.level, "dtype": dtype_name(result.dtype),
        "reference_failure": result.reference_failure,
        "outcomes": {c: asdict(o) for c, o in result.outcomes.items()},
    })  # fmt: skip


def result_from_json(line: str) -> CaseResult:
    data = json.loads(line)
    result = CaseResult(data["case"], data["level"], getattr(torch, data["dtype"]))
    result.reference_failure = data["reference_failure"]
    result.outcomes = {c: Outcome(**o) for c, o in data["outcomes"].items()}
    return result


def read_results(path: Path | None) -> list[CaseResult]:
    if path is None or not path.exists():
        return []
    return [result_from_json(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(path: Path, result: CaseResult) -> None:
    with path.open("a") as f:
        f.write(result_to_json(result) + "\n")


def pending(problems: Sequence[Problem], dtypes: Sequence[torch.dtype], path: Path | None) -> list[tuple]:
    """The (problem, dtype) runs the results file at `path` has no row for yet, in order."""
    done = {(r.level, r.case, dtype_name(r.dtype)) for r in read_results(path)}
    return [(p, d) for p in problems for d in dtypes if (p.level, p.name, dtype_name(d)) not in done]


def render(header: Sequence[str], results: Sequence[CaseResult]) -> str:
    """`kernelbench.render_report` under this runner's title."""
    return render_report(header, results).replace(
        "# tilefuse on KernelBench-style cases", "# tilefuse on KernelBench's problem files", 1
    )


def crashed(problem: Problem, dtype: torch.dtype, compilers: Sequence[str], why: str) -> CaseResult:
    result = CaseResult(problem.name, problem.level, dtype)
    result.outcomes = {c: Outcome(c, failure=why) for c in compilers}
    return result


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.kernelbench_files", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--root", type=Path, required=True, help="a KernelBench checkout's KernelBench folder"
    )
    parser.add_argument("--levels", default="1", help="comma-separated levels (default 1)")
    parser.add_argument("--problems", default="", help="comma-separated numbers or names (default all)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--out", type=Path, help="markdown file to write, rewritten after each problem")
    parser.add_argument("--results", type=Path, help="JSON lines of finished problems (resumes a run)")
    parser.add_argument(
        "--deadline", type=float, default=0.0, help="start no problem after this many seconds"
    )
    parser.add_argument("--torch-compile", action="store_true", help="add torch.compile's default mode")
    parser.add_argument("--shrink", action="store_true", help="scale the sizes down (the CPU's interpreter)")
    parser.add_argument(
        "--isolate", action="store_true", help="problems in a child process, restarted after a crash"
    )
    parser.add_argument("--fp32-precision", choices=("highest", "high", "medium"), default="highest")
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",") if x]
    args.problems = [p for p in args.problems.split(",") if p]
    if args.isolate and args.results is None:
        parser.error("--isolate keeps its results in --results FILE.jsonl")
    return args


def _child_argv(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", __spec__.name, *(a for a in argv if a != "--isolate")]


def supervise(args: argparse.Namespace, argv: Sequence[str], problems: list[Problem], start: float) -> None:
    """Run the problems in child processes until each has a result or the deadline passed; a
    problem whose child died is recorded as crashed and skipped by the next child."""
    compilers = list(candidates(False, torch_compile=args.torch_compile))
    while True:
        if not pending(problems, DTYPES[args.dtype], args.results) or _past(args.deadline, start):
            return
        remaining = args.deadline - (time.perf_counter() - start) if args.deadline else 0.0
        child = [*argv]
        if args.deadline:
            child = _replace(child, "--deadline", f"{max(remaining, 1.0):.0f}")
        marker = args.results.with_suffix(".started")
        marker.unlink(missing_ok=True)
        proc = subprocess.run(_child_argv(child), env={**os.environ, "TILEFUSE_KB_STARTED": str(marker)})
        if proc.returncode == 0:
            continue
        if not marker.exists():
            print(f"child exited with {proc.returncode} before starting a problem", file=sys.stderr)
            return
        level, name, dtype = marker.read_text().split()
        problem = next(p for p in problems if p.level == int(level) and p.name == name)
        why = f"process died (exit {proc.returncode}) running this problem"
        append_result(args.results, crashed(problem, getattr(torch, dtype), compilers, why))


def _past(deadline: float, start: float) -> bool:
    """Whether a `--deadline` (0: none) has passed since `start`."""
    return bool(deadline) and time.perf_counter() - start > deadline


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        if argv[i] == flag:
            i += 2
            continue
        if argv[i].startswith(flag + "="):
            i += 1
            continue
        out.append(argv[i])
        i += 1
    return [*out, flag, value]


def main(argv: Sequence[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    start = time.perf_counter()
    problems = find_problems(args.root, args.levels, args.problems)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu" and not args.shrink:
        print(
            "note: no CUDA device; KernelBench's sizes on the CPU are slow (--shrink scales them)",
            file=sys.stderr,
        )
    header = environment_lines(__spec__.name, device, DTYPES[args.dtype][0], argv)
    header.append(f"- KernelBench problems from {args.root} (levels {', '.join(map(str, args.levels))})"
                  + (", sizes shrunk (each change on stderr)" if args.shrink else ""))  # fmt: skip
    if device.type == "cpu":
        header.append(
            "- **on the CPU the times measure nothing** (tilefuse's kernels run in Triton's interpreter, "
            "or the graph runs as PyTorch): the errors are what such a run checks"
        )
    results: list[CaseResult] = []  # kept here without a results file (`supervise` requires one)
    if args.isolate:
        supervise(args, argv, problems, start)
    else:
        torch.set_float32_matmul_precision(args.fp32_precision)
        compilers = candidates(False, torch_compile=args.torch_compile)
        marker = os.environ.get("TILEFUSE_KB_STARTED")  # set by `supervise` for its child
        for problem, dtype in pending(problems, DTYPES[args.dtype], args.results):
            if _past(args.deadline, start):
                print(
                    f"deadline of {args.deadline:.0f} s passed; stopping before {problem.name}",
                    file=sys.stderr,
                )
                break
            if marker:
                Path(marker).write_text(f"{problem.level} {problem.name} {dtype_name(dtype)}")
            result = run_problem(problem, dtype, device, args.shrink, compilers)
            if args.results is not None:
                append_result(args.results, result)
            else:
                results.append(result)
            if marker:
                Path(marker).unlink(missing_ok=True)
            if args.out is not None:  # after each problem: a run killed later keeps its report so far
                write_report(args, header, results)
        if marker:  # the supervising parent writes the report
            return ""
    report = write_report(args, header, results)
    print(report)
    return report


def write_report(args: argparse.Namespace, header: list[str], results: list[CaseResult]) -> str:
    """The report of every finished run (the results file's, else `results`), written to `--out`
    where given."""
    report = render(header, read_results(args.results) if args.results is not None else results)
    if args.out is not None:
        args.out.write_text(report)
    return report


if __name__ == "__main__":
    main()
