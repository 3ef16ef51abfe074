"""`tile.load` and `tile.store`: masked element accesses, and 128-bit accesses where memory allows.

An element `x[i0, i1]` is `x[i0 * x_s0 + i1 * x_s1]`, its strides being
kernel arguments; it is in bounds when every index is in range of the
tensor's static extent (a constant index in range needs no check). A
masked-off load reads the op's `other` (zero by default); a masked-off
store does not happen. Each element is stored by one thread only: the
threads that hold copies of a tile that spans fewer axes than the space
(a row's statistics) or that are replicas leave it to the first.

Where the layout gives a thread runs of `vec` contiguous elements along the
last axis (16 bytes) and the index along one tensor dim steps by one along
that axis (an arange plus an offset), a run is read or written in one
access when, at run time, that dim's stride is 1, the run is in bounds and
its address is aligned; any other run goes element by element.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from functools import partial
from typing import TYPE_CHECKING

from xdsl.dialects import arith
from xdsl.dialects.builtin import i1
from xdsl.ir import Attribute, SSAValue

from ...ir import tile
from .scalar import (
    is_16bit_float,
    is_float,
    literal,
    load_expr,
    register_type,
    storage_bytes,
    storage_type,
    store_expr,
)

if TYPE_CHECKING:
    from .writer import KernelWriter

Slot = dict[int, str]  # slot expressions for some axes, overriding the loop variables


def _address(
    w: KernelWriter, tensor: SSAValue, indices: Sequence[SSAValue], fixed: Slot | None = None
) -> tuple[str, str | None]:
    """The element `tensor[indices]` at the current slot, and the condition that it is in bounds (or None)."""
    base, shape = w.tensors[tensor]
    offset, checks = [], []
    for d, (index, size) in enumerate(zip(indices, shape)):
        i = w.at(index, fixed)
        constant = index.owner.value.value.data if isinstance(index.owner, arith.ConstantOp) else None
        if constant is None or not 0 <= constant < size:
            checks.append(f"in_range({i}, {size})")
        if constant != 0:
            offset.append(f"{i} * {base}_s{d}")
    return f"{base}[{' + '.join(offset) or '0'}]", " && ".join(checks) or None


def _run_dim(
    w: KernelWriter, tensor: SSAValue, indices: Sequence[SSAValue], axes: Sequence[int]
) -> int | None:
    """The tensor dim accessed in runs (see the module docstring), if any."""
    last = w.last_axis
    vec = w.layout.axes[last].vec if last >= 0 else 1
    if vec == 1 or last not in axes or storage_bytes(tensor.type.get_element_type()) * vec not in (4, 8, 16):
        return None
    spanning = [d for d, i in enumerate(indices) if last in w.axes(i.type)]
    if len(spanning) != 1 or indices[spanning[0]] not in w.contiguous:
        return None
    return spanning[0]


def _runs(
    w: KernelWriter, tensor: SSAValue, indices: Sequence[SSAValue], dim: int, axes: Sequence[int],
    vector_lines: Callable[[str, Slot], list[str]], element_line: Callable[[Slot], str],
) -> None:  # fmt: skip
    """Loops over `axes` taking the last one run by run: `vector_lines(vector type, slot of element j)`
    accesses the run at `run_start` at once where it may, `element_line(slot of element j)` one
    element (in a loop over j) elsewhere."""
    last = w.last_axis
    axis = w.layout.axes[last]
    base, shape = w.tensors[tensor]
    storage = storage_type(tensor.type.get_element_type())
    vector = f"Vector<{storage}, {axis.vec}>"
    several = axis.slots > axis.vec and not w.streaming  # streaming: the run is the current one
    start, element = (
        ({last: "0"}, {last: "j"}) if axis.slots == axis.vec else ({last: f"i{last}"}, {last: f"i{last} + j"})
    )
    w.write(f"// runs of {axis.vec} elements in one access where contiguous and aligned")
    with ExitStack() as scope:
        if w.streaming:
            scope.enter_context(w.block(""))
        else:
            scope.enter_context(w.slot_loops(axes[:-1], scoped=not several))
        if several:
            w.write("#pragma unroll")
            scope.enter_context(
                w.block(f"for (int i{last} = 0; i{last} < {axis.slots}; i{last} += {axis.vec})")
            )
        address, inside = _address(w, tensor, indices, start)
        w.write(f"{'' if tensor in w.stored else 'const '}{storage}* run_start = &{address};")
        end = f"{w.at(indices[dim], start)} + {axis.vec - 1}"
        checks = [f"{base}_s{dim} == 1", *([inside] if inside else []), f"in_range({end}, {shape[dim]})",
                  f"is_aligned<{vector}>(run_start)"]  # fmt: skip
        w.write(f"if ({' && '.join(checks)}) {{")
        for line in vector_lines(vector, element):
            w.write(f"  {line}")
        w.write("} else {")
        w.write("  #pragma unroll")
        w.write(f"  for (int j = 0; j < {axis.vec}; ++j) {element_line(element)}")
        w.write("}")


def write_load(w: KernelWriter, op: tile.LoadOp) -> None:
    elem = op.result.type.element_type
    other = literal(op.other) if op.other is not None else _zero(elem)
    what = f"tile.load {w.tensors[op.tensor][0]}, {other} out of bounds"
    if is_16bit_float(elem):  # kept as stored (half the registers), widened where read
        out = w.new_tile(op.result, what, stored_as=storage_type(elem), widen=load_expr(elem, "{}"))
        read, other = (lambda element: element), store_expr(elem, other)
    else:
        out = w.new_tile(op.result, what)
        read = partial(load_expr, elem)

    def element(fixed: Slot | None = None) -> str:
        address, inside = _address(w, op.tensor, op.indices, fixed)
        masked = f"{inside} ? {read(address)} : {other}" if inside else read(address)
        return f"{w.write_to(out, fixed)} = {masked};"

    def run(vector: str, fixed: Slot) -> list[str]:
        return [
            f"const {vector} run = *reinterpret_cast<const {vector}*>(run_start);",
            "#pragma unroll",
            f"for (int j = 0; j < {w.layout.axes[-1].vec}; ++j) "
            f"{w.write_to(out, fixed)} = {read('run.v[j]')};",
        ]

    dim = _run_dim(w, op.tensor, op.indices, out.axes)
    if dim is not None:
        _runs(w, op.tensor, op.indices, dim, out.axes, run, element)
        return
    with w.slot_loops(out.axes):
        w.write(element())


def write_store(w: KernelWriter, op: tile.StoreOp) -> None:
    axes = tuple(sorted({a for i in op.indices for a in w.axes(i.type)}))
    owner = [f"t{a} == 0" for a, axis in enumerate(w.layout.axes) if a not in axes and axis.threads > 1]
    if w.layout.used_threads < w.num_threads:
        owner.append(f"threadIdx.x < {w.layout.used_threads}")  # the others are replicas
    elem = op.value.type.element_type

    def element(fixed: Slot | None = None) -> str:
        address, inside = _address(w, op.tensor, op.indices, fixed)
        value = store_expr(elem, w.at(op.value, fixed))
        return f"if ({inside}) {address} = {value};" if inside else f"{address} = {value};"

    def run(vector: str, fixed: Slot) -> list[str]:
        return [
            f"{vector} run;",
            "#pragma unroll",
            f"for (int j = 0; j < {w.layout.axes[-1].vec}; ++j) "
            f"run.v[j] = {store_expr(elem, w.at(op.value, fixed))};",
            f"*reinterpret_cast<{vector}*>(run_start) = run;",
        ]

    w.write(
        f"// tile.store into {w.tensors[op.tensor][0]}" + (", by one thread per element" if owner else "")
    )
    dim = _run_dim(w, op.tensor, op.indices, axes)
    with ExitStack() as scope:
        if owner:
            scope.enter_context(w.block(f"if ({' && '.join(owner)})"))
        if dim is not None:
            _runs(w, op.tensor, op.indices, dim, axes, run, element)
            return
        scope.enter_context(w.slot_loops(axes))
        w.write(element())


def _zero(t: Attribute) -> str:
    if t == i1:
        return "false"
    return {"float": "0.0f", "double": "0.0"}.get(register_type(t), "0") if is_float(t) else "0"
