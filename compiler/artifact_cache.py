"""On-disk cache of compiled graphs, keyed by graph, shapes, dtypes, device and versions.

An entry holds each compiled partition's fused `ein` function and its lowered
groups (their `tile` kernels), and the generated source of every kernel, so a
later process compiling the same graph for the same inputs skips import, the
passes, lowering and code generation (Triton keeps its own cache of the
binaries). The IR is stored flat (`freeze`): one record per op, operands as
numbers, in a pickle whose depth does not grow with the graph; reading it back
(`thaw`) takes a few milliseconds per hundred ops, where parsing MLIR text takes
a second. Entries are written to a temporary folder and renamed into place, so
a crash never leaves half an entry; an entry that cannot be read is ignored and
rebuilt, never trusted. The cache is the user's own, like Triton's: its kernel
sources are imported and its pickles loaded.

`TILEFUSE_CACHE_DIR` moves the cache (default `~/.cache/tilefuse/graphs`);
`TILEFUSE_CACHE=0` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch.fx import GraphModule
from xdsl.ir import Block, Operation, Region, SSAValue

from ..ir.module import make_context
from .lowering_table import WINDOW_META

_COMPILED_FILE = "compiled.pickle"
_SOURCES_FILE = "kernels.json"


@dataclass(frozen=True)
class CacheEntry:
    """What a cached compile left behind: `compiled` is `pack`ed partitions, `sources` the kernels'."""

    compiled: bytes
    sources: dict[str, str]


def cache_dir() -> Path | None:
    if os.environ.get("TILEFUSE_CACHE", "1") == "0":
        return None
    return Path(os.environ.get("TILEFUSE_CACHE_DIR") or Path.home() / ".cache" / "tilefuse" / "graphs")


