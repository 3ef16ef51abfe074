"""The program of a partition of symbolic sizes: one `call(args)` for every size.

Like `program.write_program`'s, a straight-line `call(args)` written once, but its sizes are read
from its arguments at each call (`s0 = arg1.shape[1]`), and everything that depends on them is an
expression of them: buffer shapes and strides (row-major), views, launch grids, and the kernels'
size arguments. Strides are read from the tensors at each call (`*buf3.stride()`): the kernels take
any layout, so no guard is needed, and Triton's specialization on the strides' and sizes' values
is the launcher's (`launcher.SizedLaunch`). What the program cannot write as an expression (a
constant or iota of a symbolic size, a gather, another op outside the kernels) runs through the
reference interpreter at the call's sizes.
"""

from __future__ import annotations

import ast
import functools
import math
from collections.abc import Sequence

import sympy
import torch
from xdsl.ir import Operation, SSAValue

from ..autotune.buckets import BUCKET_EDGES
from ..ir import einsum as ein
from ..ir.dtypes import Dim, dims_of, is_symbolic, simplify_size, size_text, to_torch_dtype
from ..ir.interpreter import iota, run_op, scalar_constant
from .program import (
    LineWriter,
    Program,
    ProgramInputs,
    allocator,
    makes_fresh_memory,
    returned_order,
    stream_getter,
)

HEADER = """\
# tilefuse program: partition {partition} of graph {graph}, on {device}, for every size
# {kernels} kernel launch(es); sizes read from the arguments at each call, grids and buffer shapes
# are expressions of them; strides are read from the tensors (the kernels take any layout).
"""


class SymbolicProgramError(ValueError):
    """The partition cannot be written as one program for every size."""


def size_bindings(sources: Sequence[tuple[str, Dim]]) -> dict[sympy.Symbol, str]:
    """How a call finds each size symbol: `sources` are (a Python expression of a value the call
    has, such as "arg1.shape[2]" or "size0", and that value's size expression). A source whose
    expression is a bare symbol binds it; one linear in a single unbound symbol with integer
    coefficients (`2*s0`, `s0 + 1`, `64*s0*s1` once s1 is bound) binds it by solving. Returns
    symbol -> its expression (over earlier symbols and the sources); symbols no source binds are
    missing from it."""
    bound: dict[sympy.Symbol, str] = {}
    for text, d in sources:  # bare symbols first: the cheapest expression of each
        if isinstance(d, sympy.Symbol) and d not in bound:
            bound[d] = text
    pending = [(text, simplify_size(d)) for text, d in sources if is_symbolic(d)]
    progress = True
    while pending and progress:
        progress = False
        for text, d in list(pending):
            free = [x for x in d.free_symbols if x not in bound]
            if len(free) != 1:  # bound already (nothing to learn), or not yet solvable
                if not free:
                    pending.remove((text, d))
                continue
            (x,) = free
            try:
                poly = sympy.Poly(d, x)  # the other symbols, all bound, are coefficients
            except sympy.PolynomialError:  # (a floor division, say)
                continue
            if poly.degree() != 1:
                continue
            a, b = poly.all_coeffs()
            rest = "" if b == 0 else f" - ({size_text(b)})"
            value = f"({text}{rest})" if rest else text
            bound[x] = value if a == 1 else f"{value} // ({size_text(a)})"
            pending.remove((text, d))
            progress = True
    return bound


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def write_symbolic_program(spec: ProgramInputs) -> Program:
    """Generate and load `call(args)` for a partition whose arguments have symbolic sizes."""
    w = _SymbolicWriter(spec)
    source = w.write()
    code = compile(source, f"<tilefuse program {spec.graph}.{spec.name}>", "exec")
    exec(code, w.scope)
    return Program(source, w.scope["call"], w.launches)


