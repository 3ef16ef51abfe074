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
scale); the chains must be equally long with bodies alike and operands either
shared (one value, or views alike of one value, broadcast along N) or stacked,
else nothing is merged: products that meet in one map (SwiGLU's gate and up,
which `form-fusion-groups` runs as one dual-accumulator kernel) are left alone.

A sibling whose result the function returns (through views: the value states a
dynamic cache keeps) is copied out of the merged buffer into one of its own, so
the caller gets the layout an unmerged GEMM's output had (a `.view()` of a
column slice of a wider buffer could fail where eager's would not). Not merged: training graphs (their
parameters change every step, so the stacked weights would be copied every step;
the driver skips the pass) and graphs of symbolic sizes.

Off in a compile until it is measured on the GPU (written in a session whose GPU
time was spent: benchmarks/NOTES.md); `TILEFUSE_MERGE_PROJECTIONS=1` turns it
on (`tilefuse opt -p merge-projections` runs it whatever the setting).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import BlockArgument, Operation, Region, SSAValue
from xdsl.passes import ModulePass

from ..ir import einsum as ein
from ..ir.builder import InsertingEinBuilder, erase_dead, single_user
from ..ir.dtypes import has_symbolic_sizes, shape_of, tensor_type
from ..ir.module import functions, parameter_args

MERGE_PROJECTIONS_ENV = "TILEFUSE_MERGE_PROJECTIONS"


class MergeProjections(ModulePass):
    name = "merge-projections"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in functions(op):
            if not has_symbolic_sizes(fn):
                merge_function(fn)


# A plan of the merged computation, checked before anything is written: every value it reads must be
# defined before the point where the merged ops go
@dataclass
class _Shared:
    value: SSAValue  # read as it is (broadcast along the merged dim)


@dataclass
class _Concat:
    values: list[SSAValue]
    dim: int


@dataclass
class _Map:
    operands: list  # plans
    body: Region  # cloned from the first sibling's map
    shape: tuple[int, ...]
    elem: object


@dataclass
class _Contract:
    spec: str
    lhs: SSAValue
    rhs: object  # a plan
    shape: tuple[int, ...]
    elem: object


Group = list[tuple[ein.ContractOp, list[SSAValue]]]  # siblings, each with its epilogue chain


def merge_function(fn: func.FuncOp) -> int:
    """Merge each set of sibling projections in `fn`; returns how many sets were merged."""
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


def _raw_chain(value: SSAValue) -> list[SSAValue]:
    """The epilogue after a product: its chain of single-reader maps of its shape, product first."""
    chain = [value]
    shape = shape_of(value.type)
    while (user := single_user(chain[-1])) is not None and isinstance(user, ein.MapOp):
        if shape_of(user.result.type) != shape:
            break
        chain.append(user.result)
    return chain


def _reaches_results(value: SSAValue, results: set[SSAValue]) -> bool:
    """Whether `value` is a function result, or one through views."""
    pending = [value]
    while pending:
        v = pending.pop()
        if v in results:
            return True
        pending += [use.operation.results[0] for use in v.uses if isinstance(use.operation, ein.ViewOp)]
    return False


def _groups(contracts: list[ein.ContractOp]) -> list[Group]:
    """The siblings that can merge, with their epilogue chains: products whose chains meet (SwiGLU's
    gate and up, one map reading both) are left out; the rest go together where their chains are
    equally long with bodies alike at every step."""
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
            if len(other) == len(chain) and all(
                a.owner.body.is_structurally_equivalent(b.owner.body) for a, b in zip(chain[1:], other[1:])
            ):
                group.append((c, chain))
                break
        else:
            groups.append([(c, chain)])
    return [g for g in groups if len(g) >= 2]


def _merge(fn: func.FuncOp, group: Group, params: set[SSAValue]) -> bool:
    block = fn.body.block
    results = set(block.last_op.operands)
    tails = [chain[-1] for _, chain in group]
    position = {op: i for i, op in enumerate(block.ops)}
    readers = [use.operation for t in tails for use in t.uses]
    if not readers:
        return False
    anchor = min(readers, key=lambda op: position[op])
    last = len(tails[0].type.get_shape()) - 1
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
            part = b.map([part], part.type.get_element_type(), lambda sb, x: x, cast_inputs=False)
        tail.replace_all_uses_with(part)
        offset += width
    return True


