"""On-disk cache of compiled graphs, keyed by graph, shapes, dtypes, device and versions.

An entry holds the fused `ein` module (canonical, with its fusion groups) and
the generated source of every kernel, so a later process compiling the same
graph for the same inputs skips import, canonicalization and code generation
(Triton keeps its own cache of the binaries). Entries are written to a
temporary folder and renamed into place, so a crash never leaves half an
entry; an entry that cannot be read is ignored and rebuilt, never trusted.

`TILEFUSE_CACHE_DIR` moves the cache (default `~/.cache/tilefuse/graphs`);
`TILEFUSE_CACHE=0` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch.fx import GraphModule

_MODULE_FILE = "ein.groups.mlir"
_SOURCES_FILE = "kernels.json"


@dataclass(frozen=True)
class CacheEntry:
    """What a cached compile left behind."""

    module_text: str
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
            specs.append([list(map(int, val.shape)), str(val.dtype)] if is_tensor else repr(val))
    payload = {
        "graph": aten.code,
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
        module_text = (root / key / _MODULE_FILE).read_text()
        sources = json.loads((root / key / _SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(sources, dict):
        return None
    return CacheEntry(module_text, sources)


def store_entry(key: str, entry: CacheEntry) -> None:
    """Write an entry atomically; a concurrent writer of the same key wins harmlessly."""
    root = cache_dir()
    if root is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
    try:
        (tmp / _MODULE_FILE).write_text(entry.module_text)
        (tmp / _SOURCES_FILE).write_text(json.dumps(entry.sources))
        os.replace(tmp, root / key)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
