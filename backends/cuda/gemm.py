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
    """A tensor the GEMM reads: its kernel argument, element type, and which of M, N, K each dim is."""

    arg: BlockArgument
    dims: tuple[str, ...]

    @property
    def element(self) -> object:
        return self.arg.type.get_element_type()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.arg.type.get_shape())


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


def _role(index: SSAValue) -> str:
    """Which GEMM dim a load or store index walks: a plain block range of BLOCK_M, BLOCK_N or BLOCK_K
    (an `arange` plus a scalar offset, expanded to two dims), or CudaEmitError."""
    value = index
    if isinstance(value.owner, tile.ExpandDimsOp):
        value = value.owner.input
    owner = value.owner
    if isinstance(owner, tile.MapOp):  # arange + offset
        ranges = [v for v in owner.inputs if isinstance(v.owner, tile.ArangeOp)]
        body = [op for op in owner.body.block.ops if not isinstance(op, tile.YieldOp)]
        plain = len(ranges) == 1 and len(body) == 1 and isinstance(body[0], arith.AddiOp)
        if not plain:
            raise CudaEmitError("an operand is indexed through computed indices (a reshaped or gathered dim)")
        owner = ranges[0].owner
    if not isinstance(owner, tile.ArangeOp):
        raise CudaEmitError("an operand is indexed by something other than a block range")
    (dim,) = tile.block_dims(owner.results[0].type)
    if dim not in _ROLE:
        raise CudaEmitError(f"an index ranges over {dim}: only BLOCK_M, BLOCK_N and BLOCK_K map to CUTLASS")
    return _ROLE[dim]


def _dims(load: tile.LoadOp | tile.StoreOp) -> tuple[str, ...]:
    if not isinstance(load.tensor, BlockArgument):
        raise CudaEmitError("a load or store of a value that is not a kernel argument")
    dims = tuple(_role(i) for i in load.indices)
    if len(set(dims)) != len(dims):
        raise CudaEmitError("one GEMM dim indexes two dims of a tensor")
    return dims


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
    a = Operand(a_load.tensor, _dims(a_load))
    b = Operand(b_load.tensor, _dims(b_load))
    if sorted(a.dims) != [K, M] or sorted(b.dims) != [K, N]:
        raise CudaEmitError(f"operands indexed {a.dims} and {b.dims}: a batched or reshaped GEMM")
    if a.element != b.element:
        raise CudaEmitError("operands of two element types")
    m, k = (a.shape[a.dims.index(d)] for d in (M, K))
    n = b.shape[b.dims.index(N)]
    epilogue = _epilogue_ops(loop)
    stores = [op for op in epilogue if isinstance(op, tile.StoreOp)]
    if len(stores) != 1:
        raise CudaEmitError(f"{len(stores)} stores after the K loop: one output only")
    (store,) = stores
    if _dims(store) != (M, N):
        raise CudaEmitError("the output is not stored as [M, N]")
    problem = GemmProblem(m, n, k, a, b, Operand(store.tensor, (M, N)))
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
            dims = _dims(op)
            kind = {(N,): "row", (M,): "column", (M, N): "full"}.get(dims)
            if kind is None:
                raise CudaEmitError(f"the epilogue loads a tensor indexed {dims}")
            name = f"leaf{len(self.problem.leaves)}"
            self.problem.leaves.append(Leaf(op.tensor, dims, kind))
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
