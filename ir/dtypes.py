"""Element types and shapes shared by the `ein` and `tile` dialects.

The one place that maps torch dtypes to MLIR element types and back, and
that knows numpy-style broadcasting, so verifiers and importers agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    Signedness,
    TensorType,
    bf16,
    f16,
    f32,
    f64,
    i1,
    i8,
    i16,
    i32,
    i64,
)
from xdsl.ir import Attribute

FloatType = Float16Type | BFloat16Type | Float32Type | Float64Type

_TORCH_TO_MLIR: dict[torch.dtype, Attribute] = {
    torch.float32: f32,
    torch.float16: f16,
    torch.bfloat16: bf16,
    torch.float64: f64,
    torch.bool: i1,
    torch.int8: i8,
    torch.int16: i16,
    torch.int32: i32,
    torch.int64: i64,
    torch.uint8: IntegerType(8, Signedness.UNSIGNED),
}
_MLIR_TO_TORCH = {str(v): k for k, v in _TORCH_TO_MLIR.items()}
# attributes are immutable and hashable: looked up directly, they skip printing the type (~50 µs of
# xDSL's printer a call, which the reference interpreter paid per scalar op it ran)
_BY_ATTRIBUTE = {v: k for k, v in _TORCH_TO_MLIR.items()}

SUPPORTED_TORCH_DTYPES = frozenset(_TORCH_TO_MLIR)


def to_mlir_type(dtype: torch.dtype) -> Attribute:
    """The MLIR element type of a torch dtype; raises for unsupported ones."""
    try:
        return _TORCH_TO_MLIR[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} has no ein element type") from None


def to_torch_dtype(elem: Attribute) -> torch.dtype:
    """The torch dtype of an MLIR element type; raises for unsupported ones."""
    try:
        return _BY_ATTRIBUTE.get(elem) or _MLIR_TO_TORCH[str(elem)]
    except (KeyError, TypeError):
        raise TypeError(f"element type {elem} has no torch dtype") from None


def is_float(elem: Attribute) -> bool:
    return isinstance(elem, FloatType)


def is_bool(elem: Attribute) -> bool:
    return elem == i1


def tensor_type(shape: Sequence[int], dtype: torch.dtype | Attribute) -> TensorType:
    """A ranked static tensor type from a shape and a torch or MLIR dtype."""
    elem = to_mlir_type(dtype) if isinstance(dtype, torch.dtype) else dtype
    return TensorType(elem, list(shape))


def shape_of(t: Attribute) -> tuple[int, ...]:
    """The static shape of a tensor type; scalars have shape ()."""
    if not isinstance(t, TensorType):
        raise TypeError(f"expected a tensor type, got {t}")
    shape = tuple(t.get_shape())
    if any(d < 0 for d in shape):
        raise TypeError(f"dynamic dimensions are not supported: {t}")
    return shape


def broadcast_shapes(*shapes: Sequence[int]) -> tuple[int, ...] | None:
    """numpy/PyTorch broadcasting of shapes (right-aligned); None if they clash."""
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for s in shapes:
        for i, d in enumerate(s):
            j = rank - len(s) + i
            if d == out[j] or d == 1:
                continue
            if out[j] != 1:
                return None
            out[j] = d
    return tuple(out)


def broadcasts_to(src: Sequence[int], dst: Sequence[int]) -> bool:
    """True when a `src`-shaped operand broadcasts to exactly `dst`."""
    if len(src) > len(dst):
        return False
    tail = dst[len(dst) - len(src) :]
    return all(s == d or s == 1 for s, d in zip(src, tail))
