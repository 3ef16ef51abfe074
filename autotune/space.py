"""The search space of one kernel on one problem: every legal binding of its tile parameters.

Candidates per kernel kind (`CHOICES`; `COLUMN_REDUCTION` for a reduction whose kept index is the
contiguous one) are crossed, then pruned before anything compiles:

- the lowering's requirements (`problem["whole"]`, `["exact"]`, `["divisors"]`, and the
  per-kind whole extents of `heuristics.WHOLE_EXTENTS`): a tile that must hold a whole row
  or head, or must divide an index, is not a choice;
- shared memory: the pipelined operand tiles (`stages` copies) must fit the device's
  per-block limit;
- registers: f32 accumulators per thread (tile elements / threads) above
  `MAX_ACCUMULATORS_PER_THREAD` spill, which never wins;
- thin GEMM tiles (under MIN_WIDE_TILE) along M or N when that dim is WIDE or more and the other
  is not a few rows (a decode GEMM, M <= MIN_WIDE_TILE, splits its weight over narrow tiles);
- waste: a tile more than twice the problem's extent along a dim only adds masked lanes.

GEMMs choose between persistent (`PROGRAMS` = the SM count: one resident wave, each program
looping over tiles) and one tile a program. They have no split-K (the lowering has none), so
that is not in the space. `USE_TMA` (tensor-descriptor loads instead of pointer loads) is in
the space of kernels whose source can use descriptors, on Hopper-class devices only.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass

from .heuristics import ONE_TILE_EACH, KernelConfig, default_config, operand_tile_bytes, whole_extents
from .records import TuningTask

MIN_WIDE_TILE, WIDE = 64, 512  # thin GEMM tiles only along a small dim (decode-like M)
MAX_ACCUMULATORS_PER_THREAD = 128  # of the 255 registers a thread has, the rest hold addresses and operands

CHOICES: dict[str, dict[str, tuple[int, ...]]] = {
    "gemm": {
        "BLOCK_M": (16, 32, 64, 128, 256),
        "BLOCK_N": (32, 64, 128, 256),
        "BLOCK_K": (32, 64, 128),
        "GROUP_M": (1, 8),
        "num_warps": (4, 8),
        "num_stages": (2, 3, 4),
    },
    "attention": {
        "BLOCK_M": (32, 64, 128),
        "BLOCK_N": (32, 64, 128),
        "num_warps": (4, 8),
        "num_stages": (1, 2, 3, 4),
    },
    "row": {"BLOCK_R": (1, 2, 4, 8, 16, 32), "num_warps": (1, 2, 4, 8, 16)},
    "reduction": {
        "BLOCK_R": (1, 2, 4, 8, 16),
        "BLOCK_C": (128, 256, 512, 1024, 2048),
        "num_warps": (2, 4, 8, 16),  # 16: one long row in one program (a full reduction's combine)
    },
    "pointwise": {"BLOCK": (256, 512, 1024, 2048, 4096), "num_warps": (2, 4, 8)},
    "scan": {
        "BLOCK_R": (1, 2, 4, 8, 16),
        "BLOCK_C": (512, 1024, 2048, 4096, 8192),
        "num_warps": (2, 4, 8, 16),
    },
}
# a transposing pointwise kernel in 2-d tiles (lower_to_tile.lower_pointwise)
TILED_POINTWISE = {"BLOCK_X": (32, 64, 128), "BLOCK_Y": (16, 32, 64, 128), "num_warps": (4, 8)}
# a row too wide for one tile, walked in chunks by one program
CHUNKED_ROW = {"BLOCK_C": (1024, 2048, 4096, 8192), "num_warps": (4, 8, 16)}
# a reduction whose kept index is the contiguous one: tiles wide in R, a few rows of C deep
COLUMN_REDUCTION = {
    "BLOCK_R": (64, 128, 256, 512, 1024),
    "BLOCK_C": (1, 2, 4, 8, 16, 32, 64),
    "num_warps": (4, 8),
}


@dataclass(frozen=True)
class DeviceLimits:
    """What prunes configs: streaming multiprocessors, shared memory a block may use, TMA."""

    name: str = "NVIDIA H100 80GB HBM3"
    sm_count: int = 132
    smem_per_block: int = 232448  # 227 KB opt-in on Hopper
    has_tma: bool = True

    @staticmethod
    def current() -> DeviceLimits:
        """The limits of the current CUDA device; the H100's without one (CPU tests, planning)."""
        import torch

        if not torch.cuda.is_available():
            return DeviceLimits()
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        smem = getattr(props, "shared_memory_per_block_optin", 0) or 232448
        return DeviceLimits(props.name, props.multi_processor_count, smem, props.major >= 9)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(n, 1))))


