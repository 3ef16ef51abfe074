"""The program of a compiled partition: straight-line Python, generated like Inductor's `call()`.

A partition's steps (kernel launches, PyTorch glue, views) are written once
as a function `call(args)` with everything that does not change between calls
decided in advance: buffers are allocated with literal shapes and strides,
kernels launch through their bound launchers with literal grids and strides,
views are torch views, constants and iotas are made once, and every
intermediate is deleted after its last reader so the caching allocator hands
its memory to the next output. A reader sees exactly what runs; the runtime
does nothing else per call.

The layout (strides) of every tensor is read off the first call's arguments,
propagated through the steps on meta tensors, and checked by a guard at the
top of `call`: arguments with other strides, or a 16-byte misalignment that
Triton did not specialize for, make `call` return None, and the caller runs
the captured PyTorch code for that call instead.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from xdsl.ir import Operation, SSAValue

from ..backends.triton.emit import padded_row, row_tail
from ..backends.triton.launcher import row_tails_fit, tail_reach
from ..ir import einsum as ein
from ..ir.dtypes import dims_of, shape_of, to_torch_dtype
from ..ir.interpreter import gather_rows, reads_table_rows, run_op
from .library_plan import Step, planned_op

HEADER = '''\
# tilefuse program: partition {partition} of graph {graph}, on {device}
# {kernels} kernel launch(es); glue ops named by their ein op. Generated at the first call:
# strides are literals, checked by the guard below (a mismatch runs the captured PyTorch code).
'''


@dataclass
class Trained:
    """Whether the graph a program belongs to has run its backward. From then on the program
    recomputes what it derives from parameters at every call instead of reusing it while their
    version counters stand: a training loop changes them every step, and an update through `p.data`
    (`p.data.add_(g, alpha=-lr)`) leaves the version counter as it was."""

    trained: bool = False


@dataclass
class ProgramInputs:
    """What the writer needs to know about a partition, in program order."""

    name: str
    graph: str
    args: Sequence[SSAValue]  # the function's block arguments
    results: Sequence[SSAValue]
    steps: Sequence[Operation]
    kernels: dict[Operation, object]  # launch step -> CompiledKernel
    release_after: dict[Operation, list[SSAValue]]
    param_sources: dict[Operation, list[SSAValue]]
    device: torch.device
    returns_tuple: bool
    # per kernel launch: ("kernel", None), ("library", fn) or ("alternative", the other backend's kernel)
    # (group_selection.GroupSelector.choose)
    choose: Callable[[object, list[torch.Tensor]], tuple[str, Callable | None]] | None = None
    trained: Trained | None = None  # a training graph's forward: reuse derived values until it trained
    # a partition of symbolic sizes: the size expressions of its integer inputs (Dynamo's SymInts, a
    # view's sizes), passed after the tensors; they may bind size symbols (`symbolic_program`)
    size_args: Sequence[object] = ()
    # per result, PyTorch's owner of it (`runtime.output_owners`): -1 an input (or a view of one), else
    # the first result that is the same tensor; None: not known (inputs are then returned as they are)
    owners: Sequence[int] | None = None
    # per result, PyTorch's layout (`runtime.output_layouts`: "contiguous", "distinct" or "" not known): a
    # result PyTorch makes contiguous is returned contiguous (a view the program folded a copy into is
    # copied), and one whose elements PyTorch keeps apart is not returned expanded; None: not known
    layouts: Sequence[str] | None = None
    # per result, the order of its dims in PyTorch's memory, outermost first, where PyTorch's is a
    # dense layout other than row-major with the last dim innermost (`runtime.output_orders`: a
    # pointwise op of a transposed operand keeps its operand's layout): a pointwise kernel's output
    # returned is allocated so. None (or a None entry): row-major
    orders: Sequence[tuple[int, ...] | None] | None = None


@dataclass
class Program:
    """A generated `call(args)`; `source` is what was executed."""

    source: str
    call: Callable[[Sequence[torch.Tensor]], object]
    launches: int


@dataclass
class LineWriter:
    """What both program writers share: `call`'s lines, a name per SSA value, the module scope."""

    lines: list[str] = field(default_factory=list)
    names: dict[SSAValue, str] = field(default_factory=dict)
    scope: dict[str, object] = field(default_factory=dict)
    launches: int = 0
    # names whose memory outlives the call: constants made once, values derived from parameters and
    # reused, and whatever may alias them. A result among them is copied before it is returned: the
    # caller owns its outputs (a cache made by `torch.zeros` in the graph is written in place)
    shared: set[str] = field(default_factory=set)
    # names that are, or may alias, the call's arguments: copied where PyTorch returns a fresh tensor
    of_args: set[str] = field(default_factory=set)
    # values whose memory a result is (the result, or what it is a view of): a constant or a reused
    # value among them is copied where it is made, so the result's views of it stay views of one copy
    escaping: set[SSAValue] = field(default_factory=set)
    # the memories (named by the step that made them) a name may be a view of, where not its own
    roots: dict[str, frozenset[str]] = field(default_factory=dict)
    indent: int = 0  # levels inside `call`'s body (a branch per size bucket)

    def escape(self, results: Sequence[SSAValue]) -> None:
        for value in results:
            self.escaping.add(value)
            # a copying view (a flip) makes new memory: what it reads is not the result's
            while isinstance(value.owner, ein.ViewOp) and not makes_fresh_memory(value.owner, {}):
                value = value.owner.operands[0]
                self.escaping.add(value)

    def emit(self, line: str) -> None:
        self.lines.append("    " * (1 + self.indent) + line)

    def bind(self, prefix: str, value: object) -> str:
        """A module-level name for `value` (a kernel, a constant), unique within the program."""
        name = f"_{prefix}{len(self.scope)}"
        self.scope[name] = value
        return name

    def fresh(self, value: SSAValue) -> str:
        name = f"buf{len(self.names)}"
        self.names[value] = name
        return name

    def share(self, name: str, operands: Sequence[str]) -> None:
        """`name` may alias `operands`: shared, or of the arguments, if one of them is."""
        self.roots[name] = frozenset().union(*(self.memory(o) for o in operands))
        if self.shared.intersection(operands):
            self.shared.add(name)
        if self.of_args.intersection(operands):
            self.of_args.add(name)

    def returned(
        self,
        results: Sequence[SSAValue],
        owners: Sequence[int] | None,
        layouts: Sequence[str] | None = None,
    ) -> list[str]:
        """The names `call` returns for `results`, each copied to memory of its own where it is shared,
        an argument where PyTorch returns fresh memory, or (a view of) a buffer returned before where
        PyTorch returns other memory (`owners`); once per memory PyTorch returns. A result PyTorch
        returns as fresh contiguous memory (`layouts`) is made contiguous where the program's may not
        be (a concatenation with empty tensors folded into a view of a transposed operand), as a caller
        may `view` it; one whose elements PyTorch keeps apart is not returned expanded (a `clone` of an
        expanded view lowers to its operand), as a caller may write into it."""
        names, copies, given = [], {}, {}
        known = owners is not None and len(owners) == len(results)
        layout = [""] * len(results)
        if layouts is not None and len(layouts) == len(results):
            layout = list(layouts)
        for i, value in enumerate(results):
            name = self.names[value]
            owner = owners[i] if known else -1
            # memory an earlier result has where PyTorch's are two tensors (`y` and `y.clone().t()`)
            memory = self.memory(name)
            other = any(given.setdefault(m, owner) != owner for m in sorted(memory))
            packed = layout[i] == "contiguous" and owner >= 0 and not self.contiguous(value)
            packed = packed or (layout[i] != "" and owner >= 0 and self.overlapping(value))
            if name in self.shared or (owner >= 0 and name in self.of_args) or other or packed:
                key = (name, owner)
                if key not in copies:
                    copies[key] = f"out{len(copies)}"
                    if packed and (name in self.shared or name in self.of_args or other):
                        self.emit(f"{copies[key]} = {name}.clone(memory_format=torch.contiguous_format)"
                                  "  # the caller's own memory, contiguous as PyTorch's")  # fmt: skip
                    elif packed:
                        self.emit(f"{copies[key]} = {name}.contiguous()  # contiguous as PyTorch's")
                    else:
                        self.emit(f"{copies[key]} = {name}.clone()  # the caller's own memory")
                name = copies[key]
            names.append(name)
        return names

    def memory(self, name: str) -> frozenset[str]:
        """The memories `name` may be (a view of): its own where it made new memory."""
        return self.roots.get(name, frozenset((name,)))

    def contiguous(self, value: SSAValue) -> bool:
        """Whether `value` is surely contiguous in every call (not known here: a writer with layouts says)."""
        return False

    def overlapping(self, value: SSAValue) -> bool:
        """Whether two elements of `value` may share memory (an expanded view): not known here."""
        return False


