"""Never slower than PyTorch: a partition's program is measured against its captured PyTorch code.

On a GPU, the first calls of a compiled partition time both ways of running
it on the call's own inputs (wall time, the GPU synchronized around each, so
host overhead counts as the user sees it) and keep the faster from then on.
The first call only warms up (Triton compiles, the program is written); the
next `ROUNDS` calls run both, alternating which goes first, and the medians
decide. The choice and both times go in the partition's report
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

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

SELECT_ENV = "TILEFUSE_SELECT"
ROUNDS = 3


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
        clock = self.clock or timed
        self.calls += 1
        if self.calls == 1 or (self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
            return program()
        if self.calls == 2:  # PyTorch's first run pays its own warm-up (library handles, autotuning)
            pytorch()
            return program()
        first_program = self.calls % 2 == 0
        if first_program:
            out, ms = clock("program", program, self.device)
            _, other = clock("pytorch", pytorch, self.device)
        else:
            _, other = clock("pytorch", pytorch, self.device)
            out, ms = clock("program", program, self.device)
        if out is None:  # the program's guard refused these inputs: nothing was measured
            return None
        self.program_ms.append(ms)
        self.pytorch_ms.append(other)
        if len(self.program_ms) >= ROUNDS:
            faster = statistics.median(self.program_ms) <= statistics.median(self.pytorch_ms)
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


TRAINING_ENV = "TILEFUSE_TRAINING"  # "1": training steps keep the compiled forward; "compile": and backward
TRAINING_NOTE = (
    "its backward ran (a training graph): calls with gradients run Dynamo's graph in PyTorch "
    "(eager autograd), since tilefuse has no backward kernels and its forward plus PyTorch running "
    "the decomposed backward measured slower than eager (H200, 4-layer Llama bf16 step: 24.4 ms "
    f"against 17.1); {TRAINING_ENV}=1 keeps the compiled forward"
)

TRAINING_KEPT = (
    f"its backward ran (a training graph); {TRAINING_ENV}=1: calls with gradients keep the compiled forward"
)
TRAINING_COMPILED = (
    f"its backward ran (a training graph); {TRAINING_ENV}=compile: calls with gradients keep the compiled "
    "forward, and the backward graph is compiled too (its own report, kind 'backward'); not yet measured "
    "against eager on a GPU, so not the default"
)


def compile_backward() -> bool:
    """Whether training graphs get their backward compiled (`TILEFUSE_TRAINING=compile`)."""
    return os.environ.get(TRAINING_ENV) == "compile"


class GraphSelection:
    """A compiled graph against Dynamo's own graph run by PyTorch.

    Calls without gradients are measured (see the module docstring). Calls with gradients take the
    compiled graph unmeasured (inference that forgot `torch.no_grad()` still gains) until the
    graph's backward runs once; from then on they run Dynamo's graph in PyTorch (`TRAINING_NOTE`).
    """

    def __init__(self, compiled: Callable, eager: Callable, device: torch.device, slot: dict):
        self.compiled = compiled
        self.eager = eager
        # {"summary": the graph's report} once its forward is compiled; "trains" once its backward is
        self.slot = slot
        self.settle = 2 + ROUNDS  # the partitions' own choices come first
        self.selection = Selection(device)

    def __call__(self, *args: object) -> object:
        chosen = self.selection.choice
        if torch.is_grad_enabled() and self.slot.get("trains"):
            setting = os.environ.get(TRAINING_ENV)
            note = {"1": TRAINING_KEPT, "compile": TRAINING_COMPILED}.get(setting, TRAINING_NOTE)
            self.slot.get("summary", {}).setdefault("training", note)
            if note is TRAINING_NOTE:
                return self.eager(*args)
        if chosen == "program" or (chosen is None and torch.is_grad_enabled()):
            return self.compiled(*args)
        if chosen == "pytorch":
            return self.eager(*args)
        if self.settle > 0:
            self.settle -= 1
            return self.compiled(*args)
        out = self.selection.step(lambda: self.compiled(*args), lambda: self.eager(*args))
        if self.selection.choice is not None:
            summary = self.selection.summary()
            summary["chosen"] = "tilefuse" if summary["chosen"] == "program" else "pytorch (the eager graph)"
            if "program_ms" in summary:
                summary["tilefuse_ms"] = summary.pop("program_ms")
            self.slot.get("summary", {})["selection"] = summary
        return out