def shared_memory_bytes(task: TuningTask, config: KernelConfig) -> int:
    """Bytes of the pipelined operand tiles a config asks for (what Triton allocates, roughly)."""
    problem = task.problem
    elem, rhs = problem.get("elem_bytes", 2), problem.get("rhs_operands", 1)
    return operand_tile_bytes(task.kind, config.params, config.num_stages, elem, rhs)


def accumulators_per_thread(task: TuningTask, config: KernelConfig) -> float:
    p = config.params
    threads = 32 * config.num_warps
    if task.kind == "gemm":
        return p["BLOCK_M"] * p["BLOCK_N"] * task.problem.get("rhs_operands", 1) / threads
    if task.kind == "attention":
        return p["BLOCK_M"] * (p.get("BLOCK_DV", 64) + p["BLOCK_N"]) / threads
    if task.kind in ("row", "reduction", "scan"):
        return p["BLOCK_R"] * p.get("BLOCK_C", 1) / threads / 4  # a few live copies of the row, f32
    return 0.0


class SearchSpace:
    """The legal configs of `task` on a device with `limits` (see the module docstring)."""

    def __init__(self, task: TuningTask, limits: DeviceLimits | None = None):
        self.task = task
        self.limits = limits or DeviceLimits()
        self._configs = [c for c in self._candidates() if self.why_illegal(c) is None]
        # the untuned choice is always a candidate (it meets the kernel's requirements by
        # construction), so a space is never empty and tuning never ends worse than not tuning
        untuned = self.untuned()
        if all(c.key() != untuned.key() for c in self._configs):
            self._configs.insert(0, untuned)

    def configs(self) -> list[KernelConfig]:
        return list(self._configs)

    def untuned(self) -> KernelConfig:
        """The config the compiler uses without tuning, as a point of this space."""
        config = self.task.untuned or default_config(self.task.kind, self.task.problem)
        if self._tma_choice():  # pointer loads unless TILEFUSE_TMA=1
            tma = int(os.environ.get("TILEFUSE_TMA", "0") == "1")
            config = KernelConfig(config.params | {"USE_TMA": tma}, config.num_warps, config.num_stages)
        return config

    def __len__(self) -> int:
        return len(self._configs)

    def _tma_choice(self) -> bool:
        # a kernel of symbolic sizes (a task with sizes) launches without TMA (`SizedLaunch`)
        tma = self.limits.has_tma and "USE_TMA" in self.task.source and not self.task.sizes
        return self.task.kind == "gemm" and tma

    def _fixed(self) -> dict[str, int]:
        """Parameters the problem decides: whole extents, exact sizes."""
        kind, problem = self.task.kind, self.task.problem
        fixed = {param: _pow2_at_least(max(problem[extent], 16)) for param, extent in
                 whole_extents(kind, problem).items()}  # fmt: skip
        if kind == "row" and problem.get("chunked"):
            fixed["BLOCK_R"] = 1
        elif kind == "row":  # (a short row is not padded to 16: heuristics.default_config)
            fixed["BLOCK_C"] = _pow2_at_least(problem["C"])
        fixed.update(problem.get("exact", {}))
        return fixed

    def _candidates(self) -> list[KernelConfig]:
        column = self.task.kind == "reduction" and self.task.problem.get("column")
        chunked = self.task.kind == "row" and self.task.problem.get("chunked")
        tiled = self.task.kind == "pointwise" and self.task.problem.get("tiled")
        table = COLUMN_REDUCTION if column else CHUNKED_ROW if chunked else TILED_POINTWISE if tiled else None
        choices = dict(table or CHOICES[self.task.kind])
        fixed = self._fixed()
        choices.update({k: (v,) for k, v in fixed.items()})
        if self._tma_choice():
            choices["USE_TMA"] = (0, 1)
        if self.task.kind == "gemm":  # persistent (one resident wave looping over tiles) or not
            choices["PROGRAMS"] = (self.limits.sm_count, ONE_TILE_EACH)
        names = list(choices)
        out = []
        for values in itertools.product(*(choices[n] for n in names)):
            params = dict(zip(names, values))
            warps, stages = params.pop("num_warps"), params.pop("num_stages", 1)
            out.append(KernelConfig(params, warps, stages))
        return out

    def why_illegal(self, config: KernelConfig) -> str | None:
        """Why `config` cannot (or should never) run for this task, or None if it is legal."""
        task, problem, p = self.task, self.task.problem, config.params
        for param, extent in problem.get("whole", {}).items():
            if p.get(param, extent) < extent:
                return f"{param} < {extent}: the tile must hold whole rows"
        for param, extent in problem.get("exact", {}).items():
            if p.get(param) != extent:
                return f"{param} must be {extent}"
        for param, sizes in problem.get("divisors", {}).items():
            if any(d % p[param] for d in sizes):
                return f"{param} must divide {sizes}"
        for param, extent in whole_extents(task.kind, problem).items():
            if p[param] < problem[extent]:
                return f"{param} < {extent}: one tile holds it"
        smem = shared_memory_bytes(task, config)
        if smem > self.limits.smem_per_block:
            return f"shared memory {smem} B > {self.limits.smem_per_block} B"
        if accumulators_per_thread(task, config) > MAX_ACCUMULATORS_PER_THREAD:
            return "accumulators would spill registers"
        if task.kind == "gemm":
            for dim, param, other in (("M", "BLOCK_M", "N"), ("N", "BLOCK_N", "M")):
                # (unless the other operand is a few rows: a decode GEMM's weight stream wants programs)
                if p[param] < MIN_WIDE_TILE and problem[dim] >= WIDE and problem[other] > MIN_WIDE_TILE:
                    return f"{param} < {MIN_WIDE_TILE} on {dim} >= {WIDE} reloads the other operand too often"
            one_line = problem["M"] <= p["BLOCK_M"] or problem["N"] <= p["BLOCK_N"]
            if one_line and p["GROUP_M"] != 8:
                return "GROUP_M orders nothing with one row or column of tiles (GROUP_M=8 stands for all)"
        for param, extent in _extents(task).items():
            if param in p and p[param] > 2 * max(_pow2_at_least(extent), 16) and param not in self._fixed():
                return f"{param} > twice the problem's {extent}"
        return None


def _extents(task: TuningTask) -> dict[str, int]:
    """The problem extent each tile parameter covers."""
    problem = task.problem
    table = {
        "gemm": {"BLOCK_M": "M", "BLOCK_N": "N", "BLOCK_K": "K"},
        "attention": {"BLOCK_M": "M", "BLOCK_N": "N"},
        "row": {"BLOCK_R": "R"},
        "reduction": {"BLOCK_R": "R", "BLOCK_C": "C"},
        "scan": {"BLOCK_R": "R", "BLOCK_C": "C"},
        "pointwise": {"BLOCK": "N", "BLOCK_X": "X", "BLOCK_Y": "Y"},
    }[task.kind]
    return {param: problem[key] for param, key in table.items() if key in problem}

