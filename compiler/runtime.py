"""Runtime: what runs a compiled partition when the graph is called.

Each compiled partition becomes a `KernelPlan`: the steps of its `ein`
function in program order (each fusion group with a kernel is one Triton
launch; ops outside kernels, such as concatenation, views that leave the
partition and groups that could not be lowered, run through the `ein`
reference interpreter and are named so in the dump), written out as a
straight-line program (`program.py`). Views, splats and iotas that only
kernels read are never materialized: kernels index through them. An
intermediate is released right after its last reader, so PyTorch's caching
allocator hands its memory to the next kernel's output.

Steps that read only parameters (a norm weight folded into a GEMM weight, see
norm-prologue) run once: their results are kept and reused while every
parameter they read is the same tensor at the same version (an in-place
update or a new tensor recomputes them). They cost memory: a folded weight
is as large as the weight.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule
from torch.fx.experimental.symbolic_shapes import statically_known_true
from xdsl.dialects import func
from xdsl.ir import Operation, SSAValue

from ..autotune.heuristics import KernelConfig
from ..ir.dtypes import has_symbolic_sizes, size_of
from ..ir.module import parameter_args
from ..passes.fusion_groups import GROUP_ATTR, VIRTUAL_OPS
from ..passes.lower_to_tile import LoweredGroup
from . import group_selection
from .direct_ops import bind_direct
from .duplicate_ops import alias_chain
from .group_selection import LIBRARY, SPLIT, GroupSelector, group_selection_enabled
from .program import Program, ProgramInputs, Trained, is_distinct, step_reads, strides_in_order, write_program
from .selection import Selection, selection_enabled
from .symbolic_program import write_symbolic_program

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
    backend: str = "triton"  # who wrote `launcher`: "triton" or "cuda" (codegen.with_cuda_kernel)
    alternative: CompiledKernel | None = None  # backend "auto": the other backend's kernel, measured against
    cuda_note: str | None = None  # why the CUDA backend does not run this group, where it was asked to
    # a kernel of symbolic sizes: its config per size bucket (`autotune.buckets`: a key per symbol of
    # `launcher.symbols`, in order), which its program chooses among at launch; `config` is the
    # report's (the call's hints); empty for a static kernel, or one of more symbols than are bucketed
    buckets: dict[tuple[int, ...], BucketConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class BucketConfig:
    """A kernel's config for one size bucket, where it came from, and its key in the tuning database."""

    config: KernelConfig
    config_source: str
    tuned_ms: float | None
    task_key: str


def _writes_inputs(graph_module: torch.nn.Module) -> bool:
    """Whether a partition's captured code updates a tensor in place (a cache write, `copy_` back
    into an input): running it several times in one call would apply the update as many times.
    Broader than `input_mutations.mutated_inputs` on purpose: any in-place op counts, not only one
    whose destination is a placeholder, since its destination may be a view of an input."""
    targets = [n.target for n in graph_module.graph.nodes if n.op == "call_function"]
    return any(isinstance(t, torch._ops.OpOverload) and t._schema.is_mutable for t in targets)


