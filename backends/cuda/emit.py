"""CUDA C++ from `tile` kernels: one readable translation unit per kernel, with a host launcher.

For the kinds that need no tensor cores ("pointwise", "reduction", "row"),
a kernel is written as plain CUDA C++: one CUDA block per Triton program
(`blockIdx` is `tile.program_id`), `num_warps * 32` threads, every tile held
in small register arrays over the thread layout of `layout.py` (the body
is written by `writer.py`). The tile parameters are `constexpr int`s bound
from the config, so every slot loop has a literal trip count and unrolls.

The kernel takes the Triton kernel's arguments in the same order (per
tensor: its pointer, then one `int64_t` stride per dim), so a runtime
passes both backends the same values. Beside it, `extern "C" int
launch_<kernel>(void* stream, <the kernel's arguments>)` launches it over
its literal grid on `stream` and returns `cudaGetLastError()`.

A GEMM kernel is restated as a CUTLASS 3.x Hopper GEMM with its epilogue as
an epilogue visitor tree (`cutlass.py`); attention kernels stay on Triton.
An op the writer does not know raises `CudaEmitError` naming it.
"""

from __future__ import annotations

import re

from ...ir import tile
from ..triton.launcher import LaunchError, evaluate_grid
from .cutlass import emit_cutlass
from .prelude import PRELUDE
from .scalar import CudaEmitError, storage_type
from .writer import KernelWriter

EMITTER_VERSION = 1
SUPPORTED_KINDS = ("pointwise", "reduction", "row", "gemm")
SHARED_MEMORY_LIMIT = 48 * 1024  # static __shared__ bytes a kernel may declare without opting in


def _mentions(lines: list[str], name: str) -> bool:
    """Whether the code of `lines` (not their comments) names `name`."""
    pattern = re.compile(rf"\b{re.escape(name)}\b")
    return any(pattern.search(line.split("//")[0]) for line in lines)


def _launch_grid(kernel: tile.KernelOp, config: dict[str, int]) -> tuple[int, int, int]:
    try:
        grid = [evaluate_grid(g, config) for g in kernel.grid_exprs]
    except LaunchError as e:
        raise CudaEmitError(str(e)) from None
    grid += [1] * (3 - len(grid))
    if grid[0] >= 2**31 or grid[1] >= 2**16 or grid[2] >= 2**16:
        raise CudaEmitError(f"grid {tuple(grid)} exceeds CUDA's limits")
    return grid[0], grid[1], grid[2]


def _check(kernel: tile.KernelOp, config: dict[str, int], num_warps: int) -> None:
    kind = kernel.kind.data
    if kind not in SUPPORTED_KINDS:
        article = "an" if kind[0] in "aeiou" else "a"
        raise CudaEmitError(
            f'kernel "{kernel.sym_name.data}" is {article} {kind} kernel: it stays on Triton '
            "(the CUDA backend writes pointwise, reduction, row and GEMM kernels)"
        )
    missing = [p for p in kernel.param_names if p not in config]
    if missing:
        raise CudaEmitError(f"config {config} does not bind {missing}")
    if num_warps not in (1, 2, 4, 8, 16, 32):
        raise CudaEmitError(f"num_warps={num_warps}: a block has 1 to 32 warps, a power of two")


def emit_cuda(kernel: tile.KernelOp, config: dict[str, int], num_warps: int) -> str:
    """CUDA C++ source of `kernel` (module docstring); a GEMM kernel is a CUTLASS GEMM (`cutlass.py`)."""
    if kernel.kind.data == "gemm":
        return emit_cutlass(kernel, config)
    return _emit_plain(kernel, config, num_warps)


def _emit_plain(kernel: tile.KernelOp, config: dict[str, int], num_warps: int) -> str:
    """CUDA C++ source of `kernel` with its tile parameters bound to `config`, run by `num_warps` warps.

    The translation unit holds the device helpers (guarded, so that several
    kernels concatenate into one file), the `__global__` kernel named after
    `kernel` and its host launcher `launch_<name>(void* stream, ...)` taking
    the kernel's arguments (per tensor: pointer, then one stride per dim).
    Raises CudaEmitError for GEMM and attention kernels (they stay on
    Triton), unknown ops or types, and configs the layout cannot place.
    """
    _check(kernel, config, num_warps)
    writer = KernelWriter(kernel, config, num_warps)
    body = writer.body()
    if writer.shared_bytes > SHARED_MEMORY_LIMIT:
        raise CudaEmitError(
            f"the reductions need {writer.shared_bytes} bytes of shared memory (the limit is "
            f"{SHARED_MEMORY_LIMIT}): fewer rows per block or fewer warps"
        )
    grid = _launch_grid(kernel, config)
    params, names = [], []
    for arg, (base, shape) in writer.tensors.items():
        const = "" if arg in writer.stored else "const "
        strides = [f"{base}_s{d}" for d in range(len(shape))]
        params.append(", ".join([f"{const}{storage_type(arg.type.get_element_type())}* {base}",
                                 *(f"int64_t {s}" for s in strides)]))  # fmt: skip
        names += [base, *strides]
    threads = writer.num_threads
    if 0 in grid:
        launch = ["  return 0;  // an empty grid: nothing to compute (CUDA refuses to launch one)"]
    else:
        launch = [
            f"  {writer.function}<<<dim3{grid}, {threads}, 0, static_cast<cudaStream_t>(stream)>>>"
            f"({', '.join(names)});",
            "  return static_cast<int>(cudaGetLastError());",
        ]
    described = ", ".join(f"{base}: {arg.type}" for arg, (base, _) in writer.tensors.items())
    bound = ", ".join(f"{p}={config[p]}" for p in kernel.param_names)
    return "\n".join([
        f'// tilefuse kernel "{kernel.sym_name.data}" ({kernel.kind.data}), by tilefuse.backends.cuda '
        f"v{EMITTER_VERSION}",
        f"// {described}",
        f"// config {bound}; {num_warps} warps; grid {grid}",
        f"// layout: {writer.layout.describe() or 'scalars only'}",
        PRELUDE,
        f"__global__ void __launch_bounds__({threads}) {writer.function}(",
        *(f"    {p}{',' if i < len(params) - 1 else ') {'}" for i, p in enumerate(params)),
        *(f"  constexpr int {p} = {config[p]};" for p in kernel.param_names if _mentions(body, p)),
        *body,
        "}",
        "",
        f'extern "C" int launch_{writer.function}(void* stream, {", ".join(params)}) {{',
        *launch,
        "}",
        "",
    ])  # fmt: skip


def emit_cuda_or_reason(kernel: tile.KernelOp, config: dict[str, int], num_warps: int) -> str:
    """`emit_cuda`'s source, or a one-line comment saying why the kernel is not written as CUDA C++
    (for dumps and `tilefuse opt --emit cuda`, which show every kernel)."""
    try:
        return emit_cuda(kernel, config, num_warps)
    except CudaEmitError as e:
        return f"// {kernel.sym_name.data}: not written as CUDA C++ (it stays on Triton): {e}\n"
