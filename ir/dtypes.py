"""Element types and shapes shared by the `ein` and `tile` dialects.

The one place that maps torch dtypes to MLIR element types and back, and
that knows numpy-style broadcasting, so verifiers and importers agree.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable, Mapping, Sequence

import sympy
import torch
from xdsl.dialects import func
from xdsl.dialects.builtin import (
    DYNAMIC_INDEX,
    ArrayAttr,
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    Signedness,
    StringAttr,
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
from xdsl.ir import Attribute, Operation

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


# A dimension's size: an int, or a symbolic size (a sympy expression over positive integer symbols such
# as Dynamo's `s0`, `s0*s1`, `s1 + 1`). Shapes of `Dim`s are what `dims_of` returns.
Dim = int | sympy.Expr


def size_symbol(name: str) -> sympy.Symbol:
    """The symbol of a size named `name` (positive integer, as PyTorch's shape environment makes them)."""
    return sympy.Symbol(name, integer=True, positive=True)


_SIZE_OPS = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.FloorDiv: lambda a, b: sympy.floor(a / b), ast.Mod: lambda a, b: sympy.Mod(a, b),
}  # fmt: skip
_ROUNDINGS = {"floor": sympy.floor, "ceiling": sympy.ceiling}


@functools.lru_cache(maxsize=4096)
def parse_size(text: str) -> Dim:
    """A size from its printed form ("64", "s0", "s0*s1", "(s1//2)", "s2 + 1"); names are size
    symbols. Only integer arithmetic is accepted (no attribute access, no call but sympy's printed
    `floor(a/b)` and `ceiling(a/b)` of a quotient: `eval` is never used on dump text); raises
    ValueError naming the text otherwise."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise ValueError(f"size {text!r} is not an integer expression") from None

    def build(node: ast.AST) -> Dim:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.Name):
            return size_symbol(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -build(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _SIZE_OPS:
            return _SIZE_OPS[type(node.op)](build(node.left), build(node.right))
        called = isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        rounding = _ROUNDINGS.get(node.func.id) if called else None
        if rounding and len(node.args) == 1 and not node.keywords:  # sympy's str of s // 2: floor(s/2)
            (arg,) = node.args
            if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Div):
                return rounding(build(arg.left) / build(arg.right))
            return rounding(build(arg))
        raise ValueError(f"size {text!r}: {ast.dump(node)} is not integer arithmetic over sizes")

    return simplify_size(build(tree))


def size_text(d: Dim) -> str:
    """A size as an integer expression over size names ("64*s0*s1", "s0 + 1", "(s0 // 2)"): what a
    kernel computes from its size arguments and a grid from a launch's sizes (a power is written as
    a product, a floor of a quotient by an integer as `//`, a remainder as `%`; sizes are positive,
    so Triton's truncating `//` agrees). Raises ValueError for anything else (a Max, say)."""
    d = simplify_size(d)
    if not is_symbolic(d):
        return str(int(d))

    def grouped(e: sympy.Expr) -> str:  # an operand of * // %: a sum in parentheses
        return f"({text(e)})" if isinstance(e, sympy.Add) else text(e)

    def text(e: sympy.Expr) -> str:
        if isinstance(e, (sympy.Symbol, sympy.Integer)):
            return str(e)
        if isinstance(e, sympy.Pow) and e.exp.is_Integer and 0 < int(e.exp) <= 8:
            return "*".join([text(e.base)] * int(e.exp))
        if isinstance(e, sympy.Mul):
            return "*".join(grouped(a) for a in e.args)
        if isinstance(e, sympy.Add):  # in sympy's order: "s1 + 1"
            return " + ".join(text(a) for a in e.as_ordered_terms()).replace("+ -", "- ")
        if isinstance(e, sympy.floor):
            numerator, denominator = sympy.fraction(sympy.together(e.args[0]))
            if denominator.is_Integer and int(denominator) > 0:
                return f"({grouped(sympy.expand(numerator))} // {int(denominator)})"
        if isinstance(e, sympy.Mod):
            return f"({grouped(e.args[0])} % {grouped(e.args[1])})"
        raise ValueError(f"size {d}: only sums and products of sizes are kernel arguments")

    return text(d)


