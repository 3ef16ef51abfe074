"""Tuning on a Ray cluster: `tune_tasks(tasks, ray=True | "ADDRESS")`.

The local executor's job spread over a cluster. One runner actor per GPU of every node
(`num_gpus=1`: Ray pins the actor to its GPU) measures through a runner made inside the
actor, by default a `LocalRunner`, so a candidate that crashes or hangs still takes down only
a child process of the actor. Builds are Ray tasks of one CPU each, placed on the node of the
actor that will measure them when it has a free CPU: its Triton cache then holds the binary.
`tune_task` drives both through the `Runner` and `Builder` protocols, one driver thread per
actor; results come back to the driver, which alone writes the database, so a job killed on
the driver resumes from it as a local one does.

An actor that dies (its node lost, out of memory, killed) is replaced, and the candidate in
flight is measured again on the replacement: the candidate is not to blame, since it never
ran in the actor's own process. Should the replacement die on it too, the candidate is
recorded with that error, so a job never loops. Actors report their device and software
versions, and a job refuses actors that disagree: one decision never mixes timings of two
kinds of device.

Ray is optional (`pip install tilefuse[ray]`) and imported only when a job asks for it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .builder import build_kernel
from .database import device_name, versions
from .records import BuildResult, MeasureInput, MeasureResult
from .runner import Interrupted, Runner
from .space import DeviceLimits

POLL_S = 0.2  # how often a wait on Ray looks for an interrupt: a blocked `ray.get` would not see one
STARTUP_TIMEOUT_S = 300.0  # for an actor to start: imports, and perhaps a node to free a GPU


class RayUnavailable(ImportError):
    """Tuning on Ray was asked for, but Ray cannot be imported."""


class MixedDevicesError(RuntimeError):
    """Runner actors that measure on different devices or software: their records must not mix."""


def import_ray():
    """The `ray` module, or `RayUnavailable` saying how to install it."""
    try:
        import ray
    except ImportError as e:
        raise RayUnavailable(f"tuning on Ray needs Ray ({e}): pip install tilefuse[ray]") from e
    return ray


@dataclass(frozen=True)
class RunnerInfo:
    """What a runner actor measures on: its records' device and versions, the limits that prune the
    search space, and where it runs (its node, for builds; `place`, for the summary)."""

    device: str
    versions: str
    limits: DeviceLimits
    node_id: str
    place: str


class RunnerActor:
    """The body of a runner actor: a runner made in the actor's process by `make_runner`.

    `make_runner` gets `device_index=None`: Ray has already pinned the process to its GPU.
    The actor is killed rather than closed: a `LocalRunner`'s child sees its parent gone
    and exits by itself.
    """

    def __init__(self, make_runner: Callable[..., Runner]) -> None:
        self.runner = make_runner(device_index=None)

    def info(self) -> RunnerInfo:
        import ray

        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU", [])
        where = f"GPU {','.join(gpus)}" if gpus else "CPU"
        place = f"{ray.util.get_node_ip_address()} {where}"
        return RunnerInfo(device_name(), versions(), DeviceLimits.current(), context.get_node_id(), place)

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]:
        return self.runner.run(inputs)


def _build(build_fn: Callable[[MeasureInput], BuildResult], inp: MeasureInput) -> BuildResult:
    return build_fn(inp)


def _first_line(error: BaseException) -> str:
    # Ray's errors run to many lines (tracebacks, log hints): the first says what happened
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def check_one_kind(infos: Sequence[RunnerInfo]) -> None:
    """Raise `MixedDevicesError` unless every actor measures on one device name with one software."""
    kinds = sorted({(i.device, i.versions) for i in infos})
    if len(kinds) > 1:
        listed = "; ".join(f"{device} ({software})" for device, software in kinds)
        raise MixedDevicesError(
            f"the runner actors measure on different devices or software: {listed}. A job's records "
            "must come from one kind: tune on a cluster of one kind of GPU and one software stack"
        )


def runner_count(workers: int | None, gpus: int, tasks: int) -> int:
    """One runner actor per GPU of the cluster, at most `workers`; on a cluster without GPUs,
    `workers` CPU-only actors (default 1). Never more than the tasks: an actor tunes whole tasks."""
    wanted = (min(workers, gpus) if workers else gpus) if gpus else (workers or 1)
    return max(1, min(wanted, tasks))


class RayRunner:
    """A `Runner` measuring in one runner actor, replaced when it dies (see the module docstring)."""

    def __init__(self, executor: RayExecutor, actor: Any, info: RunnerInfo) -> None:
        self.executor, self.actor, self.info = executor, actor, info

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]:
        return [self._measure(inp) for inp in inputs]

    def _measure(self, inp: MeasureInput) -> MeasureResult:
        ray = self.executor.ray
        for _ in range(2):
            try:
                return self.executor.wait(self.actor.run.remote([inp]))[0]
            except ray.exceptions.RayActorError as e:
                died = e
                self._replace()
        return MeasureResult(inp.config, error=f"two runner actors died measuring it: {_first_line(died)}")

    def _replace(self) -> None:
        self.kill()
        [(actor, info)] = self.executor.start_actors(1)
        try:
            check_one_kind([self.info, info])
        except MixedDevicesError:
            self.executor.ray.kill(actor)
            raise
        self.actor, self.info = actor, info

    def kill(self) -> None:
        with contextlib.suppress(Exception):  # already dead, or Ray already shut down
            self.executor.ray.kill(self.actor)


class RayBuilder:
    """A `Builder` whose candidates are Ray tasks of one CPU each, preferably on the node where
    `runner` measures. A worker that dies, or a candidate not back `timeout_s` after it was
    submitted (Ray queues tasks beyond the free CPUs: that wait counts), is that candidate's error.

    The tasks ask for no GPU, and Ray (since 2.49, unless `RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1`)
    then leaves the node's GPUs visible to them: a build compiles for the node's GPU into its
    Triton cache, as a `LocalBuilder`'s processes do. On a node without one it only checks.
    """

    def __init__(
        self, executor: RayExecutor, runner: RayRunner, build_fn: Callable, timeout_s: float
    ) -> None:
        self.executor, self.runner, self.build_fn, self.timeout_s = executor, runner, build_fn, timeout_s
        self._task = executor.ray.remote(_build)

    def build(self, inputs: Sequence[MeasureInput]) -> list[BuildResult]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.executor.ray
        near = NodeAffinitySchedulingStrategy(self.runner.info.node_id, soft=True)
        task = self._task.options(num_cpus=1, max_retries=0, scheduling_strategy=near)
        pending = {task.remote(self.build_fn, inp): i for i, inp in enumerate(inputs)}
        results: list[BuildResult | None] = [None] * len(inputs)
        deadline = time.monotonic() + self.timeout_s
        try:
            while pending and time.monotonic() < deadline:
                self.executor.check_interrupt()
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        results[i] = ray.get(ref)
                    except ray.exceptions.RayError as e:  # its worker died, or build_fn raised
                        results[i] = BuildResult(inputs[i].config, error=_first_line(e))
            for i in pending.values():
                late = f"timeout after {self.timeout_s:g} s"
                results[i] = BuildResult(inputs[i].config, error=late, build_s=self.timeout_s)
        finally:
            for ref in pending:  # late, or abandoned by an interrupt
                ray.cancel(ref, force=True)
        return results


class RayExecutor:
    """Runner actors and build tasks on a Ray cluster, one `Worker` per actor (see the module docstring).

    `address` True starts a local cluster (or joins `$RAY_ADDRESS`), a string joins the cluster
    there; a process already connected to Ray uses that connection. A cluster this executor
    connected to is left (and a local one stopped) at `close`.
    """

    name = "Ray"

    def __init__(
        self, address: bool | str, workers: int | None, tasks: int, make_runner: Callable[..., Runner],
        build_fn: Callable[[MeasureInput], BuildResult] = build_kernel, build_timeout_s: float = 120.0,
        startup_timeout_s: float = STARTUP_TIMEOUT_S,
    ) -> None:  # fmt: skip
        from .job import Worker  # here: the actors import this module, and need none of the job's

        self.ray = ray = import_ray()
        self.make_runner, self.startup_timeout_s = make_runner, startup_timeout_s
        self._interrupted = threading.Event()
        self._connected = not ray.is_initialized()
        if self._connected:
            ray.init(address=None if address is True else address)
        self.runners: list[RayRunner] = []
        try:
            self.gpus = int(ray.cluster_resources().get("GPU", 0))
            started = self.start_actors(runner_count(workers, self.gpus, tasks))
            self.runners = [RayRunner(self, actor, info) for actor, info in started]
            infos = [r.info for r in self.runners]
            check_one_kind(infos)
        except BaseException:
            self.close()
            raise
        self.device, self.versions, self.limits = infos[0].device, infos[0].versions, infos[0].limits
        self.workers = [
            Worker(r.info.place, r, RayBuilder(self, r, build_fn, build_timeout_s)) for r in self.runners
        ]

    def start_actors(self, count: int) -> list[tuple[Any, RunnerInfo]]:
        """Start `count` runner actors (one GPU each, where the cluster has GPUs) and wait for their info."""
        # an actor holds no CPU while it lives: builds (one CPU each) always find the cluster's CPUs
        options = {"num_gpus": 1 if self.gpus else 0, "num_cpus": 0, "max_restarts": 0}
        actor_class = self.ray.remote(RunnerActor).options(**options)
        actors = [actor_class.remote(self.make_runner) for _ in range(count)]
        deadline = time.monotonic() + self.startup_timeout_s
        try:
            return [(a, self.wait(a.info.remote(), deadline)) for a in actors]
        except BaseException:
            for actor in actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor)
            raise

    def wait(self, ref: Any, deadline: float | None = None) -> Any:
        """`ray.get(ref)`, watching for an interrupt; `TimeoutError` past `deadline` (a monotonic time:
        only actors starting have one)."""
        while True:
            self.check_interrupt()
            ready, _ = self.ray.wait([ref], timeout=POLL_S)
            if ready:
                return self.ray.get(ref)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"no runner actor started in {self.startup_timeout_s:g} s: are the cluster's GPUs taken?"
                )

    def check_interrupt(self) -> None:
        if self._interrupted.is_set():
            raise Interrupted

    def interrupt(self) -> None:
        """Stop, from another thread: every wait on Ray in progress, and any later one, raises
        `Interrupted` (the trial in flight is recorded nowhere)."""
        self._interrupted.set()

    def close(self) -> None:
        """Kill the runner actors; leave the cluster if this executor joined it."""
        for runner in self.runners:
            runner.kill()
        if self._connected:
            self.ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
