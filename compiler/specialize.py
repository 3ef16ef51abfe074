"""Kernels for the sizes a dynamic graph keeps running.

A graph whose sizes are symbolic (Dynamo marks a dim dynamic once a second size was seen, or the
user asked for `dynamic=True`) is compiled once for every size: its static nodes as kernels, the
rest in PyTorch (`TilefuseBackend._compiles_static_islands`). That "general" way runs a size the
first time. A size called twice in a row while no dynamic graph changed size in between is a size
the program keeps using (a benchmark's or a training loop's fixed shape, a serving bucket under
load; a model split by graph breaks repeats all its graphs), and it gets a static compile of the
same Dynamo graph: the call's concrete sizes given to the static pipeline, its kernels, measured
selection and report as for any static graph. Generation never qualifies, even when `generate`
runs again over the same lengths: its decode steps change size at every token, and the graph of
the first decode step, called with the same sizes once per `generate`, sees the others change in
between. A compile there would have cost seconds inside the second `generate`.

At most `TILEFUSE_SPECIALIZE` sizes per graph are compiled (default 8; 0 turns specialization
off); a size past the limit, one whose compile failed (reported, tried once), or one that comes
while the device is short of memory (each compile keeps its own weights derived from parameters;
`_short_of_memory`) runs the general way.
A call's sizes are read only at the graph inputs whose sizes are symbolic (Dynamo keeps
parameters static), so the lookup costs a few tuple builds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence

import torch

from .attention_dropout import dynamo_graph_copy, dynamo_module

log = logging.getLogger("tilefuse")

SPECIALIZE_ENV = "TILEFUSE_SPECIALIZE"
DEFAULT_LIMIT = 8


def specialize_limit() -> int:
    """How many sizes per dynamic graph get a static compile (TILEFUSE_SPECIALIZE; 0: none)."""
    text = os.environ.get(SPECIALIZE_ENV, str(DEFAULT_LIMIT))
    try:
        limit = int(text)
    except ValueError:
        limit = -1  # refused below, with the negative counts
    if limit < 0:
        raise ValueError(f"{SPECIALIZE_ENV}={text!r}: expected a count of sizes (0 turns it off)")
    return limit


def symbolic_positions(examples: Sequence[object]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The positions of the tensor inputs with a symbolic size and of the symbolic int inputs, from
    the graph's placeholders' fake values (Dynamo's example inputs are the real tensors of the call
    that compiled it); isinstance checks only: reading a SymInt's value would guard on it."""
    tensors, ints = [], []
    for i, v in enumerate(examples):
        if isinstance(v, torch.SymInt):
            ints.append(i)
        elif isinstance(v, torch.Tensor) and any(isinstance(d, torch.SymInt) for d in v.shape):
            tensors.append(i)
    return tuple(tensors), tuple(ints)


# How many calls of any dynamic graph came with other sizes than that graph's previous call: a
# graph whose size repeats while this count stands is in a loop where nothing changes size
_changes = [0]


