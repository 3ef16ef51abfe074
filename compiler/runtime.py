"""Runtime: what runs a compiled partition when the graph is called.

A partition's `ein` function runs as a plan: each fusion group with a kernel
is one Triton launch (on CPU tensors, under Triton's interpreter); ops outside
kernels (concatenation, views that leave the partition) and groups that could
not be lowered run through the `ein` reference interpreter, op by op, and are
named so in the dump. Views, splats and iotas that only kernels read are never
materialized: kernels index through them. An intermediate is released right
after its last reader, so PyTorch's caching allocator hands its memory to the
next kernel's output.

Steps that read only parameters (a norm weight folded into a GEMM weight, see
norm-prologue) run once: their results are kept and reused while every
parameter they read is the same tensor at the same version (an in-place
update or a new tensor recomputes them). They cost memory: a folded weight
is as large as the weight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from xdsl.dialects import func
from xdsl.ir import Operation, SSAValue

from ..autotune.heuristics import KernelConfig
from ..ir.dtypes import shape_of, to_torch_dtype
from ..ir.interpreter import run_op
from ..passes.fusion_groups import VIRTUAL_OPS
from ..passes.lower_to_tile import LoweredGroup

REFERENCE_EXECUTOR = "ein reference interpreter (PyTorch ops; not a generated kernel)"

Launcher = Callable[..., None]
log = logging.getLogger("tilefuse")


@dataclass
class CompiledKernel:
    """A lowered group ready to launch: its Triton launcher and configuration."""

    lowered: LoweredGroup
    launcher: Launcher
    config: KernelConfig
    task_key: str = ""  # the kernel's key in the tuning database
    config_source: str = "default"  # "tuned": the database's best for this device and versions
    tuned_ms: float | None = None  # that config's measured median, when tuned
    launch_error: str | None = None

    def __post_init__(self) -> None:
        out_type = self.lowered.output.type  # read once: xDSL type queries are slow per launch
        self.out_shape = shape_of(out_type)
        self.out_dtype = to_torch_dtype(out_type.get_element_type())

    def __call__(self, env: dict[SSAValue, torch.Tensor], device: torch.device) -> torch.Tensor:
        out = torch.empty(self.out_shape, dtype=self.out_dtype, device=device)
        tensors = [env[v] for v in self.lowered.inputs] + [out]
        self.launcher(tensors, self.config.params, self.config.num_warps, self.config.num_stages)
        return out


class KernelPlan(torch.nn.Module):
    """A compiled partition run as generated kernels plus PyTorch glue, in program order."""

    def __init__(self, function: func.FuncOp, kernels: Sequence[CompiledKernel], returns_tuple: bool):
        super().__init__()
        self.function = function
        self.returns_tuple = returns_tuple
        self.launch_at: dict[Operation, CompiledKernel] = {k.lowered.group.ops[-1]: k for k in kernels}
        fused = {op for k in kernels for op in k.lowered.group.ops}
        self.steps = _schedule(function, fused, self.launch_at)
        self.release_after = _last_uses(self.steps, self.launch_at, function)
        self.param_sources = _parameter_derived(function, self.steps, self.launch_at)
        self.derived: dict[Operation, tuple[tuple, torch.Tensor]] = {}
        n_glue = sum(1 for op in self.steps if op not in self.launch_at)
        n_once = sum(1 for op in self.param_sources if op in self.launch_at)
        once = f" ({n_once} on parameters only: run once, reused while they are unchanged)"
        self.executor = f"{len(kernels)} Triton kernel(s)" + (once if n_once else "")
        self.executor += f" + {n_glue} op(s) on the {REFERENCE_EXECUTOR}" if n_glue else ""

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        block = self.function.body.block
        device = args[0].device if args else torch.device("cpu")
        env: dict[SSAValue, torch.Tensor] = dict(zip(block.args, args))
        for op in self.steps:
            sources = self.param_sources.get(op)
            key = _versions([env[a] for a in sources]) if sources else None
            if key is not None and op in self.derived and self.derived[op][0] == key:
                env[op.results[0]] = self.derived[op][1]
            else:
                kernel = self.launch_at.get(op)
                if kernel is None:
                    env[op.results[0]] = run_op(op, env, device)
                else:
                    env[op.results[0]] = self._launch(kernel, env, device)
                if key is not None:
                    self.derived[op] = (key, env[op.results[0]])
            for value in self.release_after.get(op, ()):  # lets the allocator reuse the buffer
                del env[value]
        results = [env[v] for v in block.last_op.operands]
        return tuple(results) if self.returns_tuple else results[0]


    def _launch(self, kernel: CompiledKernel, env: dict, device: torch.device) -> torch.Tensor:
        """Run a kernel; if it cannot launch (e.g. out of shared memory), run its ops instead."""
        if kernel.launch_error is None:
            try:
                return kernel(env, device)
            except Exception as e:  # a kernel that cannot run must not take the model down
                kernel.launch_error = f"{type(e).__name__}: {e}"
                log.warning("tilefuse: kernel %s failed to launch (%s); its group runs op by op",
                            kernel.lowered.kernel.sym_name.data, kernel.launch_error)  # fmt: skip
        for op in kernel.lowered.group.ops:
            for value in op.operands:
                _materialize(value, env, device)
            env[op.results[0]] = run_op(op, env, device)
        return env[kernel.lowered.output]


def _versions(tensors: list[torch.Tensor]) -> tuple | None:
    """What identifies these parameters' contents: storage, version; None if untracked (inference
    tensors have no version counter)."""
    try:
        return tuple((t.data_ptr(), t._version, t.shape, t.stride(), t.dtype, t.device) for t in tensors)
    except RuntimeError:
        return None


def _parameter_derived(fn: func.FuncOp, steps: list[Operation], launch_at: dict) -> dict[Operation, list]:
    """For each step that reads only parameters (directly or through other such steps and
    views), the parameter arguments it depends on."""
    block = fn.body.block
    attrs = fn.arg_attrs.data if fn.arg_attrs is not None else ()
    sources: dict[SSAValue, frozenset] = {
        arg: frozenset([arg]) for arg, a in zip(block.args, attrs) if "ein.param" in a.data
    }

    def depends(value: SSAValue) -> frozenset | None:
        if value in sources:
            return sources[value]
        owner = value.owner
        if isinstance(owner, VIRTUAL_OPS):
            parts = [depends(v) for v in owner.operands]
            if all(p is not None for p in parts):
                sources[value] = frozenset().union(*parts)
                return sources[value]
        return None

    derived: dict[Operation, list] = {}
    for op in steps:
        reads = launch_at[op].lowered.inputs if op in launch_at else op.operands
        parts = [depends(v) for v in reads]
        if reads and all(p is not None for p in parts):
            sources[op.results[0]] = frozenset().union(*parts)
            derived[op] = sorted(sources[op.results[0]], key=lambda a: a.index)
    return derived


def _materialize(value: SSAValue, env: dict, device: torch.device) -> None:
    """Compute a view/splat/iota the kernels would have indexed through."""
    if value in env:
        return
    for operand in value.owner.operands:
        _materialize(operand, env, device)
    env[value] = run_op(value.owner, env, device)


def _schedule(fn: func.FuncOp, fused: set[Operation], launch_at: dict) -> list[Operation]:
    """The ops to execute: kernel launch points, and every other op whose result is needed.

    Ops inside kernels are not executed; a virtual op (view, splat, iota) runs
    only if something outside the kernels reads it.
    """
    ops = [op for op in fn.body.block.ops if op is not fn.body.block.last_op]
    needed: set[SSAValue] = set(fn.body.block.last_op.operands)
    steps: list[Operation] = []
    for op in reversed(ops):
        if op in launch_at:
            steps.append(op)
            needed.update(v for v in launch_at[op].lowered.inputs)
        elif op in fused:
            continue
        elif not isinstance(op, VIRTUAL_OPS) or any(r in needed for r in op.results):
            steps.append(op)
            needed.update(op.operands)
    return steps[::-1]


def _last_uses(steps: list[Operation], launch_at: dict, fn: func.FuncOp) -> dict[Operation, list[SSAValue]]:
    """For each step, the intermediate values no later step (nor the function's result) reads."""
    keep = set(fn.body.block.last_op.operands) | set(fn.body.block.args)
    last: dict[SSAValue, Operation] = {}
    for op in steps:
        reads = launch_at[op].lowered.inputs if op in launch_at else op.operands
        for value in reads:
            last[value] = op
    release: dict[Operation, list[SSAValue]] = {}
    for value, op in last.items():
        if value not in keep:
            release.setdefault(op, []).append(value)
    return release
