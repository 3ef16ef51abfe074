"""Compiling a graph's distinct Triton kernels before their first launch, in worker processes.

Triton compiles a kernel at its first launch, in the launching process, one after
another: a graph with twenty distinct kernels waits for twenty compiles in a row.
`precompile` compiles each distinct (kernel, configuration) ahead, in parallel worker
processes, with `JITFunction.warmup` and the arguments its launch will pass (per tensor
a pointer and its contiguous strides, then the tile parameters as constexprs, warps
and stages; see `TritonKernel.__call__`). The binary lands in Triton's on-disk cache
under the key the first launch looks up, so that launch only loads it.

Workers are plain Python processes running this file as a script (they import torch and
triton, not tilefuse), not a `multiprocessing` pool: spawn would re-run the user's main
script in every worker, and a script without a `__main__` guard would compile and run
its model again there. Nothing here can break a compile: a job that fails, a worker that
crashes or outlives the timeout only leaves those kernels to compile at their first
launch, as they would without this module. A job compiled once is remembered by a
marker file keyed by its source, arguments, GPU and Triton version, so a later process
(a compile-cache hit, say) starts no workers for it. Under Triton's interpreter (no
GPU) there is nothing to compile.

This file must run as a script: only the standard library at module level.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if __package__:
    from . import ptx_loops
else:  # run as a script (a worker, a child compile): this folder is sys.path[0]
    import ptx_loops

if TYPE_CHECKING:
    from .launcher import TritonKernel

log = logging.getLogger("tilefuse")

WORKERS_ENV = "TILEFUSE_COMPILE_WORKERS"  # how many worker processes; unset or "0": compile at first launch
# how many threads compile in this process instead (`precompile_in_threads`); takes precedence over workers
THREADS_ENV = "TILEFUSE_COMPILE_THREADS"
TIMEOUT_S = 600.0  # for all the workers of one call; what is left over compiles at first launch
MIN_JOBS = 4  # fewer kernels compile sooner at their first launches than workers start (~3 s: torch)


@dataclass(frozen=True)
class CompileJob:
    """One kernel and one configuration to compile: what its first launch will look up."""

    path: str  # the kernel's source file, as `load` wrote it (its stem is the module name)
    function: str  # the `@triton.jit` function in it
    shapes: tuple[tuple[int, ...], ...]  # per tensor argument
    dtypes: tuple[str, ...]  # per tensor argument, torch names ("float32", "bool")
    constexprs: tuple[tuple[str, int], ...]  # tile parameters (and USE_TMA), in launch order
    num_warps: int
    num_stages: int
    # per tensor argument, where the launch's are not a contiguous tensor's (a padded output); None: all are
    strides: tuple[tuple[int, ...], ...] | None = None

    def key(self, target: str) -> str:
        """A hash of everything the compiled binary depends on, for `target` (GPU and Triton version)."""
        source = Path(self.path).read_bytes()
        described = json.dumps([asdict(self), target], sort_keys=True).encode()
        return hashlib.sha256(source + b"\0" + described).hexdigest()[:32]

    @classmethod
    def from_json(cls, data: dict) -> CompileJob:
        return cls(
            data["path"], data["function"], tuple(tuple(s) for s in data["shapes"]), tuple(data["dtypes"]),
            tuple((k, v) for k, v in data["constexprs"]), data["num_warps"], data["num_stages"],
            tuple(tuple(s) for s in data["strides"]) if data.get("strides") else None,
        )  # fmt: skip


def compile_job(
    kernel: TritonKernel, config: Mapping[str, int], num_warps: int, num_stages: int, hopper: bool,
    strides: Sequence[Sequence[int]] | None = None,
) -> CompileJob:  # fmt: skip
    """The job that compiles `kernel` as its launch with `config` will, on contiguous tensors (or
    tensors with `strides`, one tuple per tensor argument).

    Like the launcher, a kernel that can read through TMA descriptors gets `USE_TMA` as
    the config or `TILEFUSE_TMA` asks, where its operands' layouts allow it (`hopper`:
    the GPU has TMA).
    """
    # the parent process's side: this file also runs as a script
    from .emit import merge_flag, tail_flag
    from .launcher import dims_nest, launch_flags, tail_reach
    from .offline import _contiguous_strides

    constexprs = [(p, int(config[p])) for p in kernel.params]
    operands = [(kernel.shapes[i], kernel.dtypes[i]) for i in kernel.tma_tensors]
    fits = hopper and all(_dense_rows_aligned(shape, dtype) for shape, dtype in operands)
    constexprs += [(name, bool(on)) for name, on in launch_flags(kernel, config, num_warps, fits).items()]
    for i in kernel.row_tail_tensors:  # as the launch decides them (`row_tails_fit`), from the strides alone
        padded = strides is not None and tail_reach(kernel.shapes[i], strides[i]) is not None
        constexprs.append((tail_flag(i), padded))
    for i, d, e in kernel.merged_dims:  # as the launch decides them (`merge_flags`): contiguous dims nest
        shape = kernel.shapes[i]
        layout = strides[i] if strides is not None else _contiguous_strides(shape)
        constexprs.append((merge_flag(i, d, e), dims_nest(shape, layout, d, e)))
    return CompileJob(
        str(kernel.path), kernel.name, tuple(kernel.shapes), tuple(kernel.dtypes), tuple(constexprs),
        num_warps, num_stages, tuple(tuple(s) for s in strides) if strides is not None else None,
    )  # fmt: skip


_ELEMENT_BYTES = {"float64": 8, "int64": 8, "float32": 4, "int32": 4, "float16": 2, "bfloat16": 2, "int16": 2}


def _dense_rows_aligned(shape: Sequence[int], dtype: str) -> bool:
    # a contiguous tensor's strides are its trailing sizes' products; TMA wants them 16-byte aligned
    size, stride, strides = _ELEMENT_BYTES.get(dtype, 1), 1, []
    for dim in reversed(shape[1:]):
        stride *= dim
        strides.append(stride)
    return all(s * size % 16 == 0 for s in strides)


@dataclass
class PrecompileResult:
    """What one `precompile` call did; kernels it did not compile compile at their first launch."""

    jobs: int = 0
    compiled: int = 0
    already: int = 0  # compiled by an earlier process (a marker says so)
    failed: dict[int, str] = field(default_factory=dict)  # job index -> why
    workers: int = 0
    seconds: float = 0.0
    error: str | None = None  # why nothing was compiled, if something beyond one job went wrong


def precompile(
    jobs: Sequence[CompileJob],
    target: str,
    workers: int | None = None,
    timeout_s: float = TIMEOUT_S,
    marker_dir: Path | None = None,
    compile_fn: str | None = None,
    min_jobs: int = MIN_JOBS,
) -> PrecompileResult:
    """Compile `jobs` in parallel worker processes; never raises.

    `target` names the GPU and versions (it keys the markers under `marker_dir`; none:
    no markers). `workers` defaults to `$TILEFUSE_COMPILE_WORKERS`, else one per CPU up
    to 16; 0 compiles nothing, and so do fewer than `min_jobs` jobs left to compile.
    `compile_fn` ("module:function", importable by the workers) replaces `warm_up`, for
    tests.
    """
    started = time.perf_counter()
    result = PrecompileResult(jobs=len(jobs))
    try:
        todo = _not_yet_compiled(jobs, target, marker_dir, result)
        count = min(len(todo), _worker_count(workers)) if len(todo) >= min_jobs else 0
        if count:
            result.workers = count
            shares = [todo[i::count] for i in range(count)]
            done = _run_workers(shares, jobs, timeout_s, compile_fn, result)
            _mark(done, jobs, target, marker_dir)
    except Exception as e:  # the kernels compile at their first launch instead
        log.debug("tilefuse: precompile failed: %s", e, exc_info=True)
        result.error = f"{type(e).__name__}: {e}"
    result.seconds = time.perf_counter() - started
    if result.failed:
        left = len(result.failed)
        log.info("tilefuse: %d kernel(s) left to compile at first launch: %s", left, result.failed)
    return result


def _worker_count(workers: int | None) -> int:
    if workers is None:
        configured = os.environ.get(WORKERS_ENV)
        # off unless asked (TILEFUSE_COMPILE_WORKERS=N): on its first H200 run the cold compile of a
        # 4-layer Llama took 109 s of Triton time with it, against ~60 s compiling at first launch
        workers = int(configured) if configured else 0
    return max(0, workers)


def _marker(job: CompileJob, target: str, marker_dir: Path) -> Path:
    return marker_dir / job.key(target)


def _not_yet_compiled(
    jobs: Sequence[CompileJob], target: str, marker_dir: Path | None, result: PrecompileResult
) -> list[int]:
    todo = []
    for i, job in enumerate(jobs):
        if marker_dir is not None and _marker(job, target, marker_dir).exists():
            result.already += 1
        else:
            todo.append(i)
    return todo


def _mark(done: list[int], jobs: Sequence[CompileJob], target: str, marker_dir: Path | None) -> None:
    if marker_dir is None or not done:
        return
    marker_dir.mkdir(parents=True, exist_ok=True)
    for i in done:
        _marker(jobs[i], target, marker_dir).touch()


def _run_workers(
    shares: list[list[int]], jobs: Sequence[CompileJob], timeout_s: float, compile_fn: str | None,
    result: PrecompileResult,
) -> list[int]:  # fmt: skip
    """Start one worker per share, collect what each reports; returns the jobs that compiled."""
    command = [sys.executable, str(Path(__file__).resolve()), *([compile_fn] if compile_fn else [])]
    env = dict(os.environ)
    if compile_fn:  # the function's module must import in the worker as it does here
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    running = []
    for share in shares:
        errors = tempfile.TemporaryFile()
        proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors, env=env, text=True
        )
        payload = [{"index": i, **asdict(jobs[i])} for i in share]
        running.append((proc, share, errors, json.dumps(payload)))
    deadline = time.monotonic() + timeout_s
    done: list[int] = []
    for proc, share, errors, payload in running:
        try:
            out, _ = proc.communicate(payload, timeout=max(0.1, deadline - time.monotonic()))
            ended = f"worker exited with code {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            ended = f"worker timed out after {timeout_s:.0f} s"
        reported = _read_reports(out, result)
        done += [i for i in share if i in reported and i not in result.failed]
        missing = [i for i in share if i not in reported]
        if missing:
            errors.seek(0)
            tail = errors.read().decode(errors="replace").strip().splitlines()[-1:]
            for i in missing:
                result.failed[i] = f"{ended}{': ' + tail[0] if tail else ''}"
        errors.close()
    result.compiled = len(done)
    return done


def _read_reports(out: str, result: PrecompileResult) -> set[int]:
    """The job indices a worker reported on (its stdout: one JSON object per line); failures noted."""
    reported = set()
    for line in out.splitlines():
        try:
            report = json.loads(line)
            index = int(report["index"])
        except (ValueError, KeyError, TypeError):
            continue  # a stray print from a library
        reported.add(index)
        if report.get("error"):
            result.failed[index] = report["error"]
    return reported


DEFAULT_THREADS = 8  # H200, 4-layer Llama cold first call: 28.7 s at first launch, 17.5 s in 8 threads


def thread_count() -> int:
    """`$TILEFUSE_COMPILE_THREADS`; unset: DEFAULT_THREADS (at most the CPUs this process may use),
    or 0 when `$TILEFUSE_COMPILE_WORKERS` asks for worker processes instead. "0" turns threads off."""
    configured = os.environ.get(THREADS_ENV, "")
    if configured.strip():
        return max(0, int(configured))
    if int(os.environ.get(WORKERS_ENV) or 0) > 0:
        return 0
    return min(DEFAULT_THREADS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


def precompile_in_threads(
    jobs: Sequence[CompileJob], functions: Sequence[object], threads: int,
    compile_fn: Callable[[CompileJob, object], None] | None = None, device: int | None = None,
) -> PrecompileResult:  # fmt: skip
    """Compile `jobs` in this process, `threads` at a time, for CUDA device `device` (default: the
    current one); never raises.

    Triton releases the GIL for most of a compile (its MLIR and LLVM passes, ptxas): two threads
    compiled two GEMM kernels for sm_90 in 3.2 s against 5.7 in a row on a 2-core CPU. Unlike the
    worker processes, nothing starts (no interpreter, no torch import, no CUDA context), and the
    binaries land in the very `JITFunction`s the launches use (`functions[i]` for `jobs[i]`), so a
    first launch only loads its binary onto the GPU. The quickest job compiles first, in the calling
    thread, which initializes Triton's driver and LLVM once before any thread shares them; the others
    follow slowest first (`compile_order`). Each binary is
    also loaded and its launcher built (`load_binary`). `compile_fn` replaces `warm_up`, for tests.
    """
    started = time.perf_counter()
    result = PrecompileResult(jobs=len(jobs), workers=max(1, threads))
    compile_one = compile_fn or warm_up
    lock = threading.Lock()

    if device is None and compile_fn is None:
        import torch

        device = torch.cuda.current_device()  # a thread starts on device 0: each is pointed at this one

    def run(i: int) -> None:
        try:
            if device is not None:
                import torch

                torch.cuda.set_device(device)
            compile_one(jobs[i], functions[i])
            with lock:
                result.compiled += 1
        except Exception as e:
            with lock:
                result.failed[i] = f"{type(e).__name__}: {e}"

    if jobs:
        first, *rest = compile_order(jobs)
        run(first)
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            list(pool.map(run, rest))
    result.seconds = time.perf_counter() - started
    return result


# how long a kernel of each kind takes Triton to compile, as a rank: a GEMM's or attention's pipelined
# dot loop is the slowest (seconds at 128 x 256 tiles), a pointwise kernel the quickest
_KIND_COST = {"gemm": 3, "attention": 3, "row": 2, "reduction": 2, "scan": 2}


def compile_cost(job: CompileJob) -> tuple[int, int, int]:
    """A sort key estimating how long `job` takes to compile: its kind (the function's name starts
    with it: `gemm_3b2e…`), then its largest 2-d tile's elements (its two largest block sizes: a
    GEMM's accumulator, an attention's scores) times its pipeline stages, then its warps."""
    kind = job.function.split("_", 1)[0]
    blocks = sorted((value for name, value in job.constexprs if name.startswith("BLOCK")), reverse=True)
    tile = math.prod(blocks[:2])
    return (_KIND_COST.get(kind, 1), tile * job.num_stages, job.num_warps)


def compile_order(jobs: Sequence[CompileJob]) -> list[int]:
    """The order to compile `jobs` in (indices): the quickest first, alone in the calling thread while
    Triton initializes (nothing else compiles meanwhile), then the slowest first, so that the pool's
    threads do not end on a long GEMM started last (longest-processing-time-first scheduling)."""
    if not jobs:
        return []
    by_cost = sorted(range(len(jobs)), key=lambda i: compile_cost(jobs[i]))
    return [by_cost[0], *sorted(by_cost[1:], key=lambda i: compile_cost(jobs[i]), reverse=True)]


def warm_up(job: CompileJob, function: object | None = None) -> None:
    """Compile `job` into Triton's cache, as its launch would: in a worker process, which imports the
    kernel's module from `job.path`, or in this one, on the `function` its launches call."""
    import torch

    args: list[object] = []
    strides = job.strides or [None] * len(job.shapes)
    for shape, dtype, stride in zip(job.shapes, job.dtypes, strides):
        torch_dtype = getattr(torch, dtype)
        # Triton puts an aligned mock tensor where a dtype goes; the strides are a contiguous tensor's
        # unless the job says otherwise
        args += [torch_dtype, *(stride or torch.empty(shape, dtype=torch_dtype, device="meta").stride())]
    options = {"num_warps": job.num_warps, "num_stages": job.num_stages}
    in_process = function is not None
    if function is None:  # a worker process (`load` registered the in-process ones)
        function = getattr(_kernel_module(job.path), job.function)
        ptx_loops.register(job.function)
    binary = function.warmup(*args, grid=(1,), **dict(job.constexprs), **options)
    if in_process:
        load_binary(binary)