@dataclass(kw_only=True)
class _Writer(LineWriter):
    inputs: ProgramInputs
    meta: dict[SSAValue, torch.Tensor] = field(default_factory=dict)
    buffers: _BufferPlan = field(default_factory=lambda: _BufferPlan())
    layouts: dict[str, tuple] = field(default_factory=dict)
    # a kernel output read elsewhere only through one view: allocated as that view (`_views_to_allocate`)
    view_of: dict[SSAValue, ein.ViewOp] = field(default_factory=dict)
    allocated_as_view: set[ein.ViewOp] = field(default_factory=set)
    padded: set[SSAValue] = field(default_factory=set)  # kernel outputs allocated with padded rows

    def contiguous(self, value: SSAValue) -> bool:
        """Contiguous, or a kernel's output with padded rows (`output_strides`), or a reshape of one's
        leading dims: left so, as a copy would cost a pass over an LM head's logits (torch.compile
        pays one for its padded matmul's)."""
        meta = self.meta.get(value)
        if meta is None or meta.is_contiguous():
            return meta is not None
        source = value
        while isinstance(source.owner, ein.ViewOp) and source.owner.kind.data == "reshape":
            source = source.owner.operands[0]
        return source in self.padded and is_padded_rows(meta.shape, meta.stride())

    def overlapping(self, value: SSAValue) -> bool:
        meta = self.meta.get(value)
        return meta is not None and not is_distinct(meta.shape, meta.stride())