class ShapeSpecializations:
    """A dynamic graph's compiled callable: the general way, and a static compile per size called
    twice in a row (see the module docstring). `compile_static(args, label)` compiles the graph for
    the concrete `args`; `report` is the general graph's report, where the sizes compiled (or
    failed) are listed."""

    MEMORY_FACTOR = 2  # free device memory a size's compile needs, in bytes of the graph's inputs

    def __init__(
        self, general: Callable, compile_static: Callable[[list, str], Callable], examples: Sequence[object],
        report: dict, limit: int, value_positions: Sequence[int] = (),
    ):  # fmt: skip
        self.general = general
        self.compile_static = compile_static
        self.tensor_positions, self.int_positions = symbolic_positions(examples)
        # inputs whose values a size's compile bakes in (`read_values`): part of the key
        self.value_positions = tuple(value_positions)
        self.symbolic_dims = {
            i: [d for d, size in enumerate(examples[i].shape) if isinstance(size, torch.SymInt)]
            for i in self.tensor_positions
        }  # fmt: skip
        # Dynamo passes each size symbol as an int input too: where those cover every symbolic dim,
        # the ints are the key (a decode step of a 32-layer model has 64 cache tensors: ~30 us of
        # tuple building a call on this CPU, against ~1 for the ints)
        self.ints_suffice = bool(self.int_positions) and self._ints_cover_sizes(examples)
        self.report = report
        self.limit = limit
        self.compiled: dict[tuple, Callable] = {}
        self.last: tuple | None = None  # the previous call's key
        self.seen_changes = -1  # `_changes` at the previous call
        self.report["specialized"] = []
        # why no size can compile (a static trace that reads a tensor's value fails at every size)
        self.refused: str | None = None

    def _ints_cover_sizes(self, examples: Sequence[object]) -> bool:
        """Whether the symbolic int inputs are symbols that every symbolic dim is an expression of
        (a size that is not a plain sympy expression, a nested int say: no)."""
        try:
            dims = _free_symbols(
                examples[i].shape[d] for i in self.tensor_positions for d in self.symbolic_dims[i]
            )  # fmt: skip
            ints = [examples[i] for i in self.int_positions]
            return dims <= _free_symbols(n for n in ints if n.node.expr.is_Symbol)
        except AttributeError:
            return False

    def key(self, args: Sequence[object]) -> tuple:
        """The sizes that select a specialization: symbolic tensors' sizes and strides, symbolic
        ints' values, and the grad mode (a training and an inference graph differ); the ints alone
        where they determine every symbolic size (strides a compile did not expect fail its
        program's guard, which runs the captured code)."""
        ints = tuple(args[i] for i in self.int_positions)
        if self.value_positions:
            ints += tuple(exact(args[i].item()) for i in self.value_positions)  # CPU scalars: no sync
        if self.ints_suffice:
            return (), ints, torch.is_grad_enabled()
        sizes = tuple((args[i].shape, args[i].stride()) for i in self.tensor_positions)
        return sizes, ints, torch.is_grad_enabled()

    def __call__(self, *args: object) -> object:
        key = self.key(args)
        hit = self.compiled.get(key)
        if hit is not None:
            return hit(*args)
        if key != self.last:
            _changes[0] += 1
        steady = key == self.last and self.seen_changes == _changes[0]
        self.last, self.seen_changes = key, _changes[0]
        if not steady or len(self.compiled) >= self.limit or self.refused or self._capturing(args):
            return self.general(*args)
        label = "x".join(str(d) for d in self._sizes(args))
        label += "".join(f"_v{args[i].item()!r}" for i in self.value_positions)  # values baked in
        short = self._short_of_memory(args)
        compiled = self._compile(label, list(args)) if short is None else self._skip(label, short)
        self.compiled[key] = compiled
        return compiled(*args)

    def _skip(self, label: str, reason: str) -> Callable:
        """A size not compiled (reported once): it runs the general way."""
        self.report["specialized"].append({"sizes": label, "skipped": reason})
        log.warning("tilefuse: graph %s: sizes %s not compiled (%s)", self.report.get("name"), label, reason)
        return self.general

    @classmethod
    def _short_of_memory(cls, args: Sequence[object]) -> str | None:
        """Why a specialization could run the device out of memory, or None. Each compile keeps its
        own copies of what it derives from parameters (norm-folded and K-major weights: up to the
        weights' size again), so a size is compiled only while the device's free memory exceeds
        `MEMORY_FACTOR` times the bytes of the graph's inputs (parameters included)."""
        cuda = [a for a in args if isinstance(a, torch.Tensor) and a.is_cuda]
        if not cuda:
            return None
        storages = {a.untyped_storage().data_ptr(): a.untyped_storage().nbytes() for a in cuda}
        need = cls.MEMORY_FACTOR * sum(storages.values())
        device = cuda[0].device
        free, _ = torch.cuda.mem_get_info(device)  # plus what PyTorch's allocator holds unused
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if free >= need:
            return None
        return (
            f"{free / 2**30:.1f} GiB free on the device, under {cls.MEMORY_FACTOR}x "
            f"the graph's inputs ({need / 2**30:.1f} GiB): a compile's derived weights could exhaust it"
        )

    def _compile(self, label: str, args: list) -> Callable:
        """The static compile for `args`' sizes, or the general way if it raised (reported)."""
        entry = {"sizes": label}
        log.info("tilefuse: graph %s: sizes %s called twice in a row: compiled for them",
                 self.report.get("name"), label)  # fmt: skip
        self.report["specialized"].append(entry)
        start = time.perf_counter()
        try:
            compiled = self.compile_static(args, label)
        except Exception as e:  # the general way still runs every size correctly
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            log.warning("tilefuse: graph %s: compiling sizes %s failed (%s); they run the dynamic graph",
                        self.report.get("name"), label, reason)  # fmt: skip
            entry["failed"] = reason
            if data_dependent(e):
                # the traced code reads a tensor's value (a BatchNorm's `momentum.item()`): every size's
                # trace fails the same way, so none is tried again
                self.refused = self.report["specialize_refused"] = reason
            return self.general
        entry["compile_s"] = round(time.perf_counter() - start, 3)
        return compiled

    def _sizes(self, args: Sequence[object]) -> list[int]:
        """The call's symbolic sizes, each once, in order of appearance (for names and reports)."""
        sizes: list[int] = []
        for i in self.tensor_positions:
            sizes += [args[i].shape[d] for d in self.symbolic_dims[i] if args[i].shape[d] not in sizes]
        ints = [args[i] for i in self.int_positions if isinstance(args[i], int)]
        return sizes + [n for n in ints if n not in sizes]

    @staticmethod
    def _capturing(args: Sequence[object]) -> bool:
        """A CUDA graph being captured around the call: nothing compiles (or measures) inside it."""
        if not torch.cuda.is_available():
            return False
        on_gpu = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
        return on_gpu and torch.cuda.is_current_stream_capturing()


