"""A GEMM kernel with its fused epilogue as a CUTLASS 3.x Hopper GEMM (SM90, TMA, WGMMA, persistent).

`emit_cutlass(kernel, config)` restates a `tile` GEMM kernel (read by
`gemm.match_gemm`) as one translation unit:

- the main loop from CUTLASS's SM90 collective builder: TMA loads into a
  shared-memory pipeline, WGMMA, the warp-specialized cooperative schedule
  (two consumer warp groups split a 128-row tile), a persistent grid;
- the epilogue as an epilogue visitor tree (EVT): one compute node whose
  functor is the kernel's epilogue (its maps, as C++ over the accumulator and
  the leaves), over the accumulator (`Sm90AccFetch`) and one leaf node per
  tensor the epilogue loads: `Sm90RowBroadcast` for a value per column (a
  bias), `Sm90ColBroadcast` per row, `Sm90AuxLoad` (TMA) per element (a
  residual). The node casts to the output's type and TMA stores it.
- `extern "C" int launch_<kernel>(void* stream, ...)` taking the Triton
  kernel's arguments (per tensor: its pointer, then one int64 stride per
  dim), so the runtime launches it like any kernel. It returns 0, or a code
  where CUTLASS cannot run the launch (`LAUNCH_ERRORS`): a stride or address
  TMA cannot take is refused before a descriptor is built (the descriptor
  checks are assertions, compiled out with -DNDEBUG).

CUTLASS decides the in-tile schedule; of the kernel's config only the tile's
N extent is kept (64, 128 or 256; M is 128, K 64). Operands are 16-bit floats
(f32 operands stay on Triton: their precision rules are TF32's and 3xTF32's);
K and N must be multiples of 8 (16-byte TMA rows). The headers come from the
pinned `nvidia-cutlass` wheel (`cutlass_include`); building one kernel takes
nvcc about two minutes on two cores (template instantiation), 20-40 s on a
16-core host.
"""

# ruff: noqa: E501  (the emitted C++ lines are kept whole, as they read in the .cu)
from __future__ import annotations

import importlib.util
import json
import os
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path

from xdsl.dialects.builtin import BFloat16Type, Float16Type, Float32Type

from ...ir import tile
from .gemm import GemmProblem, Leaf, Operand, match_gemm
from .prelude import PRELUDE
from .scalar import CudaEmitError
from .writer import c_identifier

CUTLASS_VERSION = "4.2.0.0"  # the nvidia-cutlass wheel whose headers the emitted code is written against
# nvcc flags a CUTLASS unit needs: NDEBUG, because a device assert in the main loop makes ptxas serialize
# the WGMMA pipeline (C7510); one gencode, because -arch=sm_90a also compiles an empty compute_90 kernel
CUTLASS_FLAGS = ("-std=c++17", "-DNDEBUG", "--expt-relaxed-constexpr")
LAUNCH_ERRORS = {
    1: "CUTLASS cannot implement the problem (can_implement)",
    2: "the workspace could not be allocated",
    3: "CUTLASS could not initialize the GEMM",
    4: "CUTLASS could not run the GEMM",
    7: "a stride or address TMA cannot take (16-byte rows, a unit inner stride)",
}
SCHEDULE_ENV = "TILEFUSE_CUTLASS"  # JSON overriding `Schedule` fields, for experiments (a sweep)
_ELEMENTS = {BFloat16Type: "cutlass::bfloat16_t", Float16Type: "cutlass::half_t", Float32Type: "float"}


