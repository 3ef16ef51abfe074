"""Timing candidates: `measure_kernel` times one kernel, `LocalRunner` runs it away from the tuner.

A candidate can hang, crash the process (a segfault in a driver, an illegal memory
access that poisons the CUDA context) or raise; none of that may stop a tuning job.
`LocalRunner` therefore measures in one persistent child process, kills it on a
timeout or finds it dead, records why, and starts a fresh one for the next candidate.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, runtime_checkable

from .records import ArgSpec, MeasureInput, MeasureResult

ERROR_LIMIT = 2000  # characters: Triton's compile errors quote whole kernels
FLUSH_BYTES = 256 * 1024 * 1024  # larger than any GPU's L2 (50 MB on the H100), so each run starts cold


def error_message(exc: BaseException) -> str:
    """`TypeName: message` for an exception, cut to `ERROR_LIMIT` characters for the database."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= ERROR_LIMIT else text[: ERROR_LIMIT - 3] + "..."


def make_inputs(args: Sequence[ArgSpec], device: object, sets: int) -> list[list]:
    """`sets` lists of random tensors for a task's `ArgSpec`s, the last (an output) left empty;
    a kernel's other outputs, if any, get random values it overwrites.

    Floats are standard normal (values near 1, as activations and weights are after
    normalization); integers and booleans are small non-negative values, which stay
    in range wherever a kernel reads them as masks or counts.
    """
    import torch

    result = []
    for _ in range(sets):
        tensors = []
        for spec in args[:-1]:
            dtype = getattr(torch, spec.dtype)
            if dtype.is_floating_point:
                tensors.append(torch.randn(spec.shape, device=device).to(dtype))
            else:
                high = 2 if dtype == torch.bool else 16
                tensors.append(torch.randint(0, high, spec.shape, device=device).to(dtype))
        out = args[-1]
        tensors.append(torch.empty(out.shape, dtype=getattr(torch, out.dtype), device=device))
        result.append(tensors)
    return result


WARMUP_S = 0.05  # at least this much warm-up work on a GPU: a first trial measured 4x slow without it
FIRST_WARMUP_S = 1.0
_warm_process: list[bool] = []  # non-empty once this process has warmed the GPU up


@functools.cache
def _flush_buffer(device: object) -> object:
    import torch

    return torch.empty(FLUSH_BYTES, dtype=torch.int8, device=device)


def measure_kernel(inp: MeasureInput, warmup: int = 3, repeats: int = 10, rotate: int = 3) -> MeasureResult:
    """Time `repeats` launches of the task's kernel with the candidate's config; never raises.

    On a GPU, every timed launch starts with a cold L2 (a 256 MB buffer is zeroed
    first) and is timed by CUDA events; launches cycle through `rotate` sets of
    random inputs, so no run reads what the previous one left in cache. Without
    CUDA the kernel runs in Triton's interpreter, which is slow: at most one warmup
    and three timed runs, by the wall clock.
    """
    start = time.perf_counter()
    try:
        import torch

        from tilefuse.backends.triton import load

        kernel = load(inp.task.source, inp.task.kernel_name)
        cuda = torch.cuda.is_available()
        if not cuda:
            warmup, repeats = min(warmup, 1), min(repeats, 3)
        device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        inputs = make_inputs(inp.task.args, device, max(1, min(rotate, repeats)))
        config, sizes = inp.config, dict(inp.task.sizes)

        def launch(i: int) -> None:
            kernel(inputs[i % len(inputs)], config.params, config.num_warps, config.num_stages, sizes)

        for i in range(warmup):
            launch(i)
        if cuda:  # after idle (the builder compiling), clocks need tens of ms of work to ramp up
            torch.cuda.synchronize()
            # a process's first trial needs longer: it read 1.8x slow on the H100 with 50 ms
            warm_s = WARMUP_S if _warm_process else FIRST_WARMUP_S
            _warm_process.append(True)
            warm_until, i = time.perf_counter() + warm_s, warmup
            while time.perf_counter() < warm_until:
                launch(i)
                i += 1
                torch.cuda.synchronize()
        if cuda:
            flush = _flush_buffer(device)
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(repeats)]  # fmt: skip
            torch.cuda.synchronize()
            for i, (begin, end) in enumerate(events):
                flush.zero_()
                begin.record()
                launch(i)
                end.record()
            torch.cuda.synchronize()
            times = tuple(begin.elapsed_time(end) for begin, end in events)
        else:
            timed = []
            for i in range(repeats):
                t0 = time.perf_counter()
                launch(i)
                timed.append((time.perf_counter() - t0) * 1e3)
            times = tuple(timed)
    except Exception as e:
        return MeasureResult(inp.config, error=error_message(e), run_s=time.perf_counter() - start)
    return MeasureResult(inp.config, times_ms=times, run_s=time.perf_counter() - start)


