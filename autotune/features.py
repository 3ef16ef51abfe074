"""Features of one (task, config) pair: a fixed-length vector for every kernel kind.

A cost model trained on gemm kernels of some shapes should rank configs of other
shapes and, as far as it can, of other kernels. So every kind maps onto the same
vector: the kind is a one-hot, absent tile parameters and problem sizes are 0, and
most features are derived quantities that mean the same thing everywhere (grid
size, waves, padding, arithmetic intensity, shared memory, registers, loop trips).
Sizes are log2 so that trees split them on ratios, which is how tile choices scale.

Kinds and their loops, as lowered by `passes/lower_to_tile.py` and
`passes/flash_attention.py`: gemm programs cover a BLOCK_M x BLOCK_N output tile and
loop over K in BLOCK_K steps; attention programs cover BLOCK_M queries of one
(batch, head) and loop over keys in BLOCK_N steps (head dims are whole in one tile);
reduction programs cover BLOCK_R rows and loop over C in BLOCK_C chunks; row
programs hold BLOCK_R whole rows (BLOCK_C >= C) in registers, no loop; pointwise
programs cover BLOCK elements. "The loop" below means that loop, if any.

=====================  ==========================================  ==========================================
name                   meaning                                     why it predicts time
=====================  ==========================================  ==========================================
log2_BLOCK_M ...       log2 of each tile parameter (BLOCK_M,       the tile shape sets per-program work,
log2_BLOCK             BLOCK_N, BLOCK_K, GROUP_M, BLOCK_D,         MMA instruction shapes and data reuse
                       BLOCK_DV, BLOCK_R, BLOCK_C, BLOCK); 0
                       when the kind has no such parameter
num_warps              Triton num_warps                            threads to hide latency vs. registers
                                                                   each; must match the tile size
num_stages             Triton num_stages                           software-pipelining depth: hides load
                                                                   latency, costs shared memory
kind_gemm ...          one-hot of the kernel kind (gemm,           kinds are bound by different units;
kind_pointwise         attention, row, reduction, pointwise)       lets trees separate their regimes
log2_M, log2_N,        log2 of the problem sizes (gemm M/N/K,      the same tile is good or bad depending
log2_K, log2_B,        attention M/N = query/key lengths, D/DV,    on the shape it tiles; 0 when the kind
log2_R, log2_C,        B = batch x heads; reduction/row R/C;       has no such size
log2_D, log2_DV        pointwise N in log2_N)
causal                 1 for causal attention                      half the key blocks are skipped, and
                                                                   the work per program is uneven
log2_programs          log2 of the launch grid's program count     parallelism: too few programs leave
                       (computed as the kernel's grid is)          SMs idle, too many add overhead
waves                  programs / sm_count                         how many rounds of programs the GPU
                                                                   runs (at one program per SM)
wave_efficiency        programs / (ceil(waves) * sm_count)         the last partial wave idles SMs: 1.0
                                                                   is a whole number of waves
padding                work done on tile-rounded extents /         masked lanes still cost issue slots,
                       real work (e.g. gemm padded M*N*K / M*N*K)  loads and MMA throughput
arith_intensity        flops per byte loaded per loop step         above the ridge point a tile is
                       (gemm 2*BM*BN*rhs / ((BM+rhs*BN)*elem);     compute bound, below it memory bound;
                       attention 2*BM*(BD+BDV)/((BD+BDV)*elem));   small tiles reload operands more
                       (1 + epilogue_ops) / elem otherwise
log2_smem_bytes        log2(1 + shared memory of the pipelined     occupancy (programs per SM) and
                       operand tiles): gemm stages*(BM+rhs*BN)*    whether the config compiles at all
                       BK*elem; attention Q tile + stages*BN*
                       (BD+BDV)*elem; 0 for the other kinds
smem_fraction          shared-memory bytes / smem_limit            above 1 the launch fails; near 1 only
                                                                   one program fits an SM
loop_trips             mean trips of the program's loop (gemm      per-trip overhead and pipeline fill;
                       ceil(K/BK), attention key blocks (causal:   few trips cannot fill num_stages
                       averaged over query blocks), reduction
                       ceil(C/BC)); 1 without a loop
acc_regs               f32 accumulator values per thread: gemm     above ~128 registers a thread the
                       BM*BN*rhs/(32*warps); attention (BM*BDV+    compiler spills or lowers occupancy
                       BM*BN)/(32*warps) (output and score
                       tiles); row/reduction BR*BC/(32*warps);
                       pointwise BLOCK/(32*warps)
occupancy              programs that fit one SM at once (limits:   more resident programs hide latency
                       smem, 64 warps, 64K registers, 32 blocks)   of the loads of each other
align_M                the program's row extent divides evenly     no masked tail tile: full-speed loads
                       (gemm/attention M % BLOCK_M, row/reduction  and stores (and TMA-friendly)
                       R % BLOCK_R, pointwise N % BLOCK)
align_N                the column extent divides evenly (gemm N %  as align_M, for the other tile axis
                       BLOCK_N, attention N % BLOCK_N, row C ==
                       BLOCK_C); 1 for kinds without one
align_K                the loop extent divides evenly (gemm K %    the last loop trip is masked
                       BLOCK_K, reduction C % BLOCK_C); 1 for
                       kinds without a loop
elem_bytes             bytes of the operand element type           halves bandwidth/flops per element
                                                                   going from 2 to 4 bytes (f32/tf32)
rhs_operands           gemm right-hand operands sharing one lhs    two B tiles (SwiGLU) double the
                       tile (2 for SwiGLU); 1 for other kinds      accumulators and shared memory
epilogue_ops           ops fused after the main loop/map           extra per-element work at the end
use_tma                1 when the config sets USE_TMA              TMA descriptors change load costs and
                                                                   free registers from address math
tiles_per_program      gemm output tiles each program loops over   persistent programs (PROGRAMS below
                       (tiles / min(tiles, PROGRAMS)); 1 otherwise the tile count) trade launch and
                                                                   tail effects for a resident wave
log2_roofline_us       log2 of a roofline estimate of the whole    a prior that already combines the
                       kernel's time in microseconds (see          above; trees refine it, and an
                       `roofline_us`)                              untrained model ranks by it alone
=====================  ==========================================  ==========================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .heuristics import KernelConfig, operand_tile_bytes
from .records import TuningTask

KINDS = ("gemm", "attention", "row", "reduction", "pointwise")
TILE_PARAMS = (
    "BLOCK_M",
    "BLOCK_N",
    "BLOCK_K",
    "GROUP_M",
    "BLOCK_D",
    "BLOCK_DV",
    "BLOCK_R",
    "BLOCK_C",
    "BLOCK",
)
PROBLEM_SIZES = ("M", "N", "K", "B", "R", "C", "D", "DV")

FEATURE_NAMES: tuple[str, ...] = (
    *(f"log2_{p}" for p in TILE_PARAMS),
    "num_warps",
    "num_stages",
    *(f"kind_{k}" for k in KINDS),
    *(f"log2_{s}" for s in PROBLEM_SIZES),
    "causal",
    "log2_programs",
    "waves",
    "wave_efficiency",
    "padding",
    "arith_intensity",
    "log2_smem_bytes",
    "smem_fraction",
    "loop_trips",
    "acc_regs",
    "occupancy",
    "align_M",
    "align_N",
    "align_K",
    "elem_bytes",
    "rhs_operands",
    "epilogue_ops",
    "use_tma",
    "tiles_per_program",
    "log2_roofline_us",
)

# H100 SXM, the machine the tuner mostly runs on. Only ratios between configs of one
# task matter for ranking, so these need to be of the right proportions, not exact.
_MMA_FLOPS = 989e12  # dense bf16 tensor-core flop/s; f32 operands (tf32) run at half
_DRAM_BYTES_S = 3.35e12
_L2_BYTES_S = 10e12  # tile re-reads of neighbouring programs mostly hit L2
_PROGRAM_US = 2e-3  # per-program launch/prologue cost, microseconds
_LOOP_TRIP_US = 0.15e-3  # per loop trip latency that pipelining (num_stages) hides
_MAX_WARPS_PER_SM, _MAX_BLOCKS_PER_SM, _REGS_PER_SM = 64, 32, 65536
_INFEASIBLE = 1e3  # time factor for configs that cannot launch (shared memory over the limit)

_DTYPE_BYTES = {
    "float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4,
    "int16": 2, "int8": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
}  # fmt: skip


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _log2(x: float) -> float:
    return math.log2(x) if x > 0 else 0.0


def _elem_bytes(task: TuningTask) -> int:
    """The operand element size: gemm problems say so; other kinds' first argument tells."""
    if "elem_bytes" in task.problem:
        return int(task.problem["elem_bytes"])
    if task.args:
        return _DTYPE_BYTES.get(task.args[0].dtype, 2)
    return 2