@dataclass
class _BufferPlan:
    """Which allocations a later one can take over, as Inductor's wrapper reuses buffers.

    An allocation (a kernel's output buffer) is free again once no value that
    lives in it, itself or a view of it, is read any more; a later output of
    the same shape, strides and dtype then takes it over (`buf9 = buf3`)
    instead of asking the allocator, which costs a few µs per call. Kernels
    run in stream order, so the last reader has been issued before the new
    writer. Buffers a call returns, or that are kept across calls (parameter
    -derived results), are never taken over.
    """

    roots: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> allocations it may live in
    live: dict[str, int] = field(default_factory=dict)  # allocation -> values that may live in it
    pinned: set[str] = field(default_factory=set)
    free: dict[tuple, list[tuple[str, int]]] = field(default_factory=dict)  # layout -> (allocation, line)
    reused: int = 0

    def allocate(self, name: str, layout: tuple, pinned: bool) -> str | None:
        """Register a new allocation; returns a free one to take over, if any."""
        self.roots[name] = (name,)
        self.live[name] = 1
        if pinned:
            self.pinned.add(name)
            return None
        candidates = self.free.get(layout)
        if candidates:
            self.reused += 1
            return candidates.pop()[0]
        return None

    def alias(self, name: str, sources: list[str]) -> None:
        """`name` may share memory with `sources` (a view; or a PyTorch op's result, conservatively)."""
        roots = tuple(dict.fromkeys(r for s in sources for r in self.roots.get(s, ())))
        if roots:
            self.roots[name] = roots
            for root in roots:
                self.live[root] += 1

    def release(self, name: str, layout_of: dict[str, tuple], line: int) -> bool:
        """The value `name` is read no more; True if its name can simply be deleted now."""
        roots = self.roots.get(name, ())
        for root in roots:
            self.live[root] -= 1
            if self.live[root] == 0 and root not in self.pinned:
                self.free.setdefault(layout_of[root], []).append((root, line))
        return name not in roots

    def unused_free(self) -> list[tuple[str, int]]:
        return [entry for entries in self.free.values() for entry in entries]


def output_strides(kernel: object, shape: Sequence[int], dtype: torch.dtype) -> tuple[int, ...]:
    """The strides a `CompiledKernel`'s output of `shape` is allocated with: row-major, except that a
    Triton GEMM's or row kernel's output with a wide row that is not a multiple of 16 bytes gets rows
    starting 128 bytes apart (`backends.triton.emit.padded_row`: a strided tensor whose rows end in
    padding, as `torch.compile`'s padded matmuls leave it). Its readers take strides: kernels as
    arguments, PyTorch ops as they come."""
    shape = tuple(shape)
    strides = list(torch.empty(shape, dtype=dtype, device="meta").stride())
    if getattr(kernel, "backend", "triton") != "triton":
        return tuple(strides)
    row = padded_row(kernel.lowered.group.kind, shape, dtype.itemsize)
    if row is not None:
        strides[-2] = row
        for d in range(len(shape) - 3, -1, -1):
            strides[d] = strides[d + 1] * shape[d + 1]
    return tuple(strides)


