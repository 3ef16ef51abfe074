"""Never slower than PyTorch: a partition's program is measured against its captured PyTorch code.

On a GPU, the first call of a compiled partition times both ways of running
it on the call's own inputs (wall time of BURST runs back to back, the GPU
synchronized around them, so a way's host overhead counts where it limits the
runs, as in a loop that queues work ahead of the GPU) and keeps the faster from then on:
each way runs WARMUP times to warm up (Triton loads its binaries, the program is
written, PyTorch's libraries initialize), then `ROUNDS` times, alternating
which goes first, and the medians decide, all within that call, so every later
call runs one way only. A user who times the calls after a short warm-up (a
benchmark harness, a serving loop) never times a call that runs twice. A
partition that writes its inputs (a cache update) cannot run several times in
a call: it measures one pair per call over its first calls instead
(`Selection.in_one_call`). The choice and both times go in the partition's report
(`selection`). `TILEFUSE_SELECT=0` keeps the generated program without
measuring. A finer choice, per GEMM group between its kernel and the
library path, is made when the program is written (`group_selection.py`);
this one guarantees the whole.

"The captured PyTorch code" of a partition is aten after PyTorch's core
decompositions, which can itself be slower than eager (a decomposed norm is
several kernels). So a whole graph is measured once more, the same way,
against Dynamo's captured graph run as PyTorch (`GraphSelection`), once its
partitions have chosen: what a user gets is never slower than the eager
graph, up to the noise of a median of three.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode_stack

SELECT_ENV = "TILEFUSE_SELECT"
ROUNDS = 3
# runs of each way a timed round makes back to back, the GPU synchronized around the burst only: the
# host queues the next run while the GPU works, as in a serving loop, a training step or a benchmark
# harness, so a way is timed by what limits it there (its host time or its GPU time), not by their sum.
# Timed one synchronized run at a time, a ~50 us kernel whose program costs more host time than
# PyTorch's op lost (argmax over the middle dim: 34.7 us of GPU against eager's 47.4, H200) though
# back to back it is the faster.
BURST = 4
# untimed runs of each way before the first timed round: a program's first launches load their kernels
# (CUDA loads modules lazily) and warm its Python; an H200 took 226, 103 and 93 us for mse's first three
# synchronized calls and 48 from then on, and one warm-up run left the measurement at PyTorch's
WARMUP = 3


# Python dispatch modes a measurement may step outside of: AOTAutograd runs a compiled graph's first call
# under this one, which inspects every aten op (it checks custom ops' aliasing). Under it, a partition's
# captured PyTorch code took 141 µs of host time a run against 21 afterwards (this repository's CPU), and
# on the H200 mse's program measured 193 µs against 169 for PyTorch in that call, though once settled it
# runs 86 µs back to back against eager's 107: the first call's choice went to PyTorch. A GEMM group's
# library path (tens of aten ops) measured 20-250x slower under it (a view and an expand: 69 µs against 3).
ANALYSIS_MODES = frozenset({"_AnalyzeCustomOpInputOutputMode"})


def outside_dispatch_modes() -> contextlib.AbstractContextManager:
    """A context without the caller's Python dispatch modes (see ANALYSIS_MODES)."""
    return _disable_current_modes()


def only_analysis_modes() -> bool:
    """Whether every Python dispatch mode in force is one a measurement may step outside of; another
    (a fake-tensor mode, a tracer) must see the calls, so nothing is measured under it."""
    return all(type(mode).__name__ in ANALYSIS_MODES for mode in _get_current_dispatch_mode_stack())


def selection_enabled(device: torch.device) -> bool:
    return device.type == "cuda" and os.environ.get(SELECT_ENV, "1") != "0"


def timed(kind: str, run: Callable[[], object], device: torch.device) -> tuple[object, float]:
    """`run()` (the `kind` way) and its wall time in ms, the device synchronized before and after."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = run()
    torch.cuda.synchronize(device)
    return out, (time.perf_counter() - start) * 1e3


class ReferenceFailed(Exception):
    """The PyTorch side of a measurement raised: the generated side is kept, unmeasured."""


def guarded(run: Callable[[], object]) -> Callable[[], object]:
    """`run` with its exceptions turned into `ReferenceFailed`, to tell them from the program's."""

    def call() -> object:
        try:
            return run()
        except Exception as e:
            raise ReferenceFailed(f"{type(e).__name__}: {e}") from e

    return call


