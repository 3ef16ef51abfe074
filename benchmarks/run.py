"""Run the benchmark cases against their baselines and write a markdown table.

    python -m tilefuse.benchmarks.run [--out benchmarks/RESULTS.md] [--dtype bfloat16 float32]
                                      [--smoke] [--only NAME...] [--cuda] [--skip BASELINE...]

Every candidate (tilefuse, then each baseline of the case) runs in this one
process on the same inputs. Each is timed, and checked against a float64
reference on the same inputs, so a fast wrong kernel shows. A candidate that
fails (compile error, out of memory) gets its error in the table and the run
goes on. Each run rewrites the whole output file (after every case, so a run
cut short keeps the rows it measured, and names the cases it did not reach):
ratios compare only within one run. On a GPU the suite runs in bfloat16 and in float32 (at the process's
float32 matmul precision, "highest" unless changed: cuBLAS runs SGEMM, tilefuse
3xTF32 where its error is no worse), a section and a table per dtype, each
with its geometric-mean speedups over the baselines; `--dtype` picks one.
`--smoke` runs tiny float32 cases on the CPU to test this harness.
`--cuda` adds a row per case for tilefuse with the CUDA C++ backend
(`backend="cuda"`: its pointwise, reduction and row kernels in CUDA C++,
GEMMs and attention still Triton's), whose speedup column is then its time
over the Triton backend's. `--skip max-autotune` (or another baseline) leaves
that baseline out, for a quick run.

Memory-bound cases (softmax, norms: `BenchCase.io_elements` set) also show
GB/s, the bytes an ideal kernel moves over the median time, and that as a
share of the device-to-device copy bandwidth measured once at the start of
the run (`dst.copy_(src)` on a tensor of the cases' input size; the header
records it).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import math
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch._dynamo

import tilefuse

from .cases import (
    COMPILE,
    CUBLAS,
    EAGER,
    MAX_AUTOTUNE,
    SDPA,
    BenchCase,
    Tensors,
    benchmark_cases,
    rowwise_shape,
)

SUBJECT = "tilefuse"
SUBJECT_CUDA = "tilefuse, CUDA C++ backend"
SMOKE_SCALE = 64
# Inductor's max-autotune benchmarks many GEMM templates per shape: minutes on a CPU, not a smoke test.
SMOKE_SKIPPED = (MAX_AUTOTUNE,)
DEFAULT_OUT = Path(__file__).with_name("RESULTS.md")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}

COMPILERS: dict[str, Callable[[Callable], Callable]] = {
    SUBJECT: tilefuse.compile,
    SUBJECT_CUDA: partial(tilefuse.compile, backend="cuda"),
    EAGER: lambda fn: fn,
    CUBLAS: lambda fn: fn,
    SDPA: lambda fn: fn,
    COMPILE: torch.compile,
    MAX_AUTOTUNE: partial(torch.compile, mode="max-autotune-no-cudagraphs"),
}
BASELINES = tuple(name for name in COMPILERS if name not in (SUBJECT, SUBJECT_CUDA))


@dataclass(frozen=True)
class Measurement:
    """One candidate on one case: its median time and error, or why it has none."""

    candidate: str
    median_ms: float | None = None
    rel_error: float | None = None
    error: str | None = None
    note: str = ""


def time_ms(fn: Callable[[], object], device: torch.device, cpu_repeats: int = 5) -> float:
    """Median milliseconds of `fn()`: Triton's do_bench on a GPU, else a wall-clock median of
    `cpu_repeats` calls after one warm-up call."""
    if device.type == "cuda":
        import triton.testing  # only here: a CPU-only install of torch need not have Triton

        # Same signature on triton 3.6 and 3.9; it flushes L2 before every timed call.
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(cpu_repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def copy_bandwidth(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> float:
    """GB/s of a device-to-device copy, `dst.copy_(src)`: bytes read + written over the median time."""
    src = torch.randn(shape, device=device, dtype=dtype)
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / ms / 1e6


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64; a wrong shape is an error, not a broadcast."""
    if out.shape != ref.shape:
        raise ValueError(f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
    return float(torch.linalg.vector_norm(out.double() - ref) / torch.linalg.vector_norm(ref))


def describe_error(exc: Exception) -> str:
    """An exception as one short line for a table cell."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def tilefuse_note(compiled: Callable) -> str:
    """What tilefuse compiled and what fell back to PyTorch: a fallback can pass as a tilefuse time."""
    reports = getattr(compiled, "tilefuse_reports", [])
    partitions = sum(len(r["partitions"]) for r in reports)
    fallbacks = [f for r in reports for f in r["fallbacks"]]
    groups = [g for r in reports for p in r["partitions"] for g in p["groups"]]
    kinds = Counter(g["kind"] if g["kernel"] else "op-by-op" for g in groups)
    kernels = ", ".join(f"{kind} x{n}" for kind, n in sorted(kinds.items()))
    note = f"{len(reports)} graph(s), {partitions} partition(s), {len(fallbacks)} fallback(s); {kernels}"
    in_cuda = sum(1 for g in groups if g["kernel"] and g.get("backend") == "cuda")
    note += f"; {in_cuda} in CUDA C++" if in_cuda else ""
    # per-group selection's choices (library GEMM, split: library GEMM + generated epilogue)
    parts = [p for r in reports for p in r["partitions"]]
    chosen = Counter(c["chosen"] for p in parts for c in p.get("group_selection", []))
    if chosen:
        note += "; groups measured: " + ", ".join(f"{way} x{n}" for way, n in sorted(chosen.items()))
    in_pytorch = sum(1 for p in parts if p.get("executor", "").startswith("pytorch"))
    note += f"; {in_pytorch} partition(s) run PyTorch (measured or failed)" if in_pytorch else ""
    return note + (f"; first: {fallbacks[0]['reason']}" if fallbacks else "")


def profile_kernels(fn: Callable[[], object], path: Path) -> None:
    """The GPU time of each kernel `fn` launches (torch.profiler, 10 calls), as a table in `path`."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60)
    path.write_text(table)


class WeightsAsParameters(torch.nn.Module):
    """`fn(*activations, *weights)` as a module whose weights are (frozen) parameters."""

    def __init__(self, fn: Callable, weights: Tensors):
        super().__init__()
        self.fn = fn
        self.count = len(weights)
        for i, w in enumerate(weights):  # plain attributes: Dynamo 2.11 cannot unpack a ParameterList
            self.register_parameter(f"w{i}", torch.nn.Parameter(w, requires_grad=False))

    def forward(self, *activations: torch.Tensor) -> torch.Tensor:
        return self.fn(*activations, *(getattr(self, f"w{i}") for i in range(self.count)))


def measure(
    case: BenchCase,
    candidate: str,
    inputs: Tensors,
    ref: torch.Tensor,
    device: torch.device,
    profile_dir: Path | None = None,
) -> Measurement:
    """Compile `case.fn` with `candidate`, check it against `ref`, then time it.

    A case with `activations` set runs as a module: its remaining inputs become the module's
    parameters (weights, as in a model), the first `activations` are the call's arguments.
    """
    # The GEMM cases share one function; a fresh Dynamo cache per candidate keeps
    # backends from meeting in its cache and hitting the recompile limit.
    torch._dynamo.reset()
    try:
        fn: Callable = case.fn
        if case.activations:
            fn = WeightsAsParameters(case.fn, inputs[case.activations :])
            inputs = inputs[: case.activations]
        compiled = COMPILERS[candidate](fn)
        rel_error = relative_error(compiled(*inputs), ref)
        median_ms = time_ms(lambda: compiled(*inputs), device)
        if profile_dir is not None and candidate == SUBJECT and device.type == "cuda":
            profile_dir.mkdir(parents=True, exist_ok=True)
            profile_kernels(lambda: compiled(*inputs), profile_dir / f"{case.name}.txt")
    except Exception as exc:  # any failure of one candidate is a table cell, never the end of the run
        return Measurement(candidate, error=describe_error(exc))
    note = tilefuse_note(compiled) if candidate in (SUBJECT, SUBJECT_CUDA) else ""
    return Measurement(candidate, median_ms, rel_error, note=note)


def release_memory(device: torch.device) -> None:
    """Drop compiled graphs and cached blocks, so one candidate's memory never starves the next."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_case(
    case: BenchCase, device: torch.device, dtype: torch.dtype, smoke: bool, profile_dir: Path | None = None,
    cuda: bool = False, skip: Sequence[str] = (),
) -> list[Measurement]:  # fmt: skip
    """Measure tilefuse (and, with `cuda`, its CUDA C++ backend) and every baseline of `case` but
    those in `skip` on one set of random inputs."""
    torch.manual_seed(0)
    inputs = case.make_inputs(device, dtype)
    ref = case.fn(*(x.double() for x in inputs))
    subjects = [SUBJECT, SUBJECT_CUDA] if cuda else [SUBJECT]
    skipped = set(skip) | (set(SMOKE_SKIPPED) if smoke else set())
    candidates = [*subjects, *(b for b in case.baselines if b not in skipped)]
    results = []
    for candidate in candidates:
        start = time.perf_counter()
        m = measure(case, candidate, inputs, ref, device, profile_dir)
        release_memory(device)
        shown = m.error or f"{m.median_ms:.4g} ms, rel. err {m.rel_error:.2e}"
        took = time.perf_counter() - start  # compile + check + timing: plans the device machine's time limits
        print(f"[{case.name}] {candidate}: {shown} ({took:.0f} s)", file=sys.stderr, flush=True)
        results.append(m)
    return results


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_table(
    results: Sequence[tuple[BenchCase, list[Measurement]]],
    dtype: torch.dtype = torch.bfloat16,
    copy_gbps: float | None = None,
) -> str:
    """The results as one markdown table: a row per case and candidate.

    TFLOP/s is shown where the case counts FLOPs; GB/s (bytes of `dtype`)
    and its share of `copy_gbps` where it counts ideal memory traffic.
    """
    lines = [
        "| case | shape | candidate | median ms | TFLOP/s | GB/s | % of copy | tilefuse speedup "
        "| rel. err | notes |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    itemsize = torch.empty((), dtype=dtype).element_size()
    for case, measurements in results:
        subject_ms = next((m.median_ms for m in measurements if m.candidate == SUBJECT), None)
        for m in measurements:
            ms = tflops = gbps = of_copy = speedup = err = "—"
            if m.median_ms is not None:
                ms, err = f"{m.median_ms:.4g}", f"{m.rel_error:.2e}"
                if case.flops:
                    tflops = f"{case.flops / m.median_ms / 1e9:.4g}"
                if case.io_elements:
                    achieved = case.io_elements * itemsize / m.median_ms / 1e6
                    gbps = f"{achieved:.4g}"
                    if copy_gbps:
                        of_copy = f"{100 * achieved / copy_gbps:.0f}%"
                if m.candidate != SUBJECT and subject_ms:
                    speedup = f"{m.median_ms / subject_ms:.2f}x"
            notes = f"FAILED: {m.error}" if m.error else m.note
            cells = [
                case.name,
                case.shape,
                m.candidate,
                ms,
                tflops,
                gbps,
                of_copy,
                speedup,
                err,
                _cell(notes),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _git_commit() -> str:
    """The checkout's commit (with -dirty), or "" outside a git checkout."""
    repo = Path(tilefuse.__file__).parent
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "not installed"
    return triton.__version__


def dtype_names(dtype: torch.dtype | Sequence[torch.dtype]) -> str:
    """`bfloat16` for one dtype, `bfloat16, float32` for several."""
    dtypes = [dtype] if isinstance(dtype, torch.dtype) else list(dtype)
    return ", ".join(str(d).removeprefix("torch.") for d in dtypes)


def environment_lines(
    module: str, device: torch.device, dtype: torch.dtype | Sequence[torch.dtype], argv: Sequence[str]
) -> list[str]:
    """The header lines every results file starts with: the command (`python -m module argv`),
    the device, the date, the torch/triton/tilefuse versions (and git commit), the dtype and
    how times were taken."""
    if device.type == "cuda":
        where, timing = torch.cuda.get_device_name(device), "triton.testing.do_bench median, L2 flushed"
    else:
        where, timing = f"CPU {platform.machine()}, {torch.get_num_threads()} threads", "wall-clock median"
    commit = _git_commit()
    return [
        f"- command: `python -m {module} {shlex.join(argv)}`",
        f"- device: {where}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- torch {torch.__version__}, triton {_triton_version()}, tilefuse {tilefuse.__version__}"
        + (f" ({commit})" if commit else ""),
        f"- dtype {dtype_names(dtype)}, float32 matmul precision "
        f"`{torch.get_float32_matmul_precision()}`; timing: {timing}",
    ]


def describe_environment(
    device: torch.device, dtypes: Sequence[torch.dtype], argv: Sequence[str]
) -> list[str]:
    """The header lines: what ran, where, when, with which versions, and how it was timed."""
    return [
        *environment_lines("tilefuse.benchmarks.run", device, dtypes, argv),
        "- TFLOP/s counts the matrix products only; tilefuse speedup = baseline ms / tilefuse ms "
        "(> 1: tilefuse is faster); rel. err = ‖out − ref‖ / ‖ref‖ against float64 on the same inputs",
        "- memory-bound rows: GB/s = ideal bytes (inputs read once, output written once) / median time, "
        "% of copy = GB/s / the copy bandwidth in the same dtype (`dst.copy_(src)` on a tensor of "
        "the rows' input size, bytes read + written / median time)",
    ]


def summarize(results: Sequence[tuple[BenchCase, list[Measurement]]]) -> list[str]:
    """Per baseline: the geometric mean of tilefuse's speedup over the cases both ran, the lowest
    speedup and its case, and the cases where either has no time."""
    lines = []
    baselines = dict.fromkeys(m.candidate for _, ms in results for m in ms if m.candidate != SUBJECT)
    for baseline in baselines:
        ratios, missing = [], []
        for case, measurements in results:
            by = {m.candidate: m.median_ms for m in measurements}
            if baseline not in by:
                continue
            if by.get(SUBJECT) and by[baseline]:
                ratios.append((by[baseline] / by[SUBJECT], case.name))
            else:
                missing.append(case.name)
        if not ratios:
            continue
        geomean = math.exp(statistics.fmean(math.log(r) for r, _ in ratios))
        low, low_case = min(ratios)
        line = (
            f"- against {baseline}: geomean {geomean:.3f}x over {len(ratios)} case(s), "
            f"lowest {low:.2f}x ({low_case})"
        )
        lines.append(line + (f"; no time for {', '.join(missing)}" if missing else ""))
    return lines


def render_section(
    dtype: torch.dtype,
    results: Sequence[tuple[BenchCase, list[Measurement]]],
    copy_gbps: float,
    copy_shape: tuple[int, ...],
) -> list[str]:
    """One dtype's part of the results file: its copy bandwidth, the speedups' summary, the table."""
    name = str(dtype).removeprefix("torch.")
    return [
        f"## {name}",
        "",
        f"- copy bandwidth: {copy_gbps:.4g} GB/s ({'x'.join(map(str, copy_shape))} {name})",
        *summarize(results),
        "",
        render_table(results, dtype, copy_gbps),
        "",
    ]


def render_report(header: list[str], sections: list[str]) -> str:
    """The whole results file."""
    return "\n".join(["# tilefuse benchmarks", "", "Rewritten by every run.", "", *header, "", *sections])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; `--only` takes case names from `cases.py`."""
    names = [c.name for c in benchmark_cases()]
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--out", type=Path, help=f"markdown file to write (default {DEFAULT_OUT}; none with --smoke)"
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny cases on the CPU (float32 unless --dtype), to test the harness",
    )
    parser.add_argument(
        "--dtype",
        nargs="+",
        choices=list(DTYPES),
        help="dtypes to run, a section each (default: bfloat16 and float32; float32 with --smoke)",
    )
    parser.add_argument(
        "--only", nargs="+", choices=names, metavar="NAME", help=f"cases to run: {', '.join(names)}"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="write each case's per-kernel GPU times (tilefuse) to DIR/<dtype>/<case>.txt",
    )
    parser.add_argument(
        "--cuda", action="store_true", help="a row per case for tilefuse with the CUDA C++ backend too"
    )
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=BASELINES,
        metavar="BASELINE",
        help=f"baselines left out of the run ({', '.join(BASELINES)}): max-autotune's compile took "
        "35-169 s a float32 case on an H100",
    )
    args = parser.parse_args(argv)
    if not args.smoke and not torch.cuda.is_available():
        parser.error("the benchmarks need a CUDA device; --smoke runs tiny cases on the CPU")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the selected cases, write the results file, print the table."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device("cpu" if args.smoke else "cuda")
    names = args.dtype or (["float32"] if args.smoke else list(DTYPES))
    dtypes = [DTYPES[name] for name in dict.fromkeys(names)]
    cases = benchmark_cases(SMOKE_SCALE if args.smoke else 1)
    cases = [c for c in cases if not args.only or c.name in args.only]
    copy_shape = rowwise_shape(SMOKE_SCALE if args.smoke else 1)
    out = args.out or (None if args.smoke else DEFAULT_OUT)
    header = describe_environment(device, dtypes, argv)
    sections: list[str] = []
    with torch.no_grad():
        for dtype in dtypes:
            copy_gbps = copy_bandwidth(copy_shape, device, dtype)
            release_memory(device)
            print(f"{dtype}: copy bandwidth {copy_gbps:.4g} GB/s", file=sys.stderr, flush=True)
            profile = args.profile / str(dtype).removeprefix("torch.") if args.profile else None
            results = []
            for i, case in enumerate(cases):
                measured = run_case(case, device, dtype, args.smoke, profile, args.cuda, args.skip)
                results.append((case, measured))
                if out is not None and i + 1 < len(cases):  # a run cut short keeps the rows it measured
                    partial = render_section(dtype, results, copy_gbps, copy_shape)
                    rest = ", ".join(c.name for c in cases[i + 1 :])
                    out.write_text(render_report(header, [*sections, *partial, f"(not yet run: {rest})", ""]))
            sections += render_section(dtype, results, copy_gbps, copy_shape)
    report = render_report(header, sections)
    if out is not None:
        out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
