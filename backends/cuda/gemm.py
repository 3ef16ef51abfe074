"""A `tile` GEMM kernel read as a CUTLASS problem: operands, layouts, and its epilogue as one function.

CUTLASS builds a GEMM from types and layouts, not from loops, so the CUDA
backend does not translate a GEMM kernel op by op: it recognizes the shape
the lowering gives every GEMM group (`lower_to_tile`) and restates it.

- The K loop: an `scf.for` carrying one f32 accumulator, whose body loads
  one tile of each operand and accumulates their `tile.dot`. Each load's
  indices are plain block ranges (an `arange` plus the block's offset,
  expanded to two dims): which tensor dim each range walks (M, N or K) gives
  the operand's layout (A row-major when K is its last dim; B "column-major",
  CUTLASS's word for a linear layer's [N, K] weight, when K is its last dim).
- The epilogue: everything after the loop, maps over the accumulator and
  over *leaves*, the tensors it loads by the output tile's row and column
  ranges: one value per column (a bias: CUTLASS's row broadcast), per row
  (a column broadcast), or per element (a residual: an auxiliary load); and
  one `tile.store` of the result, indexed like the output tile.

`match_gemm` returns that reading as a `GemmProblem`, whose `body` is the
epilogue as C++ statements over `acc` and the leaves' values (`leaf0`...),
written by the same scalar emitter as the CUDA backend's other kernels
(16-bit values held in float, rounded where the IR rounds). Anything else
(a batch dim, a reshaped operand, a second output, a row reduction in the
epilogue, an index computed from data) raises `CudaEmitError` naming it,
and the kernel stays on Triton.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xdsl.dialects import arith, scf
from xdsl.ir import Block, BlockArgument, Operation, SSAValue

from ...ir import tile
from .scalar import CudaEmitError, literal, register_type, scalar_expr, supports

M, N, K = "M", "N", "K"
_ROLE = {"BLOCK_M": M, "BLOCK_N": N, "BLOCK_K": K}


@dataclass(frozen=True)
class Operand:
    """A tensor the GEMM reads: its kernel argument, which of M, N, K each of its (collapsed) dims is,
    and the tensor dims each of those spans (`axes`): a [batch, tokens, features] activation is
    [M, K] with M over its first two dims, which a launch collapses (their strides must nest)."""

    arg: BlockArgument
    dims: tuple[str, ...]
    axes: tuple[tuple[int, ...], ...] = ()

    @property
    def element(self) -> object:
        return self.arg.type.get_element_type()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.arg.type.get_shape())

    def extent(self, dim: str) -> int:
        """The size of GEMM dim `dim` in this tensor (the product of the tensor dims it spans)."""
        size = 1
        for axis in self.axes[self.dims.index(dim)]:
            size *= self.shape[axis]
        return size


@dataclass(frozen=True)
class Leaf(Operand):
    """A tensor the epilogue loads: "row" (one value per output column), "column" (per output row),
    or "full" (per element)."""

    kind: str = "full"


@dataclass
class GemmProblem:
    """What CUTLASS needs of a GEMM kernel (module docstring)."""

    m: int
    n: int
    k: int
    a: Operand
    b: Operand
    out: Operand
    leaves: list[Leaf] = field(default_factory=list)
    body: list[str] = field(default_factory=list)  # C++ statements over `acc`, `leaf0`...
    result: str = "acc"  # the C++ expression of the stored value, after `body`

    @property
    def a_row_major(self) -> bool:
        """A is [M, K] with K contiguous (CUTLASS RowMajor), else [K, M] (ColumnMajor)."""
        return self.a.dims == (M, K)

    @property
    def b_column_major(self) -> bool:
        """B is [N, K] with K contiguous (CUTLASS ColumnMajor: a linear layer's weight), else [K, N]."""
        return self.b.dims == (N, K)


_INDEX_ARITHMETIC = {
    "arith.addi", "arith.subi", "arith.muli", "arith.divsi", "arith.remsi", "arith.cmpi", "arith.extui",
    "arith.select", "arith.constant", "arith.minsi", "arith.maxsi",
}  # fmt: skip


def _role(index: SSAValue) -> tuple[str, bool]:
    """Which GEMM dim a load or store index walks (BLOCK_M, BLOCK_N or BLOCK_K's block range), and
    whether it is the plain range (an `arange` plus the block's offset) rather than computed from
    it (a row of a [batch, tokens] pair: the range divided and wrapped by constants); CudaEmitError
    where it is not computed from one range by integer arithmetic (a gather, say)."""
    ranges: set[Operation] = set()
    plain = True

    def walk(value: SSAValue, depth: int) -> None:
        nonlocal plain
        owner = value.owner
        if isinstance(owner, tile.ExpandDimsOp):
            return walk(owner.input, depth)
        if isinstance(owner, tile.ArangeOp):
            ranges.add(owner)
            return None
        if isinstance(owner, tile.MapOp):
            body = [op for op in owner.body.block.ops if not isinstance(op, tile.YieldOp)]
            if any(op.name not in _INDEX_ARITHMETIC for op in body):
                raise CudaEmitError("an operand is indexed through computed indices (a gathered dim)")
            if not (depth == 0 and len(body) == 1 and isinstance(body[0], arith.AddiOp)):
                plain = False
            for v in owner.inputs:
                if isinstance(v.type, tile.BlockType):
                    walk(v, depth + 1)
            return None
        raise CudaEmitError("an operand is indexed by something other than a block range")

    walk(index, 0)
    if len(ranges) != 1:
        raise CudaEmitError("an operand's index mixes block ranges")
    (dim,) = tile.block_dims(next(iter(ranges)).results[0].type)
    if dim not in _ROLE:
        raise CudaEmitError(f"an index ranges over {dim}: only BLOCK_M, BLOCK_N and BLOCK_K map to CUTLASS")
    return _ROLE[dim], plain


def _operand(load: tile.LoadOp | tile.StoreOp) -> Operand:
    """The tensor `load` reads (or a store writes) as an Operand: consecutive tensor dims indexed from
    the M range (a [batch, tokens] pair) collapse into one M dim; any other dim is one plain range."""
    if not isinstance(load.tensor, BlockArgument):
        raise CudaEmitError("a load or store of a value that is not a kernel argument")
    shape = tuple(load.tensor.type.get_shape())
    roles: dict[int, tuple[str, bool]] = {}
    for axis, index in enumerate(load.indices):
        if isinstance(index.type, tile.BlockType):
            roles[axis] = _role(index)
        elif shape[axis] != 1:  # a scalar index into a size-1 dim (a row statistic's [.., 1]) is no dim
            raise CudaEmitError("an operand is indexed by a scalar along a dim of several elements")
    dims: list[str] = []
    axes: list[list[int]] = []
    for axis, (role, _) in roles.items():
        if dims and dims[-1] == role == M and axes[-1][-1] == axis - 1:
            axes[-1].append(axis)
        else:
            if role in dims:
                raise CudaEmitError("one GEMM dim indexes two separate dims of a tensor")
            dims.append(role)
            axes.append([axis])
    for role, group in zip(dims, axes):
        if len(group) == 1 and not roles[group[0]][1]:
            raise CudaEmitError(f"the {role} index of an operand is computed (a reshaped dim)")
    return Operand(load.tensor, tuple(dims), tuple(tuple(g) for g in axes))


def _k_loop(kernel: tile.KernelOp) -> tuple[scf.ForOp, tile.DotOp]:
    loops = [op for op in kernel.walk() if isinstance(op, scf.ForOp) and len(op.results) == 1]
    dots = [op for op in kernel.walk() if isinstance(op, tile.DotOp)]
    if len(loops) != 1 or len(dots) != 1 or dots[0].parent_op() is not loops[0]:
        raise CudaEmitError("not one K loop carrying one accumulator through one dot")
    loop, dot = loops[0], dots[0]
    init = loop.iter_args[0].owner
    if not isinstance(init, tile.FullOp) or float(init.value.value.data) != 0.0:
        raise CudaEmitError("the accumulator does not start at zero")
    if dot.tf32 is not None and dot.tf32.data != "ieee":
        raise CudaEmitError(f"a {dot.tf32.data} dot: f32 operands run on Triton")
    return loop, dot


def _operand_load(value: SSAValue) -> tile.LoadOp:
    owner = value.owner
    if not isinstance(owner, tile.LoadOp):
        raise CudaEmitError("a dot operand is computed, not loaded (a prologue): CUTLASS reads it as stored")
    return owner


def match_gemm(kernel: tile.KernelOp) -> GemmProblem:
    """The kernel as a CUTLASS problem (module docstring), or CudaEmitError saying why not."""
    if kernel.kind.data != "gemm":
        raise CudaEmitError(f"a {kernel.kind.data} kernel is not a GEMM")
    loop, dot = _k_loop(kernel)
    a_load, b_load = _operand_load(dot.a), _operand_load(dot.b)
    a, b = _operand(a_load), _operand(b_load)
    if sorted(a.dims) != [K, M] or sorted(b.dims) != [K, N]:
        raise CudaEmitError(f"operands indexed {a.dims} and {b.dims}: a batched or reshaped GEMM")
    if a.element != b.element:
        raise CudaEmitError("operands of two element types")
    m, k, n = a.extent(M), a.extent(K), b.extent(N)
    epilogue = _epilogue_ops(loop)
    stores = [op for op in epilogue if isinstance(op, tile.StoreOp)]
    if len(stores) != 1:
        raise CudaEmitError(f"{len(stores)} stores after the K loop: one output only")
    (store,) = stores
    out = _operand(store)
    if out.dims != (M, N) or out.extent(M) != m:
        raise CudaEmitError("the output is not stored as [M, N]")
    problem = GemmProblem(m, n, k, a, b, out)
    names: dict[SSAValue, str] = {loop.results[0]: "acc"}
    writer = _EpilogueWriter(problem, names)
    for op in epilogue:
        writer.op(op)
    problem.result = writer.value(store.value)
    return problem


def _epilogue_ops(loop: scf.ForOp) -> list[Operation]:
    """The ops after the K loop in its block (the persistent loop's body, or the kernel's)."""
    block = loop.parent_block()
    assert block is not None
    ops = list(block.ops)
    return ops[ops.index(loop) + 1 :]


@dataclass
class _EpilogueWriter:
    problem: GemmProblem
    names: dict[SSAValue, str]

    def value(self, v: SSAValue) -> str:
        if v not in self.names:
            raise CudaEmitError("the epilogue reads a value computed before the K loop")
        return self.names[v]

    def op(self, op: Operation) -> None:
        if isinstance(op, tile.LoadOp):
            operand = _operand(op)
            kind = {(N,): "row", (M,): "column", (M, N): "full"}.get(operand.dims)
            if kind is None:
                raise CudaEmitError(f"the epilogue loads a tensor indexed {operand.dims}")
            name = f"leaf{len(self.problem.leaves)}"
            self.problem.leaves.append(Leaf(operand.arg, operand.dims, operand.axes, kind))
            self.names[op.results[0]] = name
        elif isinstance(op, tile.MapOp):
            self._map(op)
        elif isinstance(op, tile.StoreOp | tile.YieldOp | scf.YieldOp):
            return
        elif all(not isinstance(r.type, tile.BlockType) for r in op.results) and not op.regions:
            return  # index arithmetic on scalars (offsets, masks' bounds): CUTLASS has its own
        elif isinstance(op, tile.ExpandDimsOp | tile.ArangeOp):
            return  # the output tile's ranges, read by `_role`
        else:
            raise CudaEmitError(f"the epilogue computes {op.name}: not written for CUTLASS yet")

    def _map(self, op: tile.MapOp) -> None:
        block: Block = op.body.block
        local: dict[SSAValue, str] = {}
        for arg, operand in zip(block.args, op.inputs):
            if not isinstance(operand.type, tile.BlockType):
                raise CudaEmitError("an epilogue map reads a scalar (an index or a program id)")
            local[arg] = self.value(operand)
        for inner in block.ops:
            if isinstance(inner, tile.YieldOp):
                (result,) = op.results
                self.names[result] = local[inner.operands[0]]
                return
            if isinstance(inner, arith.ConstantOp):
                local[inner.result] = literal(inner.value)
                continue
            if not supports(inner):
                raise CudaEmitError(f"the epilogue computes {inner.name}: not written for CUDA yet")
            name = f"e{len(self.problem.body)}"
            expr = scalar_expr(inner, [local[v] for v in inner.operands])
            (result,) = inner.results
            self.problem.body.append(f"{register_type(result.type)} {name} = {expr};")
            local[result] = name