def _repeated(run: Callable[[], object], n: int) -> Callable[[], object]:
    """`run` n times back to back; the last result (None as soon as one is: a guard refused)."""
    if n == 1:
        return run

    def burst() -> object:
        out = None
        for _ in range(n):
            out = run()
            if out is None:
                return None
        return out

    return burst


@dataclass
class Selection:
    """The measurements of one partition's two ways of running, and the choice once made."""

    device: torch.device
    program_ms: list[float] = field(default_factory=list)
    pytorch_ms: list[float] = field(default_factory=list)
    calls: int = 0
    choice: str | None = None  # "program" or "pytorch"
    not_measured: str | None = None  # why the program was kept unmeasured: the PyTorch side raised
    clock: Callable[[str, Callable[[], object], torch.device], tuple[object, float]] | None = None  # `timed`
    # the program is kept when its median is at most `margin` times PyTorch's (GraphSelection asks for a
    # lead: a tie there means the eager graph, which is what the user had)
    margin: float = 1.0
    # measure everything in the first call (module docstring); False: one pair per call, for code that
    # writes its inputs and must not run more than twice in a call
    in_one_call: bool = True

    @property
    def burst(self) -> int:
        """Runs a timed round makes of each way (BURST; once where the code writes its inputs)."""
        return BURST if self.in_one_call else 1

    def step(self, program: Callable[[], object], pytorch: Callable[[], object]) -> object:
        """Run one call while measuring; returns the program's result (its correctness is the
        program's own; only its speed is in question), or None where the program's guard refused.
        If the PyTorch side raises, the program is chosen unmeasured: measuring never costs a call."""
        try:
            return self._step(program, guarded(pytorch))
        except ReferenceFailed as e:
            self.choice, self.not_measured = "program", str(e)
            return program()

    def _step(self, program: Callable[[], object], pytorch: Callable[[], object]) -> object:
        if not only_analysis_modes():  # a tracer or a fake-tensor mode sees this call: measure a later one
            return program()
        self.calls += 1
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return program()
        with outside_dispatch_modes():
            return self._timed_step(program, pytorch)

    def _timed_step(self, program: Callable[[], object], pytorch: Callable[[], object]) -> object:
        if self.in_one_call:
            return self._measure_now(program, pytorch)
        if self.calls == 1:
            return program()
        if self.calls == 2:  # PyTorch's first run pays its own warm-up (library handles, autotuning)
            pytorch()
            return program()
        return self._pair(program, pytorch, program_first=self.calls % 2 == 0)

    def _measure_now(self, program: Callable[[], object], pytorch: Callable[[], object]) -> object:
        """Both ways warmed up (WARMUP runs each), then `ROUNDS` timed pairs, all in this call; the
        last program result."""
        for _ in range(WARMUP):
            out = program()
            if out is None:  # the program's guard refused these inputs: nothing to measure on them
                return None
            pytorch()
        for i in range(ROUNDS):
            out = self._pair(program, pytorch, program_first=i % 2 == 0)
            if out is None:
                return None
        return out

    def _pair(
        self, program: Callable[[], object], pytorch: Callable[[], object], program_first: bool
    ) -> object:
        """One timed run each way; decides once there are `ROUNDS` of them."""
        clock = self.clock or timed
        n = self.burst
        program_n, pytorch_n = _repeated(program, n), _repeated(pytorch, n)
        if program_first:
            out, ms = clock("program", program_n, self.device)
            _, other = clock("pytorch", pytorch_n, self.device)
        else:
            _, other = clock("pytorch", pytorch_n, self.device)
            out, ms = clock("program", program_n, self.device)
        if out is None:  # the program's guard refused these inputs: nothing was measured
            return None
        self.program_ms.append(ms / n)
        self.pytorch_ms.append(other / n)
        if len(self.program_ms) >= ROUNDS:
            faster = statistics.median(self.program_ms) <= self.margin * statistics.median(self.pytorch_ms)
            self.choice = "program" if faster else "pytorch"
        return out

    def summary(self) -> dict:
        if self.not_measured is not None:
            return {"chosen": self.choice, "not_measured": self.not_measured}
        return {
            "chosen": self.choice,
            "program_ms": round(statistics.median(self.program_ms), 4) if self.program_ms else None,
            "pytorch_ms": round(statistics.median(self.pytorch_ms), 4) if self.pytorch_ms else None,
        }