class _Derived:
    """The per-kind quantities the features and the roofline estimate share."""

    def __init__(self, task: TuningTask, config: KernelConfig, sm_count: int, smem_limit: int) -> None:
        p, prob, kind = config.params, task.problem, task.kind
        warps, stages = config.num_warps, config.num_stages
        elem = _elem_bytes(task)
        self.elem, self.rhs = elem, int(prob.get("rhs_operands", 1)) if kind == "gemm" else 1
        ops = 1 + task.epilogue_ops
        self.trips, self.smem, self.align = 1.0, 0, [1, 1, 1]
        # flops / padded flops, bytes read at least once / bytes read by all tiles (L2 hits included)
        if kind == "gemm":
            M, N, K, B = prob["M"], prob["N"], prob["K"], prob.get("B", 1)
            bm, bn, bk, rhs = p["BLOCK_M"], p["BLOCK_N"], p["BLOCK_K"], self.rhs
            self.programs = _cdiv(M, bm) * _cdiv(N, bn) * B
            k_pad = _cdiv(K, bk) * bk
            self.flops = 2.0 * M * N * K * rhs * B
            self.padded_flops = 2.0 * _cdiv(M, bm) * bm * _cdiv(N, bn) * bn * k_pad * rhs * B
            out = M * N * B + prob.get("extra_out_elems", 0)  # a second output: a residual stream
            self.unique_bytes = (M * K * B + rhs * K * N * B + out) * elem
            self.tile_bytes = self.programs * (bm + rhs * bn) * k_pad * elem + out * elem
            self.intensity = 2.0 * bm * bn * rhs / ((bm + rhs * bn) * elem)
            self.smem = operand_tile_bytes(kind, p, stages, elem, rhs)
            self.trips = float(_cdiv(K, bk))
            self.acc = bm * bn * rhs / (32 * warps)
            self.align = [int(M % bm == 0), int(N % bn == 0), int(K % bk == 0)]
            self.mma = True
            # a warpgroup MMA wants >= 64 rows; smaller tiles fall back to narrower instructions
            self.mma_eff = min(1.0, bm / 64) * min(1.0, bn / 64)
        elif kind == "attention":
            M, N, D, DV, B = prob["M"], prob["N"], prob["D"], prob["DV"], prob.get("B", 1)
            bm, bn, bd, bdv = p["BLOCK_M"], p["BLOCK_N"], p["BLOCK_D"], p["BLOCK_DV"]
            q_blocks = _cdiv(M, bm)
            self.programs = q_blocks * B
            if prob.get("causal"):
                # a query block's keys end at its last query: trips grow with the block's index
                ends = np.minimum(N, (np.arange(q_blocks) + 1) * bm)
                self.trips = float(np.mean(-(-ends // bn)))
                frac = 0.5
            else:
                self.trips, frac = float(_cdiv(N, bn)), 1.0
            self.flops = 2.0 * M * N * (D + DV) * B * frac
            self.padded_flops = 2.0 * q_blocks * bm * self.trips * bn * (bd + bdv) * B
            self.unique_bytes = (M * D + N * D + N * DV + M * DV) * elem * B
            self.tile_bytes = self.programs * (bm * bd + self.trips * bn * (bd + bdv)) * elem
            self.intensity = 2.0 * bm * (bd + bdv) / ((bd + bdv) * elem)
            self.smem = operand_tile_bytes(kind, p, stages, elem)
            self.acc = (bm * bdv + bm * bn) / (32 * warps)
            self.align = [int(M % bm == 0), int(N % bn == 0), 1]
            self.mma = True
            self.mma_eff = min(1.0, bm / 64) * min(1.0, bn / 64)
        else:
            if kind == "pointwise":
                R, C, br, bc = prob["N"], 1, p["BLOCK"], 1
            else:
                R, C, br, bc = prob["R"], prob["C"], p["BLOCK_R"], p["BLOCK_C"]
            self.programs = _cdiv(R, br)
            c_pad = bc if kind == "row" else _cdiv(C, bc) * bc
            self.flops = float(ops * R * C)
            self.padded_flops = float(ops * self.programs * br * c_pad)
            # reads the input, writes a row (reduction) or the same size (row, pointwise) back
            out = (R if kind == "reduction" else R * C) + prob.get("extra_out_elems", 0)
            self.unique_bytes = (R * C + out) * elem
            self.tile_bytes = self.unique_bytes * self.padded_flops / max(self.flops, 1.0)
            self.intensity = ops / elem
            if kind == "reduction":
                self.trips = float(_cdiv(C, bc))
                self.align = [int(R % br == 0), 1, int(C % bc == 0)]
            elif kind == "row":
                self.align = [int(R % br == 0), int(C == bc), 1]
            else:
                self.align = [int(R % br == 0), 1, 1]
            self.acc = br * bc / (32 * warps)
            self.mma, self.mma_eff = False, 1.0
        self.padding = self.padded_flops / max(self.flops, 1.0)
        self.waves = self.programs / sm_count
        self.wave_eff = self.programs / (max(1, math.ceil(self.waves)) * sm_count)
        self.smem_fraction = self.smem / smem_limit
        # registers a thread: the accumulators plus a rough 32 for addresses, masks and loop state
        regs = min(255.0, self.acc + 32.0)
        limits = [_MAX_WARPS_PER_SM // warps, _MAX_BLOCKS_PER_SM, int(_REGS_PER_SM // (32 * warps * regs))]
        if self.smem:
            limits.append(smem_limit // self.smem)
        self.occupancy = max(0, min(limits))
        self.roofline_us = self._roofline(config, sm_count)

    def _roofline(self, config: KernelConfig, sm_count: int) -> float:
        """Whole-kernel time in microseconds: the slowest of compute, DRAM and L2 traffic, stretched by
        the idle SMs of a partial last wave, plus per-program and unhidden per-trip latency."""
        if self.mma:
            peak = _MMA_FLOPS * (2.0 / max(self.elem, 2)) * self.mma_eff
        else:
            peak = _MMA_FLOPS / 16  # CUDA-core f32 ops: never the bound of a sane elementwise kernel
        busy = max(self.padded_flops / peak, self.unique_bytes / _DRAM_BYTES_S, self.tile_bytes / _L2_BYTES_S)
        busy_us = busy * 1e6 / max(self.wave_eff, 1.0 / sm_count)
        hidden = min(config.num_stages, max(self.trips, 1.0))
        waves = math.ceil(self.waves)
        latency_us = waves * (self.trips * _LOOP_TRIP_US / hidden + _PROGRAM_US)
        time_us = busy_us + latency_us
        if self.acc > 128:  # spilled accumulators go through local memory
            time_us *= self.acc / 128
        if self.smem_fraction > 1 or self.occupancy == 0:
            time_us *= _INFEASIBLE
        return time_us


def roofline_us(
    task: TuningTask, config: KernelConfig, sm_count: int = 132, smem_limit: int = 232448
) -> float:
    """A roofline estimate of the kernel's time in microseconds (absolute scale rough; ratios meaningful).

    Configs whose tiles overflow shared memory get a time 1000x longer, so that they rank last
    without making the feature infinite.
    """
    return _Derived(_as_modelled(task), config, sm_count, smem_limit).roofline_us


def _as_modelled(task: TuningTask) -> TuningTask:
    """A scan is modelled as the reduction it resembles (a row walked in chunks) that writes the
    whole row back: the shipped model has no kind of its own for it."""
    if task.kind != "scan":
        return task
    extra = task.problem["R"] * task.problem["C"] - task.problem["R"]
    return replace(task, kind="reduction", problem=task.problem | {"extra_out_elems": extra})


def features(
    task: TuningTask, config: KernelConfig, sm_count: int = 132, smem_limit: int = 232448
) -> np.ndarray:
    """The feature vector of `config` on `task` (float32, ordered as FEATURE_NAMES; see the module doc).

    `sm_count` and `smem_limit` (bytes of shared memory a block may use) describe the device.
    """
    task = _as_modelled(task)
    if task.kind not in KINDS:
        raise ValueError(f"unknown kernel kind {task.kind!r}; expected one of {KINDS}")
    d = _Derived(task, config, sm_count, smem_limit)
    p, prob = config.params, task.problem
    sizes = {s: prob.get(s, 0) for s in PROBLEM_SIZES}
    values = [
        *(_log2(p.get(name, 0)) for name in TILE_PARAMS),
        config.num_warps,
        config.num_stages,
        *(float(task.kind == k) for k in KINDS),
        *(_log2(sizes[s]) for s in PROBLEM_SIZES),
        float(bool(prob.get("causal", 0))),
        _log2(d.programs),
        d.waves,
        d.wave_eff,
        d.padding,
        d.intensity,
        _log2(1 + d.smem),
        d.smem_fraction,
        d.trips,
        d.acc,
        d.occupancy,
        *d.align,
        d.elem,
        d.rhs,
        task.epilogue_ops,
        float(p.get("USE_TMA", 0)),
        d.programs / max(1, min(d.programs, p.get("PROGRAMS", d.programs))),
        _log2(d.roofline_us),
    ]
    return np.asarray(values, dtype=np.float32)


def feature_matrix(
    task: TuningTask, configs: Sequence[KernelConfig], sm_count: int = 132, smem_limit: int = 232448
) -> np.ndarray:
    """The features of each config on `task`: shape (len(configs), len(FEATURE_NAMES)), float32."""
    out = np.zeros((len(configs), len(FEATURE_NAMES)), dtype=np.float32)
    for i, config in enumerate(configs):
        out[i] = features(task, config, sm_count, smem_limit)
    return out
