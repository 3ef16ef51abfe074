"""merge-projections: sibling projections of one input become one GEMM over concatenated weights.

Attention's q, k and v projections read the same rows `x` against three weights
(BERT, Llama, Mistral, Qwen2; GPT-2 has one fused `c_attn` already). Three GEMMs
of N, N_kv, N_kv columns each launch, each fill the GPU by themselves, and at a
decode step's few rows each streams its weight alone (the k and v GEMVs of a
GQA layer are a few hundred columns: latency, not bandwidth). As one GEMM over
the weights stacked along N they are one launch and one grid, as Inductor's
freezing pass (`concat_linear`) and vLLM's `QKVParallelLinear` do.

    p_i = contract "...k,nk->...n" x, W_i          (one lhs, one spec, K alike)
    e_i = map_i(p_i, shared..., c_i...)             the epilogue: the same body for every i
      -> p = contract "...k,nk->...n" x, concat(W_i)
         e = map(p, shared..., concat(c_i)...)
         e_i = slice e [..., off_i : off_i + N_i]

Every stacked operand is computed from parameters alone (a weight, a bias, a
weight a folded norm scaled: `map(W_i, g)` stacks as `map(concat(W_i), g)`, so
the merged weight is one buffer), which the runtime computes once and reuses
while the parameters stand; the merged weight costs the stacked weights'
memory once more, as a folded norm weight does. An epilogue is each product's
chain of single-reader maps of the product's shape (a bias, a folded norm's row
scale); the chains must be equally long with bodies alike (result types too) and
operands either shared (one value, or views alike of one value, broadcast along
N) or stacked (of one rank, read once each), else nothing is merged: products
that meet in one map (SwiGLU's gate and up, which `form-fusion-groups` runs as
one dual-accumulator kernel) are left alone.

A sibling whose result the function returns (through views: the value states a
dynamic cache keeps) is copied out of the merged buffer into one of its own, so
the caller gets the layout an unmerged GEMM's output had (a `.view()` of a
column slice of a wider buffer could fail where eager's would not). Not merged: training graphs (their
parameters change every step, so the stacked weights would be copied every step;
the driver skips the pass) and graphs of symbolic sizes.

On by default since it was measured on the GPU (H100, bf16: a 4-layer Llama
forward's GPU time 2.4% less, 54 kernels instead of 70; BERT's the same;
benchmarks/NOTES.md); `TILEFUSE_MERGE_PROJECTIONS=0` turns it off (`tilefuse opt
-p merge-projections` runs it whatever the setting).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import assert_never

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Block, BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass

from ..ir import einsum as ein
from ..ir.builder import InsertingEinBuilder, erase_dead, single_user
from ..ir.dtypes import has_symbolic_sizes, shape_of
from ..ir.module import computed_from_parameters, functions, parameter_args

MERGE_PROJECTIONS_ENV = "TILEFUSE_MERGE_PROJECTIONS"


def merge_projections_on() -> bool:
    """Whether a compile runs the pass: unless `TILEFUSE_MERGE_PROJECTIONS=0`."""
    return os.environ.get(MERGE_PROJECTIONS_ENV, "1") != "0"


class MergeProjections(ModulePass):
    name = "merge-projections"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in functions(op):
            merge_function(fn)


# The merged computation, planned (and checked) before anything is written.
@dataclass
class Shared:
    """A value every sibling reads alike, broadcast along the merged dim: read as it is."""

    value: SSAValue


@dataclass
class Concat:
    """Values computed from parameters alone, stacked along `dim`."""

    values: list[SSAValue]
    dim: int


@dataclass
class Map:
    """The siblings' maps (bodies alike) as one over their operands' plans."""

    template: ein.MapOp
    operands: list[Plan]
    shape: tuple[int, ...]


@dataclass
class Contract:
    """The sibling contractions as one over their stacked right operands."""

    spec: str
    lhs: SSAValue
    rhs: Plan
    elem: Attribute


Plan = Shared | Concat | Map | Contract
Group = list[tuple[ein.ContractOp, list[SSAValue]]]  # siblings, each with its epilogue chain


def merge_function(fn: func.FuncOp) -> int:
    """Merge each set of sibling projections in `fn`; returns how many sets were merged (none in a
    function of symbolic sizes)."""
    if has_symbolic_sizes(fn):
        return 0
    params = set(parameter_args(fn))
    merged = 0
    while True:
        for group in (g for siblings in _sibling_sets(fn) for g in _groups(siblings)):
            if _merge(fn, group, params):
                merged += 1
                erase_dead(fn)
                break  # the block changed: look again
        else:
            return merged


def _linear_form(op: ein.ContractOp) -> bool:
    """`...k,nk->...n` with static N and K: rows against a [N, K] weight (nn.Linear's `x @ W.T`)."""
    lhs, rhs, out = ein.parse_spec(op.spec.data)
    if len(rhs) != 2 or not lhs or rhs[1] != lhs[-1] or rhs[0] != out[-1:] or out[:-1] != lhs[:-1]:
        return False
    if rhs[0] in lhs:
        return False
    return all(isinstance(d, int) for d in shape_of(op.rhs.type))


def _sibling_sets(fn: func.FuncOp) -> list[list[ein.ContractOp]]:
    """Contractions of the linear form reading one lhs with one spec, K and element types, in block order."""
    by_key: dict[tuple, list[ein.ContractOp]] = {}
    for op in fn.body.block.ops:
        if not isinstance(op, ein.ContractOp) or not _linear_form(op):
            continue
        k = shape_of(op.rhs.type)[1]
        key = (op.lhs, op.spec.data, k, op.rhs.type.get_element_type(), op.result.type.get_element_type())
        by_key.setdefault(key, []).append(op)
    return [ops for ops in by_key.values() if len(ops) >= 2]


def _read_once(value: SSAValue) -> bool:
    """Read by one operand of one op (`single_user` counts ops: `map(p, p)` reads p twice)."""
    return len(list(value.uses)) == 1


def _raw_chain(value: SSAValue) -> list[SSAValue]:
    """The epilogue after a product: its chain of maps of its shape each reading the last value once,
    product first."""
    chain = [value]
    shape = shape_of(value.type)
    while _read_once(chain[-1]) and isinstance(user := single_user(chain[-1]), ein.MapOp):
        if shape_of(user.result.type) != shape:
            break
        chain.append(user.result)
    return chain


def _alike(a: SSAValue, b: SSAValue) -> bool:
    """Two chain values computed alike: maps of equal bodies and result element types."""
    ma, mb = a.owner, b.owner
    same_type = a.type.get_element_type() == b.type.get_element_type()
    return same_type and len(ma.inputs) == len(mb.inputs) and _same_body(ma.body.block, mb.body.block)


def _same_body(a: Block, b: Block) -> bool:
    """Scalar bodies computing the same thing: op for op, the same names, properties, attributes,
    operands (by position) and result types. (xDSL's `is_structurally_equivalent` does not compare
    result types: a `truncf` to bf16 and one to f16, each widened back, counted as equal.)"""
    if [x.type for x in a.args] != [y.type for y in b.args]:
        return False
    same: dict[SSAValue, SSAValue] = dict(zip(a.args, b.args))
    ops_a, ops_b = list(a.ops), list(b.ops)
    if len(ops_a) != len(ops_b):
        return False
    for x, y in zip(ops_a, ops_b):
        if x.name != y.name or x.properties != y.properties or x.attributes != y.attributes:
            return False
        if [r.type for r in x.results] != [r.type for r in y.results] or len(x.operands) != len(y.operands):
            return False
        if any(same.get(u) is not v for u, v in zip(x.operands, y.operands)):
            return False
        same.update(zip(x.results, y.results))
    return True


def _groups(contracts: list[ein.ContractOp]) -> list[Group]:
    """The siblings that can merge, with their epilogue chains: products whose chains meet (SwiGLU's
    gate and up, one map reading both) are left out; the rest go together where their chains are
    equally long and computed alike at every step."""
    chains = {c: _raw_chain(c.result) for c in contracts}
    count: dict[SSAValue, int] = {}
    for chain in chains.values():
        for v in chain[1:]:
            count[v] = count.get(v, 0) + 1
    groups: list[Group] = []
    for c, chain in chains.items():
        if any(count[v] > 1 for v in chain[1:]):
            continue
        for group in groups:
            other = group[0][1]
            if len(other) == len(chain) and all(_alike(a, b) for a, b in zip(chain[1:], other[1:])):
                group.append((c, chain))
                break
        else:
            groups.append([(c, chain)])
    return [g for g in groups if len(g) >= 2]


def _reaches_results(value: SSAValue, results: set[SSAValue]) -> bool:
    """Whether `value` is a function result, or one through views."""
    pending = [value]
    while pending:
        v = pending.pop()
        if v in results:
            return True
        pending += [use.operation.results[0] for use in v.uses if isinstance(use.operation, ein.ViewOp)]
    return False


def _merge(fn: func.FuncOp, group: Group, params: set[SSAValue]) -> bool:
    """Merge one group: the plan, checked, written before the first reader of any sibling's value."""
    block = fn.body.block
    results = set(block.last_op.operands)
    tails = [chain[-1] for _, chain in group]
    position = {op: i for i, op in enumerate(block.ops)}
    readers = [use.operation for t in tails for use in t.uses]
    if not readers:
        return False
    anchor = min(readers, key=lambda op: position[op])
    last = len(shape_of(tails[0].type)) - 1
    plan = _plan(tails, last, params, top=True)
    if plan is None or not all(_defined_before(v, anchor, position) for v in _leaves(plan)):
        return False
    b = InsertingEinBuilder(anchor, fn.sym_name.data)
    merged = _emit(b, plan)
    offset = 0
    for tail in tails:
        width = shape_of(tail.type)[last]
        part = b.slice(merged, last, offset, offset + width)
        if _reaches_results(tail, results):  # the caller gets eager's layout: a buffer of its own
            part = b.copy(part)
        tail.replace_all_uses_with(part)
        offset += width
    return True


def _stacked_shape(values: Sequence[SSAValue], dim: int) -> tuple[int, ...] | None:
    """The shape of `values` stacked along `dim`, if they have one rank and differ nowhere else."""
    shapes = [tuple(shape_of(v.type)) for v in values]
    first = shapes[0]
    for s in shapes:
        if len(s) != len(first) or s[:dim] != first[:dim] or s[dim + 1 :] != first[dim + 1 :]:
            return None
    return (*first[:dim], sum(s[dim] for s in shapes), *first[dim + 1 :])


def _plan(values: Sequence[SSAValue], dim: int, params: set[SSAValue], top: bool = False) -> Plan | None:
    """How to compute `values` stacked along `dim`, or None where they cannot be. Below the `top` (the
    values the slices replace), a map's or a contraction's value must be read once: its op is then
    not computed twice (parameters are only read)."""
    shape = _stacked_shape(values, dim)
    if shape is None or any(v.type.get_element_type() != values[0].type.get_element_type() for v in values):
        return None
    owners = [v.owner for v in values]
    for kind in (ein.ContractOp, ein.MapOp):
        if not all(isinstance(o, kind) for o in owners):
            continue
        if not top and not all(_read_once(v) for v in values):
            return None
        if kind is ein.ContractOp:
            return _plan_contract(owners, dim, params)
        return _plan_map(owners, values, dim, shape, params)
    if all(computed_from_parameters(v, params) for v in values):
        return Concat(list(values), dim)
    return None


def _plan_contract(owners: list[ein.ContractOp], dim: int, params: set[SSAValue]) -> Plan | None:
    first = owners[0]
    if dim != len(shape_of(first.result.type)) - 1:
        return None  # stacked along N only
    if any(o.lhs is not first.lhs or o.spec.data != first.spec.data or not _linear_form(o) for o in owners):
        return None
    rhs = _plan([o.rhs for o in owners], 0, params)
    if rhs is None:
        return None
    return Contract(first.spec.data, first.lhs, rhs, first.result.type.get_element_type())


def _plan_map(
    owners: list[ein.MapOp], values: Sequence[SSAValue], dim: int, shape: tuple[int, ...],
    params: set[SSAValue],
) -> Plan | None:  # fmt: skip
    first = owners[0]
    if any(not _alike(v, values[0]) for v in values):
        return None
    operands: list[Plan] = []
    for j in range(len(first.inputs)):
        operand = _plan_operand([o.inputs[j] for o in owners], values, dim, params)
        if operand is None:
            return None
        operands.append(operand)
    return Map(first, operands, shape)


def _plan_operand(
    inputs: list[SSAValue], values: Sequence[SSAValue], dim: int, params: set[SSAValue]
) -> Plan | None:
    """One operand position of the siblings' maps: shared (alike, broadcast along the merged dim) or
    stacked along the dim it broadcasts to (`at`, numpy's trailing alignment)."""
    rank = len(shape_of(inputs[0].type))
    if any(len(shape_of(v.type)) != rank for v in inputs):
        return None
    at = dim - (len(shape_of(values[0].type)) - rank)
    broadcast = at < 0 or shape_of(inputs[0].type)[at] == 1
    if broadcast and all(_equivalent(v, inputs[0]) for v in inputs):  # (alike: one type, one shape)
        return Shared(inputs[0])
    if at < 0:
        return None
    if any(shape_of(v.type)[at] != shape_of(t.type)[dim] for v, t in zip(inputs, values)):
        return None  # broadcast along the merged dim, yet different per sibling
    return _plan(inputs, at, params)


def _equivalent(a: SSAValue, b: SSAValue) -> bool:
    """One value, or views alike of one value (a norm weight reshaped once for each GEMM)."""
    if a is b:
        return True
    va, vb = a.owner, b.owner
    if not (isinstance(va, ein.ViewOp) and isinstance(vb, ein.ViewOp)):
        return False
    same = va.kind.data == vb.kind.data and va.view_params == vb.view_params and a.type == b.type
    return same and _equivalent(va.input, vb.input)


def _leaves(plan: Plan) -> list[SSAValue]:
    """The values the plan reads."""
    match plan:
        case Shared(value):
            return [value]
        case Concat(values, _):
            return list(values)
        case Map(_, operands, _):
            return [v for p in operands for v in _leaves(p)]
        case Contract(_, lhs, rhs, _):
            return [lhs, *_leaves(rhs)]
        case _:
            assert_never(plan)


def _defined_before(value: SSAValue, anchor: Operation, position: dict[Operation, int]) -> bool:
    if isinstance(value, BlockArgument):
        return True
    owner = value.owner
    return owner in position and position[owner] < position[anchor]


def _emit(b: InsertingEinBuilder, plan: Plan) -> SSAValue:
    match plan:
        case Shared(value):
            return value
        case Concat(values, dim):
            return b.concat(values, dim)
        case Contract(spec, lhs, rhs, elem):
            return b.contract(spec, lhs, _emit(b, rhs), elem)
        case Map(template, operands, shape):
            inputs = [_emit(b, p) for p in operands]
            if any(_reads_product(p) for p in operands):
                # an epilogue: its stacked vectors (biases) are copied into one buffer, computed once
                # from the parameters, rather than read through the concatenation in every GEMM tile
                inputs = [b.copy(v) if isinstance(p, Concat) else v for p, v in zip(operands, inputs)]
            return b.map_like(template, inputs, shape)
        case _:
            assert_never(plan)


def _reads_product(plan: Plan) -> bool:
    """Whether the plan computes from a product (an epilogue), not from parameters alone (a fold)."""
    if isinstance(plan, Contract):
        return True
    return isinstance(plan, Map) and any(_reads_product(p) for p in plan.operands)