class KernelPlan(torch.nn.Module):
    """A compiled partition: its generated program, and the captured PyTorch code to fall back on.

    The program (see `program.py`) is written at the first call, for that
    call's argument layout, and dumped as `program_<partition>.py`. Any
    exception while it runs (a launch error, a device problem, a gap in a
    lowering) is reported once, with its cause, as a warning and in the
    graph's report, and the partition runs as the captured PyTorch code from
    then on; a call whose arguments do not match the program's guard runs it
    too. On a GPU, the first calls measure the program against the captured
    PyTorch code and keep the faster (`selection.py`). On a machine without
    CUDA the generated kernels would run in Triton's
    interpreter, hundreds of times slower than PyTorch: they do so only when
    `TILEFUSE_INTERPRET=1` asks for it.
    """

    def __init__(
        self, function: func.FuncOp, kernels: Sequence[CompiledKernel], returns_tuple: bool,
        fallback: torch.nn.Module, device: torch.device, graph: str = "graph", dump: object | None = None,
        trained: Trained | None = None,
    ):  # fmt: skip
        super().__init__()
        self.trained = trained  # a training graph's forward: derived values are reused until it trained
        self.function = function
        self.returns_tuple = returns_tuple
        self.fallback = fallback
        self._fallback = direct_forward(fallback)  # without nn.Module's call wrapper: host time
        self.device = device
        self.graph = graph
        self.dump = dump
        self.launch_at: dict[Operation, CompiledKernel] = {k.lowered.group.ops[-1]: k for k in kernels}
        fused = {op for k in kernels for op in k.lowered.group.ops}
        self.steps = _schedule(function, fused, self.launch_at)
        self.release_after = _last_uses(self.steps, self.launch_at, function)
        self.param_sources = _parameter_derived(function, self.steps, self.launch_at)
        self.program: Program | None = None
        # a partition of symbolic sizes: its kernels take sizes as arguments, and its one program reads
        # them from its arguments at each call (`symbolic_program`)
        self.symbolic = has_symbolic_sizes(function)
        # where the partition also takes sizes (Dynamo's SymInts: a view's sizes), the positions of
        # its tensor arguments, then of its sizes: a symbolic program takes the tensors, then the
        # sizes; a static one the tensors only (its sizes are literals: a SymInt reaching it is a
        # constant expression, `Sym(15)`, as a sliding window's key length at its cap)
        values = [n.meta.get("val") for n in fallback.graph.nodes if n.op == "placeholder"]
        tensors = [i for i, v in enumerate(values) if not isinstance(v, torch.SymInt)]
        sizes = [i for i, v in enumerate(values) if isinstance(v, torch.SymInt)] if self.symbolic else []
        self.tensor_args = tensors + sizes if len(tensors) < len(values) else None
        self.size_args = [size_of(values[i]) for i in sizes]
        self.report: dict = {}  # the partition's entry in the graph's report, updated at run time
        self.error: str | None = None
        self.guard_misses = 0
        self.selection: Selection | None = None
        if selection_enabled(device):  # a partition that writes its inputs runs at most twice a call
            self.selection = Selection(device, in_one_call=not _writes_inputs(fallback))
        # every op outside a kernel, named with why: the report's glue_ops (see the `report` setter)
        returned = set(function.body.block.last_op.operands)
        self.glue_ops = [{"op": op.name, "reason": _glue_reason(op, returned)} for op in self.steps
                         if op not in self.launch_at]  # fmt: skip
        n_glue = len(self.glue_ops)
        n_once = sum(1 for op in self.param_sources if op in self.launch_at)
        once = f" ({n_once} on parameters only: run once, reused while they are unchanged)"
        self.executor = f"{len(kernels)} Triton kernel(s)" + (once if n_once else "")
        glue_names = ", ".join(g["op"] for g in self.glue_ops)
        self.executor += f" + {n_glue} op(s) on the {REFERENCE_EXECUTOR}: {glue_names}" if n_glue else ""
        if device.type != "cuda" and os.environ.get(INTERPRET_ENV, "0") != "1":
            self.error = NO_CUDA
            self.executor = f"pytorch ({NO_CUDA})"
            _warn_no_cuda_once()

    @property
    def report(self) -> dict:
        return self._report

    @report.setter
    def report(self, entry: dict) -> None:
        # the driver hands over the partition's report entry after construction: name the glue there
        self._report = entry
        if entry:
            entry.setdefault("glue_ops", self.glue_ops)

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.error is None:
            tensors = args if self.tensor_args is None else tuple(args[i] for i in self.tensor_args)
            try:
                if self.program is None:
                    self.program = self._write_program(tensors)
                if self.selection is not None and self.selection.choice is None:
                    out = self._select(tensors, args)
                elif self.selection is None or self.selection.choice == "program":
                    out = self.program.call(tensors)
                else:
                    return self._fallback(*args)
                if out is not None:
                    return out
                self.guard_misses += 1
            except Exception as e:  # never crash the user's model: run the captured PyTorch code
                self._give_up(e)
        return self._fallback(*args)

    def _select(self, tensors: Sequence[torch.Tensor], args: Sequence[object]) -> object:
        out = self.selection.step(lambda: self.program.call(tensors), lambda: self._fallback(*args))
        if self.selection.choice is not None:
            self.report["selection"] = self.selection.summary()
            if self.selection.choice == "pytorch":
                times = self.report["selection"]
                figures = ""
                if times.get("program_ms"):
                    figures = f": {times['pytorch_ms']} ms against {times['program_ms']}"
                self.executor = f"pytorch (measured faster than the {self.executor}{figures})"
                self.report["executor"] = self.executor
        return out

    def _write_program(self, args: Sequence[torch.Tensor]) -> Program:
        block = self.function.body.block
        spec = ProgramInputs(
            name=self.function.sym_name.data, graph=self.graph, args=list(block.args),
            results=list(block.last_op.operands), steps=self.steps, kernels=self.launch_at,
            release_after=self.release_after, param_sources=self.param_sources, device=self.device,
            returns_tuple=self.returns_tuple, trained=self.trained, size_args=self.size_args,
            owners=output_owners(self.fallback), layouts=output_layouts(self.fallback),
            orders=output_orders(self.fallback),
        )  # fmt: skip
        if self.symbolic:  # one program for every size; its kernels were not measured against PyTorch
            program = write_symbolic_program(spec)
            if self.dump is not None:
                self.dump.add(f"program_{spec.name}.py", program.source)
            return program
        selector = None
        if group_selection_enabled(self.device):  # a program replayed as a CUDA graph costs no host time
            selector = GroupSelector(self.device, host_free=group_selection.replayed.get())
        if selector is not None:
            chosen_for = [k for op, k in self.launch_at.items() if op not in self.param_sources]
            selector.prepare(chosen_for)
            if selector.selects_any(chosen_for):  # a first pass counts the launches to choose for,
                spec.choose = selector.survey
                write_program(spec, args)
                selector.settle()  # then they are measured and chosen for the whole program
            spec.choose = selector.choose
        program = write_program(spec, args)
        if selector is not None and selector.choices:
            self.report["group_selection"] = selector.summary()
            if selector.program is not None:
                self.report["group_selection_program"] = selector.program
            on_library = sum(1 for c in selector.choices if c.chosen == LIBRARY)
            split = sum(1 for c in selector.choices if c.chosen == SPLIT)
            if on_library:
                self.executor += f"; {on_library} GEMM group(s) on the library path (measured faster)"
            if split:
                self.executor += (
                    f"; {split} GEMM group(s) split: library GEMM, generated epilogue (measured faster)"
                )
            self.report["executor"] = self.executor
        if self.dump is not None:
            self.dump.add(f"program_{spec.name}.py", program.source)
        return program

    def _give_up(self, e: Exception) -> None:
        self.error = f"{type(e).__name__}: {e}"
        name = self.function.sym_name.data
        log.warning("tilefuse: partition %s of graph %s failed at run time (%s); it runs in PyTorch "
                    "from now on", name, self.graph, self.error)  # fmt: skip
        log.debug("tilefuse: partition %s failed at run time", name, exc_info=e)
        self.executor = f"pytorch (failed at run time: {self.error})"
        self.report["executor"] = self.executor
        self.report["runtime_error"] = self.error