@runtime_checkable
class Runner(Protocol):
    """Measures candidates: one `MeasureResult` per input, in order; failures are results, not exceptions."""

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]: ...


def _cuda_context_broken() -> bool:
    # after an illegal memory access every later CUDA call in the process fails: the child must go
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return False
    try:
        torch.cuda.synchronize()
    except Exception:
        return True
    return False


def _exit_with(parent: int) -> None:
    # daemon=True only covers the parent's orderly exit: a killed parent would leave a hung measurement
    # running, and its pipe's EOF is read only between measurements
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def preload() -> None:
    """Import what `measure_kernel` and `build_kernel` use (torch, Triton, the Triton backend), so a
    measuring or building process pays for it as it starts, not inside a candidate's timeout."""
    import torch  # noqa: F401

    import tilefuse.backends.triton  # noqa: F401


def _child_main(conn: multiprocessing.connection.Connection, measure: Callable) -> None:
    """The measuring process: announces itself, then answers each input with (result, still usable)."""
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    # Ctrl-C in a terminal reaches the whole process group: the tuning job decides what an
    # interrupt means (stop, record nothing for the trial in flight) and ends this process itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Triton's interpreter computes with numpy, which warns on the inf/NaN of random inputs
    # (exp overflow): noise on the job's terminal, not a result
    warnings.simplefilter("ignore", RuntimeWarning)
    preload()
    conn.send(("ready", os.getpid()))
    while True:
        try:
            inp = conn.recv()
        except EOFError:  # the parent is gone
            return
        if inp is None:
            return
        try:
            result = measure(inp)
        except Exception as e:
            result = MeasureResult(inp.config, error=error_message(e))
        usable = result.error is None or not _cuda_context_broken()
        try:
            conn.send((result, usable))
        except Exception as e:  # a result that does not pickle
            conn.send(
                (MeasureResult(inp.config, error=f"cannot return the result: {error_message(e)}"), usable)
            )
        if not usable:
            return


_ENVIRON_LOCK = threading.Lock()


@contextlib.contextmanager
def _environ(name: str, value: str | None) -> Iterator[None]:
    # a spawned child copies os.environ when it starts: set the variable only around the start
    with _ENVIRON_LOCK:
        old = os.environ.get(name)
        if value is not None:
            os.environ[name] = value
        try:
            yield
        finally:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def _visible_device(index: int) -> str:
    """The `CUDA_VISIBLE_DEVICES` entry for this process's device `index` (itself perhaps remapped)."""
    current = os.environ.get("CUDA_VISIBLE_DEVICES")
    if current is None or not current.strip():
        return str(index)
    devices = [d.strip() for d in current.split(",") if d.strip()]
    if not 0 <= index < len(devices):
        raise ValueError(
            f"device_index {index}: CUDA_VISIBLE_DEVICES={current!r} shows {len(devices)} devices"
        )
    return devices[index]


class _StartFailure(Exception):
    """The measuring process could not be started; every input of the batch fails the same way."""


class Interrupted(KeyboardInterrupt):
    """A tuning job was interrupted: the candidate in flight has no result and must not be recorded."""


