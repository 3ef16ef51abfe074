"""kmajor-f32-weights: f32 GEMMs on tensor cores read their right operands K-major.

An f32 contraction on Hopper's tensor cores (3xTF32 at matmul precision
"highest", one TF32 pass at "high") runs TF32 wgmma, which reads both operands
K-major from shared memory. A right operand stored [K, N] row-major (GPT-2's
Conv1D weight, any `x @ W` with a weight stored that way) is N-major: Triton
transposes its tiles on the way. H200 sweep of a plain Triton GEMM (Triton 3.6,
benchmarks/NOTES.md, fifteenth session), 4096^3, best of 10 configs: 3xTF32
2515 us N-major against 1716 K-major (cuBLAS SGEMM 2678); one TF32 pass 997
against 429 (cuBLAS TF32 370).

A weight is a parameter: it is copied once, transposed, by a tiled pointwise
kernel that reads only parameters (run once and reused while the parameter is
the same tensor at the same version: `runtime._parameter_derived`), and the
contraction reads the copy through a permute, K-major. The copy costs the
weight's memory once more, as a folded norm weight does.

    y = contract "mk,kn->mn" x, W            W: an f32 parameter [K, N], M >= MIN_ROWS
      -> Wt = map copy (permute W [1, 0])      [N, K], written once per version of W
         y = contract "mk,kn->mn" x, (permute Wt [1, 0])

Weights are parameters, or values computed from parameters alone by maps and
views (a norm weight folded into the GEMM's weight by norm-prologue), which the
runtime also computes once; a permute's result is not a row-major [K, N]
buffer, so only a parameter or a map's result (or a reshape of one) qualifies (a weight
already read through a permute, nn.Linear's `x @ W.T`, is K-major). Only GEMMs with
enough rows to be compute-bound (a decode step's GEMV streams its weight either
way).

A right operand computed at every call (a plain `x @ y` of two activations, KernelBench's f32
matmuls) is copied at every call, by the same kernel, where the product has MIN_ACTIVATION_ROWS
rows or more: the copy moves 8 bytes an element of [K, N], the product reads that operand once per
row block, and N-major tiles cost it a third of its time at 3xTF32 (above: 2515 against 1716 us
at 4096^3, a 64 MB copy ~45 us at 3 TB/s), so the copy pays from a few hundred rows on (the
suite's float32 GEMM rows, x @ y with y row-major, ran 1.02-1.08x SGEMM on the H100 without it;
the linear layers' K-major rows 1.36-1.52x).
"""

from __future__ import annotations

import math

from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, f32
from xdsl.ir import BlockArgument, Operation, SSAValue
from xdsl.passes import ModulePass

from ..ir import einsum as ein
from ..ir.builder import InsertingEinBuilder
from ..ir.dtypes import has_symbolic_sizes, shape_of
from ..ir.module import computed_from_parameters, functions, parameter_args

MIN_ROWS = 64  # rows of the product (M) below which a GEMM is bandwidth-bound: no copy
MIN_ELEMENTS = 1 << 14  # weights smaller than this are not worth a second copy
MIN_ACTIVATION_ROWS = 512  # rows of the product from which a per-call copy of an activation pays


class KMajorF32Weights(ModulePass):
    name = "kmajor-f32-weights"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        for fn in functions(op):
            # an optimization (K-major weight copies) for static sizes only
            if not has_symbolic_sizes(fn):
                rewrite_function(fn)


def rewrite_function(fn: func.FuncOp) -> int:
    """Point every qualifying contraction of `fn` at a K-major copy of its weight; returns how many."""
    params = set(parameter_args(fn))
    copies: dict[SSAValue, SSAValue] = {}
    rewritten = 0
    for op in list(fn.body.block.ops):
        if not isinstance(op, ein.ContractOp):
            continue
        weight = op.rhs
        from_parameters = computed_from_parameters(weight, params)
        if not _reads_n_major_weight(op, from_parameters):
            continue
        if weight not in copies:
            owner = weight.owner
            if not from_parameters:  # an activation: copied before its reader
                b = InsertingEinBuilder(op, fn.sym_name.data)
            elif isinstance(owner, Operation):  # a folded weight: copied right after it is computed
                b = InsertingEinBuilder(owner, fn.sym_name.data, after=True)
            else:
                b = InsertingEinBuilder(fn.body.block.first_op, fn.sym_name.data)
            transposed = b.map([b.permute(weight, [1, 0])], f32, lambda sb, a: a, compute_elem=f32)
            copies[weight] = b.permute(transposed, [1, 0])
        op.operands = [op.lhs, copies[weight]]
        rewritten += 1
    return rewritten


def _row_major(value: SSAValue) -> bool:
    """Whether `value` is laid out row-major where the program holds it: an argument (the guard checks
    its strides), a map's output, or a reshape of one (a permute, nn.Linear's `W.T`, is not)."""
    owner = value.owner
    if isinstance(owner, ein.ViewOp):
        return owner.kind.data == "reshape" and _row_major(owner.input)
    return isinstance(value, BlockArgument) or isinstance(owner, ein.MapOp)


def _reads_n_major_weight(op: ein.ContractOp, from_parameters: bool) -> bool:
    """Whether `op` reads a 2-d f32 right operand [K, N] directly (row-major: N-major), in a product of at
    least MIN_ROWS rows where it is a weight (`from_parameters`: a parameter or computed from
    parameters), of at least MIN_ACTIVATION_ROWS where it is computed at every call."""
    rhs_value = op.rhs
    if not _row_major(rhs_value):
        return False
    min_rows = MIN_ROWS if from_parameters else MIN_ACTIVATION_ROWS
    if rhs_value.type.get_element_type() != f32 or op.lhs.type.get_element_type() != f32:
        return False
    lhs, rhs, out = ein.parse_spec(op.spec.data)
    if len(rhs) != 2:
        return False
    k, n = rhs
    if k in out or k not in lhs or n not in out or n in lhs:
        return False  # not [K, N] with K contracted against the left operand and N kept
    sizes = dict(zip(lhs, shape_of(op.lhs.type)))
    rows = math.prod(sizes[c] for c in lhs if c in out)
    return rows >= min_rows and math.prod(shape_of(rhs_value.type)) >= MIN_ELEMENTS
