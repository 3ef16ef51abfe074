"""IR dumps: one folder per compiled graph plus an index at the dump root.

Layout (``dump="dir"`` or ``TILEFUSE_DUMP=dir``)::

    dir/index.json              every graph: files, partitions, fallbacks
    dir/index.txt               the same, for reading
    dir/<graph>/dynamo_graph.py the captured FX graph (torch level)
    dir/<graph>/aten_graph.py   after PyTorch's decompositions (what is imported)
    dir/<graph>/partitioned.py  compiled partitions as fused_N calls, the rest PyTorch
    dir/<graph>/ein.mlir        the `ein` module: one func per compiled partition
    dir/<graph>/summary.json    this graph's entry of the index

Files are written to a temporary name and renamed, so a crash never leaves
a half-written index.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

_INDEX_LOCK = threading.Lock()


def resolve_dump_dir(dump: str | os.PathLike | None) -> Path | None:
    """The dump folder: the explicit argument, else $TILEFUSE_DUMP, else none."""
    chosen = dump if dump is not None else os.environ.get("TILEFUSE_DUMP") or None
    return Path(chosen).resolve() if chosen else None


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class GraphDump:
    """The dump folder of one compiled graph."""

    def __init__(self, root: Path, name: str):
        self.root = root
        self.dir = _unique_dir(root, name)
        self.name = self.dir.name

    def write(self, filename: str, text: str) -> str:
        write_atomic(self.dir / filename, text)
        return filename

    def finish(self, summary: dict) -> None:
        """Write this graph's summary and add it to the index."""
        self.write("summary.json", json.dumps(summary, indent=2))
        self._update_index(lambda graphs: [g for g in graphs if g["name"] != self.name] + [summary])

    def add(self, filename: str, text: str) -> str:
        """Write a file after `finish` (a partition's program, written at its first call) and list
        it under this graph in the index."""
        self.write(filename, text)

        def listed(graphs: list[dict]) -> list[dict]:
            for g in graphs:
                if g["name"] == self.name and filename not in g.setdefault("files", []):
                    g["files"].append(filename)
            return graphs

        if (self.root / "index.json").exists():  # before `finish` there is no entry to list it under
            self._update_index(listed)
        return filename

    def _update_index(self, change: Callable[[list[dict]], list[dict]]) -> None:
        """Rewrite the index (json and text) with its graph list passed through `change`."""
        with _INDEX_LOCK:
            index_path = self.root / "index.json"
            index = json.loads(index_path.read_text()) if index_path.exists() else {"graphs": []}
            index["graphs"] = change(index["graphs"])
            write_atomic(index_path, json.dumps(index, indent=2))
            write_atomic(self.root / "index.txt", format_index(index))


def _unique_dir(root: Path, name: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(10_000):
        candidate = root / (name if i == 0 else f"{name}_{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"no free dump folder for {name} under {root}")


def format_index(index: dict) -> str:
    """A plain-text table of contents of a dump."""
    lines = ["tilefuse dump index", ""]
    for g in index["graphs"]:
        cache = g.get("cache", "off")
        lines.append(f"graph {g['name']}  ({g.get('kind', 'forward')}, compile cache: {cache})")
        if g.get("compile_seconds"):
            lines.append(f"  compile   {format_compile_seconds(g['compile_seconds'], g.get('kernels'))}")
        for filename in g.get("files", []):
            lines.append(f"  file      {g['dir']}/{filename}")
        for p in g.get("partitions", []):
            ops = ", ".join(f"{k} x{v}" for k, v in p.get("ein_ops", {}).items())
            lines.append(f"  compiled  {p['name']}: {len(p['aten_ops'])} aten ops -> {ops}")
            lines.append(f"            runs on: {p['executor']}")
            for grp in p.get("groups", []):
                where = f"kernel {grp['kernel']} [{grp['config']}]" if grp["kernel"] else (
                    f"op by op: {grp['not_a_kernel_because']}"
                )
                lines.append(f"            {grp['name']} ({grp['kind']}: {', '.join(grp['ops'])}) -> {where}")
        for f in g.get("fallbacks", []):
            lines.append(f"  fallback  {f['node']} ({f['op']}): {f['reason']}")
        lines.append("")
    return "\n".join(lines)


def format_compile_seconds(seconds: dict, kernels: dict | None = None) -> str:
    """One line saying where a graph's compile time went, and how many of its kernels are distinct."""
    passes = seconds.get("passes", {})
    slowest = sorted(passes.items(), key=lambda kv: -kv[1])[:3]
    capture = seconds.get("capture")
    parts = [
        f"{seconds['total']:.2f} s:",
        f"capture {capture:.2f}," if capture is not None else "capture (not timed),",
        f"passes {sum(passes.values()):.2f} ({', '.join(f'{k} {v:.2f}' for k, v in slowest)}),",
        f"codegen {seconds.get('codegen', 0.0):.2f},",
        f"triton compile {seconds.get('triton_compile', 0.0):.2f},",
        f"other {seconds.get('other', 0.0):.2f}",
    ]
    if kernels:
        parts.append(f"; kernels {kernels['total']} ({kernels['distinct']} distinct)")
    return " ".join(parts).replace(" ;", ";")