def is_padded_rows(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether `strides` are row-major over `shape` with the rows (the last dim) padded: `output_strides`'
    layout, whose leading dims view and reshape like a contiguous tensor's."""
    if len(shape) < 2 or strides[-1] != 1 or strides[-2] < shape[-1]:
        return False
    return all(strides[d] == strides[d + 1] * shape[d + 1] for d in range(len(shape) - 2))


def is_distinct(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether no two elements of a tensor of `shape` and `strides` share a place in memory (each
    dim's stride, in increasing order, passes the reach of the dims before it)."""
    reach = 0
    for stride, size in sorted((st, n) for n, st in zip(shape, strides) if n != 1):
        if stride <= reach:
            return False
        reach += (size - 1) * stride
    return True


def is_packed(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether `strides` are a contiguous tensor's of `shape` (no padded rows)."""
    return tuple(strides) == torch.empty(tuple(shape), device="meta").stride()


def empty_padded(
    shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An uninitialized tensor of `shape` and row-major `strides` with padded rows (`output_strides`)
    whose storage includes the last row's padding, which a kernel's stores run into and a kernel's
    loads may read (a plain `empty_strided` ends the storage at the last element). Other strides get
    at least the span they cover."""
    span = 0 if 0 in shape else 1 + sum((n - 1) * s for n, s in zip(shape, strides))
    storage = torch.empty(max(span, shape[0] * strides[0] if shape else 0), dtype=dtype, device=device)
    return storage.as_strided(tuple(shape), tuple(strides))


def empty_output(
    shape: Sequence[int], strides: Sequence[int], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A kernel's output buffer with the `output_strides` it was given: packed, or padded rows."""
    if is_packed(shape, strides):
        return torch.empty_strided(tuple(shape), tuple(strides), dtype=dtype, device=device)
    return empty_padded(shape, strides, dtype, device)


def copy_as(t: torch.Tensor) -> torch.Tensor:
    """A copy of kernel output `t` in its own layout, padded rows included (`clone` would pack them)."""
    return empty_output(t.shape, t.stride(), t.dtype, t.device).copy_(t)


def _meta_like(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


def _literal_view(op: ein.ViewOp, src: str) -> str:
    """A torch view expression equal to the reference interpreter's `view_function`."""
    kind, p, shape = op.kind.data, op.view_params, shape_of(op.result.type)
    if kind == "reshape":
        return f"{src}.reshape({tuple(shape)!r})"
    if kind == "permute":
        return f"{src}.permute({tuple(p)!r})"
    if kind == "expand":
        return f"{src}.expand({tuple(shape)!r})"
    if kind == "flip":  # torch has no negative strides: a copy
        return f"{src}.flip({list(p)!r})"
    dim, start, stop, step = p
    index = ", ".join([":"] * dim + [f"{start}:{stop}:{step}"])
    return f"{src}[{index}]"


def write_program(spec: ProgramInputs, example_args: Sequence[torch.Tensor]) -> Program:
    """Generate and load `call(args)` for one partition, laid out for tensors like `example_args`."""
    w = _Writer(inputs=spec)
    device = spec.device
    w.scope.update(
        torch=torch,
        _device=device,
        _allocator=allocator(device),
        _padded=empty_padded,
        _copy_as=copy_as,
        _version_key=_version_key,
    )
    if device.type == "cuda":
        w.scope["_stream"] = stream_getter(device)
    w.scope["_derived"] = {}
    w.scope["_graph"] = spec.trained
    if any(spec.param_sources.values()):  # values derived from parameters, reused while they stand
        watch_parameter_data()
    arg_names = [f"arg{i}" for i in range(len(spec.args))]
    w.of_args.update(arg_names)
    for value, name, t in zip(spec.args, arg_names, example_args):
        w.names[value] = name
        w.meta[value] = _meta_like(t)
    w.emit(f"{', '.join(arg_names)}{',' if len(arg_names) == 1 else ''} = args" if arg_names else "del args")
    _write_guard(w, arg_names, example_args)
    for name, t in zip(arg_names, example_args):
        if t.device != device:  # e.g. a 0-dim CPU scalar tensor: PyTorch would promote it
            w.emit(f"{name} = {name}.to(_device, non_blocking=True)")  # its layout (meta) is kept
    if device.type == "cuda":
        w.emit("stream = _stream()")
    else:
        w.emit("stream = 0")
    w.emit("_empty = _allocator()")
    w.view_of = _views_to_allocate(spec)
    w.escape(spec.results)
    for op in spec.steps:
        _write_step(w, op)
    for name, line in sorted(w.buffers.unused_free(), key=lambda e: -e[1]):
        w.lines.insert(line, f"    del {name}")  # freed, and no later output took it over
    results = ", ".join(w.returned(spec.results, spec.owners, spec.layouts))
    if spec.returns_tuple:
        w.emit(f"return ({results}{',' if len(spec.results) == 1 else ''})")
    else:
        w.emit(f"return {results}")
    header = HEADER.format(partition=spec.name, graph=spec.graph, device=device, kernels=w.launches)
    source = header + "\n\ndef call(args):\n" + "\n".join(w.lines) + "\n"
    code = compile(source, f"<tilefuse program {spec.graph}.{spec.name}>", "exec")
    exec(code, w.scope)
    return Program(source, w.scope["call"], w.launches)


def _write_guard(w: _Writer, arg_names: list[str], example_args: Sequence[torch.Tensor]) -> None:
    """Return None (run PyTorch instead) unless strides and alignment are the ones written in, and
    inputs with padded rows hold their last row's tail as the first call's did."""
    checks = [f"{n}.stride() != {tuple(t.stride())!r}" for n, t in zip(arg_names, example_args)]
    on_gpu = [(n, t) for n, t in zip(arg_names, example_args) if t.device.type == "cuda"]
    aligned = [n for n, t in on_gpu if t.data_ptr() % 16 == 0]
    if aligned:
        checks.append(f"({' | '.join(f'{n}.data_ptr()' for n in aligned)}) & 15")
    for n, t in zip(arg_names, example_args):
        # padded rows a kernel may read to their tail (the launch decides once, on this call's inputs):
        # a later input of these strides must hold the last row's tail too
        if t.dim() >= 2 and row_tail(t.shape[-1]) > t.shape[-1] and row_tails_fit([t]):
            reach, size = tail_reach(t.shape, t.stride()), t.element_size()
            checks.append(f"({n}.storage_offset() + {reach}) * {size} > {n}.untyped_storage().nbytes()")
    if checks:
        w.emit(f"if {' or '.join(checks)}:")
        w.emit("    return None")


def _write_step(w: _Writer, op: Operation) -> None:
    spec = w.inputs
    sources = spec.param_sources.get(op)
    if sources is not None and not isinstance(op, ein.ViewOp):
        # reads only parameters and constants: computed once, reused while they are unchanged
        slot = len(w.scope["_derived"])
        w.scope["_derived"][slot] = None
        key = f"_version_key({', '.join(w.names[a] for a in sources)})" if sources else "()"
        if sources and spec.trained is not None:  # see Trained
            key += " if not _graph.trained else None"
        w.emit(f"key = {key}")
        w.emit(f"hit = _derived[{slot}]")
        w.emit("if key is not None and hit is not None and hit[0] == key:")
        outputs = list(spec.kernels[op].lowered.outputs) if op in spec.kernels else [op.results[0]]
        names = [w.fresh(v) for v in outputs]
        w.emit(f"    {', '.join(names)}{',' if len(names) == 1 else ''} = hit[1]")
        w.emit("else:")
        start = len(w.lines)
        _write_compute(w, op, reuse_names=names)
        w.lines[start:] = ["    " + line for line in w.lines[start:]]
        w.emit(f"    _derived[{slot}] = (key, ({', '.join(names)},))")
        for value, name in zip(outputs, names):  # reused by later calls: the caller gets a copy
            if value in w.escaping:  # in its layout: later launches pass its literal strides
                w.emit(f"{name} = _copy_as({name})  # returned: the caller's own memory")
            else:
                w.shared.add(name)
    else:
        _write_compute(w, op)
    for value in spec.release_after.get(op, ()):
        name = w.names.get(value)
        if name is not None and name.startswith("buf") and w.buffers.release(name, w.layouts, len(w.lines)):
            w.emit(f"del {name}")


def _write_compute(w: _Writer, op: Operation, reuse_names: list[str] | None = None) -> None:
    kernel = w.inputs.kernels.get(op)
    if kernel is not None:
        choose = w.inputs.choose if op not in w.inputs.param_sources else None
        metas = [w.meta[v] for v in kernel.lowered.inputs]
        way, chosen = choose(kernel, metas) if choose else ("kernel", None)
        if way == "library":
            _write_library_call(w, kernel, chosen, reuse_names)
        else:  # its kernel, or the other backend's ("alternative", measured faster)
            _write_launch(w, chosen or kernel, reuse_names)
        return
    result = op.results[0]
    operands = [w.names[v] for v in op.operands]
    allocated = op in w.allocated_as_view  # its source's buffer was allocated as this view: no step
    name = operands[0] if allocated else reuse_names[0] if reuse_names else w.fresh(result)
    w.names[result] = name
    fresh = makes_fresh_memory(op, w.meta)  # else the caller may have it as it is
    if allocated:
        w.emit(f"# {op.kind.data} of {name}: its buffer was allocated as this view")
    elif isinstance(op, ein.ViewOp):
        w.emit(f"{name} = {_literal_view(op, operands[0])}")
    elif isinstance(op, (ein.ConstantOp, ein.IotaOp)):  # made once, on the device
        made = w.bind("c", run_op(op, {}, w.inputs.device))
        if result in w.escaping:  # returned: the caller's own memory, every call, contiguous as PyTorch's
            w.emit(f"{name} = {made}.clone(memory_format=torch.contiguous_format)  # {op.name}")
        else:
            w.emit(f"{name} = {made}  # {op.name}")
            w.shared.add(name)
    elif isinstance(op, ein.ConcatOp):
        w.emit(f"{name} = torch.cat(({''.join(o + ', ' for o in operands)}), {op.dim.value.data})")
    elif isinstance(op, ein.GatherOp):
        w.emit(f"{name} = {_gather_expression(w, op, operands)}")
    else:
        step = planned_op(op)
        glue = w.bind("op", _glue(step, w.inputs.device))
        w.emit(f"{name} = {glue}({', '.join(operands)})  # {op.name} on the ein reference interpreter")
        fresh = _glue_makes_fresh_memory(op, step, w.meta)
    # a view lives in its source's buffer; a PyTorch op may return a view of an operand (a no-op cast)
    w.buffers.alias(name, operands)
    if allocated or not fresh:
        w.share(name, operands)
    w.meta[result] = run_op(op, {v: w.meta[v] for v in op.operands}, torch.device("meta"))
    if isinstance(op, (ein.ConstantOp, ein.IotaOp)) and result in w.escaping:
        w.meta[result] = w.meta[result].contiguous()  # the clone above


def makes_fresh_memory(op: Operation, meta: dict[SSAValue, torch.Tensor]) -> bool:
    """Whether the program's step for `op` surely returns new memory: a concatenation, a gather
    (`index_select` or advanced indexing), a flip, or a reshape its operand's layout (in `meta`)
    cannot view (PyTorch's `reshape` copies: a transposed attention output flattened to rows). Such a
    result is returned as it is, not copied again for the caller (`LineWriter.returned`)."""
    if isinstance(op, (ein.ConcatOp, ein.GatherOp)):
        return True
    if not isinstance(op, ein.ViewOp) or op.kind.data not in ("reshape", "flip"):
        return False
    if op.kind.data == "flip":
        return True
    source = meta.get(op.operands[0])
    return source is not None and not source.reshape(tuple(shape_of(op.result.type)))._is_view()


def _write_launch(w: _Writer, kernel: object, reuse_names: list[str] | None) -> None:
    outputs = list(kernel.lowered.outputs)
    names = reuse_names or [w.fresh(v) for v in outputs]
    for value, name in zip(outputs, names):
        w.names[value] = name
        out_type = value.type
        shape = tuple(shape_of(out_type))
        dtype = to_torch_dtype(out_type.get_element_type())
        order = returned_order(w.inputs, kernel, value)
        ordered = strides_in_order(shape, order) if order is not None else None
        strides = ordered or output_strides(kernel, shape, dtype)
        w.meta[value] = torch.empty_strided(shape, strides, dtype=dtype, device="meta")
        layout = (shape, strides, dtype)
        pinned = reuse_names is not None or value in w.inputs.results
        view = w.view_of.get(value)
        as_view = view is not None and is_packed(shape, strides)
        if as_view:
            # the buffer is made as the view's tensor; launches pass it with this output's literal strides
            shape = tuple(shape_of(view.result.type))
            strides = tuple(run_op(view, {value: w.meta[value]}, torch.device("meta")).stride())
            layout = (shape, strides, dtype)
            pinned = pinned or view.result in w.inputs.results
            w.allocated_as_view.add(view)
        w.layouts[name] = layout
        taken = w.buffers.allocate(name, layout, pinned)
        if taken is not None:
            w.emit(f"{name} = {taken}; del {taken}  # reuse")
        else:
            if as_view or ordered or is_packed(shape, strides):
                w.emit(f"{name} = _empty({shape!r}, {strides!r}, {dtype})")
            else:  # a GEMM's stores run into the padding: the last row's too
                w.padded.add(value)
                w.emit(f"{name} = _padded({shape!r}, {strides!r}, dtype={dtype}, device=_device)"
                       "  # rows start 128-byte aligned (output_strides)")  # fmt: skip
    args = []
    for value in [*kernel.lowered.inputs, *outputs]:
        args.append(w.names[value])
        args.extend(str(s) for s in w.meta[value].stride())
    launch = kernel.launcher.bind(kernel.config.params, kernel.config.num_warps, kernel.config.num_stages)
    handle = w.bind("k", launch)
    lowered = kernel.lowered
    title = lowered.kernel.sym_name.data if lowered.kernel is not None else lowered.group.name
    grid = getattr(launch, "grid", None) or "its launcher's"
    backend = "" if kernel.backend == "triton" else f" [{kernel.backend}]"
    w.emit(f"# {title} ({lowered.group.kind}){backend}: grid {grid}, {kernel.config.key()}")
    w.emit(f"{handle}(stream, {', '.join(args)})")
    w.launches += 1


def returned_order(inputs: ProgramInputs, kernel: object, value: SSAValue) -> tuple[int, ...] | None:
    """The order of dims (outermost first) a pointwise kernel's output is allocated in where the
    partition returns it and PyTorch's layout is dense but not row-major (`ProgramInputs.orders`),
    as eager's elementwise ops keep a transposed operand's layout: RoPE's query of
    `q_proj(x).view(b, s, h, d).transpose(1, 2)` is [b, s, h, d] in memory, so SDPA's output, which
    follows its query's layout, is too, and the attention output's `transpose(1, 2).reshape(b, s,
    h * d)` is a view. A row-major query made that reshape copy the attention output each layer of a
    training step. None: the kernel's own layout."""
    orders = inputs.orders
    if not orders or getattr(kernel, "backend", "triton") != "triton":
        return None
    if kernel.lowered.group.kind != "pointwise":
        return None
    order = next((o for r, o in zip(inputs.results, orders) if r == value and o is not None), None)
    rank = len(dims_of(value.type))
    return order if order is not None and sorted(order) == list(range(rank)) else None


def strides_in_order(shape: Sequence[int], order: Sequence[int]) -> tuple[int, ...]:
    """Dense strides of `shape` with its dims laid out in `order` (outermost first)."""
    strides, step = [0] * len(shape), 1
    for d in reversed(order):
        strides[d] = step
        step *= max(int(shape[d]), 1)
    return tuple(strides)


def step_reads(op: Operation, kernels: dict) -> Sequence[SSAValue]:
    """What a program step reads: a kernel launch its kernel's inputs, any other op its operands."""
    return kernels[op].lowered.inputs if op in kernels else op.operands


def _views_to_allocate(spec: ProgramInputs) -> dict[SSAValue, ein.ViewOp]:
    """Kernel outputs that leave their kernels only through one permute (a convolution's
    NHWC operand viewed back as NCHW, a derived weight likewise), mapped to that view: the program
    allocates the buffer as the view's tensor (same storage, the view's shape and strides) and
    passes it to the launches with the output's own literal strides, so no view is made per call.
    Only where nothing else reads the output as a tensor (no glue op, not a result)."""
    launched = [v for k in spec.kernels.values() for v in k.lowered.outputs]
    readers: dict[SSAValue, list[Operation]] = {}
    for op in spec.steps:
        reads = step_reads(op, spec.kernels)
        for value in reads:
            readers.setdefault(value, []).append(op)
    results = set(spec.results)
    chosen = {}
    for value in launched:
        views = [r for r in readers.get(value, ()) if r not in spec.kernels]
        if value in results or len(views) != 1 or not isinstance(views[0], ein.ViewOp):
            continue
        if views[0].kind.data == "permute":  # (the launcher's TMA and row-tail checks read the
            chosen[value] = views[0]  # buffer's strides: a permutation's are the same set, decided alike)
    return chosen


def _write_library_call(w: _Writer, kernel: object, library: Callable, reuse_names: list[str] | None) -> None:
    """A group measured faster on the library path: one call runs its ops as PyTorch ops, and its
    outputs are fresh tensors in the layout its kernel's buffers would have had (`output_strides`:
    row-major, or padded rows, which an unaligned library matmul writes as they are)."""
    outputs = list(kernel.lowered.outputs)
    names = reuse_names or [w.fresh(v) for v in outputs]
    for value, name in zip(outputs, names):
        w.names[value] = name
        dtype = to_torch_dtype(value.type.get_element_type())
        shape = tuple(shape_of(value.type))
        strides = output_strides(kernel, shape, dtype)
        meta = torch.empty_strided(shape, strides, dtype=dtype, device="meta")
        if not is_packed(shape, strides):
            w.padded.add(value)
        w.meta[value] = meta
        w.layouts[name] = (tuple(meta.shape), tuple(meta.stride()), dtype)
        pinned = reuse_names is not None or value in w.inputs.results
        taken = w.buffers.allocate(name, w.layouts[name], pinned)
        if taken is not None:  # a free buffer this output could have taken: the library allocates its own
            w.emit(f"del {taken}")
    handle = w.bind("lib", library)
    group = kernel.lowered.group
    inputs = ", ".join(_as_tensor(w, v) for v in kernel.lowered.inputs)
    how = getattr(library, "title", "the library path (its ops as PyTorch ops)")
    w.emit(f"# {group.name} ({group.kind}): {how}, measured faster")
    w.emit(f"{', '.join(names)}{',' if len(names) == 1 else ''} = {handle}({inputs})")


def _as_tensor(w: _Writer, value: SSAValue) -> str:
    """`value` as a tensor of its own shape. A kernel output whose buffer was allocated as the one
    view read of it (`_views_to_allocate`) is that view's tensor: launches take it with the output's
    literal strides, a library call needs the output itself (GPT-2's training forward passed the
    transposed MLP activation to cuBLAS's addmm, which refused its shape)."""
    name = w.names[value]
    view = w.view_of.get(value)
    if view is None or view not in w.allocated_as_view:
        return name
    meta = w.meta[value]
    return f"{name}.as_strided({tuple(meta.shape)!r}, {tuple(meta.stride())!r})"


def _gather_expression(w: _Writer, op: ein.GatherOp, operands: list[str]) -> str:
    """Advanced indexing equal to the interpreter's gather (PyTorch wraps negative indices itself);
    an embedding lookup (a [V, D] table read at one index tensor, then along D) copies rows
    (`interpreter.gather_rows`)."""
    out = shape_of(op.result.type)
    table, indices = operands[0], operands[1:]
    sources = op.sources
    if reads_table_rows(op):
        rows = w.bind("gather_rows", gather_rows)
        return f"{rows}({table}, {indices[0]}, {tuple(out)!r})  # ein.gather: rows of a table"
    at = []
    for m in sources:
        if m >= 0:  # a result dim: an arange along it, made once
            along = [1] * len(out)
            along[m] = out[m]
            at.append(w.bind("c", torch.arange(out[m], device=w.inputs.device).reshape(along)))
        else:
            at.append(indices[-1 - m])
    return f"{table}[{', '.join(at)}].expand({tuple(out)!r})  # ein.gather"


def _glue_makes_fresh_memory(op: Operation, step: Step, meta: dict[SSAValue, torch.Tensor]) -> bool:
    """Whether a map run on the reference interpreter (`step`, as `_glue` runs it) surely returns new
    memory: run twice on `meta`'s tensors, its results view neither an operand (a no-op cast returns
    its operand) nor each other (a map yielding a constant returns the one made per device,
    broadcast). A training step's loss, the division of two reductions, was cloned for the caller
    every step."""
    is_alias_of = getattr(torch._C, "_is_alias_of", None)
    if is_alias_of is None or not isinstance(op, ein.MapOp) or any(v not in meta for v in op.operands):
        return False
    operands = [meta[v] for v in op.operands]
    try:
        first, second = step(torch.device("meta"), *operands), step(torch.device("meta"), *operands)
    except Exception:  # noqa: BLE001 (a step the meta device cannot run: said not to be new)
        return False
    return isinstance(first, torch.Tensor) and not any(is_alias_of(first, t) for t in (second, *operands))


def _glue(step: Step, device: torch.device) -> Callable[..., torch.Tensor]:
    """An op outside every kernel, as the reference interpreter runs it, resolved once
    (`library_plan.planned_op`: a map's body is not walked per call)."""
    return lambda *tensors: step(device, *tensors)


def stream_getter(device: torch.device) -> Callable[[], int]:
    """A call that returns the current CUDA stream of `device` as a raw handle (what launchers take)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        return lambda: raw(index)
    return lambda: torch.cuda.current_stream(index).cuda_stream


def allocator(device: torch.device) -> Callable[[], Callable[..., torch.Tensor]]:
    """What a program calls once per call for its buffer allocator, `empty(shape, strides, dtype)` on
    `device`. On CUDA, while `device` is the current device, it is the allocator Inductor's programs
    use (`_empty_strided_cuda`: it skips `torch.empty_strided`'s argument parsing, ~2 µs of a GPT-2
    training step's ~170 allocations each); otherwise `torch.empty_strided` on `device`."""

    def plain(shape: tuple, strides: tuple, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty_strided(shape, strides, dtype=dtype, device=device)

    guards = getattr(getattr(torch._C, "_dynamo", None), "guards", None)
    fast = getattr(guards, "_empty_strided_cuda", None) if device.type == "cuda" else None
    current = getattr(torch._C, "_cuda_getDevice", None)
    if fast is None or current is None:
        return lambda: plain
    index = device.index if device.index is not None else current()
    return lambda: fast if current() == index else plain


# Changes to parameters that move no version counter, counted in this process: optimizer steps (a
# fused or foreach step, `AdamW(fused=True)`, which transformers' Trainer picks on a GPU: an evaluation
# under no_grad between steps reused values folded from the old weights, 0.19 off after one step) and
# every use of a parameter's `.data` (`p.data.add_(g, alpha=-lr)`, peft's LoRA merge `w.data += delta`,
# `vector_to_parameters`'s `p.data = ...`: a helper's sweep found each stale, up to 1.5 off). Either
# invalidates what every program derived from parameters (a folded weight, a merged QKV weight).
_unversioned_changes = [0]


def _count_unversioned_change(*_: object) -> None:
    _unversioned_changes[0] += 1


def unversioned_changes() -> int:
    """Optimizer steps taken and parameters' `.data` used in this process (see `watch_parameter_data`)."""
    return _unversioned_changes[0]


register_optimizer_step_post_hook(_count_unversioned_change)


def parameters_changed() -> None:
    """Say that parameters or buffers changed in a way no version counter shows, so that what
    compiled programs derived from them (folded or merged weights) is recomputed at their next call
    (and CUDA graphs holding such values are captured again). Needed only where tilefuse cannot see
    the change: memory written through an alias of a parameter other than its `.data` as it is
    used (a held `p.data` reference, a view's or a `state_dict()` value's `.data`, a flat buffer the
    parameters point into, numpy, `untyped_storage()`), a buffer's `.data`, a functional fused
    optimizer (`torch.optim.adam.adam(..., fused=True)`, which runs no `Optimizer.step` hook).
    In-place ops on the parameters, `load_state_dict`, `torch.optim` steps and `p.data.add_(...)`
    are seen without it."""
    _count_unversioned_change()


_TENSOR_DATA = torch._C.TensorBase.data  # the C attribute `Tensor.data`, under Parameter's


def _data(self: torch.Tensor) -> torch.Tensor:
    _count_unversioned_change()  # what is done with the tensor returned is not seen: assume a write
    return _TENSOR_DATA.__get__(self)


def _set_data(self: torch.Tensor, value: torch.Tensor) -> None:
    _count_unversioned_change()
    _TENSOR_DATA.__set__(self, value)


def watch_parameter_data() -> None:
    """Count every read or assignment of a parameter's `.data` as a change (`unversioned_changes`).

    A tensor got through `.data` has its own version counter, so an in-place write through it is
    invisible to the parameter's; nothing can tell a read from a write, so each use counts (a use
    outside the hot loop costs one recompute of the derived values; a `p.data` inside the compiled
    forward is traced through). Installed once, on `torch.nn.Parameter` only (buffers' `.data` writes
    are not seen), the first time a program derives values from parameters; Parameter subclasses
    that define their own `data` keep it."""
    if vars(torch.nn.Parameter).get("data") is None:
        torch.nn.Parameter.data = property(_data, _set_data, doc=_TENSOR_DATA.__doc__)


def over_storage(t: torch.Tensor, storage: torch.UntypedStorage) -> torch.Tensor:
    """A tensor of `t`'s shape, strides and offset over `storage`, which is no view of anything (a
    replay's output lent over the graph's pool, a training output over a program's buffer). A
    conjugate or negative view (`x.conj()` of a complex tensor: Llama 4's rotation saves the
    conjugate of its angles for the backward) keeps its bit: the memory holds the unconjugated
    values, and without the bit the backward rotated the gradient the wrong way."""
    out = torch.empty(0, dtype=t.dtype, device=t.device).set_(
        storage, t.storage_offset(), t.shape, t.stride()
    )
    if t.is_conj():
        torch._C._set_conj(out, True)
    if t.is_neg():
        torch._C._set_neg(out, True)
    return out


_tokens = itertools.count()


MARK = "_tilefuse_token"  # the attribute `tensor_token` marks a tensor with


def tensor_token(t: torch.Tensor) -> int:
    """A number of this tensor object's own, given at first sight: a parameter replaced by a new one
    (`m.w = nn.Parameter(...)`) that the allocator put in the old one's memory has the old one's
    address and version (0), and its Python object (its `id`) may take the old one's place too; only
    a mark on the object tells them apart. A weak reference would (`torch.utils.swap_tensors` refuses
    tensors that have one, as `model.double()` swaps under `set_swap_module_params_on_conversion`),
    and so would a strong one (it checks use counts); the mark is an attribute, `_tilefuse_token`:
    the number and the `id` of the object it was given to. Pickling (`torch.save` of a model) and
    `Tensor.__deepcopy__` copy attributes, and a checkpoint loaded into the freed memory of the last
    one, at the same version, carried the same number (a review's repro: the old folded weight,
    3.2 off); a copy is another object than the one its mark names, and gets a number of its own.
    Plain integers, so `torch.load(weights_only=True)` still reads a parameter that carries one."""
    mark = getattr(t, MARK, None)
    if mark is not None and mark[1] == id(t):
        return mark[0]
    token = next(_tokens)
    try:
        setattr(t, MARK, (token, id(t)))
    except (AttributeError, RuntimeError):  # a tensor that takes no attributes: its id
        return id(t)
    return token


def _version_key(*tensors: torch.Tensor) -> tuple | None:
    """What identifies these parameters' contents: storage, version and object (`tensor_token`), and
    the changes no version counter shows (`unversioned_changes`); None if untracked (inference tensors
    have no version counter)."""
    try:
        return (*((t.data_ptr(), t._version, tensor_token(t)) for t in tensors), _unversioned_changes[0])
    except RuntimeError:
        return None
