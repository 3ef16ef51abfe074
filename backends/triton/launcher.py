"""Loading emitted Triton source and launching its kernel.

The source is written to a file named by its hash (Triton's JIT reads a
kernel's source back through `inspect`, so it must live in a real file) and
imported from there. Without CUDA the kernel runs in Triton's interpreter on
CPU tensors: `TRITON_INTERPRET=1` must be set before the `@triton.jit`
decorator runs, so `load` sets it first; Triton reads it again at launch, so
it stays set for the process. Triton's own `@jit` helpers (`tl.sum`,
`tl.max`, ...) were decorated when triton was imported, which torch._dynamo
does early: `load` rewraps them for the interpreter where that came first.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import importlib.util
import itertools
import logging
import operator
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from . import ptx_loops
from .emit import merge_flag, python_identifier, row_tail, tail_flag

log = logging.getLogger("tilefuse")
# the emitter's module (the package's `emit` is its function): `WIDE_INDEX_ELEMENTS` read at each check
_emit = importlib.import_module(".emit", __package__)


class LaunchError(Exception):
    """A kernel was launched with tensors or a configuration that do not fit it."""


_BINARY_OPERATORS: dict[type, Callable[[int, int], int]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv,
}  # fmt: skip
_GRID_FUNCTIONS: dict[str, Callable[..., int]] = {"cdiv": lambda a, b: -(-a // b), "min": min, "max": max}


def evaluate_grid(expr: str, params: Mapping[str, int]) -> int:
    """The value of a grid expression: integers, parameter names, + - * //, and cdiv/min/max calls.

    Anything else (attributes, other calls, strings) is refused, so a grid
    read from a file can never run arbitrary code.
    """

    def value(node: ast.AST) -> int:
        match node:
            case ast.Constant(value=int() as v) if not isinstance(v, bool):
                return v
            case ast.Name(id=name) if name in params:
                return params[name]
            case ast.BinOp(left=left, op=op, right=right) if type(op) in _BINARY_OPERATORS:
                return _BINARY_OPERATORS[type(op)](value(left), value(right))
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return -value(operand)
            case ast.Call(func=ast.Name(id=fn), args=args, keywords=[]) if fn in _GRID_FUNCTIONS:
                return _GRID_FUNCTIONS[fn](*(value(a) for a in args))
        raise LaunchError(f"grid expression {expr!r}: cannot evaluate {ast.unparse(node)!r}")

    return value(_parse_grid(expr))


@functools.lru_cache(maxsize=4096)
def _parse_grid(expr: str) -> ast.expr:
    # parsed once per expression: a launch evaluates its grid every time
    try:
        return ast.parse(expr, mode="eval").body
    except SyntaxError as e:
        raise LaunchError(f"grid expression {expr!r} is not an expression: {e.msg}") from None


@dataclass(frozen=True)
class TritonKernel:
    """A loaded kernel: `kernel(tensors, config)` launches it over its grid."""

    name: str
    function: object  # triton's JITFunction, or its InterpretedFunction on CPU
    grid: tuple[str, ...]
    params: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    path: Path
    tma_tensors: tuple[int, ...] = ()
    warp_specializable: bool = False  # takes USE_WS (its tile loop, with TMA loads)
    row_tail_tensors: tuple[int, ...] = ()  # takes ROW_TAILS_i for these operands (`row_tails_fit`)
    merged_dims: tuple[
        tuple[int, int, int], ...
    ] = ()  # MERGE_i_d_e for these (operand, dims) (`merge_flags`)
    # size symbols: runtime arguments after the tensors; `shapes` name them where a size is symbolic
    symbols: tuple[str, ...] = ()
    wide_index: bool = False  # computes its offsets in int64 (`emit.WIDE_INDEX_ELEMENTS`)
    _grids: dict = field(default_factory=dict, compare=False, repr=False)
    _checked: list = field(default_factory=list, compare=False, repr=False)

    def grid_for(self, config: Mapping[str, int], sizes: Mapping[str, int] | None = None) -> tuple[int, ...]:
        """The launch grid for one binding of the tile parameters and, in a kernel of symbolic sizes,
        of its size symbols (evaluated once per binding)."""
        key = (tuple(sorted(config.items())), tuple(sorted((sizes or {}).items())))
        grid = self._grids.get(key)
        if grid is None:
            scope = {**config, **(sizes or {})}
            grid = self._grids[key] = tuple(evaluate_grid(g, scope) for g in self.grid)
        return grid

    def sizes_of(self, tensors: Sequence[torch.Tensor]) -> dict[str, int]:
        """The values of the kernel's size symbols, from the sizes of the tensors it is launched on
        (a size written as a bare symbol binds it); {} for a static kernel."""
        if not self.symbols:
            return {}
        sizes: dict[str, int] = {}
        for t, shape in zip(tensors, self.shapes):
            for n, d in zip(t.shape, shape):
                if isinstance(d, str) and d in self.symbols:
                    sizes.setdefault(d, int(n))
        missing = [s for s in self.symbols if s not in sizes]
        if missing:
            raise LaunchError(f"{self.name}: no tensor's size binds {', '.join(missing)}")
        return sizes

    def __call__(
        self,
        tensors: Sequence[torch.Tensor],
        config: Mapping[str, int],
        num_warps: int = 4,
        num_stages: int = 2,
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        """Launch on `tensors` (one per kernel argument, in order) with tile parameters `config`.

        Shapes and dtypes are checked on the first launch; the runtime then calls the kernel
        with tensors of the same types (Dynamo guards the graph's inputs). A kernel of symbolic
        sizes takes them from `sizes` (a tuning task's binding), else from the tensors' sizes.
        """
        sizes = dict(sizes) if sizes else self.sizes_of(tensors)
        if not self._checked or sizes:
            self._check(tensors, config, sizes)
            check_index_range(self, tensors)
            self._checked.append(True)
        grid = self.grid_for(config, sizes)
        if 0 in grid:  # nothing to compute (CUDA refuses empty grids)
            return
        args = [x for t in tensors for x in (t, *t.stride())] + [sizes[s] for s in self.symbols]
        params = {p: config[p] for p in self.params}
        # a kernel of symbolic sizes never takes TMA: its program's launches (`SizedLaunch`) do not
        tma = [tensors[i] for i in self.tma_tensors] if not self.symbols else []
        fits = bool(tma) and descriptors_fit(tma)
        params.update(launch_flags(self, config, num_warps, fits))
        params.update(tail_flags(self, tensors))
        params.update(merge_flags(self, tensors))
        self.function[grid](*args, **params, num_warps=num_warps, num_stages=num_stages)

    def bind(self, config: Mapping[str, int], num_warps: int = 4, num_stages: int = 2) -> BoundLaunch:
        """This kernel with one configuration fixed: what a generated program calls per launch. Its
        grid is fixed too, so a kernel of symbolic sizes is launched through `sized` instead."""
        self._check_config(config)
        if self.symbols:
            raise LaunchError(f"{self.name}: takes sizes {list(self.symbols)}; launch it through sized()")
        return BoundLaunch(self, dict(config), num_warps, num_stages)

    def sized(self, config: Mapping[str, int], num_warps: int = 4, num_stages: int = 2) -> SizedLaunch:
        """This kernel of symbolic sizes with one configuration fixed, for a program that passes
        the grid and the sizes at each call (`SizedLaunch`)."""
        self._check_config(config)
        return SizedLaunch(self, dict(config), num_warps, num_stages)

    def _check_config(self, config: Mapping[str, int]) -> None:
        if set(config) - {"USE_TMA", "USE_WS"} != set(self.params):
            raise LaunchError(
                f"{self.name}: config sets {sorted(config)}, the kernel takes {list(self.params)}"
            )

    def _check(
        self, tensors: Sequence[torch.Tensor], config: Mapping[str, int], sizes: Mapping[str, int]
    ) -> None:
        self._check_config(config)
        if len(tensors) != len(self.shapes):
            raise LaunchError(f"{self.name}: takes {len(self.shapes)} tensors, got {len(tensors)}")
        for i, (t, shape, dtype) in enumerate(zip(tensors, self.shapes, self.dtypes)):
            shape = tuple(evaluate_grid(d, sizes) if isinstance(d, str) else d for d in shape)
            if tuple(t.shape) != shape or t.dtype != getattr(torch, dtype):
                found = f"{tuple(t.shape)} {t.dtype}"
                raise LaunchError(
                    f"{self.name}: tensor {i} is {found}, the kernel reads {shape} torch.{dtype}"
                )


class BoundLaunch:
    """A kernel, its configuration and its grid, launched as `launch(stream, *args)`.

    `args` are the kernel's runtime arguments as the generated program writes
    them: each tensor followed by its strides. The first launch goes through
    Triton's `JITFunction.run`, which compiles (or loads) the binary for these
    arguments' specialization and returns it; later launches call that
    binary's launcher directly, skipping argument binding, specialization and
    cache lookup (~20 µs of Python per launch in `run`). That is sound only
    while the specialization holds: the program passes literal strides and
    checks its inputs' 16-byte alignment, the two things Triton specializes
    pointers and integers on. Where TMA is wanted it is decided per launch (the
    operands' alignment), and each decision keeps its own binary, launched
    directly from its second use. Under the interpreter, or with Triton launch
    hooks set, every launch takes the generic path.
    """

    def __init__(self, kernel: TritonKernel, config: dict[str, int], num_warps: int, num_stages: int):
        self.kernel = kernel
        self.config = config
        self.num_warps = num_warps
        self.num_stages = num_stages
        grid = kernel.grid_for(config)
        self.grid = (*grid, 1, 1)[:3]
        self.empty = 0 in grid  # nothing to compute (CUDA refuses empty grids)
        self.params = {p: config[p] for p in kernel.params}
        # TMA descriptors are decided per launch (operand alignment) only where they are wanted; a
        # kernel that could read through them but is not asked to takes USE_TMA=False once, so its
        # launches stay on the direct path (every GEMM took the ~20 µs generic path before)
        self.per_launch_tma = bool(kernel.tma_tensors) and tma_wanted(config)
        if not self.per_launch_tma:
            self.params.update(launch_flags(kernel, config, num_warps, fits=False))
        # ROW_TAILS is decided by the first launch's operands: the program passes the same strides and
        # buffers allocated the same way (`compiler.program.empty_padded`) to every later one
        self.tails_pending = bool(kernel.row_tail_tensors or kernel.merged_dims)  # and MERGE, alike
        self.constexprs = tuple(self.params.values())
        self.binary = None  # triton's CompiledKernel, after the first launch on a GPU
        self.raw: Callable[[int, tuple], None] | None = None  # its C launch function, where known
        # with TMA decided per launch, one binary per (USE_TMA, each tensor's 16-byte alignment): Triton
        # specializes a binary on its pointers' alignment, which the program's guard does not fix for an
        # input first seen misaligned -> (C launch function or None, binary, constexprs)
        self.by_tma: dict[tuple, tuple] = {}
        # where each tensor stands in a launch's arguments (each tensor is followed by its strides)
        widths = (1 + len(shape) for shape in kernel.shapes)
        self.tensor_positions = list(itertools.accumulate(widths, initial=0))[:-1]
        self.tma_positions = [p for i, p in enumerate(self.tensor_positions) if i in kernel.tma_tensors]

    def __call__(self, stream: int, *args: object) -> None:
        if self.per_launch_tma and self.by_tma:
            entry = self.by_tma.get(self._tma_key(args))
            if entry is not None:
                raw, binary, constexprs = entry
                if raw is not None:
                    raw(stream, args)
                else:
                    binary.run(*self.grid, stream, binary.function, binary.packed_metadata, None, None, None,
                               *args, *constexprs)  # fmt: skip
                return
        raw = self.raw
        if raw is not None:
            raw(stream, args)
            return
        binary = self.binary
        if binary is not None:
            g0, g1, g2 = self.grid
            binary.run(g0, g1, g2, stream, binary.function, binary.packed_metadata, None, None, None,
                       *args, *self.constexprs)  # fmt: skip
            return
        if self.empty:
            return
        self._generic(args)

    def _tma_key(self, args: tuple) -> tuple:
        """What a launch with TMA decided per launch compiles for: that decision, each tensor's alignment."""
        fits = descriptors_fit([args[p] for p in self.tma_positions])
        return (fits, *(args[p].data_ptr() % 16 == 0 for p in self.tensor_positions))

    def _generic(self, args: tuple) -> None:
        tensors = [args[p] for p in self.tensor_positions]
        # the program passes literal strides: the first launch's tensors stand for every later one's
        check_index_range(self.kernel, tensors)
        if self.tails_pending:
            self.params.update(tail_flags(self.kernel, tensors))
            self.params.update(merge_flags(self.kernel, tensors))
            self.constexprs = tuple(self.params.values())
            self.tails_pending = False
        params = dict(self.params)
        key = self._tma_key(args) if self.per_launch_tma else None
        if key is not None:
            params.update(launch_flags(self.kernel, self.config, self.num_warps, fits=key[0]))
        grid = self.grid[: len(self.kernel.grid)]
        while True:
            options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
            try:
                binary = self.kernel.function[grid](*args, **params, **options)
                break
            except Exception as e:
                # a pipeline deeper than the shared memory holds: the grid stays, only stages go
                if type(e).__name__ != "OutOfResources" or self.num_stages <= 1:
                    raise
                # info, not a warning: the retry is the fix, and a user has nothing to do about it
                log.info("tilefuse: kernel %s: %s; retrying with num_stages=%d",
                         self.kernel.name, e, self.num_stages - 1)  # fmt: skip
                self.num_stages -= 1
        if not _direct_launch_possible(binary):
            return
        if key is not None:
            constexprs = tuple(params.values())
            self.by_tma[key] = (_raw_launch(binary, self.grid, constexprs), binary, constexprs)
            return
        self.binary = binary
        self.raw = _raw_launch(binary, self.grid, self.constexprs)


class SizedLaunch:
    """A kernel of symbolic sizes with one configuration fixed, launched as
    `launch(stream, grid, *args)` by a program written for every size: the grid and the arguments
    (each tensor and its strides, then the sizes) come with each call. Triton specializes a binary
    on its integer arguments (== 1, divisible by 16) and its pointers' 16-byte alignment, which
    change with the sizes; each such specialization keeps its binary, whose C launch function is
    then called directly with the call's grid (`_raw_launch`), so a new size costs no compile and
    the per-launch cost is one key of a few comparisons. Under the interpreter every launch takes
    the generic path."""

    def __init__(self, kernel: TritonKernel, config: dict[str, int], num_warps: int, num_stages: int):
        self.kernel = kernel
        self.config = config
        self.num_warps = num_warps
        self.num_stages = num_stages
        self.params = {p: config[p] for p in kernel.params}
        self.params.update(launch_flags(kernel, config, num_warps, fits=False))
        self.constexprs = tuple(self.params.values())
        self.raw: dict[tuple, Callable] = {}  # specialization key -> C launch function taking a grid
        self.fast: dict[tuple, Callable] = {}  # (grid, exact integers, alignments) -> its launch
        self.direct = True  # False once a binary cannot be launched directly (hooks, scratch)

    def __call__(self, stream: int, grid: tuple[int, ...], *args: object) -> None:
        # the launch function for these exact integers, alignments and grid, once seen (a size the
        # program keeps calling: one dict lookup); else by the specialization key
        exact = (grid, *[a if a.__class__ is int else a.data_ptr() & 15 for a in args])
        fast = self.fast.get(exact)
        if fast is not None:
            fast(stream, args)
            return
        if 0 in grid:  # nothing to compute (CUDA refuses empty grids)
            return
        check_index_range(self.kernel, [a for a in args if isinstance(a, torch.Tensor)])
        key = tuple(_specialization(a) for a in args)
        raw = self.raw.get(key)
        if raw is not None:
            if len(self.fast) >= FAST_LAUNCHES:
                self.fast.clear()
            self.fast[exact] = raw.bound(grid)
            raw(stream, grid, args)
            return
        while True:
            options = {"num_warps": self.num_warps, "num_stages": self.num_stages}
            try:
                binary = self.kernel.function[grid](*args, **self.params, **options)
                break
            except Exception as e:  # a pipeline deeper than the shared memory holds: fewer stages
                if type(e).__name__ != "OutOfResources" or self.num_stages <= 1:
                    raise
                self.num_stages -= 1
        if self.direct and _direct_launch_possible(binary):
            launch = _raw_launch_with_grid(binary, self.constexprs)
            if launch is not None:
                self.raw[key] = launch
                return
        self.direct = False


def index_span(t: torch.Tensor) -> int:
    """How many elements past its first a tensor's addresses reach, plus one (its numel if dense).
    Reads only its shape and strides (a tuning build's argument layouts have nothing else)."""
    if 0 in t.shape:
        return 0
    return 1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))


def check_index_range(kernel: TritonKernel, tensors: Sequence[torch.Tensor]) -> None:
    """Refuse to launch a kernel of int32 offsets on a tensor whose offsets pass 2**31 (a symbolic
    size that large, or a view of a larger storage): its addresses would wrap around, a fault or a
    wrong result. The LaunchError sends the partition back to PyTorch (`runtime`)."""
    if getattr(kernel, "wide_index", False):
        return
    for i, t in enumerate(tensors):
        span = index_span(t)
        if span >= _emit.WIDE_INDEX_ELEMENTS:
            raise LaunchError(
                f"{kernel.name}: tensor {i} ({tuple(t.shape)}, strides {t.stride()}) spans {span} elements, "
                "too many for the kernel's int32 offsets (it was compiled for smaller sizes)"
            )


def _specialization(arg: object) -> object:
    """What Triton specializes a binary on for one argument: a pointer's 16-byte alignment; an
    integer's being 1, its divisibility by 16, and its width."""
    if isinstance(arg, int):
        return (arg == 1, arg % 16 == 0, -(2**31) <= arg < 2**31)
    return arg.data_ptr() % 16 == 0


FAST_LAUNCHES = 4096  # exact (grid, integers) launches a SizedLaunch keeps before starting afresh


class _GriddedLaunch:
    """`_raw_launch` with the grid given at each call, `launch(stream, grid, args)`, and
    `bound(grid)`: the launch function of one grid."""

    def __init__(self, binary: object, constexprs: tuple):
        self.binary, self.constexprs = binary, constexprs

    def bound(self, grid: tuple[int, ...]) -> Callable:
        full, binary, constexprs = (*grid, 1, 1)[:3], self.binary, self.constexprs
        return _raw_launch(binary, full, constexprs) or _binary_run(binary, full, constexprs)

    def __call__(self, stream: int, grid: tuple[int, ...], args: tuple) -> None:
        self.bound(grid)(stream, args)


def _raw_launch_with_grid(binary: object, constexprs: tuple) -> Callable | None:
    return _GriddedLaunch(binary, constexprs)


def _binary_run(binary: object, grid: tuple[int, int, int], constexprs: tuple) -> Callable:
    g0, g1, g2 = grid

    def run(stream: int, args: tuple) -> None:
        binary.run(g0, g1, g2, stream, binary.function, binary.packed_metadata, None, None, None,
                   *args, *constexprs)  # fmt: skip

    return run


def _direct_launch_possible(binary: object) -> bool:
    """Whether `binary` is a compiled GPU kernel whose launcher can be called directly."""
    if binary is None or not hasattr(binary, "packed_metadata") or not hasattr(binary, "function"):
        return False  # the interpreter returns no binary
    from triton import knobs

    runtime = knobs.runtime
    return all(_no_hooks(h) for h in (runtime.launch_enter_hook, runtime.launch_exit_hook))


def _raw_launch(binary: object, grid: tuple[int, int, int], constexprs: tuple) -> Callable | None:
    """The binary's C launch function with everything but the stream and arguments bound, or None.

    Triton's `CudaLauncher.__call__` spends several µs of Python per launch on
    scratch buffers our kernels do not use; its C `launch` takes the same
    arguments in an order that differs between Triton 3.6 and 3.9, both handled
    here. Kernels that need scratch memory, or a layout not known here, keep
    the `binary.run` path.
    """
    launcher = binary.run
    launch = getattr(launcher, "launch", None)
    if launch is None or getattr(launcher, "gsan_enabled", False):
        return None
    if getattr(launcher, "global_scratch_size", 1) or getattr(launcher, "profile_scratch_size", 1):
        return None
    g0, g1, g2 = grid
    function, packed = binary.function, binary.packed_metadata
    coop, pdl = launcher.launch_cooperative_grid, launcher.launch_pdl
    if hasattr(launcher, "arg_annotations"):  # Triton 3.9: arguments as one tuple, with annotations
        annotations, signature = launcher.arg_annotations, launcher.kernel_signature

        def launch_39(stream: int, args: tuple) -> None:
            launch(g0, g1, g2, stream, function, coop, pdl, packed, None, None, None, None, None,
                   annotations, signature, (*args, *constexprs))  # fmt: skip

        return launch_39

    def launch_36(stream: int, args: tuple) -> None:  # Triton 3.6: scratch, then metadata and arguments
        launch(g0, g1, g2, stream, function, coop, pdl, None, None, packed, None, None, None,
               *args, *constexprs)  # fmt: skip

    return launch_36


def _no_hooks(hook: object) -> bool:
    # Triton 3.6 keeps None when no hook is set; 3.9 keeps an empty HookChain
    return hook is None or getattr(hook, "calls", None) == []


def tma_wanted(config: Mapping[str, int]) -> bool:
    """Whether a launch with `config` asks for TMA descriptors: a tuned `USE_TMA`, else `TILEFUSE_TMA`."""
    wanted = config.get("USE_TMA")
    return os.environ.get("TILEFUSE_TMA", "0") == "1" if wanted is None else bool(wanted)


# f32 accumulator registers a thread may hold under warp specialization: a 128x256 tile over 4 warps
# (256 a thread) ran 7.5x slower than over 8 (H200, Triton 3.6, .scratch/wsprobe.py)
WS_MAX_ACCUMULATOR_REGISTERS = 128


def warp_specialized(config: Mapping[str, int], num_warps: int, use_tma: bool) -> bool:
    """Whether a GEMM launch with `config` runs its tile loop warp-specialized (a producer warp issuing
    the TMA loads, consumer warps for the dots and the epilogue): TMA loads only, a tuned `USE_WS`, else
    `TILEFUSE_WS`, and an accumulator that fits the consumers' registers."""
    wanted = config.get("USE_WS")
    wanted = os.environ.get("TILEFUSE_WS", "0") == "1" if wanted is None else bool(wanted)
    accumulator = config.get("BLOCK_M", 0) * config.get("BLOCK_N", 0) // (32 * max(num_warps, 1))
    return bool(use_tma and wanted and accumulator <= WS_MAX_ACCUMULATOR_REGISTERS)


def launch_flags(
    kernel: TritonKernel, config: Mapping[str, int], num_warps: int, fits: bool
) -> dict[str, bool]:
    """The launch switches `kernel` takes beside its tile parameters, for a launch with `config` whose
    TMA operands' layouts allow descriptors or not (`fits`): USE_TMA where it reads through them (as
    `config` or `TILEFUSE_TMA` asks), USE_WS where its tile loop can be warp-specialized."""
    flags = {}
    if kernel.tma_tensors:
        flags["USE_TMA"] = tma_wanted(config) and fits
    if kernel.warp_specializable:
        flags["USE_WS"] = warp_specialized(config, num_warps, flags.get("USE_TMA", False))
    return flags


def tail_reach(shape: Sequence[int], strides: Sequence[int]) -> int | None:
    """Elements from a tensor's first to the end of its last row's `row_tail`, where its layout lets a
    kernel read its rows that far (unit last stride, rows at least that far apart); else None."""
    if len(shape) < 2 or 0 in shape or strides[-1] != 1 or strides[-2] < row_tail(shape[-1]):
        return None
    return sum((n - 1) * s for n, s in zip(shape[:-1], strides[:-1])) + row_tail(shape[-1])


def row_tails_fit(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether every one of `tensors` (a kernel's ROW_TAIL_TENSORS) can be read to its rows' `row_tail`
    within its storage: a layout that reaches the tail (`tail_reach`), and storage past the last row's
    rounded end (`compiler.program.empty_padded` allocates padded outputs so)."""
    for t in tensors:
        reach = tail_reach(t.shape, t.stride())
        if reach is None or (t.storage_offset() + reach) * t.element_size() > t.untyped_storage().nbytes():
            return False
    return True


def tail_flags(kernel: TritonKernel, tensors: Sequence[torch.Tensor]) -> dict[str, bool]:
    """The ROW_TAILS switches of a kernel that takes them (`emit._row_tail_loads`), launched on
    `tensors`: one per operand whose rows it may read to their rounded end."""
    return {tail_flag(i): row_tails_fit([tensors[i]]) for i in kernel.row_tail_tensors}


def dims_nest(shape: Sequence[int], strides: Sequence[int], first: int, last: int) -> bool:
    """Whether dims `first`..`last` of a tensor of `shape` and `strides` nest in memory as a row-major
    block addressed `index * strides[last]`: each dim's stride is the product of the extents after it
    in the run times `strides[last]` (a dim of one never moves the address: its own stride is free,
    and its extent of one is in the product)."""
    expected = strides[last]
    for k in range(last - 1, first - 1, -1):
        expected *= shape[k + 1]
        if shape[k] > 1 and strides[k] != expected:
            return False
    return True


def merge_flags(kernel: TritonKernel, tensors: Sequence[torch.Tensor]) -> dict[str, bool]:
    """The MERGE switches of a kernel that takes them (`emit._KernelWriter._merged_runs`), launched on
    `tensors`: one per (operand, first dim, last dim) it may address by a flat index, on whether those
    dims nest."""
    return {
        merge_flag(i, d, e): dims_nest(tensors[i].shape, tensors[i].stride(), d, e)
        for i, d, e in kernel.merged_dims
    }


def use_tensor_descriptors(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether these tensors can be read through TMA descriptors on this device.

    TMA needs a Hopper-class GPU, a unit last stride, and 16-byte aligned base
    and strides. Descriptors are opt-in: `TILEFUSE_TMA=1` turns them on where
    the layout allows (on a Hopper GPU, and in the interpreter to test that
    path on CPU). On the H100, non-persistent kernels with device-side
    descriptors measured slower than pointer loads on most GEMM shapes
    (benchmarks/RESULTS_tma.md), so pointers stay the default until the
    autotuner chooses per kernel.
    """
    return os.environ.get("TILEFUSE_TMA", "0") == "1" and descriptors_fit(tensors)


def descriptors_fit(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether these tensors' layouts allow TMA descriptors (and, on Hopper, their allocator is set)."""
    on_hopper = all(t.is_cuda for t in tensors) and torch.cuda.get_device_capability()[0] >= 9
    if any(t.is_cuda for t in tensors) and not on_hopper:
        return False  # TMA is Hopper's; the interpreter (CPU tensors) emulates it
    for t in tensors:
        size = t.element_size()
        if t.stride(-1) != 1 or t.data_ptr() % 16 or any(s * size % 16 for s in t.stride()[:-1]):
            return False
    if on_hopper:
        _install_allocator()
    return True


@functools.cache
def _install_allocator() -> None:
    # device-side descriptors live in a small scratch buffer Triton asks the allocator for
    import triton

    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, dtype=torch.int8, device="cuda"))


def default_cache_dir() -> Path:
    """Where kernel sources are written: `$XDG_CACHE_HOME/tilefuse/triton` (or under ~/.cache)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "tilefuse" / "triton"


def _import_source(source: str, name: str, cache_dir: Path) -> ModuleType:
    module_name = f"tilefuse_triton_{name}_{hashlib.sha256(source.encode()).hexdigest()[:16]}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = cache_dir / f"{module_name}.py"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(source)
        os.replace(partial, path)  # atomic: a concurrent reader never sees half a file
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


@functools.cache  # once per process: triton.language's modules are all loaded with triton itself
def _interpret_triton_library() -> None:
    """Turn triton.language's `@jit` helpers into interpreted functions, as TRITON_INTERPRET at import would.

    A JITFunction refuses to be called from an interpreted kernel; one shared
    replacement per function keeps the identity checks of Triton's
    interpreter (e.g. `combine_fn is tl.standard._sum_combine`) true.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    # numpy's exp overflows to inf where a GPU's does silently (the sigmoid form of the tanh GELU,
    # 1 / (1 + exp(-2y)), for very negative y: inf gives the right 0); the interpreter's warning for it
    # alarmed users with a correct result
    warnings.filterwarnings(
        "ignore", "overflow encountered in exp", RuntimeWarning, module="triton.runtime.interpreter"
    )
    _skip_unchecked_overflow_sanitizing()
    replacements: dict[int, InterpretedFunction] = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("triton.language") or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, JITFunction):
                if id(value) not in replacements:
                    replacements[id(value)] = InterpretedFunction(value.fn)
                setattr(module, attr, replacements[id(value)])


def _skip_unchecked_overflow_sanitizing() -> None:
    """Turn off the interpreter's integer-overflow sanitizing where its assertions are off.

    With `sanitize_overflow` (the interpreter's default), every 32-bit integer
    add, sub and mul (index arithmetic) is done again in int64 and compared
    with the int32 range, and the comparison goes to `device_assert`, which
    drops it unless `debug` is on. With debug off the check is computed and
    thrown away: a third of the interpreter's time on a tiny Llama's
    generation (14 of 48 s, Triton 3.9). Results do not change; options with
    debug on keep the check.
    """
    from triton.runtime import interpreter

    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is None or not dataclasses.is_dataclass(options):
        return
    if getattr(options, "sanitize_overflow", False) and not getattr(options, "debug", True):
        builder.options = dataclasses.replace(options, sanitize_overflow=False)


def import_kernels(source: str, name: str, cache_dir: Path | None = None) -> ModuleType:
    """Import Triton source as a module named after `name` and the source's hash. Without CUDA,
    turns on Triton's interpreter for the process first (unless `TRITON_INTERPRET` is already set),
    so its kernels run on CPU tensors."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from triton import knobs  # after the environment is set; `import tilefuse` does not load Triton

    if knobs.runtime.interpret:
        _interpret_triton_library()
    return _import_source(source, name, cache_dir or default_cache_dir())


def load(source: str, kernel_name: str, cache_dir: Path | None = None) -> TritonKernel:
    """Import emitted source (see `emit`) and return its kernel `kernel_name` ready to launch.

    Without CUDA, turns on Triton's interpreter for the process (unless
    `TRITON_INTERPRET` is already set), so kernels run on CPU tensors.
    """
    name = python_identifier(kernel_name)
    module = import_kernels(source, name, cache_dir)
    function = getattr(module, name, None)
    if function is None:
        raise LaunchError(f"the source defines no kernel {name!r}")
    ptx_loops.register(name)  # with TILEFUSE_PTX_NOUNROLL, ptxas leaves its tensor-core loops rolled
    return TritonKernel(
        name,
        function,
        module.GRID,
        module.PARAMS,
        module.TENSOR_SHAPES,
        module.TENSOR_DTYPES,
        Path(module.__file__),
        getattr(module, "TMA_TENSORS", ()),
        getattr(module, "WARP_SPECIALIZABLE", False),
        getattr(module, "ROW_TAIL_TENSORS", ()),
        tuple(tuple(pair) for pair in getattr(module, "MERGED_DIMS", ())),
        tuple(getattr(module, "SIZE_SYMBOLS", ())),
        getattr(module, "WIDE_INDEX", False),
    )