TRAINING_ENV = "TILEFUSE_TRAINING"
# unset: on a GPU, the compiled forward and backward are measured against Dynamo's graph in PyTorch
# (TrainingSelection); "pytorch": PyTorch once the graph trains; "1": the compiled forward with PyTorch
# running the decomposed backward; "compile": the compiled forward and backward, unmeasured
TRAINING_NOTE = (
    f"its backward ran (a training graph); {TRAINING_ENV}=pytorch: calls with gradients run Dynamo's "
    "graph in PyTorch (eager autograd)"
)
TRAINING_KEPT = (
    f"its backward ran (a training graph); {TRAINING_ENV}=1: calls with gradients keep the compiled forward"
)
TRAINING_COMPILED = (
    f"its backward ran (a training graph); {TRAINING_ENV}=compile: calls with gradients keep the compiled "
    "forward, and the backward graph is compiled too (its own report, kind 'backward')"
)
TRAINING_MEASURING = (
    "its backward ran (a training graph): its steps are being measured, compiled forward and backward "
    "against Dynamo's graph in PyTorch"
)


def training_setting() -> str | None:
    """`$TILEFUSE_TRAINING`: None (measure, on a GPU), "pytorch", "1" or "compile"."""
    value = os.environ.get(TRAINING_ENV) or None
    return None if value == "auto" else value


def compile_backward(device: torch.device | None = None) -> bool:
    """Whether a training graph's backward is compiled: with TILEFUSE_TRAINING=compile, and by default
    where steps are measured (a GPU with selection on), so the compiled side has its backward."""
    setting = training_setting()
    return setting == "compile" or (setting is None and device is not None and selection_enabled(device))


