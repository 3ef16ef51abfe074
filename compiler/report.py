"""`tilefuse inspect DIR --html`: one self-contained HTML file for a dump (no scripts, no
external files: inline CSS and SVG).

Per graph: the fused `ein` graph drawn with networkx's layered layout, one colour per fusion
group (grey: ops left to the reference interpreter; views, constants and iotas are not
drawn: edges pass through them, as kernels index through them); then per kernel its
group, config and where the config came from, the Triton source (and the CUDA C++ where the
dump has it) and its `tile` IR; and for a kernel whose config came from the tuning database,
the tuning job as plots (time of each
trial and the best so far; the shipped cost model's score against each measured time).
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import networkx as nx

from ..ir import parse_module
from ..passes.fusion_groups import GROUP_ATTR, functions
from .dump import format_compile_seconds

PALETTE = (
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#393b79",
)  # fmt: skip
VIRTUAL = ("ein.view", "ein.constant", "ein.iota")
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 12px; max-height: 32em; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; vertical-align: middle; }
details { margin: .5em 0; } summary { cursor: pointer; font-weight: 600; }
svg text { font: 11px system-ui, sans-serif; }
"""


def graph_svg(module_text: str) -> tuple[str, dict[str, str]]:
    """The ops of a fused `ein` module as an SVG (layered left to right), and each group's colour."""
    module = parse_module(module_text)
    g = nx.DiGraph()
    colours: dict[str, str] = {}
    through: dict[int, set[int]] = {}  # op -> the drawn ops its value comes from
    for fn in functions(module):
        for op in fn.body.block.ops:
            if op.name == "func.return":
                continue
            producers = {p for v in op.operands if v.owner is not None for p in through.get(id(v.owner), ())}
            if op.name in VIRTUAL:  # views, constants, iotas: kernels index through them, so does the drawing
                through[id(op)] = producers
                continue
            through[id(op)] = {id(op)}
            group = op.attributes[GROUP_ATTR].data if GROUP_ATTR in op.attributes else None
            if group and group not in colours:
                colours[group] = PALETTE[len(colours) % len(PALETTE)]
            label = op.name.removeprefix("ein.") + (f" {group}" if group else "")
            g.add_node(id(op), label=label, colour=colours.get(group, "#bbb"))
            for producer in producers:
                g.add_edge(producer, id(op))
    if not g:
        return "<p>(no compiled ops)</p>", colours
    for layer, nodes in enumerate(nx.topological_generations(g)):
        for n in nodes:
            g.nodes[n]["layer"] = layer
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical", scale=1.0)
    layers = 1 + max(d["layer"] for _, d in g.nodes(data=True))
    width, height = max(400, 130 * layers), max(200, 34 * max(len(v) for v in nx.topological_generations(g)))

    def spread(axis: int, size: int, margin: int) -> dict:
        lo, hi = min(p[axis] for p in pos.values()), max(p[axis] for p in pos.values())
        return {n: margin + (p[axis] - lo) / ((hi - lo) or 1) * (size - 2 * margin) for n, p in pos.items()}

    xs, ys = spread(0, width, 60), spread(1, height, 20)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']  # fmt: skip
    for a, b in g.edges:
        parts.append(f'<line x1="{xs[a]:.0f}" y1="{ys[a]:.0f}" x2="{xs[b]:.0f}" y2="{ys[b]:.0f}" '
                     'stroke="#999" stroke-width="1"/>')  # fmt: skip
    for n, d in g.nodes(data=True):
        label = html.escape(d["label"])
        x, y = xs[n], ys[n]
        parts.append(f'<rect x="{x - 55:.0f}" y="{y - 10:.0f}" width="110" height="20" rx="4" '
                     f'fill="{d["colour"]}" opacity="0.9"/>')  # fmt: skip
        parts.append(f'<text x="{x:.0f}" y="{y + 4:.0f}" text-anchor="middle" fill="#fff">{label}</text>')
    parts.append("</svg>")
    return "".join(parts), colours


def trials_svg(times: list[float | None], width: int = 520, height: int = 180) -> str:
    """Measured time per trial (dots; failed trials as red ticks) and the best so far (a line)."""
    ok = [t for t in times if t is not None]
    if not ok:
        return "<p>(no successful trial)</p>"
    lo, hi = min(ok), max(ok)
    span = (hi - lo) or hi or 1.0
    x = lambda i: 40 + i * (width - 60) / max(len(times) - 1, 1)  # noqa: E731
    y = lambda t: height - 25 - (t - lo) / span * (height - 45)  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f'<text x="4" y="14">{hi:.4g} ms</text><text x="4" y="{height - 8}">{lo:.4g} ms</text>',
    ]
    best, line = None, []
    for i, t in enumerate(times):
        if t is None:
            tick = f'x1="{x(i):.1f}" y1="{height - 22}" x2="{x(i):.1f}" y2="{height - 12}"'
            parts.append(f'<line {tick} stroke="#e15759"/>')
            continue
        best = t if best is None else min(best, t)
        line.append(f"{x(i):.1f},{y(best):.1f}")
        parts.append(f'<circle cx="{x(i):.1f}" cy="{y(t):.1f}" r="2.5" fill="#4e79a7"/>')
    parts.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="#f28e2b" stroke-width="2"/>')
    parts.append(f'<text x="{width - 150}" y="14" fill="#f28e2b">best so far</text></svg>')
    return "".join(parts)


def _tile_ir(tile_text: str, kernel: str) -> str:
    """The `tile.kernel` named `kernel` out of a dump's tile.mlir."""
    match = re.search(rf'^  tile\.kernel "{re.escape(kernel)}" .*?^  }}$', tile_text, re.S | re.M)
    return match.group(0) if match else "(not in tile.mlir)"