def simplify_size(d: Dim) -> Dim:
    """`d` as an int when it is one (a symbolic expression that folded to a constant), else itself."""
    if isinstance(d, sympy.Expr):
        d = sympy.expand(d)
        if d.is_Integer:
            return int(d)
    return d


def size_of(d: object) -> Dim:
    """A size from PyTorch: an int, or a SymInt's expression, read without guarding on its value
    (`int()` of a SymInt would specialize the graph to this size)."""
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        return int(expr) if expr.is_Integer else parse_size(str(expr))
    if isinstance(d, sympy.Expr):
        return simplify_size(d)
    return int(d)


def is_symbolic(d: object) -> bool:
    return isinstance(d, sympy.Expr) and not d.is_Integer


def same_size(a: Dim, b: Dim) -> bool:
    """Whether two sizes are equal for every value of their symbols."""
    if not (is_symbolic(a) or is_symbolic(b)):
        return a == b
    return sympy.expand(a - b) == 0


def same_shape(a: Sequence[Dim], b: Sequence[Dim]) -> bool:
    return len(a) == len(b) and all(same_size(x, y) for x, y in zip(a, b))


def tensor_type(shape: Sequence[Dim], dtype: torch.dtype | Attribute) -> TensorType:
    """A ranked tensor type from a shape and a torch or MLIR dtype. A symbolic size is `?` in the
    shape, and the type's encoding names the symbolic sizes in order: `tensor<?x64xf32, ["s0*s1"]>`."""
    elem = to_mlir_type(dtype) if isinstance(dtype, torch.dtype) else dtype
    shape = [simplify_size(d) for d in shape]
    symbolic = [StringAttr(_printed(d)) for d in shape if is_symbolic(d)]
    if not symbolic:
        return TensorType(elem, [int(d) for d in shape])
    return TensorType(elem, [DYNAMIC_INDEX if is_symbolic(d) else d for d in shape], ArrayAttr(symbolic))


def _printed(d: Dim) -> str:
    """A symbolic size as a type's encoding names it: `size_text`'s form, which `parse_size` reads
    back (sympy's own writes a floor division as `floor(s0/2)`); sympy's where it has none (a Max)."""
    try:
        return size_text(d)
    except ValueError:
        return str(d)


class SymbolicSizeError(TypeError):
    """Code that takes static sizes met a type with symbolic ones."""

    def __init__(self, t: TensorType):
        super().__init__(f"symbolic sizes are not supported here: {t}")
        self.type = t


def shape_of(t: Attribute) -> tuple[int, ...]:
    """The static shape of a tensor type; scalars have shape (). Raises TypeError for a symbolic one:
    code that handles symbolic sizes reads them with `dims_of`."""
    if not isinstance(t, TensorType):
        raise TypeError(f"expected a tensor type, got {t}")
    shape = tuple(t.get_shape())
    if any(d < 0 for d in shape):
        raise SymbolicSizeError(t)
    return shape


def dims_of(t: Attribute) -> tuple[Dim, ...]:
    """The shape of a tensor type, symbolic sizes as sympy expressions (see `tensor_type`)."""
    if not isinstance(t, TensorType):
        raise TypeError(f"expected a tensor type, got {t}")
    shape = tuple(t.get_shape())
    dynamic = sum(d < 0 for d in shape)
    if not dynamic:
        return shape
    names = t.encoding.data if isinstance(t.encoding, ArrayAttr) else ()
    if len(names) != dynamic or not all(isinstance(n, StringAttr) for n in names):
        raise TypeError(f'{t}: its encoding must name each of its {dynamic} symbolic sizes, as ["s0", ...]')
    sizes = iter(parse_size(n.data) for n in names)
    return tuple(next(sizes) if d < 0 else d for d in shape)


def is_static(t: Attribute) -> bool:
    return isinstance(t, TensorType) and all(d >= 0 for d in t.get_shape())


