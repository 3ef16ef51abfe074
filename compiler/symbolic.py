"""The parts of a dynamic graph with symbolic sizes, as `ein` functions whose types carry them.

A graph Dynamo traced with a dynamic dim (`dynamic=True`, `mark_dynamic`, or a second size seen)
has nodes whose sizes are expressions over size symbols (`s0`, `s0*s1`). The pipeline compiles
its nodes of static sizes in a first partitioning round, and in a second
(`partition.partition_symbolic`) those of its other nodes whose kernels take their sizes as
arguments (pointwise, reduction and row kernels); the rest run in PyTorch. This module decides
which nodes' lowerings import symbolic sizes without a guard (`symbolic_reason`), and imports
the graph's parts of symbolic sizes into `ein` for the dump (`ein_dynamic.mlir`) and the
reference interpreter, which runs such a function at whatever sizes its arguments have.

Each region is a maximal connected set of such nodes whose lowering reads sizes only through the
node's metadata as expressions (`symbolic_lowering`): a lowering that compared a SymInt would add
a guard to Dynamo's shape environment, and a guard would make every other size compile again.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule, Node
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, TensorType

from ..ir.builder import EinBuilder
from ..ir.dtypes import SUPPORTED_TORCH_DTYPES, dims_of, size_of, size_symbols, to_mlir_type
from ..ir.module import print_module
from . import lower_elementwise, lower_structured  # noqa: F401  (register lowerings)
from .fx_import import ImportFailure, _lower_node, _value_name
from .lowering_table import LOWERINGS, LoweredValue, LoweringContext, _walk_vals, bound_args, target_name

aten = torch.ops.aten

# lowerings that read sizes only as the node's metadata (`LoweringContext.out_shape`) and ranks:
# no comparison of a SymInt, so importing them adds no guard
_STRUCTURED = {
    aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default,
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
    aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.expand.default,
    aten.sum.dim_IntList, aten.sum.default, aten.mean.dim, aten.mean.default, aten.amax.default,
    aten.amin.default, aten._softmax.default, aten._log_softmax.default,
    aten.native_layer_norm.default, aten.var.correction, aten.var_mean.correction, aten.cat.default,
}  # fmt: skip
# elementwise lowerings that make a tensor of a given size: only their sizes may be symbolic (the
# lowerings read them as the result's metadata); a symbolic start, step or fill value is refused
CREATION_OPS = {
    aten.full.default, aten.full_like.default, aten.fill.Scalar, aten.scalar_tensor.default,
    aten.zeros_like.default, aten.zeros.default, aten.ones_like.default, aten.ones.default,
    aten.arange.start_step, aten.arange.start, aten.arange.default,
}  # fmt: skip
# ops whose size arguments may be symbolic: their lowerings read the result's metadata instead
_SIZE_ARGUMENTS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.expand.default,
    aten.full.default, aten.zeros.default, aten.ones.default, aten.arange.default, aten.arange.start,
    aten.arange.start_step,
}  # fmt: skip
_VALUE_ARGUMENTS = ("start", "step", "fill_value", "value", "s")  # read as numbers by the lowerings


def _elementwise(target: object) -> bool:
    lowering = LOWERINGS.get(target)
    return lowering is not None and lowering.fn.__module__ == lower_elementwise.__name__


def symbolic_lowering(target: object) -> bool:
    """Whether the op's lowering imports symbolic sizes without guarding on them."""
    return target in _STRUCTURED or _elementwise(target)


def tensors_of(value: object) -> list[torch.Tensor]:
    return [v for v in _walk_vals(value) if isinstance(v, torch.Tensor)]


def has_symbolic_size(node: Node) -> bool:
    return any(any(isinstance(d, torch.SymInt) for d in t.shape) for t in tensors_of(node.meta.get("val")))


def symbolic_reason(node: Node) -> str | None:
    """Why a node with symbolic sizes cannot be imported with them, or None when it can."""
    if not symbolic_lowering(node.target):
        return f"{target_name(node)} has no lowering checked for symbolic sizes"
    for t in tensors_of(node.meta.get("val")) + [
        t for arg in node.all_input_nodes for t in tensors_of(arg.meta.get("val"))
    ]:
        if t.dtype not in SUPPORTED_TORCH_DTYPES or t.dtype == torch.float64:
            return f"dtype {t.dtype}"
    for arg in node.all_input_nodes:
        if not tensors_of(arg.meta.get("val")) and node.target not in _SIZE_ARGUMENTS:
            return f"input {arg.name} is a symbolic scalar"
    if node.target in CREATION_OPS:
        args = bound_args(node)
        for name in _VALUE_ARGUMENTS:
            if isinstance(args.get(name), (Node, torch.SymInt, torch.SymFloat)):
                return f"its {name} is symbolic"
    lowering = LOWERINGS[node.target]
    return lowering.check(node) if lowering.check else None


def _reads_values(user: Node) -> bool:
    """Whether a user reads a tensor's values (not only its sizes, as `aten.sym_size` does)."""
    return user.op == "output" or bool(tensors_of(user.meta.get("val")))


@dataclass
class Region:
    """Connected nodes of symbolic sizes that import together as one function."""

    nodes: list[Node]
    inputs: list[Node] = field(default_factory=list)  # tensors from outside, in first-use order
    outputs: list[Node] = field(default_factory=list)  # results read outside (or graph outputs)


