"""export-linalg: an `ein` module as upstream MLIR (`func`, `linalg.generic`, `tensor`, `arith`,
`math`), so upstream tools (mlir-opt, IREE) can verify it, transform it and compare.

    ein.contract  -> tensor.empty + linalg.fill(0) + linalg.generic (parallel output dims,
                     reduction dims for the contracted letters; mulf/addf in f32 for 16-bit
                     operands, then rounded, as PyTorch computes them)
    ein.map       -> linalg.generic over the result, inputs broadcast by their indexing maps
                     (size-1 dims read index 0), the map's body as the region
    ein.reduce    -> linalg.fill(neutral) + linalg.generic with reduction iterators
                     (mean: then a division); keepdim through tensor.reshape
    ein.view      -> reshape: tensor.reshape; permute and expand: a copying linalg.generic
                     whose input map permutes or broadcasts; slice: tensor.extract_slice
    ein.constant  -> arith.constant dense splat;  ein.iota -> linalg.generic on linalg.index
    ein.concat    -> tensor.concat

The result is a new module (the input is untouched); an op without an upstream form (integer
reductions) raises `ExportError` naming it. Fusion-group attributes are dropped: they are
tilefuse's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from xdsl.context import Context
from xdsl.dialects import arith, func
from xdsl.dialects.builtin import (
    AffineMapAttr,
    DenseIntOrFPElementsAttr,
    FloatAttr,
    ModuleOp,
    TensorType,
    f32,
    i64,
)
from xdsl.dialects.linalg.ops import FillOp, GenericOp, IndexOp, IteratorType, IteratorTypeAttr, YieldOp
from xdsl.dialects.tensor import ConcatOp, EmptyOp, ExtractSliceOp, ReshapeOp
from xdsl.ir import Block, Operation, Region, SSAValue
from xdsl.ir.affine import AffineExpr, AffineMap
from xdsl.passes import ModulePass

from ..ir import einsum as ein
from ..ir.builder import ScalarBuilder, inline_map_body
from ..ir.dtypes import is_float, shape_of, tensor_type
from .fusion_groups import functions

PARALLEL = IteratorTypeAttr(IteratorType.PARALLEL)
REDUCTION = IteratorTypeAttr(IteratorType.REDUCTION)


class ExportError(Exception):
    """An `ein` op with no upstream form yet."""


def _map(rank: int, exprs: list[AffineExpr]) -> AffineMapAttr:
    return AffineMapAttr(AffineMap(rank, 0, tuple(exprs)))


def _accumulator(elem):
    """Where sums accumulate: f32 for 16-bit floats (PyTorch's numerics), else the type itself."""
    return f32 if is_float(elem) and elem.bitwidth < 32 else elem


def _identity(rank: int) -> AffineMapAttr:
    return _map(rank, [AffineExpr.dimension(i) for i in range(rank)])


def _broadcast_map(shape: tuple[int, ...], out: tuple[int, ...]) -> AffineMapAttr:
    """numpy broadcasting of `shape` to `out`: trailing dims line up, size-1 dims read index 0."""
    offset = len(out) - len(shape)
    exprs = [
        AffineExpr.constant(0) if d == 1 and out[offset + j] != 1 else AffineExpr.dimension(offset + j)
        for j, d in enumerate(shape)
    ]
    return _map(len(out), exprs)


class _Exporter:
    def __init__(self, fn: func.FuncOp):
        self.block = Block(arg_types=fn.function_type.inputs.data)
        self.values: dict[SSAValue, SSAValue] = dict(zip(fn.body.block.args, self.block.args))
        for old, new in zip(fn.body.block.args, self.block.args):
            new.name_hint = old.name_hint
        self.fn = fn

    def emit(self, op: Operation) -> SSAValue:
        self.block.add_op(op)
        return op.results[0]

    def filled(self, ty: TensorType, value: float) -> SSAValue:
        elem = ty.get_element_type()
        empty = self.emit(EmptyOp([], ty))
        scalar = self.emit(arith.ConstantOp(FloatAttr(value, elem)))
        return self.emit(FillOp([scalar], [empty], [ty]))

    def generic(self, inputs, maps, out_ty, iterators, body, init: SSAValue | None = None) -> SSAValue:
        init = init if init is not None else self.emit(EmptyOp([], out_ty))
        rank = len(iterators)
        block = Block(arg_types=[v.type.get_element_type() for v in inputs] + [out_ty.get_element_type()])
        block.add_op(YieldOp(body(block)))
        out_map = _map(rank, [AffineExpr.dimension(i) for i in range(rank) if iterators[i] == PARALLEL])
        return self.emit(
            GenericOp(list(inputs), [init], Region(block), [*maps, out_map], iterators, [out_ty])
        )

    def run(self) -> func.FuncOp:
        for op in self.fn.body.block.ops:
            if isinstance(op, func.ReturnOp):
                self.block.add_op(func.ReturnOp(*(self.values[v] for v in op.operands)))
            else:
                self.values[op.results[0]] = self.export(op)
        return func.FuncOp(self.fn.sym_name.data, self.fn.function_type, Region(self.block))

    def export(self, op: Operation) -> SSAValue:
        get = self.values.__getitem__
        if isinstance(op, ein.ContractOp):
            return self.contract(op, get(op.lhs), get(op.rhs))
        if isinstance(op, ein.MapOp):
            out = tuple(shape_of(op.result.type))
            maps = [_broadcast_map(tuple(shape_of(v.type)), out) for v in op.inputs]
            body = lambda b: inline_map_body(op, b.args[: len(op.inputs)], b)  # noqa: E731
            return self.generic(
                [get(v) for v in op.inputs], maps, op.result.type, [PARALLEL] * len(out), body
            )
        if isinstance(op, ein.ReduceOp):
            return self.reduce(op, get(op.input))
        if isinstance(op, ein.ViewOp):
            return self.view(op, get(op.input))
        if isinstance(op, ein.ConstantOp):
            dense = DenseIntOrFPElementsAttr.from_list(op.result.type, [op.value.value.data])
            return self.emit(arith.ConstantOp(dense, op.result.type))
        if isinstance(op, ein.IotaOp):
            return self.iota(op)
        if isinstance(op, ein.ConcatOp):
            return self.emit(ConcatOp([get(v) for v in op.inputs], op.dim.value.data, op.result.type))
        raise ExportError(f"{op.name} has no upstream form yet")

    def contract(self, op: ein.ContractOp, lhs: SSAValue, rhs: SSAValue) -> SSAValue:
        a, b, out = ein.parse_spec(op.spec.data)
        loops = list(out) + [c for c in dict.fromkeys(a + b) if c not in out]
        dim = lambda letters: [AffineExpr.dimension(loops.index(c)) for c in letters]  # noqa: E731
        iterators = [PARALLEL if c in out else REDUCTION for c in loops]
        ty = op.result.type
        if not is_float(ty.get_element_type()):
            raise ExportError(f"ein.contract on {ty.get_element_type()} has no upstream form yet")
        acc = _accumulator(ty.get_element_type())

        def body(block: Block) -> SSAValue:
            sb = ScalarBuilder(block)
            x, y, s = block.args
            return sb.add(s, sb.mul(sb.cast(x, acc), sb.cast(y, acc)))

        maps = [_map(len(loops), dim(a)), _map(len(loops), dim(b))]
        acc_ty = tensor_type(shape_of(ty), acc)
        return self.narrow(
            self.generic([lhs, rhs], maps, acc_ty, iterators, body, self.filled(acc_ty, 0.0)), ty
        )

    def narrow(self, x: SSAValue, ty: TensorType) -> SSAValue:
        """`x` (an f32 accumulator) rounded to `ty`'s element type, as PyTorch rounds a bf16 product."""
        if x.type == ty:
            return x
        rank = len(ty.get_shape())
        cast = lambda b: ScalarBuilder(b).cast(b.args[0], ty.get_element_type())  # noqa: E731
        return self.generic([x], [_identity(rank)], ty, [PARALLEL] * rank, cast)

    def reduce(self, op: ein.ReduceOp, x: SSAValue) -> SSAValue:
        shape, dims, kind = tuple(shape_of(op.input.type)), op.reduce_dims, op.kind.data
        elem = op.result.type.get_element_type()
        if not is_float(elem) or kind in ein.ARG_KINDS:
            raise ExportError(f"ein.reduce {kind} on {elem} has no upstream form yet")
        acc = _accumulator(elem)
        widened = self.narrow(x, tensor_type(shape, acc)) if acc != elem else x
        stat = tensor_type([d for i, d in enumerate(shape) if i not in dims], acc)
        neutral = {"sum": 0.0, "mean": 0.0, "prod": 1.0, "max": float("-inf"), "min": float("inf")}[kind]
        combine = {"sum": "add", "mean": "add", "prod": "mul", "max": "max", "min": "min"}[kind]
        iterators = [REDUCTION if i in dims else PARALLEL for i in range(len(shape))]
        body = lambda b: ScalarBuilder(b).binary(combine, b.args[1], b.args[0])  # noqa: E731
        total = self.generic(
            [widened], [_identity(len(shape))], stat, iterators, body, self.filled(stat, neutral)
        )
        if kind == "mean":
            count = float(math.prod(shape[d] for d in dims))

            def divide(b: Block) -> SSAValue:
                sb = ScalarBuilder(b)
                return sb.div(b.args[0], sb.const(count, acc))

            rank = len(stat.get_shape())
            total = self.generic([total], [_identity(rank)], stat, [PARALLEL] * rank, divide)
        total = self.narrow(total, tensor_type(shape_of(stat), elem))
        return self.reshape(total, op.result.type)

    def reshape(self, x: SSAValue, ty: TensorType) -> SSAValue:
        if x.type == ty:
            return x
        dims = list(ty.get_shape())
        shape_ty = TensorType(i64, [len(dims)])
        shape = self.emit(arith.ConstantOp(DenseIntOrFPElementsAttr.from_list(shape_ty, dims), shape_ty))
        return self.emit(ReshapeOp(x, shape, ty))

    def view(self, op: ein.ViewOp, x: SSAValue) -> SSAValue:
        kind, ty = op.kind.data, op.result.type
        src, out = tuple(shape_of(op.input.type)), tuple(shape_of(ty))
        copy = lambda b: b.args[0]  # noqa: E731
        if kind == "reshape":
            return self.reshape(x, ty)
        if kind == "permute":
            # output dim i reads source dim perm[i]: the input map sends each source dim to its loop
            perm = op.view_params
            exprs = [AffineExpr.dimension(perm.index(j)) for j in range(len(src))]
            return self.generic([x], [_map(len(out), exprs)], ty, [PARALLEL] * len(out), copy)
        if kind == "expand":
            return self.generic([x], [_broadcast_map(src, out)], ty, [PARALLEL] * len(out), copy)
        if kind == "slice":
            dim, start, _, step = op.view_params
            offsets, strides = [0] * len(src), [1] * len(src)
            offsets[dim], strides[dim] = start, step
            return self.emit(ExtractSliceOp.from_static_parameters(x, offsets, list(out), strides))
        raise ExportError(f"ein.view {kind} has no upstream form yet")

    def iota(self, op: ein.IotaOp) -> SSAValue:
        ty, axis = op.result.type, op.dim.value.data
        rank = len(ty.get_shape())

        def body(b: Block) -> SSAValue:
            index = IndexOp(axis)
            b.add_op(index)
            as_int = arith.IndexCastOp(index.result, i64)
            b.add_op(as_int)
            return ScalarBuilder(b).cast(as_int.result, ty.get_element_type())

        return self.generic([], [], ty, [PARALLEL] * rank, body)


def export_module(module: ModuleOp) -> ModuleOp:
    """Upstream MLIR for every function of an `ein` module (a new module)."""
    return ModuleOp([_Exporter(fn).run() for fn in functions(module)])


@dataclass(frozen=True)
class ExportLinalg(ModulePass):
    """Replace the module's `ein` functions with their upstream `linalg` form."""

    name = "export-linalg"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        exported = export_module(op)
        for fn in list(functions(op)):
            fn.detach()
        for fn in list(exported.ops):
            fn.detach()
            op.body.block.add_op(fn)