def value_read_positions(gm: torch.fx.GraphModule) -> tuple[int, ...]:
    """The positions of the graph's Python numbers that Dynamo passes as 0-d CPU tensors and the
    graph only reads (`x.item()`): under `dynamic=True`, a module's float (Llama's rotary
    `attention_scaling`, GPT-2's attention scale). A static trace cannot read a value (AOTAutograd's
    fake tensors hold none), so a size's compile takes these values as constants (`read_values`), and
    the key holds them (`exact`): a call with another value is another specialization. A user's own
    0-d tensor is not one of them (its value may change inside the graph, or at every call)."""
    positions = []
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        value = node.meta.get("example_value")
        if not isinstance(value, torch.Tensor) or value.dim() != 0 or value.device.type != "cpu":
            continue
        number = getattr(node.meta.get("grapharg"), "pass_arg_as_tensor", False)
        if number and node.users and all(_reads_value(user) for user in node.users):
            positions.append(i)
    return tuple(positions)


def exact(value: float | int) -> object:
    """A number as a key: floats by their bits (-0.0 is not 0.0, and a NaN equals a NaN)."""
    return value.hex() if isinstance(value, float) else value


def read_values(gm: torch.fx.GraphModule, args: Sequence[object], positions: Sequence[int]):
    """A copy of `gm` where each `.item()` of the inputs at `positions` is that input's value in `args`
    (Python numbers in the graph, as Dynamo traces a float it specialized)."""
    if not positions:
        return gm
    graph, _ = dynamo_graph_copy(gm)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for i in positions:
        for read in list(placeholders[i].users):  # every use is a read (`value_read_positions`)
            _replace_with_constant(read, args[i].item())
            graph.erase_node(read)
    return dynamo_module(gm, graph)


def _replace_with_constant(node: torch.fx.Node, value: object) -> None:
    """Every use of `node` in its users' arguments becomes `value`."""

    def swap(a: object) -> object:
        return value if a is node else a

    for user in list(node.users):
        user.args = torch.fx.node.map_aggregate(user.args, swap)
        user.kwargs = torch.fx.node.map_aggregate(user.kwargs, swap)


def _reads_value(node: torch.fx.Node) -> bool:
    return (node.op == "call_method" and node.target == "item") or (
        node.op == "call_function" and node.target is torch.Tensor.item
    )


def data_dependent(error: Exception) -> bool:
    """Whether a trace failed because the traced code reads a tensor's value (`.item()`, `.tolist()`)."""
    return "DataDependent" in type(error).__name__ or "data-dependent" in str(error)


def _free_symbols(sizes) -> set:
    """The size symbols the given SymInts are expressions of."""
    found: set = set()
    for size in sizes:
        found |= size.node.expr.free_symbols
    return found