INTERPRET_ENV = "TILEFUSE_INTERPRET"  # "1": on CPU tensors, run the generated kernels in Triton's interpreter
NO_CUDA = (
    "no CUDA device: the captured PyTorch code runs; "
    f"{INTERPRET_ENV}=1 runs the kernels in Triton's interpreter"
)


@functools.cache
def _warn_no_cuda_once() -> None:
    warnings.warn(f"tilefuse: {NO_CUDA} (hundreds of times slower than PyTorch; for testing)", stacklevel=2)


def output_owners(graph_module: GraphModule) -> list[int] | None:
    """For each output of a partition's captured code, whose memory PyTorch returns it in: -1 where
    it is (a view of, or updated in place) one of the partition's inputs, else the index of the first
    output in the same memory (itself, where it is the first). A `clone` lowers to its operand: a
    program whose result is an input where PyTorch's is fresh memory, or whose two results are one
    buffer where PyTorch's are two, copies it (`program.LineWriter.returned`). None where the
    outputs are not all tensors."""
    nodes = _output_nodes(graph_module)
    if nodes is None:
        return None
    owners, first = [], {}
    for node in nodes:
        source = alias_chain(node)[-1]
        owners.append(-1 if source.op == "placeholder" else first.setdefault(source, len(owners)))
    return owners