class LocalRunner:
    """Measures candidates one at a time in a persistent child process, restarted after a hang or crash.

    The child is spawned on the first `run` and reused while it stays healthy.
    `measure` must pickle (a module-level function or a `functools.partial` of one).
    `timeout_s` bounds one measurement; `startup_timeout_s` bounds the child's start,
    which imports torch and tilefuse and is not charged to any candidate.
    `device_index` pins the child to one GPU (through `CUDA_VISIBLE_DEVICES`), so one
    runner per GPU can measure in parallel. Not thread-safe: one `run` at a time.
    """

    def __init__(
        self,
        measure: Callable[[MeasureInput], MeasureResult] = measure_kernel,
        timeout_s: float = 60.0,
        device_index: int | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.measure = measure
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.visible_devices = None if device_index is None else _visible_device(device_index)
        self._process = None
        self._conn = None
        self._interrupted = threading.Event()

    @property
    def pid(self) -> int | None:
        """The measuring process's id, or None while none runs."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]:
        """Measure each input in the child; a hang, a crash or an exception becomes that input's error."""
        results = []
        for i, inp in enumerate(inputs):
            try:
                results.append(self._measure_one(inp))
            except _StartFailure as e:
                self._check_interrupt()  # a child killed by `interrupt` as it started did not fail
                results.extend(MeasureResult(x.config, error=str(e)) for x in inputs[i:])
                break
        return results

    def interrupt(self) -> None:
        """Stop measuring, from another thread: the child is killed and the `run` in progress, and any
        later one, raises `Interrupted` instead of returning a result for the candidate in flight."""
        self._interrupted.set()
        process = self._process
        if process is not None:
            with contextlib.suppress(OSError, ValueError):
                process.kill()

    def _check_interrupt(self) -> None:
        if self._interrupted.is_set():
            self._stop(kill=True)
            raise Interrupted

    def _measure_one(self, inp: MeasureInput) -> MeasureResult:
        self._check_interrupt()
        conn, process = self._child()
        self._check_interrupt()  # interrupted while the child started: it was not there to kill
        start = time.perf_counter()
        try:
            conn.send(inp)
        except OSError:  # died since the last answer: reported below with its exit code
            pass
        except Exception as e:  # pickling fails before anything is sent: the child is still waiting
            return MeasureResult(inp.config, error=f"cannot send the candidate: {error_message(e)}")
        ready = multiprocessing.connection.wait([conn, process.sentinel], timeout=self.timeout_s)
        self._check_interrupt()
        if conn in ready:
            try:
                result, usable = conn.recv()
            except EOFError:  # died without an answer: its end of the pipe closed
                pass
            else:
                if not usable:
                    self._stop(kill=False)
                return result
        if not ready:
            self._stop(kill=True)
            return MeasureResult(
                inp.config, error=f"timeout after {self.timeout_s:g} s", run_s=self.timeout_s
            )
        process.join(5.0)
        code = process.exitcode
        self._stop(kill=True)
        return MeasureResult(
            inp.config,
            error=f"measurement process died (exit code {code})",
            run_s=time.perf_counter() - start,
        )

    def _child(self) -> tuple[multiprocessing.connection.Connection, multiprocessing.process.BaseProcess]:
        if self._process is not None and self._process.is_alive():
            return self._conn, self._process
        self._stop(kill=True)
        ctx = multiprocessing.get_context("spawn")
        conn, child_conn = ctx.Pipe()
        # daemon: the parent's exit takes the child along; if the parent is killed, the child's
        # recv() sees the pipe close and it returns
        process = ctx.Process(target=_child_main, args=(child_conn, self.measure), daemon=True,
                              name="tilefuse-measure")  # fmt: skip
        try:
            with _environ("CUDA_VISIBLE_DEVICES", self.visible_devices):
                process.start()
        except Exception as e:
            conn.close()
            raise _StartFailure(f"cannot start the measurement process: {error_message(e)}") from e
        finally:
            child_conn.close()  # only the child holds its end: its death then reads as EOF here
        self._process, self._conn = process, conn
        if not multiprocessing.connection.wait([conn, process.sentinel], timeout=self.startup_timeout_s):
            self._stop(kill=True)
            raise _StartFailure(f"measurement process did not start in {self.startup_timeout_s:g} s")
        try:
            conn.recv()
        except EOFError:
            process.join(5.0)
            code = process.exitcode
            self._stop(kill=True)
            raise _StartFailure(f"measurement process failed to start (exit code {code})") from None
        return conn, process

    def _stop(self, kill: bool) -> None:
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is None:
            return
        if not kill and process.is_alive():
            with contextlib.suppress(OSError):
                conn.send(None)
            process.join(5.0)
        if process.is_alive():
            process.kill()
            process.join(5.0)
        conn.close()

    def close(self) -> None:
        """Stop the child (politely, then by force); a later `run` starts a new one."""
        self._stop(kill=False)

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