def tuning_section(task_key: str) -> str:
    """The tuning job of one kernel from the tuning database: time per trial with the best so
    far, and the shipped cost model's score against each measured time."""
    from ..autotune.database import Database, default_path

    path = default_path()
    where = html.escape(str(path))
    if not path.exists():
        return f"<p>(the tuning database {where} does not exist: name the job's with --db)</p>"
    with Database(path) as db:
        scope = next(iter(db.scopes(task_key)), None)
        records = db.records(task_key, *scope) if scope else []
        task = db.task(task_key)
    if not records:
        return f"<p>(no trials of this kernel in the tuning database {where}: name the job's with --db)</p>"
    times = [r.median_ms for r in records]
    parts = [f"<h4>tuning job: {len(records)} trials on {html.escape(scope[0]) if scope else '?'}</h4>",
             trials_svg(times)]  # fmt: skip
    if task is not None and records:
        from ..autotune.cost_model import XGBoostCostModel
        from ..autotune.job import PRETRAINED

        model = XGBoostCostModel.load(PRETRAINED) if PRETRAINED.exists() else XGBoostCostModel()
        scores = list(model.predict(task, [r.config for r in records]))
        parts += ["<h4>cost model score (x, higher = predicted faster) against measured ms (y)</h4>",
                  scatter_svg(scores, times)]  # fmt: skip
    return "".join(parts)


def scatter_svg(xs: list[float], ys: list[float | None], width: int = 520, height: int = 200) -> str:
    """Points (x, y) for the trials that ran; a good model slopes down (high score, low time)."""
    pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
    if not pts:
        return "<p>(no successful trial)</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    sx = lambda v: 40 + (v - x0) / ((x1 - x0) or 1) * (width - 60)  # noqa: E731
    sy = lambda v: height - 20 - (v - y0) / ((y1 - y0) or 1) * (height - 40)  # noqa: E731
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="#59a14f"/>' for x, y in pts)
    labels = f'<text x="4" y="14">{y1:.4g} ms</text><text x="4" y="{height - 6}">{y0:.4g} ms</text>'
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">{labels}{dots}</svg>'


def html_report(root: Path) -> str:
    """The report of the dump under `root` (see the module docstring)."""
    index = json.loads((root / "index.json").read_text())
    body = [f"<h1>tilefuse dump <code>{html.escape(str(root))}</code></h1>"]
    for graph in index["graphs"]:
        folder = root / (graph.get("dir") or graph["name"])
        body.append(f"<h2>graph {html.escape(graph['name'])}</h2>")
        counts = (
            f"{len(graph['partitions'])} compiled partition(s), {len(graph['fallbacks'])} op(s) in PyTorch"
        )
        body.append(f"<p>compile cache: {graph.get('cache')}; {counts}</p>")
        if graph.get("compile_seconds"):
            timing = format_compile_seconds(graph["compile_seconds"], graph.get("kernels"))
            body.append(f"<p>compile time: {html.escape(timing)}</p>")
        groups_file = folder / "ein.groups.mlir"
        colours: dict[str, str] = {}
        if groups_file.exists():
            svg, colours = graph_svg(groups_file.read_text())
            body.append(f"<div style='overflow-x:auto'>{svg}</div>")
        if graph["fallbacks"]:
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(f[k])}</td>" for k in ("node", "op", "reason")) + "</tr>"
                for f in graph["fallbacks"]
            )
            body.append(
                f"<h3>Left to PyTorch</h3><table><tr><th>node</th><th>op</th><th>why</th></tr>{rows}</table>"
            )
        tile_text = (folder / "tile.mlir").read_text() if (folder / "tile.mlir").exists() else ""
        for part in graph["partitions"]:
            body.append(f"<h3>partition {html.escape(part['name'])}: {html.escape(part['executor'])}</h3>")
            for g in part["groups"]:
                swatch = f"<span class='swatch' style='background:{colours.get(g['name'], '#bbb')}'></span>"
                kernel = g["kernel"]
                title = f"{g['name']} · {g['kind']} · " + (
                    f"kernel {kernel} · {g.get('config_source') or 'default'} config {g['config']}"
                    if kernel
                    else f"no kernel: {g['not_a_kernel_because']}"
                )
                body.append(f"<details><summary>{swatch} {html.escape(title)}</summary>")
                body.append(f"<p>fuses: {html.escape(', '.join(g['ops']))}</p>")
                if g.get("config_buckets"):  # a kernel of symbolic sizes: its config per size bucket
                    rows = "".join(
                        f"<tr><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
                        for b, c in g["config_buckets"].items()
                    )
                    body.append(f"<table><tr><th>sizes</th><th>config</th></tr>{rows}</table>")
                if kernel:
                    source = folder / "kernels" / f"{kernel}.py"
                    text = source.read_text() if source.exists() else "(source not in the dump)"
                    body.append(f"<h4>Triton source</h4><pre>{html.escape(text)}</pre>")
                    cuda = folder / "kernels" / f"{kernel}.cu"
                    if cuda.exists():  # pointwise, reduction and row kernels (backends/cuda; not run yet)
                        cuda_text = html.escape(cuda.read_text())
                        body.append(f"<h4>CUDA C++ (not run yet)</h4><pre>{cuda_text}</pre>")
                    body.append(f"<h4>tile IR</h4><pre>{html.escape(_tile_ir(tile_text, kernel))}</pre>")
                if g.get("config_source") == "tuned" and g.get("task_key"):
                    body.append(tuning_section(g["task_key"]))
                body.append("</details>")
    title = f"tilefuse report: {html.escape(str(root))}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip
