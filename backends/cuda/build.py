"""Emitted CUDA C++ built by nvcc into one shared object per kernel, cached on disk.

The cache key is the source, the target architecture, the flags and nvcc's
own version, so an upgraded toolkit never serves a stale binary. A build
writes into a private temporary folder and moves the library into place
with `os.replace`, so concurrent builds of one kernel (threads or
processes) never see half a file. Failures are `CudaBuildError`s that name
nvcc's first error and the generated line it points at; a build that runs
past its time limit is abandoned and the kernel is left to Triton.
`build_many` builds a batch on threads (nvcc is a subprocess, so threads
overlap fully) and returns errors in place, so one bad kernel never stops
the batch.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .cutlass import CUTLASS_FLAGS, cutlass_include, is_cutlass_source

FLAGS = ("-O3", "-lineinfo", "-shared", "-Xcompiler", "-fPIC")
# a CUTLASS GEMM took nvcc 110-120 s on two cores (template instantiation; benchmarks/NOTES.md)
CUTLASS_TIMEOUT_S = 600
_ERROR = re.compile(r"([^/\s]+\.cu)\((\d+)\): ((?:catastrophic )?error\b.*)")


class CudaBuildError(Exception):
    """nvcc could not build a kernel (absent, failed or too slow): the kernel stays on Triton."""


@dataclass(frozen=True)
class BuildResult:
    """A built kernel library: where it is, nvcc's time in seconds (0 on a cache hit), whether cached."""

    path: Path
    seconds: float
    cached: bool


def cache_root() -> Path:
    """`$TILEFUSE_CACHE_DIR/cuda`, or ~/.cache/tilefuse/cuda."""
    base = os.environ.get("TILEFUSE_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "tilefuse") / "cuda"


def find_nvcc() -> str | None:
    """nvcc on PATH, else under $CUDA_HOME or /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").exists():
            return str(Path(home) / "bin" / "nvcc")
    return None


@functools.cache
def nvcc_version(nvcc: str) -> str:
    """The full `nvcc --version` text (part of the cache key); asked once per process."""
    return subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout


def _cache_key(source: str, arch: str, version: str, flags: tuple[str, ...] = FLAGS) -> str:
    text = "\0".join([source, arch, " ".join(flags), version])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _first_error(stderr: str, source: str) -> str:
    """nvcc's first error line and, where it names one, the generated source line it points at."""
    lines = stderr.splitlines()
    match = next((m for m in map(_ERROR.search, lines) if m), None)
    if match is None:
        return next((line for line in lines if "error" in line), lines[0] if lines else "no output")
    unit, number, error = match.group(1), int(match.group(2)), match.group(3)
    generated = source.splitlines()
    text = generated[number - 1].strip() if 0 < number <= len(generated) else "?"
    return f"{unit}({number}): {error}\n  generated line {number}: {text}"


def _run(command: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    # nvcc runs its stages (cicc, ptxas, g++) as children: on a timeout the whole group is killed
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def build_shared_object(
    source: str,
    name: str,
    arch: str = "sm_90a",
    cache_dir: Path | None = None,
    timeout_s: float = 120,
) -> BuildResult:
    """Build `source` (one emitted kernel, `name` its kernel) into `<cache>/<name>_<hash>.so`, or reuse it."""
    nvcc = find_nvcc()
    if nvcc is None:
        raise CudaBuildError(f"{name}: nvcc is not installed: left to Triton")
    flags, target_flags = FLAGS, (f"-arch={arch}",)
    if is_cutlass_source(source):  # CUTLASS: its headers, its flags, one SASS target, minutes of templates
        include = cutlass_include()
        if include is None:
            raise CudaBuildError(f"{name}: no nvidia-cutlass headers installed: left to Triton")
        flags = (*FLAGS, *CUTLASS_FLAGS, f"-I{include}")
        target_flags = ("-gencode", f"arch=compute_{arch.removeprefix('sm_')},code={arch}")
        timeout_s = max(timeout_s, CUTLASS_TIMEOUT_S)
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    target = cache / f"{name}_{_cache_key(source, arch, nvcc_version(nvcc), flags)}.so"
    if target.exists():
        return BuildResult(target, 0.0, cached=True)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=f".{name}_") as work:
        unit, library = Path(work) / f"{name}.cu", Path(work) / f"{name}.so"
        unit.write_text(source)
        start = time.perf_counter()
        try:
            result = _run([nvcc, *flags, *target_flags, "-o", str(library), str(unit)], timeout_s)
        except subprocess.TimeoutExpired:
            raise CudaBuildError(f"{name}: nvcc ran past {timeout_s:g} s: left to Triton") from None
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise CudaBuildError(f"{name}: nvcc failed ({arch}): {_first_error(result.stderr, source)}")
        os.replace(library, target)
    return BuildResult(target, seconds, cached=False)


def build_many(
    jobs: Iterable[tuple[str, str]], workers: int | None = None, **options: object
) -> list[BuildResult | CudaBuildError]:
    """Build `(source, name)` jobs in parallel; each entry is its BuildResult or its CudaBuildError."""

    def build(job: tuple[str, str]) -> BuildResult | CudaBuildError:
        try:
            return build_shared_object(*job, **options)  # type: ignore[arg-type]
        except CudaBuildError as e:
            return e

    jobs = list(jobs)
    with ThreadPoolExecutor(max_workers=workers or min(len(jobs), os.cpu_count() or 1) or 1) as pool:
        return list(pool.map(build, jobs))