def output_layouts(graph_module: GraphModule) -> list[str] | None:
    """For each output of a partition's captured code, the layout of PyTorch's (its recorded value):
    "contiguous", "distinct" (no two elements in one place: a transposed or sliced tensor) or "" where
    it is neither or not known (an expanded view, a size-dependent layout). None where the outputs are not
    all tensors."""
    nodes = _output_nodes(graph_module)
    return None if nodes is None else [_layout(node.meta.get("val")) for node in nodes]


def output_orders(graph_module: GraphModule) -> list[tuple[int, ...] | None] | None:
    """For each output of a partition's captured code, the order of its dims in PyTorch's memory
    (outermost first) where its recorded value is dense, not row-major, and has its last dim
    innermost (a pointwise op of a transposed tensor: eager keeps the operand's layout); else None.
    None where the outputs are not all tensors."""
    nodes = _output_nodes(graph_module)
    return None if nodes is None else [_order(node.meta.get("val")) for node in nodes]


def _order(val: object) -> tuple[int, ...] | None:
    if not isinstance(val, torch.Tensor) or val.dim() < 2:
        return None
    # symbolic sizes by their hints: a layout's order holds for every size (ties are dims of size 1)
    shape, strides = [_hinted(d) for d in val.shape], [_hinted(d) for d in val.stride()]
    if None in shape or None in strides:
        return None
    # outermost first; among equal strides (dims of size 1) the logical order
    order = tuple(sorted(range(len(shape)), key=lambda d: (-strides[d], d)))
    if order[-1] != len(shape) - 1 or _laid_out(shape, strides, range(len(shape))):
        return None
    return order if _laid_out(shape, strides, order) else None


def _laid_out(shape: list[int], strides: list[int], order: Sequence[int]) -> bool:
    """Whether `strides` are the dense layout of `shape` in `order` (a dim of size 1 may have any)."""
    expected = strides_in_order(shape, order)
    return all(shape[d] == 1 or strides[d] == expected[d] for d in range(len(shape)))


def _hinted(d: object) -> int | None:
    """A size or stride as an int: a symbolic one by its hint (None where it has none)."""
    if isinstance(d, int):
        return d
    hint = getattr(getattr(d, "node", None), "hint", None)
    return int(hint) if hint is not None else None


def _output_nodes(graph_module: GraphModule) -> list[torch.fx.Node] | None:
    """The nodes a graph returns, in order; None where one of its outputs is not a node."""
    (output,) = [n for n in graph_module.graph.nodes if n.op == "output"]
    nodes = output.args[0] if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    return list(nodes) if all(isinstance(n, torch.fx.Node) for n in nodes) else None


def _layout(val: object) -> str:
    if not isinstance(val, torch.Tensor):
        return ""
    try:  # an unbacked size may leave it undecidable: then not known
        if statically_known_true(val.is_contiguous()):
            return "contiguous"
        if all(isinstance(d, int) for d in (*val.shape, *val.stride())):
            return "distinct" if is_distinct(tuple(val.shape), tuple(val.stride())) else ""
    except Exception:
        pass
    return ""