def has_symbolic_sizes(op: Operation) -> bool:
    """Whether `op` (a function, or a module of functions) takes or returns tensors of symbolic
    sizes. Only the signature is read (every pass calls this): a function's other sizes derive from
    its arguments' and from the sizes it takes as integers (a partition's `arange` of a symbolic
    length, whose tensor arguments may all be static), which its results show."""
    if isinstance(op, func.FuncOp):
        fns = [op]
    else:  # a module: its functions
        fns = [f for f in op.regions[0].ops if isinstance(f, func.FuncOp)]
    types = (t for f in fns for t in (*f.function_type.inputs.data, *f.function_type.outputs.data))
    return any(not is_static(t) for t in types)


def undecided_as(decide: Callable, otherwise: Callable) -> Callable:
    """`decide`, answered by `otherwise` (called with the same arguments) where it compares symbolic
    sizes that sympy cannot order (`s0*s1 > 64` raises TypeError): for a pass over symbolic `ein`, the
    choice that changes nothing (a rewrite that does not apply, a fusion that does not happen)."""

    def decided(*args: object) -> object:
        try:
            return decide(*args)
        except TypeError:
            return otherwise(*args)

    return decided


def size_symbols(shape: Sequence[Dim]) -> set[sympy.Symbol]:
    return {s for d in shape if is_symbolic(d) for s in d.free_symbols}


def bind_bare_sizes(shape: Sequence[Dim], sizes: Sequence[int], bound: dict[sympy.Symbol, int]) -> None:
    """Bind each symbol that is a whole dim of `shape` to that dim's size in `sizes` (first binding
    kept): the first pass over a function's arguments, so that an argument of size `s0*s1` checks
    against symbols a later argument binds."""
    for d, n in zip(shape, sizes):
        if isinstance(d, sympy.Symbol) and d not in bound:
            bound[d] = int(n)


def bind_sizes(shape: Sequence[Dim], sizes: Sequence[int], bound: dict[sympy.Symbol, int]) -> str | None:
    """Bind the symbols of `shape` (a function argument's) to the concrete `sizes` of the tensor
    passed for it, adding to `bound`: a dim that is a bare symbol binds it; every dim must then
    evaluate to its size. Returns what disagrees, or None."""
    if len(shape) != len(sizes):
        return f"rank {len(sizes)} where {len(shape)} was declared"
    bind_bare_sizes(shape, sizes, bound)
    for i, (d, n) in enumerate(zip(shape, sizes)):
        try:
            want = concrete_size(d, bound)
        except ValueError as e:
            return str(e)
        if want != n:
            return f"dim {i} is {n} where {d} = {want}"
    return None


def concrete_size(d: Dim, bound: Mapping[sympy.Symbol, int]) -> int:
    """`d` with its symbols replaced by their bound values; raises ValueError for an unbound one."""
    if not is_symbolic(d):
        return int(d)
    missing = d.free_symbols - set(bound)
    if missing:
        raise ValueError(f"size {d}: {', '.join(sorted(map(str, missing)))} not bound by any argument")
    return int(d.subs(bound))


def concrete_shape(shape: Sequence[Dim], bound: Mapping[sympy.Symbol, int]) -> tuple[int, ...]:
    return tuple(concrete_size(d, bound) for d in shape)


def concrete_by_name(value: object, size: Callable[[str], int]) -> object:
    """`value` (a size, or dicts, lists and tuples of sizes: a kernel's problem and its constraints)
    with every symbolic size made concrete, each symbol given `size(its name)`."""
    if isinstance(value, dict):
        return {k: concrete_by_name(v, size) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(concrete_by_name(v, size) for v in value)
    if is_symbolic(value):
        return concrete_size(value, {s: size(str(s)) for s in value.free_symbols})
    return value


def any_symbolic(value: object) -> bool:
    """Whether `value` (as `concrete_by_name` takes it) holds a symbolic size."""
    if isinstance(value, dict):
        return any(map(any_symbolic, value.values()))
    if isinstance(value, (list, tuple)):
        return any(map(any_symbolic, value))
    return is_symbolic(value)


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