def symbolic_regions(gm: GraphModule) -> tuple[list[Region], dict[str, str]]:
    """The graph's regions of importable nodes of symbolic sizes (in graph order), and the nodes of
    symbolic sizes left out, with the reason."""
    importable: dict[Node, None] = {}
    left_out: dict[str, str] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:  # a multi-output op's items go with it
            if node.args[0] in importable:
                importable[node] = None
            continue
        if not has_symbolic_size(node):
            continue
        reason = symbolic_reason(node)
        if reason is None:
            importable[node] = None
        else:
            left_out[node.name] = reason
    parent = {n: n for n in importable}

    def root(n: Node) -> Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for n in importable:
        for arg in n.all_input_nodes:
            if arg in importable:
                parent[root(arg)] = root(n)
    members: dict[Node, list[Node]] = {}
    for n in importable:  # graph order within and across regions
        members.setdefault(root(n), []).append(n)
    regions = []
    for nodes in members.values():
        inside = set(nodes)
        region = Region(nodes)
        for n in nodes:
            for arg in n.all_input_nodes:
                if arg not in inside and tensors_of(arg.meta.get("val")) and arg not in region.inputs:
                    region.inputs.append(arg)
            if any(u not in inside and _reads_values(u) for u in n.users) and tensors_of(n.meta.get("val")):
                if n.target is not operator.getitem and isinstance(n.meta.get("val"), (list, tuple)):
                    continue  # its items are the outputs
                region.outputs.append(n)
        if region.outputs:
            regions.append(region)
    return regions, left_out


def import_region(region: Region, name: str) -> func.FuncOp:
    """One region as an `ein` function of its outside inputs, returning what is read outside it."""
    b = EinBuilder(name)
    env: dict[Node, LoweredValue] = {}
    ctx = LoweringContext(b, env)
    for node in region.inputs:
        val = node.meta["val"]
        if isinstance(val, (list, tuple)):
            raise ImportFailure(f"input {node.name} is a tuple of tensors")
        env[node] = b.add_argument(
            [size_of(d) for d in val.shape], to_mlir_type(val.dtype), _value_name(node.name)
        )
    for node in region.nodes:
        env[node] = _lower_node(ctx, node)
    return b.finish([env[n] for n in region.outputs])


def unbound_sizes(fn: func.FuncOp, size_args: Sequence[object] = ()) -> list[str]:
    """The size symbols in `fn`'s types that neither its arguments' sizes nor the sizes it also
    takes (`size_args`: Dynamo's SymInts) bind (`symbolic_program.size_bindings`): such a function
    could not be run at sizes given by its arguments alone."""
    from .symbolic_program import size_bindings

    sources = [("", d) for arg in fn.body.block.args for d in dims_of(arg.type)]
    bound = set(size_bindings(sources + [("", d) for d in size_args]))
    used = {s for op in fn.walk() for r in op.results if isinstance(r.type, TensorType)
            for s in size_symbols(dims_of(r.type))}  # fmt: skip
    used |= {s for arg in fn.body.block.args for s in size_symbols(dims_of(arg.type))}
    return sorted(str(s) for s in used - bound)


def dynamic_module(gm: GraphModule, name: str) -> tuple[ModuleOp, list[str]]:
    """The graph's symbolic-size regions as one `ein` module (function `<name>_dyn<i>` per region),
    and notes for the dump's header: what each function takes and returns, what was left out."""
    regions, left_out = symbolic_regions(gm)
    functions, notes = [], []
    for i, region in enumerate(regions):
        fn_name = f"{name}_dyn{i}"
        try:
            fn = import_region(region, fn_name)
            fn.verify()
            unbound = unbound_sizes(fn)
            if unbound:
                raise ImportFailure(f"sizes {', '.join(unbound)} are bound by none of its inputs' sizes")
        except Exception as e:  # a dump: say why, never fail the compile
            notes.append(f"@{fn_name} ({len(region.nodes)} nodes from {region.nodes[0].name}): not imported: "
                         f"{type(e).__name__}: {e}")  # fmt: skip
            continue
        functions.append(fn)
        ins = ", ".join(n.name for n in region.inputs)
        outs = ", ".join(n.name for n in region.outputs)
        notes.append(f"@{fn_name}: {len(region.nodes)} nodes; takes {ins or 'nothing'}; returns {outs}")
    for node, reason in left_out.items():
        notes.append(f"{node}: left out: {reason}")
    return ModuleOp(functions), notes


DUMP_FILE = "ein_dynamic.mlir"


def has_symbolic_nodes(gm: GraphModule) -> bool:
    """Whether an op of `gm` has a symbolic size, in its results or in its inputs (a contraction
    over a symbolic size into a static result)."""
    ops = [n for n in gm.graph.nodes if n.op == "call_function"]
    return any(has_symbolic_size(n) or any(map(has_symbolic_size, n.all_input_nodes)) for n in ops)


def dynamic_dump(gm: GraphModule, name: str) -> str:
    """`DUMP_FILE`'s text: the regions of symbolic sizes as `ein` (parses back with
    `ir.module.parse_module`), headed by comments naming each function's inputs and outputs and the
    nodes left out with their reasons. Never raises: a failure is the file's one line (a dump never
    fails the compile)."""
    try:
        module, notes = dynamic_module(gm, name)
    except Exception as e:  # noqa: BLE001
        return f"// {name}: its parts of symbolic sizes were not imported: {type(e).__name__}: {e}\n"
    header = [
        f"// {name}: the parts of the graph with symbolic sizes, as `ein` (sizes named in each type's",
        "// encoding). Pointwise and row work of these parts compiles into kernels taking their sizes",
        "// (partitions dynamic_N, in the graph's report); contractions and the rest run in PyTorch.",
        *(f"// {note}" for note in notes),
    ]
    return "\n".join(header) + "\n" + print_module(module)
