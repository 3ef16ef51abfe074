"""The registry of aten → `ein` lowerings and the context they run in.

A lowering is a function `(ctx, node) -> value | tuple of values` registered
for one or more aten overloads, with an optional `check(node)` that returns
why a particular call cannot be lowered (e.g. dropout in attention). The
partitioner asks `unsupported_reason` before a node joins a compiled group.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.fx import Node
from xdsl.ir import Attribute, SSAValue

from ..ir.builder import EinBuilder
from ..ir.dtypes import SUPPORTED_TORCH_DTYPES, Dim, size_of, to_mlir_type

LoweredValue = SSAValue | tuple[SSAValue, ...]
LoweringFn = Callable[["LoweringContext", Node], LoweredValue]
CheckFn = Callable[[Node], "str | None"]

# on an attention node whose constant mask is a sliding-window causal mask (`causal_masks`): its window.
# The node keeps the mask (PyTorch's paths read it); the import writes the band from two aranges instead
# (`lower_structured.lower_attention`), causal, so the kernel skips the key blocks past the diagonal
WINDOW_META = "tilefuse_causal_window"


@dataclass(frozen=True)
class Lowering:
    fn: LoweringFn
    check: CheckFn | None = None


LOWERINGS: dict[object, Lowering] = {}


def lowers(*targets: object, check: CheckFn | None = None) -> Callable[[LoweringFn], LoweringFn]:
    """Register `fn` as the lowering of each aten overload in `targets`."""

    def register(fn: LoweringFn) -> LoweringFn:
        for t in targets:
            LOWERINGS[t] = Lowering(fn, check)
        return fn

    return register


def only_first_output_read(node: Node) -> bool:
    """Whether every user of a multi-output op reads its first output (values, not indices; an
    attention's output, not its logsumexp)."""
    return all(u.target is operator.getitem and u.args[1] == 0 for u in node.users)


def target_name(node: Node) -> str:
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return f"aten.{t.__name__}" if t.namespace == "aten" else f"{t.namespace}.{t.__name__}"
    return getattr(t, "__name__", str(t))


DYNAMIC_SHAPE = "dynamic shape"  # in the reason of a node the static partitions leave out for its sizes


def _tensor_reason(val: object, what: str, empty_ok: bool = True) -> str | None:
    if not isinstance(val, torch.Tensor):
        return None
    if val.dtype not in SUPPORTED_TORCH_DTYPES:
        return f"{what} has dtype {val.dtype}, which ein does not support"
    if val.dtype == torch.float64:
        # the kernels accumulate and compute math in at most f32 (a float64 GEMM came out as garbage, a
        # softmax at f32 accuracy): PyTorch keeps float64's precision
        return f"{what} is float64; tilefuse's kernels compute in at most float32, so PyTorch runs it"
    if any(not isinstance(d, int) for d in val.shape):
        return f"{what} has a {DYNAMIC_SHAPE} {tuple(val.shape)}; tilefuse compiles static shapes"
    if 0 in val.shape and not empty_ok:
        return f"{what} has no elements (shape {tuple(val.shape)}): nothing to compute, PyTorch runs it"
    return None


def _walk_vals(x: object) -> list[object]:
    if isinstance(x, (list, tuple)):
        return [v for item in x for v in _walk_vals(item)]
    return [x]


aten = torch.ops.aten
# ops whose lowering is an alias or a view of their operand: no kernel of their own
_NO_KERNEL_OPS = {
    aten.lift_fresh_copy.default, aten.alias.default, aten.detach.default, aten.clone.default,
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
    aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.permute.default, aten.transpose.int,
    aten.t.default, aten.expand.default, aten.slice.Tensor, aten.select.int,
}  # fmt: skip


def unsupported_reason(node: Node) -> str | None:
    """Why `node` cannot be lowered to `ein`, or None when it can."""
    if node.op != "call_function":
        return None
    lowering = LOWERINGS.get(node.target)
    if lowering is None and (reason := getattr(node.target, "tilefuse_reason", None)):
        return reason  # a call tilefuse put in the graph (`decode_attention.DecodeAttentionCall`)
    if lowering is None:
        return f"no ein lowering for {target_name(node)}"
    # an op computing no elements runs in PyTorch (a kernel of an empty grid is not launched, and a
    # concatenation of empty tensors had no operand left to lower); one that makes no kernel (a cache's
    # empty initial tensor, an alias or a view of it) stays, and an empty operand of a concatenation
    # is dropped
    empty_ok = node.target in _NO_KERNEL_OPS
    for val in _walk_vals(_read_outputs(node)):
        if (reason := _tensor_reason(val, "its result", empty_ok)) is not None:
            return reason
    for arg in node.all_input_nodes:
        for val in _walk_vals(arg.meta.get("val")):
            if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                return f"input {arg.name} is a symbolic scalar"
            if (reason := _tensor_reason(val, f"input {arg.name}")) is not None:
                return reason
    for arg in _walk_vals(list(node.args) + list(node.kwargs.values())):
        if isinstance(arg, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            return "an argument is symbolic"
    return lowering.check(node) if lowering.check else None


def _read_outputs(node: Node) -> object:
    """The node's value, or of a multi-output op read only through getitem, the outputs read: CUDA's
    memory-efficient attention returns an empty logsumexp where none is asked for, which is no reason
    to leave its attention to PyTorch (the fp32 attention of a padded encoder layer said it was)."""
    val = node.meta.get("val")
    read_by_getitem = node.users and all(u.target is operator.getitem for u in node.users)
    if isinstance(val, (list, tuple)) and read_by_getitem:
        return [val[i] for i in sorted({u.args[1] for u in node.users})]
    return val


class LoweringContext:
    """What a lowering sees: the builder, the values so far, the node's metadata."""

    def __init__(self, builder: EinBuilder, env: dict[Node, LoweredValue]):
        self.b = builder
        self.env = env
        # values a lowering computed that a later node's lowering may reuse (every layer's attention
        # reads the same mask: which rows it leaves a key is computed once), keyed by the lowering
        self.memo: dict[tuple, SSAValue] = {}

    def value(self, arg: object) -> object:
        """The `ein` value of a node argument; lists map elementwise, constants pass."""
        if isinstance(arg, Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self.value(a) for a in arg)
        return arg

    def tensor(self, arg: object) -> SSAValue:
        v = self.value(arg)
        if not isinstance(v, SSAValue):
            raise TypeError(f"expected a tensor argument, got {v!r}")
        return v

    @staticmethod
    def meta(node: Node) -> torch.Tensor:
        val = node.meta["val"]
        return val[0] if isinstance(val, (list, tuple)) else val

    def out_elem(self, node: Node) -> Attribute:
        return to_mlir_type(self.meta(node).dtype)

    def out_shape(self, node: Node) -> tuple[Dim, ...]:
        """The node's result shape; a symbolic size as its expression (read without a guard)."""
        return tuple(size_of(d) for d in self.meta(node).shape)

    @staticmethod
    def args(node: Node) -> dict[str, object]:
        """The call's arguments by schema name, defaults filled in (nodes unresolved)."""
        return bound_args(node)


def bound_args(node: Node) -> dict[str, object]:
    """Arguments of an aten call keyed by the names in its schema, with defaults."""
    schema = node.target._schema
    bound: dict[str, object] = {}
    for i, a in enumerate(schema.arguments):
        if i < len(node.args) and not a.kwarg_only:
            bound[a.name] = node.args[i]
        elif a.name in node.kwargs:
            bound[a.name] = node.kwargs[a.name]
        elif a.has_default_value():
            bound[a.name] = a.default_value
        else:
            bound[a.name] = None
    return bound


def normalize_dims(dims: object, rank: int) -> list[int]:
    """aten dim arguments (int, list, None or []) as sorted non-negative ints."""
    if dims is None or dims == []:
        return list(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return sorted({d % rank for d in dims}) if rank else []


def promoted_dtype(values: Sequence[object]) -> torch.dtype:
    """torch's type promotion over tensors (FakeTensor metadata) and Python scalars."""
    from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND, elementwise_dtypes

    _, result = elementwise_dtypes(*values, type_promotion_kind=ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT)
    return result
