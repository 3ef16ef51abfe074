"""Reference interpreter for `ein` functions: the oracle every kernel is tested against.

It executes each op with plain PyTorch calls on whatever device its inputs
live on, in the dtypes the IR declares: contractions accumulate in fp32 (or
fp64) and round once, map bodies run op by op in their scalar types. It is
meant to be obviously right, not fast; tilefuse never calls it a kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy
import torch
from xdsl.dialects import arith, func, math
from xdsl.dialects.arith import CMPF_COMPARISON_OPERATIONS, CMPI_COMPARISON_OPERATIONS
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, ModuleOp
from xdsl.ir import Attribute, Block, Operation, SSAValue

from . import einsum as ein
from .dtypes import bind_bare_sizes, bind_sizes, concrete_shape, dims_of, to_torch_dtype


class InterpreterError(RuntimeError):
    """The IR or its inputs cannot be executed (wrong shapes, unknown op)."""


Env = dict[SSAValue, torch.Tensor]
Sizes = dict[sympy.Symbol, int]  # a dynamic function's size symbols, bound by its arguments' sizes

_CMP = {
    "oeq": torch.eq, "ogt": torch.gt, "oge": torch.ge, "olt": torch.lt, "ole": torch.le,
    "une": torch.ne, "eq": torch.eq, "ne": torch.ne, "slt": torch.lt, "sle": torch.le,
    "sgt": torch.gt, "sge": torch.ge, "ult": torch.lt, "ule": torch.le, "ugt": torch.gt,
    "uge": torch.ge,
}  # fmt: skip

_BINARY: dict[type[Operation], Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    arith.AddfOp: torch.add, arith.SubfOp: torch.sub, arith.MulfOp: torch.mul,
    arith.DivfOp: torch.div, arith.MaximumfOp: torch.maximum, arith.MinimumfOp: torch.minimum,
    arith.AddiOp: torch.add, arith.SubiOp: torch.sub, arith.MuliOp: torch.mul,
    arith.MaxSIOp: torch.maximum, arith.MinSIOp: torch.minimum,
    arith.DivSIOp: lambda a, b: torch.div(a, b, rounding_mode="trunc"),
    arith.RemSIOp: torch.fmod, math.PowFOp: torch.pow,
}  # fmt: skip

_UNARY: dict[type[Operation], Callable[[torch.Tensor], torch.Tensor]] = {
    arith.NegfOp: torch.neg, math.ExpOp: torch.exp, math.Exp2Op: torch.exp2,
    math.ExpM1Op: torch.expm1, math.LogOp: torch.log, math.Log1pOp: torch.log1p,
    math.Log2Op: torch.log2, math.SqrtOp: torch.sqrt, math.RsqrtOp: torch.rsqrt,
    math.TanhOp: torch.tanh, math.ErfOp: torch.erf, math.AbsFOp: torch.abs,
    math.AbsIOp: torch.abs, math.SinOp: torch.sin, math.CosOp: torch.cos,
    math.FloorOp: torch.floor, math.CeilOp: torch.ceil, math.RoundEvenOp: torch.round,
}  # fmt: skip

_CASTS = (
    arith.ExtFOp, arith.TruncFOp, arith.SIToFPOp, arith.UIToFPOp, arith.FPToSIOp,
    arith.FPToUIOp, arith.ExtSIOp, arith.ExtUIOp, arith.TruncIOp,
)  # fmt: skip

_BITWISE = {arith.AndIOp: torch.bitwise_and, arith.OrIOp: torch.bitwise_or, arith.XOrIOp: torch.bitwise_xor}


def scalar_constant(value: FloatAttr | IntegerAttr, device: torch.device) -> torch.Tensor:
    dtype = to_torch_dtype(value.type)
    raw = value.value.data
    # a fill on the device, not `torch.tensor(..., device=)`: that copies from pageable host memory,
    # which a CUDA graph capture refuses (a program's interpreter ops run inside one in reduce-overhead)
    return torch.full((), bool(raw) if dtype == torch.bool else raw, dtype=dtype, device=device)


def eval_scalar_op(op: Operation, env: Env, device: torch.device) -> torch.Tensor:
    """One arith/math op of a map body, applied to whole (broadcast) tensors."""
    return scalar_function(op)(device, *[env[o] for o in op.operands])


def scalar_function(op: Operation) -> Callable[..., torch.Tensor]:
    """`eval_scalar_op` for `op` resolved once: `fn(device, *operand tensors)`, the op's result in
    its IR dtype (a cast converts; other ops keep their operands' dtype, which the IR's is)."""
    out_dtype = to_torch_dtype(op.results[0].type)
    kind = type(op)
    if kind is arith.ConstantOp:
        value = op.value
        return lambda device: scalar_constant(value, device)
    if kind in _BINARY:
        fn = _BINARY[kind]
    elif kind in _UNARY:
        fn = _UNARY[kind]
    elif kind in _BITWISE:
        fn = _BITWISE[kind]
    elif kind in (arith.CmpfOp, arith.CmpiOp):
        names = CMPF_COMPARISON_OPERATIONS if kind is arith.CmpfOp else CMPI_COMPARISON_OPERATIONS
        pred = names[op.predicate.value.data]
        if pred not in _CMP:
            raise InterpreterError(f"comparison predicate {pred!r} is not supported")
        fn = _CMP[pred]
    elif kind is arith.SelectOp:
        fn = torch.where
    elif kind in _CASTS:
        return lambda device, x: x.to(out_dtype)
    else:
        raise InterpreterError(f"the reference interpreter cannot run {op.name} in a map body")

    def run(device: torch.device, *args: torch.Tensor) -> torch.Tensor:
        result = fn(*args)
        return result if result.dtype is out_dtype else result.to(out_dtype)

    return run


def run_map(
    op: ein.MapOp, inputs: Sequence[torch.Tensor],
    evaluate: Callable[[Operation, Env, torch.device], torch.Tensor | None] | None = None,
    sizes: Sizes | None = None,
) -> torch.Tensor:  # fmt: skip
    """A map on whole tensors: each scalar op of its body by `evaluate` (default `eval_scalar_op`;
    one that returns None leaves the op's value unset: a caller that computed it another way).
    `sizes` binds the symbolic sizes of a dynamic function's types (`run_function` binds them)."""
    block: Block = op.body.block
    device = inputs[0].device if inputs else torch.device("cpu")
    env: Env = dict(zip(block.args, inputs))
    for inner in block.ops:
        if isinstance(inner, ein.YieldOp):
            value = env[inner.value]
            break
        result = (evaluate or eval_scalar_op)(inner, env, device)
        if result is not None:
            env[inner.results[0]] = result
    shape = _shape(op.result.type, sizes)
    return torch.broadcast_to(value, shape).to(to_torch_dtype(op.result.type.get_element_type()))


def _run_contract(op: ein.ContractOp, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    dtype = to_torch_dtype(op.result.type.get_element_type())
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    if dtype.is_floating_point:
        return torch.einsum(op.spec.data, a.to(acc), b.to(acc)).to(dtype)
    return torch.einsum(op.spec.data, a, b)


def _run_reduce(op: ein.ReduceOp, x: torch.Tensor) -> torch.Tensor:
    return reduce_function(op)(x)


def reduce_function(op: ein.ReduceOp) -> Callable[[torch.Tensor], torch.Tensor]:
    """The reduction as PyTorch calls, its dims and kind read off the IR once (the library paths call
    it every run: `compiler/library_plan.py`)."""
    dims, keep, kind = list(op.reduce_dims), op.keepdim is not None, op.kind.data
    if not dims:
        return lambda x: x.clone()
    extreme = torch.amax if kind == "max" else torch.amin

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.bool:
            return extreme(x.to(torch.uint8), dim=dims, keepdim=keep).to(torch.bool)
        if kind in ein.ARG_KINDS:
            fn = torch.argmax if kind == "argmax" else torch.argmin
            return fn(x, dim=dims[0], keepdim=keep)
        if kind == "sum":
            return torch.sum(x, dim=dims, keepdim=keep)
        if kind == "prod":
            acc = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
            for d in sorted(dims, reverse=True):
                acc = torch.prod(acc, d, keepdim=keep)
            return acc.to(x.dtype)
        if kind == "mean":
            return torch.mean(x, dim=dims, keepdim=keep)
        return extreme(x, dim=dims, keepdim=keep)

    return reduce


def _run_scan(op: ein.ScanOp, x: torch.Tensor) -> torch.Tensor:
    return scan_function(op)(x)


def scan_function(op: ein.ScanOp) -> Callable[[torch.Tensor], torch.Tensor]:
    """The scan as PyTorch calls, read off the IR once: run through the reference interpreter, each of
    Mixtral's four expert-offset cumsums read its attributes every call (75 us a call under cProfile on
    the H100's host, sixty-fourth session)."""
    dim, reverse = op.scan_dim, op.reverse is not None
    fn = torch.cumsum if op.kind.data == "sum" else torch.cumprod

    def scan(x: torch.Tensor) -> torch.Tensor:
        acc = x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x
        if reverse:
            return fn(acc.flip(dim), dim).flip(dim).to(x.dtype)
        return fn(acc, dim).to(x.dtype)

    return scan


def view_function(op: ein.ViewOp, sizes: Sizes | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The view as one PyTorch call, its kind, parameters and shape read off the IR once (the
    library paths call it every run: `compiler/library_plan.py`); symbolic sizes from `sizes`."""
    kind, p, shape = op.kind.data, op.view_params, _shape(op.result.type, sizes)
    if kind == "reshape":
        return lambda x: x.reshape(shape)
    if kind == "permute":
        return lambda x: x.permute(*p)
    if kind == "expand":
        return lambda x: x.expand(shape)
    if kind == "flip":
        return lambda x: x.flip(p)
    dim, start, stop, step = p
    index = tuple([slice(None)] * dim + [slice(start, stop, step)])
    return lambda x: x[index]


def reads_table_rows(op: ein.GatherOp) -> bool:
    """Whether `op` reads whole rows of a 2-d table at one index tensor (an embedding lookup:
    `[i0, d<last>]`, the index tensor shaped as the result's leading dims then ones)."""
    out, table = dims_of(op.result.type), dims_of(op.table.type)
    rows = len(out) - 1
    if len(op.indices) != 1 or len(table) != 2 or op.sources != (-1, rows) or table[1] != out[rows]:
        return False
    index_shape = list(dims_of(op.indices[0].type))
    return index_shape == [*out[:rows], 1]


def gather_rows(table: torch.Tensor, indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Rows of 2-d `table` at `indices` (a negative one counting from the end), as `shape`, through
    `index_select` (a kernel copying whole rows): advanced indexing's element-wise kernel took 44 us
    for 2048 rows of 2048 bf16 values on the H200, with an arange and a comparison beside it."""
    flat = indices.reshape(-1)
    flat = torch.where(flat < 0, flat + table.shape[0], flat)
    return table.index_select(0, flat).view(tuple(shape))


def _run_gather(
    op: ein.GatherOp, table: torch.Tensor, indices: Sequence[torch.Tensor], sizes: Sizes | None = None
) -> torch.Tensor:
    out = _shape(op.result.type, sizes)
    if reads_table_rows(op):
        return gather_rows(table, indices[0], out)
    at = []
    for k, m in enumerate(op.sources):
        if m >= 0:  # a result dim: arange along it, broadcast over the others
            along = [1] * len(out)
            along[m] = out[m]
            at.append(torch.arange(out[m], device=table.device).reshape(along))
        else:
            idx = indices[-1 - m].long()
            at.append(torch.where(idx < 0, idx + table.shape[k], idx))
    return table[tuple(at)].expand(out)


def iota(shape: Sequence[int], dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """`ein.iota`: the index along `dim`, broadcast to `shape` (stride 0 elsewhere), as `dtype`."""
    index_shape = [1] * len(shape)
    index_shape[dim] = shape[dim]
    idx = torch.arange(shape[dim], device=device).reshape(index_shape)
    return idx.expand(tuple(shape)).to(dtype)


def run_op(op: Operation, env: Env, device: torch.device, sizes: Sizes | None = None) -> torch.Tensor:
    """Execute one `ein` op on the tensors bound in `env` (symbolic sizes bound in `sizes`)."""
    args = [env[o] for o in op.operands]
    if isinstance(op, ein.ContractOp):
        return _run_contract(op, *args)
    if isinstance(op, ein.MapOp):
        return run_map(op, args, sizes=sizes)
    if isinstance(op, ein.ReduceOp):
        return _run_reduce(op, args[0])
    if isinstance(op, ein.ScanOp):
        return _run_scan(op, args[0])
    if isinstance(op, ein.ViewOp):
        return view_function(op, sizes)(args[0])
    if isinstance(op, ein.ConcatOp):
        return torch.cat(args, dim=op.dim.value.data)
    if isinstance(op, ein.GatherOp):
        return _run_gather(op, args[0], args[1:], sizes)
    result_dtype = to_torch_dtype(op.results[0].type.get_element_type())
    shape = _shape(op.results[0].type, sizes)
    if isinstance(op, ein.ConstantOp):
        return scalar_constant(op.value, device).expand(shape).to(result_dtype)
    if isinstance(op, ein.IotaOp):
        return iota(shape, op.dim.value.data, result_dtype, device)
    raise InterpreterError(f"the reference interpreter cannot run {op.name}")


def _shape(t: Attribute, sizes: Sizes | None) -> tuple[int, ...]:
    """The concrete shape of a type, its symbolic sizes from `sizes`."""
    try:
        return concrete_shape(dims_of(t), sizes or {})
    except ValueError as e:
        raise InterpreterError(f"{t}: {e}") from None


def _check_inputs(fn: func.FuncOp, args: Sequence[torch.Tensor]) -> Sizes:
    """Check the arguments against the function's types; returns the values of its size symbols,
    bound by the arguments' sizes."""
    params = fn.function_type.inputs.data
    if len(args) != len(params):
        raise InterpreterError(f"@{fn.sym_name.data} takes {len(params)} tensors, got {len(args)}")
    sizes: Sizes = {}
    for t, want in zip(args, params):
        bind_bare_sizes(dims_of(want), tuple(t.shape), sizes)
    for i, (t, want) in enumerate(zip(args, params)):
        shape, dtype = dims_of(want), to_torch_dtype(want.get_element_type())
        wrong = bind_sizes(shape, tuple(t.shape), sizes)
        if wrong is not None or t.dtype != dtype:
            why = f" ({wrong})" if wrong else ""
            raise InterpreterError(
                f"@{fn.sym_name.data} argument {i}: expected {shape} {dtype}, "
                f"got {tuple(t.shape)} {t.dtype}{why}"
            )
    return sizes


def run_function(fn: func.FuncOp, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Execute one `ein` function on tensors; returns its results in order. A function with symbolic
    sizes runs at the sizes its arguments give them."""
    sizes = _check_inputs(fn, args)
    device = args[0].device if args else torch.device("cpu")
    block = fn.body.block
    env: Env = dict(zip(block.args, args))
    for op in block.ops:
        if isinstance(op, func.ReturnOp):
            return [env[v] for v in op.arguments]
        env[op.results[0]] = run_op(op, env, device, sizes)
    raise InterpreterError(f"@{fn.sym_name.data} has no func.return")


def run_module(module: ModuleOp, name: str, args: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Execute the function `name` of a module."""
    for op in module.ops:
        if isinstance(op, func.FuncOp) and op.sym_name.data == name:
            return run_function(op, args)
    raise InterpreterError(f"module has no function @{name}")
