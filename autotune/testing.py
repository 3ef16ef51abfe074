"""Fakes that let the tuning loop run anywhere (CPU tests): a runner whose "measurement" is a
deterministic synthetic cost, and a builder that builds everything.

The synthetic cost is shaped like a GPU's: time grows with the number of waves of tiles,
small tiles pay for reloading operands, stages and warps have a sweet spot, and a few
percent of deterministic noise (from a hash of the config) breaks ties. Only its shape
matters: the loop and the cost model are tested on finding its optimum.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from .heuristics import KernelConfig
from .records import BuildResult, MeasureInput, MeasureResult, TuningTask

SM_COUNT = 132


def _noise(config: KernelConfig, amplitude: float = 0.02) -> float:
    digest = hashlib.sha256(config.key().encode()).digest()
    return 1.0 + amplitude * (digest[0] / 255.0 * 2 - 1)


def synthetic_cost(task: TuningTask, config: KernelConfig) -> float:
    """A deterministic time in ms for `config` on `task` (see the module docstring)."""
    p, problem = config.params, task.problem
    warps, stages = config.num_warps, config.num_stages
    if task.kind == "gemm":
        bm, bn, bk = p["BLOCK_M"], p["BLOCK_N"], p["BLOCK_K"]
        m, n, k = problem["M"], problem["N"], problem["K"]
        programs = math.ceil(m / bm) * math.ceil(n / bn) * problem.get("B", 1)
        waves = math.ceil(programs / SM_COUNT)
        tile = bm * bn * k * 2 / 1e9  # GFLOP of one tile
        reload = 1 + 32 / bm + 32 / bn + 16 / bk
        pipeline = 1 + 0.15 * abs(stages - 3)
        threads = 1 + 0.2 * (warps != (8 if bm * bn >= 128 * 128 else 4))
        swizzle = 1 + 0.05 * (p.get("GROUP_M", 8) == 1)
        return waves * tile * reload * pipeline * threads * swizzle * _noise(config)
    sizes = [p[name] for name in sorted(p)]
    balance = sum(abs(math.log2(s) - 6) for s in sizes if s > 0) / max(len(sizes), 1)
    shape = (1 + 0.1 * abs(math.log2(warps) - 2)) * (1 + 0.1 * abs(stages - 2))
    return (1 + 0.1 * balance) * shape * _noise(config)


class SyntheticRunner:
    """A Runner whose times are `synthetic_cost`; configs whose key is in `failing` fail."""

    def __init__(self, failing: Sequence[str] = ()):
        self.failing = set(failing)
        self.measured: list[str] = []

    def run(self, inputs: Sequence[MeasureInput]) -> list[MeasureResult]:
        results = []
        for inp in inputs:
            self.measured.append(inp.config.key())
            if inp.config.key() in self.failing:
                results.append(MeasureResult(inp.config, error="OutOfResources: synthetic failure"))
            else:
                cost = synthetic_cost(inp.task, inp.config)
                results.append(MeasureResult(inp.config, times_ms=(cost, cost, cost)))
        return results


class NullBuilder:
    """A Builder for runners that need nothing built (the synthetic one)."""

    def build(self, inputs: Sequence[MeasureInput]) -> list[BuildResult]:
        return [BuildResult(inp.config) for inp in inputs]


def gemm_task(m: int, n: int, k: int, key: str | None = None, elem_bytes: int = 2) -> TuningTask:
    """A GEMM task with no source: enough for the space, the features and the synthetic cost."""
    problem = {"M": m, "N": n, "K": k, "B": 1, "elem_bytes": elem_bytes, "rhs_operands": 1}
    return TuningTask(key or f"gemm-{m}x{n}x{k}", f"gemm {m}x{n}x{k}", "gemm", problem, "", "kernel", ())