class _SymbolicWriter(LineWriter):
    def __init__(self, spec: ProgramInputs):
        super().__init__()
        self.spec = spec
        self.scope.update(
            torch=torch, _device=spec.device, _allocator=allocator(spec.device), cdiv=_cdiv, min=min, max=max
        )
        if spec.device.type == "cuda":
            self.scope["_stream"] = stream_getter(spec.device)
        self.symbols: dict[sympy.Symbol, str] = {}  # each size symbol -> its variable in `call`
        self.sizes_dict: str | None = None  # the variable holding {symbol: size}, once written
        self.bucket_variables: set[str] = set()  # each symbol's size bucket, once written
        self.packed: set[str] = set()  # contiguous memory made here (kernel outputs, copies), its reshapes

    def size(self, d: Dim) -> str:
        """A size as an expression of the call's size variables."""
        d = simplify_size(d)
        if not is_symbolic(d):
            return str(int(d))
        missing = [s for s in d.free_symbols if s not in self.symbols]
        if missing:
            raise SymbolicProgramError(f"size {d}: no argument's dim is {missing[0]}")
        return size_text(d)  # the variables are named as the symbols

    def shape(self, t: object) -> str:
        return _tuple([self.size(d) for d in dims_of(t)])

    def strides(self, t: object, order: Sequence[int] | None = None) -> str:
        """Dense strides of `t`'s shape with its dims laid out in `order` (outermost first; row-major
        where None)."""
        dims = dims_of(t)
        order = list(range(len(dims))) if order is None else list(order)
        strides = {d: simplify_size(math.prod(dims[e] for e in order[i + 1 :])) for i, d in enumerate(order)}
        return _tuple([self.size(strides[d]) for d in range(len(dims))])

    def sizes(self) -> str:
        """A dict {symbol: size} for the reference interpreter, made once per call when needed."""
        if self.sizes_dict is None:
            self.sizes_dict = "sizes"
            symbols = self.bind("symbols", list(self.symbols))
            values = ", ".join(self.symbols.values())
            self.emit(f"sizes = dict(zip({symbols}, ({values},)))")
        return self.sizes_dict

    def write(self) -> str:
        spec = self.spec
        arg_names = [f"arg{i}" for i in range(len(spec.args))]
        size_names = [f"size{i}" for i in range(len(spec.size_args))]
        unpacked = arg_names + size_names
        self.emit(f"{_tuple(unpacked)[1:-1]} = args" if unpacked else "del args")
        sources = list(zip(size_names, spec.size_args))
        self.of_args.update(arg_names)
        for value, name in zip(spec.args, arg_names):
            self.names[value] = name
            sources += [(f"{name}.shape[{d}]", dim) for d, dim in enumerate(dims_of(value.type))]
        for symbol, text in size_bindings(sources).items():
            self.symbols[symbol] = str(symbol)
            self.emit(f"{symbol} = {text}")
        self.emit("stream = _stream()" if spec.device.type == "cuda" else "stream = 0")
        self.emit("_empty = _allocator()")
        self.escape(spec.results)
        for op in spec.steps:
            self._step(op)
            for value in spec.release_after.get(op, ()):
                name = self.names.get(value)
                if name is not None and name.startswith("buf") and value not in spec.results:
                    self.emit(f"del {name}")
        results = self.returned(spec.results, spec.owners, spec.layouts)
        self.emit(f"return {_tuple(results) if spec.returns_tuple else ', '.join(results)}")
        header = HEADER.format(
            partition=spec.name, graph=spec.graph, device=spec.device, kernels=self.launches
        )
        return header + "\n\ndef call(args):\n" + "\n".join(self.lines) + "\n"

    def _step(self, op: Operation) -> None:
        kernel = self.spec.kernels.get(op)
        if kernel is not None:
            self._launch(kernel)
            return
        result = op.results[0]
        operands = [self.names[v] for v in op.operands]
        name = self.fresh(result)
        if isinstance(op, ein.ViewOp):
            self.emit(f"{name} = {self._view(op, operands[0])}")
            if op.kind.data == "reshape" and operands[0] in self.packed:
                self.packed.add(name)  # a reshape of contiguous memory is a contiguous view of it
        elif isinstance(op, ein.ConcatOp):
            self.emit(f"{name} = torch.cat(({''.join(o + ', ' for o in operands)}), {op.dim.value.data})")
        elif all(not is_symbolic(d) for d in dims_of(result.type)) and not op.operands:
            # a constant or iota of static shape: made once, on the device
            self.emit(f"{name} = {self.bind('c', run_op(op, {}, self.spec.device))}  # {op.name}")
        elif isinstance(op, ein.IotaOp):  # of symbolic shape (a cache's positions): an arange a call
            dtype, dim = to_torch_dtype(result.type.get_element_type()), op.dim.value.data
            made = self.bind("iota", functools.partial(iota, dim=dim, dtype=dtype, device=self.spec.device))
            self.emit(f"{name} = {made}({self.shape(result.type)})  # {op.name}")
        elif isinstance(op, ein.ConstantOp):  # of symbolic shape: the value made once, expanded a call
            dtype = to_torch_dtype(result.type.get_element_type())
            value = self.bind("c", scalar_constant(op.value, self.spec.device).to(dtype))
            self.emit(f"{name} = {value}.expand({self.shape(result.type)})  # {op.name}")
        else:
            glue = self.bind("op", _interpreted(op, self.spec.device))
            args = ", ".join([self.sizes(), *operands])
            self.emit(f"{name} = {glue}({args})  # {op.name} on the ein reference interpreter")
        if isinstance(op, (ein.ConstantOp, ein.IotaOp)) and result in self.escaping:
            # the interpreter broadcasts a constant (stride 0), and a static one is made once: a caller
            # may write into a result in place (AOTAutograd's index_put_ into fresh zeros)
            self.emit(f"{name} = {name}.clone(memory_format=torch.contiguous_format)  # returned: copied")
            self.packed.add(name)
        elif isinstance(op, (ein.ConstantOp, ein.IotaOp)):
            self.shared.add(name)
        elif not makes_fresh_memory(op, {}):  # a reshape's layout is not known here: may view
            self.share(name, operands)

    def contiguous(self, value: SSAValue) -> bool:
        return self.names[value] in self.packed

    def _view(self, op: ein.ViewOp, src: str) -> str:
        kind, p = op.kind.data, op.view_params
        if kind == "reshape":
            return f"{src}.reshape({self.shape(op.result.type)})"
        if kind == "permute":
            return f"{src}.permute({tuple(p)!r})"
        if kind == "expand":
            return f"{src}.expand({self.shape(op.result.type)})"
        if kind == "flip":
            return f"{src}.flip({list(p)!r})"
        dim, start, stop, step = p
        index = ", ".join([":"] * dim + [f"{start}:{stop}:{step}"])
        return f"{src}[{index}]"

    def _launch(self, kernel: object) -> None:
        launcher, config, lowered = kernel.launcher, kernel.config, kernel.lowered
        if kernel.backend != "triton" or not hasattr(launcher, "sized"):
            raise SymbolicProgramError(f"{lowered.group.name}: a {kernel.backend} kernel takes static sizes")
        for value in lowered.outputs:
            name = self.fresh(value)
            dtype = to_torch_dtype(value.type.get_element_type())
            order = returned_order(self.spec, kernel, value)  # PyTorch's layout of a returned result
            shape, strides = self.shape(value.type), self.strides(value.type, order)
            self.emit(f"{name} = _empty({shape}, {strides}, {dtype})")
            if order is None:
                self.packed.add(name)
        args = []
        for value in [*lowered.inputs, *lowered.outputs]:
            name = self.names[value]
            args += [name, f"*{name}.stride()"]
        args += list(launcher.symbols)  # the kernel's size arguments, named as the call's variables
        for s in launcher.symbols:
            if s not in self.symbols.values():
                raise SymbolicProgramError(f"{lowered.group.name}: no argument's dim is {s}")
        title = lowered.kernel.sym_name.data if lowered.kernel is not None else lowered.group.name
        by_config: dict[str, list[tuple[int, ...]]] = {}
        for key, choice in sorted(kernel.buckets.items()):
            by_config.setdefault(choice.config.key(), []).append(key)
        if len(by_config) <= 1:  # one config for every size
            config = next(iter(kernel.buckets.values())).config if kernel.buckets else config
            self.emit(f"# {title} ({lowered.group.kind}): {config.key()}")
            self._launch_with(launcher, config, args)
            return
        # a config per size bucket (`autotune.buckets`): one comparison a symbol, on sizes at hand
        symbols = launcher.symbols
        branches = [
            (kernel.buckets[keys[0]].config, _bucket_test(symbols, keys)) for keys in by_config.values()
        ]
        for symbol in sorted({s for _, (_, used) in branches for s in used}):
            self._bucket_variable(symbol)
        self.emit(f"# {title} ({lowered.group.kind}): a config per size bucket of {', '.join(symbols)}")
        for i, (config, (test, _)) in enumerate(branches):
            if i == len(branches) - 1:
                self.emit(f"else:  # {config.key()}")
            else:
                self.emit(f"{'if' if i == 0 else 'elif'} {test}:  # {config.key()}")
            self.indent += 1
            self._launch_with(launcher, config, args)
            self.indent -= 1
        self.launches -= len(branches) - 1  # one launch a call, whichever bucket

    def _launch_with(self, launcher: object, config: object, args: list[str]) -> None:
        handle = self.bind("k", launcher.sized(config.params, config.num_warps, config.num_stages))
        grid = ", ".join(_grid_expression(g, config.params) for g in launcher.grid)
        self.emit(f"{handle}(stream, ({grid},), {', '.join(args)})")
        self.launches += 1

    def _bucket_variable(self, symbol: str) -> None:
        """The variable holding a size symbol's bucket, written once a call where first needed."""
        name = _bucket_name(symbol)
        if name not in self.bucket_variables:
            self.bucket_variables.add(name)
            test = " + ".join(f"({symbol} > {edge})" for edge in BUCKET_EDGES)
            buckets = [f"{i} (<= {edge})" for i, edge in enumerate(BUCKET_EDGES)] + [str(len(BUCKET_EDGES))]
            self.emit(f"{name} = {test}  # {symbol}'s size bucket: {', '.join(buckets)}")