def _plan(values: Sequence[SSAValue], dim: int, params: set[SSAValue], top: bool = False) -> object | None:
    """How to compute the values stacked along `dim` (their shapes differ there only), or None.
    Below the `top` (the values replaced by slices), a value read elsewhere too is not merged: its
    op would be computed twice."""
    shapes = [shape_of(v.type) for v in values]
    if any(len(s) != len(shapes[0]) or any(a != b for j, (a, b) in enumerate(zip(s, shapes[0])) if j != dim)
           for s in shapes):  # fmt: skip
        return None
    shape = tuple(shapes[0][:dim]) + (sum(s[dim] for s in shapes),) + tuple(shapes[0][dim + 1 :])
    owners = [v.owner for v in values]
    elem = values[0].type.get_element_type()
    if all(isinstance(o, ein.ContractOp) for o in owners):
        if not top and any(single_user(v) is None for v in values):
            return None
        first = owners[0]
        if dim != len(shape) - 1:
            return None
        if any(o.lhs is not first.lhs or o.spec.data != first.spec.data for o in owners):
            return None
        rhs = _plan([o.rhs for o in owners], 0, params)
        return None if rhs is None else _Contract(first.spec.data, first.lhs, rhs, shape, elem)
    if all(isinstance(o, ein.MapOp) for o in owners):
        first = owners[0]
        if any(len(o.inputs) != len(first.inputs) or not o.body.is_structurally_equivalent(first.body)
               for o in owners):  # fmt: skip
            return None
        if not top and any(single_user(v) is None for v in values):
            return None
        operands = []
        for j in range(len(first.inputs)):
            inputs = [o.inputs[j] for o in owners]
            rank = len(shape_of(inputs[0].type))
            at = dim - (len(shape) - rank)  # the operand's dim the merged one broadcasts along
            broadcast = at < 0 or shape_of(inputs[0].type)[at] == 1
            if broadcast and all(_equivalent(v, inputs[0]) for v in inputs):
                operands.append(_Shared(inputs[0]))
                continue
            if at < 0 or any(shape_of(v.type)[at] != s[dim] for v, s in zip(inputs, shapes)):
                return None  # broadcast along the merged dim, yet different per sibling
            operand = _plan(inputs, at, params)
            if operand is None:
                return None
            operands.append(operand)
        return _Map(operands, first.body, shape, elem)
    if all(_from_parameters(v, params) for v in values):
        return _Concat(list(values), dim)
    return None


def _equivalent(a: SSAValue, b: SSAValue) -> bool:
    """One value, or views alike of one value (a norm weight reshaped once for each GEMM)."""
    if a is b:
        return True
    va, vb = a.owner, b.owner
    if not (isinstance(va, ein.ViewOp) and isinstance(vb, ein.ViewOp)):
        return False
    same = va.kind.data == vb.kind.data and va.view_params == vb.view_params and a.type == b.type
    return same and _equivalent(va.input, vb.input)


def _from_parameters(value: SSAValue, params: set[SSAValue]) -> bool:
    """A parameter, or computed from parameters alone by maps, views and concatenations."""
    if isinstance(value, BlockArgument):
        return value in params
    owner = value.owner
    if not isinstance(owner, (ein.MapOp, ein.ViewOp, ein.ConcatOp)):
        return False
    return all(_from_parameters(v, params) for v in owner.operands)


def _leaves(plan: object) -> list[SSAValue]:
    if isinstance(plan, _Shared):
        return [plan.value]
    if isinstance(plan, _Concat):
        return list(plan.values)
    if isinstance(plan, _Map):
        return [v for p in plan.operands for v in _leaves(p)]
    return [plan.lhs, *_leaves(plan.rhs)]


def _defined_before(value: SSAValue, anchor: Operation, position: dict[Operation, int]) -> bool:
    if isinstance(value, BlockArgument):
        return True
    owner = value.owner
    return owner in position and position[owner] < position[anchor]


def _emit(b: InsertingEinBuilder, plan: object) -> SSAValue:
    if isinstance(plan, _Shared):
        return plan.value
    if isinstance(plan, _Concat):
        return b.concat(plan.values, plan.dim)
    if isinstance(plan, _Contract):
        rhs = _emit(b, plan.rhs)
        op = ein.ContractOp(plan.spec, plan.lhs, rhs, tensor_type(plan.shape, plan.elem))
        return b._emit(op)
    operands = [_emit(b, p) for p in plan.operands]
    if any(_reads_product(p) for p in plan.operands):
        # an epilogue: its stacked vectors (biases) are copied into one buffer, computed once from the
        # parameters, rather than read through the concatenation in every GEMM tile
        operands = [_copied(b, v) if isinstance(p, _Concat) else v for p, v in zip(plan.operands, operands)]
    return b._emit(ein.MapOp(operands, tensor_type(plan.shape, plan.elem), plan.body.clone()))


def _reads_product(plan: object) -> bool:
    """Whether the plan computes from a product (an epilogue), not from parameters alone (a fold)."""
    if isinstance(plan, _Contract):
        return True
    return isinstance(plan, _Map) and any(_reads_product(p) for p in plan.operands)


def _copied(b: InsertingEinBuilder, value: SSAValue) -> SSAValue:
    return b.map([value], value.type.get_element_type(), lambda sb, x: x, cast_inputs=False)
