"""Compiling candidates ahead of their measurement, in parallel worker processes.

Triton compiles a kernel on its first launch and keeps the binary in its on-disk
cache. Compiling every candidate of a batch in a pool of processes before the
runner times them takes the compile time off the (serial, one-GPU) measurement
path, and finds the candidates that do not compile at all (too much shared
memory, a tile Triton refuses) without spending a measurement on them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .records import BuildResult, MeasureInput
from .runner import Interrupted, error_message, preload


class BuildError(Exception):
    """A candidate that cannot be compiled ahead of its launch."""


@runtime_checkable
class Builder(Protocol):
    """Compiles candidates: one `BuildResult` per input, in order; failures are results, not exceptions."""

    def build(self, inputs: Sequence[MeasureInput]) -> list[BuildResult]: ...


class _Layout:
    """A tensor argument without its data: what the launcher reads of a tensor before it launches.

    `data_ptr` is 0: real allocations are aligned far beyond the 16 bytes that Triton
    and the TMA check look at, so the answers are the same.
    """

    def __init__(self, shape: Sequence[int], dtype: str, cuda: bool) -> None:
        import torch

        meta = torch.empty(tuple(shape), dtype=getattr(torch, dtype), device="meta")  # allocates nothing
        self.shape, self.dtype, self._strides = tuple(meta.shape), meta.dtype, meta.stride()
        self.is_cuda = cuda
        self.device = torch.device("cuda" if cuda else "cpu")
        self._element_size = meta.element_size()

    def stride(self, dim: int | None = None) -> tuple[int, ...] | int:
        return self._strides if dim is None else self._strides[dim]

    def element_size(self) -> int:
        return self._element_size

    def data_ptr(self) -> int:
        return 0


class _CompileOnly:
    """A kernel's JIT function whose `function[grid](*args, **options)` compiles instead of launching.

    Triton's `JITFunction.warmup` takes the launch's arguments, with a dtype where a
    tensor goes (Triton puts an aligned mock tensor there): the binary lands in the
    on-disk cache under the key that the measured launch looks up, since the strides
    and options are the launcher's own.
    """

    def __init__(self, function: object, compile: bool) -> None:
        self.function, self.compile = function, compile

    def __getitem__(self, grid: tuple[int, ...]) -> Callable[..., None]:
        return functools.partial(self._warmup, grid)

    def _warmup(self, grid: tuple[int, ...], *args: object, **options: object) -> None:
        if not self.compile:
            return
        warmup = getattr(self.function, "warmup", None)
        if warmup is None:
            raise BuildError(
                f"{type(self.function).__name__} has no warmup(): cannot compile ahead of a launch"
            )
        args = tuple(a.dtype if isinstance(a, _Layout) else a for a in args)
        compiled = warmup(*args, grid=grid, **options)
        # loading the binary is where a tile that needs more shared memory than the GPU has fails
        # (OutOfResources): find it here rather than at the first timed launch
        init = getattr(compiled, "_init_handles", None)
        if callable(init):
            init()


def build_kernel(inp: MeasureInput) -> BuildResult:
    """Check and compile one candidate in a worker process; errors are returned, never raised.

    The candidate goes through the launcher as a launch would, with tensors that have
    a layout but no data, and with the kernel's JIT function replaced by a compile:
    the launcher checks the config and the arguments against the kernel, evaluates
    the grid and chooses the options, so the build and the measured launch cannot
    disagree on them. With CUDA the kernel is compiled for the current GPU into
    Triton's on-disk cache; without it kernels run in Triton's interpreter and the
    checks are the build.
    """
    start = time.perf_counter()
    try:
        import torch

        from tilefuse.backends.triton import load

        kernel = load(inp.task.source, inp.task.kernel_name)
        cuda = torch.cuda.is_available()
        stand_in = dataclasses.replace(kernel, function=_CompileOnly(kernel.function, compile=cuda))
        layouts = [_Layout(a.shape, a.dtype, cuda) for a in inp.task.args]
        config = inp.config
        stand_in(layouts, config.params, config.num_warps, config.num_stages, dict(inp.task.sizes))
    except Exception as e:
        return BuildResult(inp.config, error=error_message(e), build_s=time.perf_counter() - start)
    return BuildResult(inp.config, build_s=time.perf_counter() - start)


_STARTED = None  # in a worker: where it says which candidate it has begun


def _init_worker(started: object) -> None:
    global _STARTED
    _STARTED = started
    # Ctrl-C in a terminal reaches every process of the group: the job stops the pool itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preload()


def _build_in_worker(
    build_fn: Callable[[MeasureInput], BuildResult], inp: MeasureInput, tag: int
) -> BuildResult:
    # the timeout runs from here: a worker's start (imports of torch and tilefuse) is not the candidate's
    if _STARTED is not None:
        _STARTED.put(tag)
    return build_fn(inp)


POLL_S = 0.2  # how often to look for candidates that began, while some have not


@dataclass
class _Flight:
    index: int
    tag: int
    submitted: float
    started: float | None = None


class LocalBuilder:
    """Builds candidates in a pool of spawned worker processes, kept across `build` calls.

    At most `workers` candidates are in flight; each has `timeout_s` from the moment
    a worker begins it (starting a worker, which imports torch, may take
    `startup_timeout_s` more). A hung candidate is recorded as timed out and the pool
    replaced (the other candidates in flight start again). A worker that dies breaks
    the whole pool without saying which candidate killed it: the candidates in flight
    are retried one at a time in a fresh pool, and one that kills its worker alone is
    recorded as the crash. `build_fn` must pickle, as `LocalRunner`'s `measure`.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout_s: float = 120.0,
        build_fn: Callable[[MeasureInput], BuildResult] = build_kernel,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.workers = max(1, workers if workers is not None else min(os.cpu_count() or 1, 8))
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.build_fn = build_fn
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._started = None  # the pool's queue of begun candidates' tags
        self._tags = itertools.count()
        self._interrupted = threading.Event()

    def interrupt(self) -> None:
        """Stop building, from another thread: the workers are killed and the `build` in progress,
        and any later one, raises `Interrupted` instead of returning results."""
        self._interrupted.set()
        pool = self._pool
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError, ValueError):
                process.kill()

    def _check_interrupt(self) -> None:
        if self._interrupted.is_set():
            self._discard_pool()
            raise Interrupted

    def build(self, inputs: Sequence[MeasureInput]) -> list[BuildResult]:
        """Build every input; a compile error, a hang or a crashed worker becomes that input's error."""
        results: list[BuildResult | None] = [None] * len(inputs)
        queue = collections.deque(range(len(inputs)))
        suspects: collections.deque[int] = collections.deque()  # in flight when a worker died
        running: dict[concurrent.futures.Future, _Flight] = {}

        def fail(i: int, error: str, build_s: float = 0.0) -> None:
            results[i] = BuildResult(inputs[i].config, error=error, build_s=build_s)

        def submit(source: collections.deque[int]) -> bool:
            i, tag = source.popleft(), next(self._tags)
            try:
                future = self._executor().submit(_build_in_worker, self.build_fn, inputs[i], tag)
            except BrokenProcessPool:
                if running:  # broke under the candidates in flight: the wait below sorts them out
                    source.appendleft(i)
                    return False
                self._discard_pool()
                fail(i, "build process died at start")
                return True
            except Exception as e:  # no process can start: the candidate fails, the batch goes on
                self._discard_pool()
                fail(i, f"cannot start a build process: {error_message(e)}")
                return True
            running[future] = _Flight(i, tag, time.monotonic())
            return True

        def deadline(flight: _Flight) -> float:
            if flight.started is None:
                return flight.submitted + self.startup_timeout_s + self.timeout_s
            return flight.started + self.timeout_s

        while queue or suspects or running:
            self._check_interrupt()
            if suspects:
                if not running:
                    submit(suspects)
            else:
                while queue and len(running) < self.workers and submit(queue):
                    pass
            if not running:
                continue
            self._note_starts(running.values())
            wait_s = min(deadline(f) for f in running.values()) - time.monotonic()
            if any(f.started is None for f in running.values()):
                wait_s = min(wait_s, POLL_S)
            done, _ = concurrent.futures.wait(running, max(0.0, wait_s), concurrent.futures.FIRST_COMPLETED)
            self._check_interrupt()
            hit = []  # in flight when a worker died
            for future in done:
                flight = running.pop(future)
                try:
                    results[flight.index] = future.result()
                except BrokenProcessPool:
                    hit.append(flight)
                except Exception as e:  # build_fn raised (build_kernel never does)
                    fail(flight.index, error_message(e))
            if hit:
                # the pool fails every future it holds: the rest of them were hit too
                hit.extend(running.values())
                running.clear()
                self._discard_pool()
                if len(hit) == 1:
                    fail(hit[0].index, "build process died")
                else:
                    suspects.extend(f.index for f in hit)
                continue
            self._note_starts(running.values())
            now = time.monotonic()
            late = [future for future, flight in running.items() if deadline(flight) <= now]
            if late:
                for future in late:
                    flight = running.pop(future)
                    if flight.started is None:
                        fail(flight.index, f"build process did not start in {self.startup_timeout_s:g} s")
                    else:
                        fail(flight.index, f"timeout after {self.timeout_s:g} s", self.timeout_s)
                # a running call cannot be cancelled: the pool goes, and its other candidates start again
                for flight in running.values():
                    queue.appendleft(flight.index)
                running.clear()
                self._discard_pool()
        return results

    def _note_starts(self, flights: Iterable[_Flight]) -> None:
        by_tag = {f.tag: f for f in flights}
        now = time.monotonic()
        while self._started is not None and not self._started.empty():
            flight = by_tag.get(self._started.get())
            if flight is not None:
                flight.started = now

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            # one queue per pool: a killed worker may leave a queue's lock held
            self._started = ctx.SimpleQueue()
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_init_worker, initargs=(self._started,)
            )
        return self._pool

    def _discard_pool(self) -> None:
        pool, self._pool, self._started = self._pool, None, None
        if pool is None:
            return
        kill = getattr(pool, "kill_workers", None)  # Python 3.14
        if kill is not None:
            kill()
        else:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        """Shut the worker pool down; a later `build` starts a new one."""
        pool, self._pool, self._started = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> LocalBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