def _tuple(items: list[str]) -> str:
    """A Python tuple display of `items` ("(a,)" for one)."""
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _bucket_name(symbol: str) -> str:
    """The variable of `call` holding a size symbol's bucket."""
    return f"bucket_{symbol}"


def _bucket_test(symbols: Sequence[str], keys: list[tuple[int, ...]]) -> tuple[str, list[str]]:
    """A test that a call's size buckets are among `keys`, and the symbols it reads. Where the keys
    are every combination of a set of buckets per symbol, one comparison per symbol that is not
    free (`bucket_s1 == 0`, `bucket_s0 in (1, 2)`), else a set of keys."""
    every = range(len(BUCKET_EDGES) + 1)
    sets = [sorted({k[i] for k in keys}) for i in range(len(symbols))]
    if len(keys) == math.prod(len(v) for v in sets):
        tests, used = [], []
        for symbol, values in zip(symbols, sets):
            if len(values) < len(every):
                variable = _bucket_name(symbol)
                used.append(symbol)
                tests.append(
                    f"{variable} == {values[0]}" if len(values) == 1 else f"{variable} in {tuple(values)}"
                )
        return " and ".join(tests) or "True", used
    variables = ", ".join(map(_bucket_name, symbols))
    return f"({variables}) in {{{', '.join(map(str, keys))}}}", list(symbols)


def _grid_expression(expr: str, params: dict[str, int]) -> str:
    """A grid expression with the tile parameters replaced by their values; the size names stay."""

    class Bind(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.AST:
            return ast.Constant(params[node.id]) if node.id in params else node

    return ast.unparse(Bind().visit(ast.parse(expr, mode="eval")))


def _interpreted(op: Operation, device: torch.device):
    operands = list(op.operands)

    def run(sizes: dict, *tensors: torch.Tensor) -> torch.Tensor:
        return run_op(op, dict(zip(operands, tensors)), device, sizes)

    return run


def needs_sized_programs(args: Sequence[SSAValue]) -> bool:
    return any(is_symbolic(d) for a in args for d in dims_of(a.type))
