"""form-fusion-groups: decide which `ein` ops run together in one kernel.

Each op that computes gets an `ein.group = "kN"` attribute; ops of one group
become one `tile.kernel`. The decision is in the IR, so the dump shows which
op went where:

- **gemm**: a contraction plus its chain of elementwise consumers (bias,
  activation, residual, scaling, cast, where/clamp), as long as each link has
  no other user and keeps the contraction's output shape. Two contractions
  whose results meet in the first map of the chain (SwiGLU:
  `silu(x@W1) * (x@W3)`) share one kernel with two accumulators.
- **reduction**: a reduction plus the map that produces its input, if that map
  has no other user (a prologue: `sum(exp(x - m))` reads `x` once).
- **pointwise**: every other map.

Views, splat constants and iotas are not kernels: kernels index through them.
Everything else (concatenation) runs as a PyTorch op between kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, StringAttr
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass

from ..ir import einsum as ein
from ..ir.builder import single_user
from ..ir.dtypes import shape_of

GROUP_ATTR = "ein.group"
VIRTUAL_OPS = (ein.ViewOp, ein.ConstantOp, ein.IotaOp)


@dataclass
class FusionGroup:
    """The ops of one future kernel, in program order, and what kind of kernel it is."""

    name: str
    kind: str
    ops: list[Operation]

    @property
    def output(self) -> SSAValue:
        """A group has one result that leaves it: the last op's."""
        return self.ops[-1].results[0]


def _same_output_layout(a: ein.ContractOp, b: ein.ContractOp) -> bool:
    """Two contractions a dual-accumulator kernel can run together: same lhs, shapes and K."""
    if a.lhs is not b.lhs or a.result.type != b.result.type:
        return False
    (la, ra, oa), (lb, rb, ob) = ein.parse_spec(a.spec.data), ein.parse_spec(b.spec.data)
    return la == lb and len(oa) == len(ob) and ra == rb.translate(str.maketrans(ob, oa))


def _gemm_group(contract: ein.ContractOp, taken: set[Operation]) -> list[Operation]:
    ops: list[Operation] = [contract]
    value = contract.result
    out_shape = shape_of(contract.result.type)
    while (user := single_user(value)) is not None and isinstance(user, ein.MapOp):
        if user in taken or shape_of(user.result.type) != out_shape:
            break
        for other in user.inputs:
            sibling = other.owner
            if (
                other is not value and isinstance(sibling, ein.ContractOp) and sibling not in taken
                and len(ops) == 1 and single_user(other) is user and _same_output_layout(contract, sibling)
            ):  # fmt: skip
                ops.insert(0, sibling)
        ops.append(user)
        value = user.result
    return ops


def form_groups(fn: func.FuncOp) -> list[FusionGroup]:
    """Partition the computing ops of `fn` into fusion groups (see the module docstring)."""
    ops = list(fn.body.block.ops)
    taken: set[Operation] = set()
    groups: list[tuple[int, str, list[Operation]]] = []

    def add(kind: str, members: list[Operation]) -> None:
        taken.update(members)
        groups.append((max(ops.index(m) for m in members), kind, members))

    for op in ops:
        if isinstance(op, ein.ContractOp) and op not in taken:
            add("gemm", sorted(_gemm_group(op, taken), key=ops.index))
    for op in ops:
        if isinstance(op, ein.ReduceOp) and op not in taken:
            producer = op.input.owner
            prologue = (
                isinstance(producer, ein.MapOp) and producer not in taken
                and single_user(op.input) is op and producer.result.type == op.input.type
            )  # fmt: skip
            add("reduction", [producer, op] if prologue else [op])
    for op in ops:
        if isinstance(op, ein.MapOp) and op not in taken:
            add("pointwise", [op])
    groups.sort(key=lambda g: g[0])
    return [FusionGroup(f"k{i}", kind, members) for i, (_, kind, members) in enumerate(groups)]


def annotate(groups: list[FusionGroup]) -> None:
    for g in groups:
        for op in g.ops:
            op.attributes[GROUP_ATTR] = StringAttr(g.name)


def read_groups(fn: func.FuncOp) -> list[FusionGroup]:
    """The groups recorded in `fn`'s `ein.group` attributes, in program order of their outputs."""
    members: dict[str, list[Operation]] = {}
    for op in fn.body.block.ops:
        if GROUP_ATTR in op.attributes:
            members.setdefault(op.attributes[GROUP_ATTR].data, []).append(op)
    groups = [FusionGroup(name, _kind(ops), ops) for name, ops in members.items()]
    order = list(fn.body.block.ops)
    return sorted(groups, key=lambda g: order.index(g.ops[-1]))


def _kind(ops: list[Operation]) -> str:
    if any(isinstance(op, ein.ContractOp) for op in ops):
        return "gemm"
    if any(isinstance(op, ein.ReduceOp) for op in ops):
        return "reduction"
    return "pointwise"


def functions(module: ModuleOp) -> Iterator[func.FuncOp]:
    return (op for op in module.ops if isinstance(op, func.FuncOp))


@dataclass(frozen=True)
class FormFusionGroups(ModulePass):
    """Annotate every computing `ein` op with the kernel (`ein.group`) it will run in."""

    name = "form-fusion-groups"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in functions(op):
            annotate(form_groups(fn))