@dataclass(frozen=True)
class Schedule:
    """How CUTLASS runs one GEMM: its tile, its thread-block cluster, its kernel schedule and the
    persistent scheduler's rasterization. `tile_n` comes from the kernel's config (`BLOCK_N`)."""

    tile_m: int = 128  # 128 or 256 (cooperative: the two consumer warp groups split it)
    tile_n: int = 128  # 64, 128 or 256
    cluster_m: int = 1  # thread blocks of a cluster along M (TMA multicasts B's tile to them)
    cluster_n: int = 1
    kernel: str = "cooperative"  # or "pingpong": each consumer warp group its own tile, in turn
    swizzle: int = 1  # tiles a persistent block walks before moving on along the raster (1, 2, 4, 8)
    raster: str = "Heuristic"  # RasterOrderOptions: Heuristic, AlongM or AlongN
    stages: int = 0  # main-loop pipeline stages; 0: as many as shared memory holds beside the epilogue's
    epilogue_tile: str = "auto"  # the epilogue's subtile ("64x32"), or CUTLASS's choice
    scheduler: str = "persistent"  # or "streamk": the last wave's tiles split along K (deterministic fixup)

    def describe(self) -> str:
        stages = f", {self.stages} stages" if self.stages else ""
        epilogue = f", epilogue tile {self.epilogue_tile}" if self.epilogue_tile != "auto" else ""
        return (
            f"tile {self.tile_m}x{self.tile_n}x64, cluster {self.cluster_m}x{self.cluster_n}, TMA "
            f"warp-specialized {self.kernel}{stages}{epilogue}, {self.scheduler} (swizzle {self.swizzle}, "
            f"raster {self.raster})"
        )

    def epilogue_tile_type(self) -> str:
        if self.epilogue_tile == "auto":
            return "cutlass::epilogue::collective::EpilogueTileAuto"
        m, n = self.epilogue_tile.split("x")
        return f"Shape<_{m}, _{n}>"


SM90_SMEM_BYTES = 232448  # the dynamic shared memory one block may take on the H100/H200 (227 KB)
EPILOGUE_SMEM_BYTES = 16 * 1024  # at least what the epilogue's staging of its subtiles takes


def schedule_for(config: dict[str, int], m: int, n: int) -> Schedule:
    """The schedule of an `m` x `n` GEMM with `config`, then `$TILEFUSE_CUTLASS` (JSON of `Schedule`
    fields) over it. Measured on the H200 (bf16, benchmarks/RESULTS.md, fortieth session): a
    128 x 256 tile in clusters of two along M was the fastest of seven schedules, or within 1.6% of it,
    on 4096^3, 8192 x 4096 x 4096 (plain, + bias + GELU, + bias + residual) and 1024 x 8192 x 8192;
    the config's own 128-wide tile was 1-6% slower. A narrow N keeps the config's tile; a single row of
    tiles has no partner to share B's tile with."""
    tile_n = 256 if n >= 256 else min(max(config.get("BLOCK_N", 128), 64), 256)
    schedule = Schedule(tile_n=tile_n, cluster_m=2 if m > 128 else 1)
    override = json.loads(os.environ.get(SCHEDULE_ENV) or "{}")
    unknown = set(override) - {f.name for f in fields(Schedule)}
    if unknown:
        raise CudaEmitError(f"{SCHEDULE_ENV}: no schedule field {sorted(unknown)}")
    schedule = replace(schedule, **override)
    if schedule.tile_m not in (64, 128, 256) or schedule.tile_n not in (64, 128, 256):
        raise CudaEmitError(f"tile {schedule.tile_m}x{schedule.tile_n}: CUTLASS's SM90 tiles here are 64-256")
    if schedule.kernel not in ("cooperative", "pingpong"):
        raise CudaEmitError(f"kernel schedule {schedule.kernel!r}: cooperative or pingpong")
    if schedule.kernel == "cooperative" and schedule.tile_m < 128:
        raise CudaEmitError("a cooperative schedule splits a tile's rows over two warp groups: tile_m >= 128")
    if schedule.cluster_m * schedule.cluster_n > 2 or min(schedule.cluster_m, schedule.cluster_n) < 1:
        raise CudaEmitError(f"cluster {schedule.cluster_m}x{schedule.cluster_n}: 1x1, 2x1 or 1x2")
    if schedule.raster not in ("Heuristic", "AlongM", "AlongN") or schedule.swizzle not in (1, 2, 4, 8):
        raise CudaEmitError(f"raster {schedule.raster!r}, swizzle {schedule.swizzle}")
    if schedule.stages not in (0, 2, 3, 4, 5, 6, 7, 8):
        raise CudaEmitError(f"{schedule.stages} stages: 0 (as many as fit) or 2-8")
    stage_bytes = (schedule.tile_m + schedule.tile_n) * 64 * 2  # an A and a B tile of 16-bit elements
    if schedule.stages * stage_bytes + EPILOGUE_SMEM_BYTES > SM90_SMEM_BYTES:
        # the H200 measured it: 5 stages of 128 x 256 (240 KB) failed at launch (cudaError 3)
        raise CudaEmitError(
            f"{schedule.stages} stages of a {schedule.tile_m}x{schedule.tile_n}x64 tile need "
            f"{schedule.stages * stage_bytes // 1024} KB of shared memory and the epilogue's; an SM90 "
            f"block has {SM90_SMEM_BYTES // 1024} KB"
        )
    if schedule.scheduler not in ("persistent", "streamk"):
        raise CudaEmitError(f"scheduler {schedule.scheduler!r}: persistent or streamk")
    if schedule.scheduler == "streamk" and schedule.kernel != "cooperative":
        raise CudaEmitError("CUTLASS's ping-pong kernel has no stream-K scheduler")
    if schedule.epilogue_tile != "auto":
        sub = re.fullmatch(r"(\d+)x(\d+)", schedule.epilogue_tile)
        if not sub or int(sub[1]) not in (64, 128) or int(sub[2]) not in (16, 32, 64):
            raise CudaEmitError(f"epilogue tile {schedule.epilogue_tile!r}: 'auto' or MxN (M 64/128, N 16-64)")
        if schedule.tile_m % int(sub[1]) or schedule.tile_n % int(sub[2]):
            raise CudaEmitError(f"epilogue tile {schedule.epilogue_tile} does not divide the tile")
    return schedule