def load_binary(binary: object) -> None:
    """Load a compiled kernel onto the GPU and build its launcher, as its first launch would: Triton
    builds one C launcher per kernel signature with the host compiler (0.26 s each on the H200's host;
    28 of them, one after another in the first call, were 7 s of a cold 4-layer Llama compile), so
    doing it here puts those builds in the compile threads. Best effort: a Triton without this
    step leaves it to the first launch."""
    init = getattr(binary, "_init_handles", None)
    if callable(init):
        init()


def _kernel_module(path: str) -> object:
    # the module name `load` gave it: Triton's cache key must not differ from the launching process's
    name = Path(path).stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _resolve(spec: str) -> Callable[[CompileJob], None]:
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def worker_main(argv: Sequence[str]) -> int:
    """A worker: compile the jobs read from stdin (JSON), report each on a line of stdout."""
    compile_fn = _resolve(argv[0]) if argv else warm_up
    for data in json.load(sys.stdin):
        started = time.perf_counter()
        report: dict[str, object] = {"index": data["index"]}
        try:
            compile_fn(CompileJob.from_json(data))
        except Exception as e:
            report["error"] = f"{type(e).__name__}: {e}"
        report["seconds"] = round(time.perf_counter() - started, 3)
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    # run as a script, this folder is sys.path[0]: keep its modules from shadowing installed ones
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    sys.exit(worker_main(sys.argv[1:]))