class TrainingSelection:
    """A training graph's steps: the compiled forward and backward against Dynamo's graph in PyTorch.

    A step's cost is what a training loop sees: the time from one call of the graph to the next
    (its forward, its backward, and the rest of the step, which both ways share), the device
    synchronized at each call. The first `SETTLE` steps run compiled, unmeasured: the compiled
    forward's and backward's partitions measure their programs against PyTorch on their first calls
    (`Selection`: both ways a call), and their groups on the first (`group_selection`), which made
    the compiled step look twice as slow as it is (GPT-2 on the H200: 25.6 ms measured, 9.2 ms once
    settled, against 10.5 in PyTorch). Then one warm-up call in PyTorch (its first run of the graph:
    library handles, allocator), then calls alternate until each way has `ROUNDS` intervals; the
    faster shortest interval is kept: a model of several graphs (GPT-2's body and its loss) measures
    them all in the same steps, and a step inflated by another graph's one-time work (its backward's
    first run) made its median compiled step 18.7 ms against 14.5 in PyTorch where a settled
    compiled step takes 8.7 (H200); noise only lengthens a step. The compiled side needs `MARGIN`
    of a lead: its backward is a decomposed graph. The choice is made at the graph's eighth
    training step: a harness that warms up for a few steps and then times (a step of 10 ms,
    `do_bench`'s 25 ms of warm-up) times mostly chosen steps (at thirteen steps, Llama's steps
    timed that way mixed both ways). Calls measure nothing inside a CUDA graph capture.
    """

    MARGIN = 0.97
    WAYS = ("tilefuse", "pytorch")
    # a partition's Selection decides in its first call; the backward's partitions first run in the
    # first step's backward, so the step after it runs settled
    SETTLE = 1
    ROUNDS = 2  # intervals each way: steps differ by tens of percent where the choice matters

    def __init__(self, device: torch.device, now: Callable[[torch.device], float] | None = None):
        self.device = device
        self.now = now or _synchronized_now
        self.settle = self.SETTLE
        self.calls = 0
        self.samples: dict[str, list[float]] = {w: [] for w in self.WAYS}
        self.last: tuple[str, float] | None = None
        self.choice: str | None = None

    def way(self) -> str:
        """Which way this call runs, recording the interval of the previous call."""
        if self.choice is not None:
            return self.choice
        if self.settle > 0:
            self.settle -= 1
            return "tilefuse"
        now = self.now(self.device)
        if self.last is not None and self.calls > 1:  # PyTorch's warm-up call's interval is dropped
            way, then = self.last
            self.samples[way].append((now - then) * 1e3)
        way = "pytorch" if self.calls == 0 else self.WAYS[(self.calls - 1) % 2]
        self.calls += 1
        self.last = (way, now)
        if all(len(v) >= self.ROUNDS for v in self.samples.values()):
            compiled, eager = (min(self.samples[w]) for w in self.WAYS)
            self.choice = "tilefuse" if compiled < self.MARGIN * eager else "pytorch"
            self.last = None
            return self.choice
        return way

    def note(self) -> str:
        compiled, eager = (round(min(self.samples[w]), 4) for w in self.WAYS)
        compiled_way = "the compiled forward and backward"
        chosen = compiled_way if self.choice == "tilefuse" else "Dynamo's graph in PyTorch"
        return (
            f"its backward ran (a training graph): {chosen} chosen by measurement, a step {compiled} ms "
            f"compiled against {eager} ms in PyTorch (shortest interval between calls; {TRAINING_ENV} "
            "=pytorch|1|compile overrides)"
        )


def _requires_grad(args: tuple) -> bool:
    return any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)


def _synchronized_now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


MUTATES_INPUTS = "the graph updates its inputs in place: not run twice in a call to be timed"
# the most bytes of written inputs the graph selection copies aside to time a graph that writes its
# inputs (each way runs several times; the copies are put back, then the chosen way runs once)
RESTORED_BYTES = 2 << 30


