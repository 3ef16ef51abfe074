"""`ein` ops as PyTorch calls resolved once: the library paths' and programs' glue without the IR.

The reference interpreter (`ir/interpreter.py`) walks the IR on every call: it
reads attributes, hashes SSA values into an environment, parses a contraction's
spec, and makes each map constant afresh. That is right for an oracle and too
slow for a hot path: a GEMM group's library path with a GELU epilogue took
~100 µs of host time a call on the CI machine against ~19 µs for the same
PyTorch ops written out, so on a GPU a small GEMM's library path measured
slower than the generated kernel although cuBLAS ran it faster (H200,
2048 x 2048 x 512: 45 µs a call against 13 µs for `torch.matmul`).

A `Plan` resolves each op once into a plain call on integer slots; per call
it only runs those calls. The results are those of `run_op` (the interpreter's
semantics); the planned forms are the library's own (`library_matmul` for a
matmul-shaped contraction in its operands' dtype, the 16-bit shortcut of
`library_map`), which `group_selection` documents.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch
from xdsl.dialects import arith
from xdsl.ir import Operation, SSAValue

from ..ir import einsum as ein
from ..ir.dtypes import shape_of, to_torch_dtype
from ..ir.interpreter import (
    eval_scalar_op,
    gather_rows,
    reads_table_rows,
    reduce_function,
    run_op,
    scalar_function,
    scan_function,
    view_function,
)

Step = Callable[..., torch.Tensor]  # step(device, *operand tensors)

# 16-bit binary ops PyTorch computes in f32 and rounds once: `truncf(op(extf a, extf b))` is `op(a, b)`
ROUNDED_ONCE = {
    "arith.addf": torch.add, "arith.subf": torch.sub, "arith.mulf": torch.mul, "arith.divf": torch.div,
}  # fmt: skip
LIBRARY_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class Plan:
    """The ops `order` (each reading `inputs` or earlier ops' results), resolved into steps;
    `run(tensors)` returns every slot's tensor, `slot(value)` says where a value is."""

    def __init__(
        self, inputs: Sequence[SSAValue], order: Sequence[Operation], contract: Callable | None = None
    ):
        self._slots: dict[SSAValue, int] = {v: i for i, v in enumerate(inputs)}
        self.ops = list(order)
        self.steps: list[tuple[Step, tuple[int, ...]]] = []
        for op in order:
            args = tuple(self._slots[v] for v in op.operands)
            self.steps.append((planned_op(op, contract), args))
            self._slots[op.results[0]] = len(self._slots)

    def slot(self, value: SSAValue) -> int:
        return self._slots[value]

    @property
    def size(self) -> int:
        """How many tensors `run` returns: the inputs', then each op's result."""
        return len(self._slots)

    def run(self, tensors: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        env = list(tensors)
        for step, args in self.steps:
            env.append(step(device, *[env[i] for i in args]))
        return env


def planned_op(op: Operation, contract: Callable | None = None) -> Step:
    """`op` as one call `step(device, *operands)`: a map's body resolved (`planned_map`); a
    contraction by `contract(op)` where given (the library's matmul); anything else by the
    reference interpreter's `run_op`."""
    if isinstance(op, ein.MapOp):
        return planned_map(op)
    if isinstance(op, ein.ContractOp) and contract is not None:
        step = contract(op)
        if step is not None:
            return step
    if isinstance(op, ein.ViewOp):
        return planned_view(op)
    if isinstance(op, ein.ReduceOp | ein.ScanOp):
        resolved = reduce_function(op) if isinstance(op, ein.ReduceOp) else scan_function(op)
        return lambda device, x: resolved(x)
    if isinstance(op, ein.GatherOp) and reads_table_rows(op):  # checked once: ~0.1 ms of xDSL reads a call
        shape = tuple(shape_of(op.result.type))
        return lambda device, table, indices: gather_rows(table, indices, shape)
    operands = list(op.operands)

    def interpreted(device: torch.device, *tensors: torch.Tensor) -> torch.Tensor:
        return run_op(op, dict(zip(operands, tensors)), device)

    return interpreted


def planned_view(op: ein.ViewOp) -> Step:
    """A view resolved once (`view_function`; run op by op it reads the IR every call: ~20 µs of
    host time a view, 21 views a Llama training step)."""
    view = view_function(op)
    return lambda device, x: view(x)


def planned_map(op: ein.MapOp) -> Step:
    """A map as PyTorch ops, one per scalar op as `run_map` runs it, resolved once, except that a
    16-bit op written out as widen, compute in f32, round back (how eager's bf16 arithmetic is
    imported) is one op on the 16-bit tensors, as eager runs it: the same bits, a quarter of the
    launches (a residual add is 1 kernel, not 4). Constants are made once per device (not while a
    CUDA graph is captured: its pool would own them)."""
    block = op.body.block
    shortcut, skipped = _rounded_once(block.ops)
    slots: dict[SSAValue, int] = {v: i for i, v in enumerate(block.args)}
    steps: list[tuple[Callable, tuple[int, ...]]] = []
    result = None
    for inner in block.ops:
        if isinstance(inner, ein.YieldOp):
            result = slots[inner.value]
            break
        if inner in skipped:
            continue
        if inner in shortcut:
            fn, sources = shortcut[inner]
            steps.append((_dropping_device(fn), tuple(slots[v] for v in sources)))
        elif isinstance(inner, arith.ConstantOp):
            steps.append((_constant(inner), ()))
        else:
            steps.append((scalar_function(inner), tuple(slots[v] for v in inner.operands)))
        slots[inner.results[0]] = len(slots)
    if result is None:  # no yield: the interpreter says what is wrong
        return lambda device, *tensors: run_op(op, dict(zip(op.operands, tensors)), device)
    shape = tuple(shape_of(op.result.type))
    dtype = to_torch_dtype(op.result.type.get_element_type())

    def run(device: torch.device, *tensors: torch.Tensor) -> torch.Tensor:
        env = list(tensors)
        for step, args in steps:
            env.append(step(device, *[env[i] for i in args]))
        out = env[result]
        if tuple(out.shape) != shape:
            out = torch.broadcast_to(out, shape)
        return out if out.dtype is dtype else out.to(dtype)

    return run


def _rounded_once(ops: Sequence[Operation]) -> tuple[dict[Operation, tuple], set[Operation]]:
    """The truncations of a 16-bit binary op computed in f32 (`ROUNDED_ONCE`), each with the op
    on the narrow operands, and the widenings and the f32 op they make unneeded."""
    ops = list(ops)
    uses = Counter(v for inner in ops for v in inner.operands)
    shortcut: dict[Operation, tuple] = {}
    skipped: set[Operation] = set()
    for inner in ops:
        if inner.name != "arith.truncf":
            continue
        compute = inner.operands[0].owner
        if not isinstance(compute, Operation) or compute.name not in ROUNDED_ONCE:
            continue
        widened = [v.owner for v in compute.operands]
        narrow = inner.results[0].type
        if uses[compute.results[0]] != 1 or not all(_widens(w, narrow) for w in widened):
            continue
        shortcut[inner] = (ROUNDED_ONCE[compute.name], [w.operands[0] for w in widened])
        skipped.add(compute)
        only_here = [w for w in widened if uses[w.results[0]] == list(compute.operands).count(w.results[0])]
        skipped.update(only_here)
    return shortcut, skipped


def _widens(op: object, narrow: object) -> bool:
    """`op` is an `arith.extf` from the type `narrow`."""
    return isinstance(op, Operation) and op.name == "arith.extf" and op.operands[0].type == narrow


def _dropping_device(fn: Callable[..., torch.Tensor]) -> Step:
    return lambda device, *tensors: fn(*tensors)


def _constant(op: arith.ConstantOp) -> Step:
    made: dict[torch.device, torch.Tensor] = {}

    def constant(device: torch.device) -> torch.Tensor:
        value = made.get(device)
        if value is None:
            value = eval_scalar_op(op, {}, device)
            if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
                made[device] = value
        return value

    return constant