def _glue_reason(op: Operation, returned: set[SSAValue]) -> str:
    """Why an op of a compiled partition runs outside the generated kernels."""
    group = op.attributes.get(GROUP_ATTR)
    if group is not None:
        return f"its fusion group {group.data} has no kernel (the group's not_a_kernel_because says why)"
    if isinstance(op, VIRTUAL_OPS) and returned.intersection(op.results):
        return f"{op.name} is a result of the partition (for the caller, or saved for backward): materialized"
    if isinstance(op, VIRTUAL_OPS):
        return f"{op.name} is read by an op outside the kernels: materialized for it"
    return f"no fusion group takes {op.name} (kernels are built from contractions, maps and reductions)"


def direct_forward(module: torch.nn.Module) -> Callable:
    """`module`'s generated forward, called without nn.Module's call machinery (hooks, the call
    wrapper). A lazily recompiled GraphModule's `forward` is a stub that recompiles and then calls the
    module through `__call__` (the whole wrapper, every call: ~10 µs of this CPU's 68 a compiled call):
    its code is generated now, and its real forward taken. Its ATen calls go through PyTorch's bindings
    rather than the boxed `OpOverload` path (`direct_ops.bind_direct`)."""
    bind_direct(module)
    real_recompile = getattr(module, "real_recompile", None)
    if callable(real_recompile):
        real_recompile()
    return module.forward


def graph_device(partition: GraphModule, graph: GraphModule, interpret: bool) -> torch.device:
    """Where a partition runs: the device of the tensors the graph says it produces (its fake
    tensors' devices), else of any tensor in the graph; never read off the call's arguments, which
    a partition may not have (positions and masks built by `arange(..., device=...)`). A graph that
    holds CUDA tensors runs on CUDA even where a few values (a CPU scalar) live elsewhere."""
    for gm in (partition, graph):
        outputs = [n for n in gm.graph.nodes if n.op == "output"]
        nodes = [a for n in outputs for a in _flat(n.args[0])] + list(gm.graph.nodes)
        device = preferred_device(
            node.meta["val"].device for node in nodes
            if isinstance(node, torch.fx.Node) and isinstance(node.meta.get("val"), torch.Tensor)
        )  # fmt: skip
        if device is not None:
            return device
    if interpret or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def preferred_device(devices: Iterable[torch.device]) -> torch.device | None:
    """A CUDA device if any is among `devices` (a CPU scalar does not make a CUDA graph a CPU one),
    else the first; None for none."""
    devices = list(devices)
    return next((d for d in devices if d.type == "cuda"), devices[0] if devices else None)


def _flat(args: object) -> list:
    return [x for a in args for x in _flat(a)] if isinstance(args, (list, tuple)) else [args]


def _parameter_derived(fn: func.FuncOp, steps: list[Operation], launch_at: dict) -> dict[Operation, list]:
    """For each step that reads only parameters and constants (directly or through other such
    steps and views), the parameter arguments it depends on (none for an iota or a constant:
    computed once)."""
    block = fn.body.block
    sources: dict[SSAValue, frozenset] = {arg: frozenset([arg]) for arg in parameter_args(fn)}

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

    returned = set(block.last_op.operands)  # a result the user receives may be changed in place
    derived: dict[Operation, list] = {}
    for op in steps:
        reads = step_reads(op, launch_at)
        parts = [depends(v) for v in reads]
        if all(p is not None for p in parts) and not returned.intersection(op.results):
            sources[op.results[0]] = frozenset().union(*parts)
            derived[op] = sorted(sources[op.results[0]], key=lambda a: a.index)
    return derived


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
        reads = step_reads(op, launch_at)
        for value in reads:
            last[value] = op
    release: dict[Operation, list[SSAValue]] = {}
    for value, op in last.items():
        if value not in keep:
            release.setdefault(op, []).append(value)
    return release