class GraphSelection:
    """A compiled graph against Dynamo's own graph run by PyTorch.

    Calls without gradients are measured (see the module docstring), and so are calls under grad
    mode where no input requires a gradient (autograd records nothing: a parameter-free op timed
    without `torch.no_grad()`, as some harnesses do). A call whose inputs require gradients runs
    the compiled graph unmeasured: a training loop's backward follows it, and from then on its
    steps are measured both ways and the faster is kept (`TrainingSelection`; `TILEFUSE_TRAINING`
    overrides). Where no backward has run by the graph's second such call, it is inference that
    forgot `torch.no_grad()`: that call measures the forward both ways, as a call without
    gradients does (a module's parameters require gradients; an op slower compiled than in
    PyTorch ran compiled at every call before).
    """

    # the compiled graph must beat Dynamo's graph in PyTorch by 2% to be kept: within that the medians
    # of three are noise, and a tie goes to what the user had (GPT-2 in fp32 on the H200 kept a compiled
    # graph 2% slower than eager)
    MARGIN = 0.98

    def __init__(self, compiled: Callable, eager: Callable, device: torch.device, slot: dict):
        self.compiled = compiled
        self.eager = eager
        # {"summary": the graph's report} once its forward is compiled; "trains" once its backward is
        self.slot = slot
        self.selection = Selection(device, margin=self.MARGIN)
        self.training: TrainingSelection | None = None  # made at the first measured training step
        self.recording_calls = 0  # calls whose inputs require gradients, before any backward ran

    def __call__(self, *args: object) -> object:
        chosen = self.selection.choice
        if chosen is None and self.slot.get("mutates_inputs"):
            written = self._restorable(args)
            if written is None:
                # timing it both ways in one call would apply its updates several times (a counter, a
                # running statistic): the compiled graph is kept; its partitions still measure themselves
                self.selection.choice, self.selection.not_measured = "program", MUTATES_INPUTS
                self._report_selection()
                chosen = "program"
            elif self._measurable(args):
                return self._measure_restoring(args, written)
            elif not (torch.is_grad_enabled() and self.slot.get("trains")):
                return self.compiled(*args)  # unmeasured: a later call without gradients measures
        if torch.is_grad_enabled() and self.slot.get("trains"):
            setting = training_setting()
            if setting is None and not self._capturing():
                return self._training_step(args)
            note = {"1": TRAINING_KEPT, "compile": TRAINING_COMPILED}.get(setting, TRAINING_NOTE)
            self.slot.get("summary", {}).setdefault("training", note)
            return self.eager(*args) if note is TRAINING_NOTE else self.compiled(*args)
        if chosen is None and torch.is_grad_enabled() and _requires_grad(args):
            self.recording_calls += 1
            if self.recording_calls < 2:  # a training step's forward, perhaps: its backward may follow
                return self.compiled(*args)
        if chosen == "program":
            return self.compiled(*args)
        if chosen == "pytorch":
            return self.eager(*args)
        # the partitions choose in their first call, which is the measurement's own warm-up call
        out = self.selection.step(lambda: self.compiled(*args), lambda: self.eager(*args))
        self._report_selection()
        return out

    def _restorable(self, args: tuple) -> list[torch.Tensor] | None:
        """The inputs this graph writes, where the selection can copy them aside and put them back
        (known positions, tensors, at most RESTORED_BYTES in all); else None."""
        positions = self.slot.get("mutated_positions")
        if positions is None or any(
            p >= len(args) or not isinstance(args[p], torch.Tensor) for p in positions
        ):
            return None
        written = [args[p] for p in positions]
        if sum(t.untyped_storage().nbytes() for t in written) > RESTORED_BYTES:
            return None
        return written

    def _measurable(self, args: tuple) -> bool:
        """Whether this call is one the selection measures (no gradients recorded, not a capture)."""
        recording = torch.is_grad_enabled() and (self.slot.get("trains") or _requires_grad(args))
        return not recording and not self._capturing()

    def _measure_restoring(self, args: tuple, written: list[torch.Tensor]) -> object:
        """Time a graph that writes its inputs both ways (each runs several times), put the written
        inputs back as they were, then run the chosen way once: the call applies its updates once."""
        try:
            saved = [t.clone() for t in written]
        except torch.OutOfMemoryError:  # no room for the copies: kept unmeasured, as before
            self.selection.choice, self.selection.not_measured = "program", MUTATES_INPUTS
            self._report_selection()
            return self.compiled(*args)
        try:
            self.selection.step(lambda: self.compiled(*args), lambda: self.eager(*args))
        finally:  # the inputs as the caller gave them, however the measurement ended
            with torch.no_grad():
                for t, copy in zip(written, saved):
                    t.copy_(copy)
            del saved
        self._report_selection()
        return self.eager(*args) if self.selection.choice == "pytorch" else self.compiled(*args)

    def _training_step(self, args: tuple) -> object:
        """A call with gradients of a graph that trains: measured, then the faster way (TrainingSelection)."""
        if self.training is None:
            self.training = TrainingSelection(self.selection.device)
        way = self.training.way()
        summary = self.slot.get("summary", {})
        if self.training.choice is None:
            summary["training"] = TRAINING_MEASURING
        else:
            summary["training"] = self.training.note()
        return self.compiled(*args) if way == "tilefuse" else self.eager(*args)

    def _capturing(self) -> bool:
        return self.selection.device.type == "cuda" and torch.cuda.is_current_stream_capturing()

    def _report_selection(self) -> None:
        if self.selection.choice is not None:
            summary = self.selection.summary()
            summary["chosen"] = "tilefuse" if summary["chosen"] == "program" else "pytorch (the eager graph)"
            if "program_ms" in summary:
                summary["tilefuse_ms"] = summary.pop("program_ms")
            self.slot.get("summary", {})["selection"] = summary
