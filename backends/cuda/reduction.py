"""`tile.reduce`: a thread's own slots, then the lanes of a warp, then the warps of the block.

Along the reduced axis a thread owns `slots` elements, `threads` threads
share the axis, `stride` thread ids apart (`layout.py`). Each thread first
combines its own elements; the lanes of a warp along the axis then combine
by an xor butterfly of `__shfl_xor_sync` (after which every one of them
holds the warp's result); where the axis spans several warps, each thread
writes its warp's partial to shared memory and, after a barrier, combines
the partials of its group's warps. Every thread along the axis ends with the
whole result, so the reduced tile is where its consumers (a broadcast back
over the row, a store by the first thread) need it.

Sums of 16-bit floats accumulate in float and round once at the end (as
the Triton backend and torch do); `max`/`min` propagate NaN (`nan_max`),
`maxnum`/`minnum` drop it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xdsl.dialects.builtin import Float16Type, i1
from xdsl.ir import Attribute

from ...ir import tile
from .layout import WARP_SIZE, Axis
from .scalar import CudaEmitError, is_16bit_float, is_float, register_type

if TYPE_CHECKING:
    from .writer import KernelWriter, Tile

_ACCUMULATOR_BYTES = {"float": 4, "double": 8, "int": 4, "int64_t": 8}


def _accumulator(kind: str, elem: Attribute) -> tuple[str, str]:
    """The accumulator type of a reduction and its combine step, a format string of two operands."""
    if elem == i1:
        raise CudaEmitError("tile.reduce over i1 tiles: no CUDA lowering")
    if is_float(elem):
        acc = "double" if register_type(elem) == "double" else "float"
        f = "" if acc == "double" else "f"
        combine = {"sum": "{} + {}", "prod": "{} * {}", "max": "nan_max({}, {})", "min": "nan_min({}, {})",
                   "maxnum": f"fmax{f}({{}}, {{}})", "minnum": f"fmin{f}({{}}, {{}})"}  # fmt: skip
        return acc, combine[kind]
    acc = "int64_t" if register_type(elem) in ("int64_t", "uint64_t") else "int"
    combine = {"sum": "{} + {}", "prod": "{} * {}", "max": "max({}, {})", "min": "min({}, {})",
               "maxnum": "max({}, {})",
               "minnum": "min({}, {})"}  # fmt: skip
    return acc, combine[kind]


def _result(elem: Attribute) -> str:
    """How the accumulator becomes a result element: 16-bit floats round, narrow integers wrap."""
    if is_16bit_float(elem):
        return "round_to_f16({})" if isinstance(elem, Float16Type) else "round_to_bf16({})"
    if register_type(elem) in ("int8_t", "int16_t", "uint8_t", "uint16_t"):
        return f"static_cast<{register_type(elem)}>({{}})"
    return "{}"


def write_reduce(w: KernelWriter, op: tile.ReduceOp) -> None:
    dim = op.input.type.dims[op.axis.value.data]
    if dim == "1":  # reducing one element leaves it
        w.values[op.result] = w.values[op.input]
        return
    d = w.layout.axis_of(dim)
    axis = w.layout.axes[d]
    elem, kind = op.result.type.element_type, op.kind.data
    acc_type, combine = _accumulator(kind, elem)
    result = _result(elem)
    w.materialized(op.input)
    out = w.new_tile(op.result, f"tile.reduce {kind} over {dim}")
    lanes = [axis.stride << k for k in range(axis.threads.bit_length() - 1) if axis.stride << k < WARP_SIZE]
    steps = [f"{axis.slots} slots per thread"] if axis.slots > 1 else []
    steps += [f"{axis.lane_span // axis.stride} lanes (shuffles)"] if lanes else []
    steps += [f"{axis.warps} warps (shared memory)"] if axis.warps > 1 else []
    w.write(f"// combine {' then '.join(steps) or 'nothing: one element per row'}")
    with w.slot_loops(out.axes, scoped=True):
        w.write(f"{acc_type} acc = {w.at(op.input, {d: '0'})};")
        if axis.slots > 1:
            with w.slot_loop(d, start=1):
                w.write(f"acc = {combine.format('acc', w.at(op.input, {d: f'i{d}'}))};")
        if lanes:
            w.write("#pragma unroll")
            w.write(f"for (int lanes = {max(lanes)}; lanes >= {min(lanes)}; lanes /= 2) "
                    f"acc = {combine.format('acc', '__shfl_xor_sync(ALL_LANES, acc, lanes)')};")  # fmt: skip
        w.write(f"{out.name}[{w.index(out.axes)}] = {result.format('acc') if axis.warps == 1 else 'acc'};")
    if axis.warps > 1:
        _combine_warps(w, out, axis, acc_type, combine, result)


def _combine_warps(w: KernelWriter, out: Tile, axis: Axis, acc_type: str, combine: str, result: str) -> None:
    """Combine the warps' partials through shared memory (each lane holds its warp's partial)."""
    slots = w.slots(out.axes)
    partials = w.fresh(f"{out.name}_partials")
    w.shared_bytes += slots * w.num_threads * _ACCUMULATOR_BYTES[acc_type]
    w.write(f"__shared__ {acc_type} {partials}[{slots}][{w.num_threads}];")
    with w.slot_loops(out.axes):
        w.write(f"{partials}[{w.index(out.axes)}][threadIdx.x] = {out.name}[{w.index(out.axes)}];")
    w.write("__syncthreads();")
    with w.block(""):
        mask = f"({axis.warps - 1} * {axis.warp_stride})"
        w.write(f"const int first = threadIdx.x & ~{mask};  // warp 0 of this thread's group")
        with w.slot_loops(out.axes, scoped=True):
            index = w.index(out.axes)
            w.write(f"{acc_type} acc = {partials}[{index}][first];")
            w.write("#pragma unroll")
            read = f"{partials}[{index}][first + warp * {axis.warp_stride}]"
            w.write(f"for (int warp = 1; warp < {axis.warps}; ++warp) acc = {combine.format('acc', read)};")
            w.write(f"{out.name}[{index}] = {result.format('acc')};")
    if w.loop_depth:
        w.write("__syncthreads();  // before the next iteration writes the partials again")
