"""Default tile configurations per kernel class, used until a kernel is tuned.

Leads from DESIGN.md's H100 measurements: 128x128 (or 128x256) GEMM tiles
with 8 warps and 3 stages for large problems, small tiles for small M;
rows of at most a few thousand elements per reduction program.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class KernelConfig:
    """Values for a kernel's tile parameters plus Triton's launch options."""

    params: dict[str, int]
    num_warps: int = 4
    num_stages: int = 2

    def key(self) -> str:
        """`BLOCK_K=64,BLOCK_M=128,...,w=8,s=3`: params sorted, then warps and stages."""
        items = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{items},w={self.num_warps},s={self.num_stages}"

    @staticmethod
    def from_key(key: str) -> KernelConfig:
        """The config `key()` wrote."""
        values = dict(item.split("=") for item in key.split(","))
        warps, stages = int(values.pop("w")), int(values.pop("s"))
        return KernelConfig({k: int(v) for k, v in values.items()}, warps, stages)


def _pow2_at_least(n: int, lo: int, hi: int) -> int:
    size = lo
    while size < n and size < hi:
        size *= 2
    return size


CONFIG_ENV = "TILEFUSE_KERNEL_CONFIG"
# switches a GEMM's launch takes beside its tile parameters (backends/triton/launcher.launch_flags)
GEMM_LAUNCH_SWITCHES = ("USE_TMA", "USE_WS")
# tile parameters that must cover a whole extent of the problem: not a choice, a requirement
WHOLE_EXTENTS = {"row": {"BLOCK_C": "C"}, "attention": {"BLOCK_D": "D", "BLOCK_DV": "DV"}}
CHUNKED_ROW_BLOCK = 4096  # elements of a row a chunked row kernel's program reads at a time


# a row kernel's rows shorter than this are "short": SHORT_ROW_TILE of them a tile, 16 elements a
# thread (`default_config`)
SHORT_ROW = 16
SHORT_ROW_TILE = 1024


def config_override(kind: str) -> dict | None:
    """The `TILEFUSE_KERNEL_CONFIG` values set for kernels of `kind`, if any. A value that is not a JSON
    object of objects raises a ValueError naming the variable (the graph then runs in PyTorch, the
    report saying why)."""
    text = os.environ.get(CONFIG_ENV) or "{}"
    try:
        table = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{CONFIG_ENV} is not JSON ({e}): {text!r}") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        example = '{"gemm": {"BLOCK_N": 128}}'
        raise ValueError(f"{CONFIG_ENV} must map kernel kinds to parameters, e.g. {example}: {text!r}")
    return table.get(kind)


def default_config(kind: str, problem: dict[str, int]) -> KernelConfig:
    """A reasonable first configuration for a kernel of `kind` on a problem of this size.

    `TILEFUSE_KERNEL_CONFIG='{"gemm": {"BLOCK_N": 256, "num_stages": 4}}'` overrides
    values per kernel kind (for experiments, until the autotuner picks them); a GEMM's may also set
    its launch switches `USE_TMA` and `USE_WS` (0 or 1), as a tuned config does, over `TILEFUSE_TMA`
    and `TILEFUSE_WS` (the launcher still reads through pointers where descriptors do not fit).
    """
    config = _heuristic(kind, problem)
    override = config_override(kind)
    if not override:
        return config
    override = dict(override)
    warps, stages = override.pop("num_warps", config.num_warps), override.pop("num_stages", config.num_stages)
    unknown = set(override) - set(config.params) - (set(GEMM_LAUNCH_SWITCHES) if kind == "gemm" else set())
    if unknown:
        raise ValueError(f"{CONFIG_ENV}: {kind} kernels have no parameter {sorted(unknown)}")
    config = KernelConfig(config.params | override, warps, stages)
    for param, extent in problem.get("whole", {}).items():
        if config.params[param] < extent:
            raise ValueError(f"{CONFIG_ENV}: this {kind} kernel needs {param} >= {extent} (whole rows)")
    for param, extent in problem.get("exact", {}).items():
        if config.params[param] != extent:
            raise ValueError(f"{CONFIG_ENV}: this {kind} kernel needs {param} = {extent}")
    for param, sizes in problem.get("divisors", {}).items():
        if any(d % config.params[param] for d in sizes):
            raise ValueError(f"{CONFIG_ENV}: this {kind} kernel needs {param} dividing {sizes}")
    for param, extent in whole_extents(kind, problem).items():
        if config.params[param] < problem[extent]:
            raise ValueError(f"{CONFIG_ENV}: {kind} kernels need {param} >= {problem[extent]} (one tile)")
    return config


# Triton's interpreter runs a kernel's programs one after another, each op a numpy call over the whole
# block: its time is the number of programs, nearly whatever the block holds. A 4-layer tiny Llama's
# first call on the CPU spent 20.9 of its 80.8 s in one pointwise kernel (a folded norm weight, 688 x
# 256, as 172 programs of 1024). Under the interpreter a pointwise block holds up to this many elements.
INTERPRETER_BLOCK = 1 << 14


def interpreter_config(kind: str, config: KernelConfig, problem: dict[str, int]) -> KernelConfig:
    """`config` as the CPU's interpreter runs it best: a flat pointwise kernel's block widened to
    INTERPRETER_BLOCK (fewer programs, the same code and masks); other kinds unchanged."""
    if kind != "pointwise" or set(config.params) != {"BLOCK"}:
        return config
    block = max(config.params["BLOCK"], _pow2_at_least(problem["N"], 16, INTERPRETER_BLOCK))
    return KernelConfig({"BLOCK": block}, config.num_warps, config.num_stages)


def whole_extents(kind: str, problem: dict) -> dict[str, str]:
    """The tile parameters that must cover a whole extent of this problem (a chunked row kernel
    walks its rows, so its BLOCK_C is a chunk)."""
    if kind == "row" and problem.get("chunked"):
        return {}
    return WHOLE_EXTENTS.get(kind, {})


ONE_TILE_EACH = 1 << 16  # a GEMM's PROGRAMS when every tile gets its own program (not persistent)
SM_COUNT_HINT = 132  # H100/H200 SXM: programs per wave, for tiles that cannot split N
SMALL_GRID_MAX_K = 8192  # deeper GEMMs keep 128 x 128 tiles on a small grid (see `_heuristic`, "gemm")
SHARED_MEMORY_BUDGET = 200 * 1024  # bytes of pipelined operand tiles; the H100 has 227 KB a block


def operand_tile_bytes(
    kind: str, params: dict[str, int], num_stages: int, elem_bytes: int, rhs_operands: int = 1
) -> int:
    """Bytes of the pipelined operand tiles a config asks for (what Triton allocates, roughly): a
    GEMM's A and B tiles per stage (B once per accumulator), attention's query tile plus key and
    value tiles per stage; 0 for kinds that pipeline nothing."""
    if kind == "gemm":
        rows = params["BLOCK_M"] + rhs_operands * params["BLOCK_N"]
        return num_stages * rows * params["BLOCK_K"] * elem_bytes
    if kind == "attention":
        d, dv = params.get("BLOCK_D", 64), params.get("BLOCK_DV", 64)
        return (params["BLOCK_M"] * d + max(num_stages, 1) * params["BLOCK_N"] * (d + dv)) * elem_bytes
    return 0


# an attention grid of fewer programs than this (half of an H100's or H200's 132 SMs busy) over at least
# LONG_KEY_LOOP keys takes smaller query tiles
FEW_PROGRAMS, LONG_KEY_LOOP = 66, 1024


def _heuristic(kind: str, problem: dict[str, int]) -> KernelConfig:
    if kind == "gemm":
        # 128x256x64, 8 warps, 3 stages won every bf16 case of the H100 sweep (benchmarks/NOTES.md)
        bm = _pow2_at_least(problem["M"], 16, 128)
        bn = problem.get("exact", {}).get("BLOCK_N") or _pow2_at_least(problem["N"], 16, 256)
        whole_rows = "whole" in problem  # a row reduction in the epilogue: one tile spans N
        # decode-sized M (a few rows) through a projection's weight (not an LM head): K in 128-wide
        # steps, 4 stages in flight (H200 sweep, bf16, kernel time at M=1: 2048x2048 5.8 -> 4.4 µs
        # (cuBLAS 4.7), N=5632 7.5 -> 5.7 µs (cuBLAS 6.5), K=5632 15.1 -> 11.1 µs (cuBLAS 4.2:
        # split-K, which these kernels lack); benchmarks/NOTES.md)
        decode = problem["M"] <= 32 and not whole_rows
        projection = decode and problem["N"] <= 8192 and problem["K"] >= 128
        bk = 128 if projection else _pow2_at_least(problem["K"], 16, 64)
        while any(d % bk for d in problem.get("divisors", {}).get("BLOCK_K", ())):
            bk //= 2  # K blocks must not cross an index K is split into (see unravel_block)
        stages = 4 if projection else 3
        rhs_tiles, elem = problem.get("rhs_operands", 1), problem.get("elem_bytes", 2)

        def shared_bytes() -> int:
            params = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}
            return operand_tile_bytes(kind, params, stages, elem, rhs_tiles)

        # f32 accumulators live in registers: at most ~128 a thread across 8 warps (256 threads)
        while rhs_tiles * bm * bn > 128 * 256 and bn > 64 and not whole_rows:
            bn //= 2
        while whole_rows and bm * bn > 128 * 256 and bm > 16:
            bm //= 2

        # whole-row tiles leave one program per row block: keep enough of them to fill the GPU
        def programs() -> int:
            return -(-problem["M"] // bm) * -(-problem["N"] // bn) * problem.get("B", 1)

        while whole_rows and bm > 64 and programs() < 2 * SM_COUNT_HINT:
            bm //= 2
        # fewer tiles than SMs leaves most of the GPU idle (the k/v projections of a GQA block,
        # M=128 decode-like shapes): narrower tiles

        # (halving down to 128 only: 64x64 tiles measured 0.35x cuBLAS at M=128 on the H100).
        # 128x256 tiles won the large shapes of the H100 sweep; under two waves of them the last
        # wave's idle SMs cost more than the wide tile saves: 2048x4096x1024 (GPT-2's MLP) took
        # 59 us at 128x256 and 34 at 128x128 on the H200
        while programs() < 2 * SM_COUNT_HINT and bn > 128 and not whole_rows:
            bn //= 2
        # decode-sized M: the GEMM streams its weight once, and the SMs that get no program leave their
        # share of the bandwidth unused: narrow tiles, a program per SM or more (half a wave for a
        # projection's 128-deep, 4-stage tiles: the sweep above)
        wanted = SM_COUNT_HINT // 2 if projection else SM_COUNT_HINT
        while decode and programs() < wanted and bn > 32:
            bn //= 2
        # half a wave of 128-wide tiles or less, with a few hundred rows and columns (GQA k/v
        # projections at 2048 tokens, their gradients; 1024-square): 64 x 64 tiles, 4 warps, 4 stages,
        # four times the programs. H200 sweeps, bf16, NT/NN/TN layouts (benchmarks/NOTES.md), 128x128
        # -> 64x64 in us: 2048x512x2048 21.0/20.3/20.2 -> 15.9/15.5/15.4, 512x2048x2048 21.1/41.8/20.3
        # -> 15.6/34.7/16.1, 1024^3 26.5/13.4/30.5 -> 10.6/10.3/26.1 (cuBLAS 9-13). At a full wave
        # (4096x512, 2048x1024: 128 tiles) 64x64 lost (~30 against 19-33), so not there; nor at M or N
        # under 256, where a 64-row tile reads the weight once per row block (H100: 0.35x cuBLAS at M=128)
        half_wave = programs() <= SM_COUNT_HINT // 2
        small_grid = not whole_rows and not decode and half_wave and problem["K"] <= SMALL_GRID_MAX_K
        exact_n = "BLOCK_N" in problem.get("exact", {})
        if small_grid and min(problem["M"], problem["N"]) >= 256 and not exact_n:
            bm, bn, stages = 64, 64, 4
        while shared_bytes() > SHARED_MEMORY_BUDGET and bk > 32:
            bk //= 2
        while shared_bytes() > SHARED_MEMORY_BUDGET and bn > 64 and not whole_rows:
            bn //= 2
        # 8 warps hold a 128x256 accumulator (128 f32 registers a thread); a 128x128 one fits 4
        # (34 us against 54 with 8 on the shape above) unless a second accumulator needs the registers.
        # An epilogue with math functions takes 8 only over a short K: 8 warps slow a 128x128 tile's
        # main loop more than the epilogue's spills cost at 4 (H200, bf16, GEMM + bias + activation, us at
        # 4 / 8 warps: erf GELU 2048x8192x2048 96.7 / 160.6, 2048x4096x4096 106.3 / 169.5, 512x2048x8192
        # 31.3 / 40.6; SiLU 93.9 / 105.2 at K = 8192; at K = 1024 8 warps won by 0.3-1 us: 1024x1024x4096
        # erf GELU 22.0 / 21.0, tanh GELU 17.1 / 16.4)
        short_k = problem["K"] <= 1024
        heavy = rhs_tiles > 1 or (problem.get("epilogue_math", 0) > 0 and short_k)
        warps = 8 if bm * bn > 128 * 128 or (bm * bn == 128 * 128 and heavy) else 4
        if elem == 4 and not problem.get("tf32") and not whole_rows and not decode:
            # exact f32 dots run as 3xTF32: three TF32 dots a step and the operands' split halves take the
            # registers a wide tile's accumulator had. H200 sweep (10 configs, Triton 3.6; .scratch probe in
            # benchmarks/NOTES.md), 4096^3 with K-major B: 128x64x32, 4 warps, 4 stages 1716 us, 128x128x32
            # at 8 warps 1737, today's 128x256x32 2888 (cuBLAS SGEMM 2678); 2048x1024x8192: 431 against
            # 1425 (SGEMM 703), with 6.9e-7 of error against float64 (SGEMM 2.0e-6)
            bn = bn if exact_n else min(bn, 64)
            bm, bk, warps, stages = min(bm, 128), min(bk, 32), 4, 4
        # a shallow product (K <= 128: ConvNeXt's and Swin's stage-1 MLPs after their LayerNorm, K = 96
        # over 100352 rows) has a main loop of a few steps, and its time is the epilogue's and the
        # stores': narrow tiles, more programs in flight. H200, bf16, 100352 x 96 -> 384 with the
        # LayerNorm prologue and erf GELU (kernel us, .scratch/cnxmlp.py): 128x256x64 at 8 warps 143.3,
        # 128x128x32 at 8 115.0, 256x128x32 at 8 103.4, 64x128x32 at 4 (4 stages) 93.2, 128x64x32 at 4
        # 89.5 (cuBLAS's GEMM alone 48.7; torch.compile's GEMM, LayerNorm and GELU 113 in all)
        narrow_tiles = -(-problem["M"] // 128) * -(-problem["N"] // 64)
        shallow = problem["K"] <= 128 and narrow_tiles >= 4 * SM_COUNT_HINT
        if shallow and not whole_rows and not decode and not exact_n:
            bm, bn, bk, warps, stages = 128, 64, 32, 4, 4
        params = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8, "PROGRAMS": ONE_TILE_EACH}
        return KernelConfig(params, warps, stages)
    if kind == "reduction" and problem.get("column"):
        # the kept index is contiguous (a norm weight's gradient summed over tokens, the heads a GQA
        # backward sums): loads coalesce along R, so tiles are wide there. Exhaustive sweeps on the
        # H200 (bf16; benchmarks/NOTES.md): a short C (4 repeated heads, 16 partials) is best walked
        # one row at a time over 512 columns; 256-row chunks of a norm gradient as 64 x 32 tiles
        # A reduction over the middle dim of [64, 512, 1024] bf16 (KernelBench's sum/argmax over dim 1,
        # profiler kernel times, 60 configs): 64 x 32 at 4 warps 18.7 us (sum) and 25.1 (argmax), at 8
        # warps 23.2 and 34.6; the best 17.9 and 25.1 (torch.compile 17.6 and 40.5)
        short = problem["C"] < 64
        bc = 1 if short else 32
        br = _pow2_at_least(problem["R"] // SM_COUNT_HINT, 64, 512 if short else 64)
        return KernelConfig({"BLOCK_R": br, "BLOCK_C": bc}, 8 if short and br < 512 else 4, 1)
    if kind == "scan":
        # Inductor's shapes for a row scan: a row up to 4096 long is one tile (BLOCK_C fixed by the
        # lowering), several rows a program when they are short and many; a longer row is walked by
        # one program in chunks of 4096
        exact = problem.get("exact", {})
        bc = exact.get("BLOCK_C", 4096)
        br = exact.get("BLOCK_R", _pow2_at_least(problem["R"] // (4 * SM_COUNT_HINT), 1, max(1, 2048 // bc)))
        return KernelConfig({"BLOCK_R": br, "BLOCK_C": bc}, 8 if br * bc >= 2048 else 4, 1)
    if kind == "reduction" and problem["C"] >= 4096 and problem["R"] > 1:
        # rows of 4096 or more (a full reduction's partials): one row a program, 4096 wide. H200 sweep
        # by kernel time (25 configs, bf16 4096 x 8192 read as 8192 rows of 4096): mse 32.8 us against
        # 37.4 at 4 x 1024 (torch.compile 35.3), frobenius 54.8 against 55.0 (the best of both)
        return KernelConfig({"BLOCK_R": 1, "BLOCK_C": 4096}, 8, 1)
    if kind == "reduction":
        bc = _pow2_at_least(problem["C"], 16, 1024)
        br = _pow2_at_least(problem["R"], 1, max(1, 4096 // bc))
        # one row (a full reduction's combine of its partials) is one program: 16 warps keep more loads
        # in flight. H200, 8192 partials: 1.7 us at 16 warps, 3.5 at 8, 3.7 at 4 (torch.compile 1.1)
        warps = 16 if problem["R"] == 1 and problem["C"] >= 4096 else 4 if bc <= 256 else 8
        return KernelConfig({"BLOCK_R": br, "BLOCK_C": bc}, warps, 1)
    if kind == "pointwise" and problem.get("tiled"):  # a transposing copy: 64 x 64 tiles (Inductor's size)
        bx = _pow2_at_least(problem["X"], 16, 64)
        by = _pow2_at_least(problem["Y"], 16, 64)
        return KernelConfig({"BLOCK_X": bx, "BLOCK_Y": by}, 4, 1)
    if kind == "attention":  # head dims are whole in one tile: BLOCK_D >= D, BLOCK_DV >= DV
        bd, bdv = _pow2_at_least(problem["D"], 16, 1 << 16), _pow2_at_least(problem["DV"], 16, 1 << 16)
        # H200 sweep (benchmarks/NOTES.md): 128x128 tiles, 8 warps for head dim 128; 64x64, 4 warps for 64
        wide = max(bd, bdv) >= 128
        bm = _pow2_at_least(problem["M"], 16, 128 if wide else 64)
        # few (batch, head)s over a long key loop (BigBird's first query block: 12 programs walking 4096
        # keys on 132 SMs, 48 us on the H100): smaller query tiles, more programs reading the same keys
        while (
            bm > 16
            and problem["N"] >= LONG_KEY_LOOP
            and problem.get("B", 1) * -(-problem["M"] // bm) < FEW_PROGRAMS
        ):
            bm //= 2  # (16 rows: tl.dot's least M)
        bn = _pow2_at_least(problem["N"], 16, 128 if max(bd, bdv) == 128 else 64 if not wide else 32)
        stages, elem = 3, problem.get("elem_bytes", 2)

        def shared_bytes() -> int:
            params = {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_DV": bdv}
            return operand_tile_bytes(kind, params, stages, elem)

        # f32 operands (exact fp32 attention) double every tile: 128x128 at head dim 128 needs
        # 295 KB at 3 stages, over the H200's 227 KB (a first launch failed with out of resources)
        while shared_bytes() > SHARED_MEMORY_BUDGET and stages > 2:
            stages -= 1
        while shared_bytes() > SHARED_MEMORY_BUDGET and bn > 16:
            bn //= 2
        warps = 8 if bm * max(bd, bdv) >= 128 * 128 else 4
        return KernelConfig({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_D": bd, "BLOCK_DV": bdv}, warps, stages)
    if kind == "row" and problem.get("chunked"):  # one row a program, walked in chunks (several passes)
        # a row of a symbolic length (keys of a growing cache) may be short: chunks of its hinted length
        bc = _pow2_at_least(problem["C"], 16, CHUNKED_ROW_BLOCK)
        return KernelConfig({"BLOCK_R": 1, "BLOCK_C": bc}, 8 if bc >= CHUNKED_ROW_BLOCK else 4, 1)
    if kind == "row":  # a whole row per tile: BLOCK_C >= C is required, not a choice
        # a short row is not padded to 16 lanes: Mixtral's experts' outputs summed over each token's
        # two (a reduce over a middle dim of 2, [2048, 2, 2048]) ran 128 x 16 tiles, 14 of 16 lanes
        # masked: 333 us a layer on the H100, torch.compile's fused kernel ~21
        # and a short row's tile gives each thread 16 elements: its rows' 16-byte vectors and the whole
        # row, summed in registers. That sum (the rows strided, gathered through the experts'
        # permutation; the kernel alone, H100, sixty-fourth session) took 42.7 us at 128 x 2 and 4 warps
        # (2 a thread), 56.0 at 1024 x 2 and 8 warps and 58.1 at 512 x 2 and 4 (8 a thread: the row
        # split across threads), 18.0 at 1024 x 2 and 4 warps (16); 30.5 / 13.4 with the token's index
        # loads once a tile (emit._narrow_divisions). Fewer rows keep a program per SM: the router's
        # softmax over 8 experts (2048 rows) at 1024 rows a tile, two programs, took 10 us a layer
        bc = _pow2_at_least(problem["C"], 1, 1 << 30)
        if bc < SHORT_ROW:
            br = _pow2_at_least(problem["R"], 1, SHORT_ROW_TILE)
            while br > 1 and -(-problem["R"] // br) < SM_COUNT_HINT:
                br //= 2
            return KernelConfig({"BLOCK_R": br, "BLOCK_C": bc}, max(1, min(4, br * bc // 512)), 1)
        br = _pow2_at_least(problem["R"], 1, max(1, 2048 // bc))
        warps = 4 if bc * br <= 1024 else 8 if bc <= 8192 else 16
        return KernelConfig({"BLOCK_R": br, "BLOCK_C": bc}, warps, 1)
    if kind == "pointwise" and problem.get("window"):
        # a pool's taps, each a strided load: 4 elements a thread, not 8 (H200, do_bench medians,
        # µs, default 1024 x 4 warps -> 256 x 2: max_pool2d 2x2 over 16x64x256² bf16 73.2 -> 51.2
        # (torch.compile 52.4), a dilated 1-d max pool over 16x64x8192 fp32 33.0 -> 19.5 and bf16
        # 46.5 -> 19.1, a dilated 2-d one 17.3 -> 15.8 fp32 and 14.2 -> 11.5 bf16; benchmarks/NOTES.md)
        return KernelConfig({"BLOCK": _pow2_at_least(problem["N"], 16, 256)}, 2, 1)
    return KernelConfig({"BLOCK": _pow2_at_least(problem["N"], 16, 1024)}, 4, 1)