def cutlass_include() -> Path | None:
    """The CUTLASS headers of the installed `nvidia-cutlass` wheel (not imported: only its files), or None."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        return None
    include = Path(next(iter(spec.submodule_search_locations))) / "source" / "include"
    return include if (include / "cutlass" / "cutlass.h").exists() else None


def is_cutlass_source(source: str) -> bool:
    return '#include "cutlass/cutlass.h"' in source


def _element(value: Operand) -> str:
    element = _ELEMENTS.get(type(value.element))
    if element is None:
        raise CudaEmitError(f"a {value.element} tensor: CUTLASS epilogues here take f32, f16 and bf16")
    return element


def _check(problem: GemmProblem) -> None:
    if not isinstance(problem.a.element, BFloat16Type | Float16Type):
        raise CudaEmitError(f"{problem.a.element} operands: the CUDA backend's CUTLASS GEMMs take f16 and bf16")
    if problem.k % 8 or problem.n % 8:
        raise CudaEmitError(f"K={problem.k}, N={problem.n}: TMA needs 16-byte rows (multiples of 8)")
    if problem.out.dims != ("M", "N"):
        raise CudaEmitError("the output is not [M, N]")
    for leaf in problem.leaves:
        if leaf.kind == "full" and leaf.dims != ("M", "N"):
            raise CudaEmitError("a per-element epilogue operand laid out [N, M]")


def _leaf_node(leaf: Leaf, i: int) -> list[str]:
    element = _element(leaf)
    align = f"128 / cutlass::sizeof_bits<{element}>::value"
    if leaf.kind == "row":  # one value per output column, read by every row of the tile
        return [f"using Leaf{i} = fus::Sm90RowBroadcast<0, TileShape, {element}, float, Stride<_0, _1, _0>, {align}>;"]
    if leaf.kind == "column":
        return [f"using Leaf{i} = fus::Sm90ColBroadcast<0, TileShape, {element}, float, Stride<_1, _0, _0>, {align}>;"]
    return [
        f"using Leaf{i}Desc = cutlass::epilogue::collective::detail::AuxLoadDescriptor<EpiDesc, "
        f"cutlass::layout::RowMajor, {element}>;",
        f"using Leaf{i} = fus::Sm90AuxLoad<Leaf{i}Desc::Stages, typename EpiDesc::EpilogueTile, {element}, "
        f"typename Leaf{i}Desc::Stride, typename Leaf{i}Desc::SmemLayoutAtom, typename Leaf{i}Desc::CopyOpS2R, "
        f"{align}>;",
    ]


def _leaf_arguments(leaf: Leaf, pointer: str, ld: str | None) -> str:
    """A leaf node's arguments: its pointer, the value where it is null, and its stride (a per-element
    leaf's leading dimension `ld`; a broadcast's is in its type)."""
    element = _element(leaf)
    stride = "{}" if ld is None else f"cute::make_stride({ld}, _1{{}}, int64_t(0))"
    return f"{{static_cast<{element} const*>({pointer}), {element}(0), {stride}}}"


def emit_cutlass(kernel: tile.KernelOp, config: dict[str, int]) -> str:
    """The CUTLASS translation unit of GEMM kernel `kernel` (module docstring), or CudaEmitError."""
    problem = match_gemm(kernel)
    _check(problem)
    name = c_identifier(kernel.sym_name.data)
    schedule = schedule_for(config, problem.m, problem.n)
    kernel_schedule = "Cooperative" if schedule.kernel == "cooperative" else "Pingpong"
    args = list(kernel.body.block.args)
    params, pointers, strides = [], {}, {}
    for i, arg in enumerate(args):
        rank = len(arg.type.get_shape())
        pointer = f"t{i}"
        const = "" if arg is problem.out.arg else "const "
        params.append(", ".join([f"{const}void* {pointer}", *(f"int64_t {pointer}_s{d}" for d in range(rank))]))
        pointers[arg], strides[arg] = pointer, [f"{pointer}_s{d}" for d in range(rank)]
    a, b, out = problem.a, problem.b, problem.out
    element_a, element_out = _element(a), _element(out)
    a_major = "RowMajor" if problem.a_row_major else "ColumnMajor"
    b_major = "ColumnMajor" if problem.b_column_major else "RowMajor"
    checks: list[str] = []

    def nested(operand: Operand, group: tuple[int, ...]) -> str:
        """The stride of the innermost of the tensor dims `group` (one GEMM dim), checked at launch to
        nest with the others: a collapsed [batch, tokens] has each stride the next one's times its size."""
        st = strides[operand.arg]
        checks.extend(f"{st[i]} != {st[j]} * {operand.shape[j]}" for i, j in zip(group, group[1:]))
        return st[group[-1]]

    def matrix(operand: Operand) -> tuple[str, str]:
        """The leading dimension's stride and the one that must be 1."""
        outer, inner = operand.axes
        if len(inner) != 1:
            raise CudaEmitError("an operand's contiguous dim spans several tensor dims")
        return nested(operand, outer), nested(operand, inner)

    a_ld, a_unit = matrix(a)
    b_ld, b_unit = matrix(b)
    out_ld, out_unit = matrix(out)
    a_stride = "int64_t(lda), _1{}, int64_t(0)" if problem.a_row_major else "_1{}, int64_t(lda), int64_t(0)"
    b_stride = "int64_t(ldb), _1{}, int64_t(0)" if problem.b_column_major else "_1{}, int64_t(ldb), int64_t(0)"
    leaves = [f"Leaf{i}" for i in range(len(problem.leaves))]
    inputs = ", ".join(["T const& acc", *(f"T const& leaf{i}" for i in range(len(problem.leaves)))])
    array_inputs = ", ".join(
        ["Array<T, N, R> const& acc", *(f"Array<T, N, R> const& leaf{i}" for i in range(len(problem.leaves)))]
    )
    call = ", ".join(["acc[i]", *(f"leaf{i}[i]" for i in range(len(problem.leaves)))])
    checks += [f"{a_unit} != 1", f"{b_unit} != 1", f"{out_unit} != 1", "lda % 8", "ldb % 8", f"{out_ld} % 8"]
    aligned = [pointers[a.arg], pointers[b.arg], pointers[out.arg]]
    leaf_args = []
    for leaf in problem.leaves:
        pointer = pointers[leaf.arg]
        if leaf.kind == "full":
            leaf_ld, leaf_unit = matrix(leaf)
            checks += [f"{leaf_unit} != 1", f"{leaf_ld} % 8"]
            aligned.append(pointer)
            leaf_args.append(_leaf_arguments(leaf, pointer, leaf_ld))
        else:  # a vector along M or N: contiguous (a collapsed M nests down to a unit stride)
            (group,) = leaf.axes
            checks.append(f"{nested(leaf, group)} != 1")
            leaf_args.append(_leaf_arguments(leaf, pointer, None))
    described = ", ".join(f"{pointers[arg]} = %{arg.name_hint or i}: {arg.type}" for i, arg in enumerate(args))
    lines = [
        f'// tilefuse kernel "{kernel.sym_name.data}" (gemm) as a CUTLASS {CUTLASS_VERSION} SM90 GEMM, by '
        "tilefuse.backends.cuda",
        f"// {described}",
        f"// D[{problem.m}, {problem.n}] = epilogue(A @ B, leaves), K = {problem.k}; A {a_major}, B {b_major}; "
        f"{schedule.describe()}",
        PRELUDE,
        '#include "cutlass/cutlass.h"',
        '#include "cute/tensor.hpp"',
        '#include "cutlass/numeric_types.h"',
        '#include "cutlass/gemm/collective/collective_builder.hpp"',
        '#include "cutlass/epilogue/collective/collective_builder.hpp"',
        '#include "cutlass/gemm/kernel/gemm_universal.hpp"',
        '#include "cutlass/gemm/device/gemm_universal_adapter.h"',
        "",
        f"namespace {name}_cutlass {{",
        "using namespace cute;",
        "using cutlass::Array;",
        "namespace fus = cutlass::epilogue::fusion;",
        "",
        "// the kernel's epilogue, element by element (Sm90Compute calls it on fragments: the Array form)",
        "template <class T> struct Epilogue {",
        f"  CUTLASS_DEVICE T operator()({inputs}) const {{",
        *(f"    {line}" for line in problem.body),
        f"    return {problem.result};",
        "  }",
        "};",
        "template <class T, int N, bool R> struct Epilogue<Array<T, N, R>> {",
        f"  CUTLASS_DEVICE Array<T, N, R> operator()({array_inputs}) const {{",
        "    Array<T, N, R> out;",
        "    CUTLASS_PRAGMA_UNROLL",
        f"    for (int i = 0; i < N; ++i) out[i] = Epilogue<T>{{}}({call});",
        "    return out;",
        "  }",
        "};",
        "",
        f"using TileShape = Shape<_{schedule.tile_m}, _{schedule.tile_n}, _64>;",
        f"using ClusterShape = Shape<_{schedule.cluster_m}, _{schedule.cluster_n}, _1>;",
        f"using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized{'Cooperative' if schedule.kernel == 'cooperative' else ''};",
        "using EpiDesc = cutlass::epilogue::collective::detail::EpilogueDescriptor<",
        f"    TileShape, {schedule.epilogue_tile_type()}, void, {element_out}, EpilogueSchedule>;",
        *(line for i, leaf in enumerate(problem.leaves) for line in _leaf_node(leaf, i)),
        f"using Node = fus::Sm90Compute<Epilogue, {element_out}, float, cutlass::FloatRoundStyle::round_to_nearest>;",
        f"using EVT = fus::Sm90EVT<{', '.join(['Node', 'fus::Sm90AccFetch', *leaves])}>;",
        "using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<",
        "    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,",
        f"    {schedule.epilogue_tile_type()}, float, float,",
        f"    void, cutlass::layout::RowMajor, 128 / cutlass::sizeof_bits<{element_out}>::value,",
        f"    {element_out}, cutlass::layout::RowMajor, 128 / cutlass::sizeof_bits<{element_out}>::value,",
        "    EpilogueSchedule, EVT>::CollectiveOp;",
        "using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<",
        "    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp,",
        f"    {element_a}, cutlass::layout::{a_major}, 128 / cutlass::sizeof_bits<{element_a}>::value,",
        f"    {element_a}, cutlass::layout::{b_major}, 128 / cutlass::sizeof_bits<{element_a}>::value,",
        "    float, TileShape, ClusterShape,",
        *(
            [f"    cutlass::gemm::collective::StageCount<{schedule.stages}>,"]
            if schedule.stages
            else [
                "    cutlass::gemm::collective::StageCountAutoCarveout<",
                "        static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,",
            ]
        ),
        f"    cutlass::gemm::KernelTmaWarpSpecialized{kernel_schedule}>::CollectiveOp;",
        "using GemmKernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, CollectiveMainloop,",
        f"    CollectiveEpilogue, cutlass::gemm::{'StreamK' if schedule.scheduler == 'streamk' else 'Persistent'}Scheduler>;",
        "using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;",
        "",
        "inline int sm_count() {  // asked once per device, not per launch",
        "  static int device = -1, count = 0;",
        "  int current = 0;",
        "  if (cudaGetDevice(&current) != cudaSuccess) return 0;",
        "  if (current != device && cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, current) == cudaSuccess)",
        "    device = current;",
        "  return count;",
        "}",
        f"}}  // namespace {name}_cutlass",
        "",
        f'extern "C" int launch_{name}(void* stream, {", ".join(params)}) {{',
        f"  using namespace {name}_cutlass;",
        f"  const int64_t lda = {a_ld}, ldb = {b_ld};",
        "  // TMA takes 16-byte aligned rows with a unit inner stride; its checks are assertions (off with NDEBUG)",
        f"  if ({' || '.join(checks)}) return 7;",
        f"  if (({' | '.join(f'reinterpret_cast<uintptr_t>({p})' for p in aligned)}) & 15) return 7;",
        "  typename Gemm::Arguments args{};",
        "  args.mode = cutlass::gemm::GemmUniversalMode::kGemm;",
        f"  args.problem_shape = {{{problem.m}, {problem.n}, {problem.k}, 1}};",
        f"  args.mainloop = {{static_cast<{element_a} const*>({pointers[a.arg]}), cute::make_stride({a_stride}),",
        f"                   static_cast<{element_a} const*>({pointers[b.arg]}), cute::make_stride({b_stride})}};",
        "  // the tree's arguments: its children in order (the accumulator, then the leaves), then the node",
        f"  typename EVT::Arguments tree{{{', '.join(['{}', *leaf_args, '{}'])}}};",
        f"  auto out_stride = cute::make_stride(int64_t({out_ld}), _1{{}}, int64_t(0));",
        f"  args.epilogue = {{tree, nullptr, out_stride, static_cast<{element_out}*>({pointers[out.arg]}), out_stride}};",
        "  cudaGetDevice(&args.hw_info.device_id);",
        "  args.hw_info.sm_count = sm_count();",
        f"  args.scheduler.max_swizzle_size = {schedule.swizzle};",
        f"  args.scheduler.raster_order = cutlass::gemm::kernel::detail::RasterOrderOptions::{schedule.raster};",
        "  Gemm gemm;",
        "  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return 1;",
        "  size_t workspace_size = Gemm::get_workspace_size(args);  // 0 unless stream-K (its partial tiles)",
        "  void* workspace = nullptr;",
        "  cudaStream_t s = static_cast<cudaStream_t>(stream);",
        "  if (workspace_size && cudaMallocAsync(&workspace, workspace_size, s) != cudaSuccess) return 2;",
        "  int status = 0;",
        "  if (gemm.initialize(args, workspace, s) != cutlass::Status::kSuccess) status = 3;",
        "  else if (gemm.run(s) != cutlass::Status::kSuccess) status = 4;",
        "  if (workspace) cudaFreeAsync(workspace, s);",
        "  return status;",
        "}",
        "",
    ]
    return "\n".join(lines)