def graph_key(aten: GraphModule, input_names: list[str], target_key: str, device: str) -> str:
    """A hash of everything a compiled graph depends on."""
    specs = []
    for node in aten.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            is_tensor = isinstance(val, torch.Tensor)
            # str, not int: a symbolic size prints as its symbol, and reading its value would specialize it
            specs.append([list(map(str, val.shape)), str(val.dtype)] if is_tensor else str(val))
    # what the code does not show: a constant mask's sliding window, which the import writes in place
    # of reading the mask (two graphs that differ only in their masks' values share their code)
    windows = {n.name: n.meta[WINDOW_META] for n in aten.graph.nodes if WINDOW_META in n.meta}
    payload = {
        "graph": aten.code,
        "windows": windows,
        "inputs": specs,
        "names": input_names,
        "target": target_key,
        "device": device,
        "versions": [torch.__version__] + [_version(p) for p in ("triton", "xdsl", "tilefuse")],
        "code": _code_fingerprint(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


@functools.cache
def _code_fingerprint() -> str:
    """A hash of tilefuse's own compiler sources: a changed pass or emitter invalidates old entries."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for folder in ("compiler", "ir", "passes", "backends", "autotune"):
        for path in sorted((root / folder).rglob("*.py")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"


def load_entry(key: str) -> CacheEntry | None:
    """The cached entry for `key`, or None (missing, unreadable or off)."""
    root = cache_dir()
    if root is None or not (root / key).is_dir():
        return None
    try:
        compiled = (root / key / _COMPILED_FILE).read_bytes()
        sources = json.loads((root / key / _SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(sources, dict):
        return None
    return CacheEntry(compiled, sources)


def store_entry(key: str, entry: CacheEntry) -> None:
    """Write an entry atomically; a concurrent writer of the same key wins harmlessly."""
    root = cache_dir()
    if root is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
    try:
        (tmp / _COMPILED_FILE).write_bytes(entry.compiled)
        (tmp / _SOURCES_FILE).write_text(json.dumps(entry.sources))
        os.replace(tmp, root / key)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)


class CacheFormatError(Exception):
    """IR that cannot be stored flat, or a stored entry that does not read back."""


def pack(roots: Sequence[Operation], payload: object) -> bytes:
    """`payload` (any picklable data that refers to ops and values of `roots`) as bytes.

    The ops under `roots` (detached top-level ops: functions, kernels) are stored flat;
    the payload refers to them by number, so it may hold functions, fusion groups,
    lowered groups and SSA values. Raises CacheFormatError if it refers to IR
    outside `roots`.
    """
    table = _Numbering()
    frozen = [table.freeze(op) for op in roots]
    out = io.BytesIO()
    pickler = _IRPickler(out, table)
    try:
        pickler.dump(frozen)  # first the IR, so that reading back recreates it before the payload
        pickler.dump(payload)
    except (pickle.PicklingError, KeyError, TypeError, AttributeError) as e:
        raise CacheFormatError(f"cannot store: {type(e).__name__}: {e}") from None
    return out.getvalue()


def unpack(data: bytes) -> tuple[list[Operation], Any]:
    """The roots and the payload that `pack` stored; raises CacheFormatError on a bad entry."""
    try:
        unpickler = _IRUnpickler(io.BytesIO(data))
        ctx = make_context()
        roots = [_thaw(op, unpickler.ops, unpickler.values, ctx) for op in unpickler.load()]
        return roots, unpickler.load()
    except Exception as e:  # anything wrong with an entry makes it a miss
        raise CacheFormatError(f"unreadable entry: {type(e).__name__}: {e}") from None


class _Numbering:
    """Numbers for the ops and values under the roots, in the order `thaw` recreates them."""

    def __init__(self) -> None:
        self.ops: dict[Operation, int] = {}
        self.values: dict[SSAValue, int] = {}

    def _value(self, v: SSAValue) -> int:
        self.values[v] = len(self.values)
        return self.values[v]

    def freeze(self, op: Operation) -> tuple:
        """One op as plain data: name, operand numbers, results, properties, attributes, regions."""
        if op.successors:
            raise CacheFormatError(f"{op.name}: ops with successors are not stored")
        self.ops[op] = len(self.ops)
        operands = [self.values[v] for v in op.operands]
        results = [(self._value(r), r.type, r.name_hint) for r in op.results]
        regions = [[self._block(b) for b in region.blocks] for region in op.regions]
        return op.name, operands, results, dict(op.properties), dict(op.attributes), regions

    def _block(self, block: Block) -> tuple:
        args = [(self._value(a), a.type, a.name_hint) for a in block.args]
        return args, [self.freeze(op) for op in block.ops]


def _thaw(frozen: tuple, ops: list[Operation], values: dict[int, SSAValue], ctx: object) -> Operation:
    name, operands, results, properties, attributes, regions = frozen
    number = len(ops)
    ops.append(None)  # keeps the numbering in `freeze`'s order: the op before its regions' ops
    blocks = []
    for region in regions:
        made = []
        for args, body in region:
            block = Block(arg_types=[t for _, t, _ in args])
            for (n, _, hint), arg in zip(args, block.args):
                arg.name_hint, values[n] = hint, arg
            block.add_ops([_thaw(op, ops, values, ctx) for op in body])
            made.append(block)
        blocks.append(Region(made))
    op = ctx.get_op(name).create(
        operands=[values[n] for n in operands], result_types=[t for _, t, _ in results],
        properties=properties, attributes=attributes, regions=blocks,
    )  # fmt: skip
    for (n, _, hint), result in zip(results, op.results):
        result.name_hint, values[n] = hint, result
    ops[number] = op
    return op


class _IRPickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, table: _Numbering) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.table = table

    def persistent_id(self, obj: object) -> tuple | None:
        kind = _ir_kind(type(obj))
        if kind == "op":
            return "op", self.table.ops[obj]
        if kind == "value":
            return "value", self.table.values[obj]
        if kind == "structure":
            raise pickle.PicklingError("blocks and regions are stored with their ops only")
        return None


@functools.cache
def _ir_kind(cls: type) -> str | None:
    # the MRO, not isinstance: xDSL's IR classes are ABCs, and a first isinstance check of each
    # attribute type against them walks every op class (a third of a second per entry)
    mro = cls.__mro__
    if Operation in mro:
        return "op"
    if SSAValue in mro:
        return "value"
    return "structure" if Block in mro or Region in mro else None


class _IRUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.ops: list[Operation] = []
        self.values: dict[int, SSAValue] = {}

    def persistent_load(self, pid: tuple) -> object:
        kind, number = pid
        return self.ops[number] if kind == "op" else self.values[number]
