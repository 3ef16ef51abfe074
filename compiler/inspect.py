"""`tilefuse inspect DIR`: what a dump says tilefuse did, as text.

Per graph: its partitions and what runs them, every fusion group (kind, ops, kernel, config
and whether the config came from the tuning database), every op a partition runs outside
its kernels and every op left to PyTorch, each with the reason (a decode attention's call site,
which runs beside the partitions, apart); then totals over the dump.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .decode_attention import REASON as DECODE_REASON


def summarize(root: Path) -> str:
    """The text summary of the dump under `root` (its index.json)."""
    index = json.loads((root / "index.json").read_text())
    lines: list[str] = [f"tilefuse dump {root}", ""]
    totals: Counter = Counter()
    for graph in index["graphs"]:
        lines.append(
            f"graph {graph['name']} ({graph.get('kind', 'forward')}, compile cache: {graph.get('cache')})"
        )
        for part in graph["partitions"]:
            ops = sum(part["ein_ops"].values())
            lines.append(f"  partition {part['name']}: {len(part['aten_ops'])} aten ops -> {ops} ein ops; "
                         f"runs on {part['executor']}")  # fmt: skip
            for g in part["groups"]:
                kernel = g["kernel"] or f"no kernel ({g['not_a_kernel_because']})"
                source = f" [{g.get('config_source') or 'default'}: {g['config']}]" if g.get("config") else ""
                if g.get("tuned_ms"):
                    source += f" measured {g['tuned_ms']:.4g} ms"
                fused = ", ".join(f"{op} x{n}" if n > 1 else op for op, n in Counter(g["ops"]).items())
                lines.append(f"    {g['name']:<4} {g['kind']:<10} {kernel}{source}")
                lines.append(f"         fuses {fused}")
                for bucket, config in g.get("config_buckets", {}).items():  # a kernel of symbolic sizes
                    lines.append(f"         sizes {bucket}: {config}")
                totals["kernels"] += bool(g["kernel"])
                totals["groups without a kernel"] += not g["kernel"]
                buckets = g.get("config_buckets", {}).values()  # a kernel of symbolic sizes: per bucket
                totals["tuned configs"] += (
                    sum(c.endswith("(tuned)") for c in buckets)
                    if buckets
                    else (g.get("config_source") == "tuned")
                )
            for glue in part.get("glue_ops", []):
                lines.append(f"    outside kernels: {glue['op']}: {glue['reason']}")
                totals["ops outside kernels"] += 1
        for f in graph["fallbacks"]:
            if f["reason"] == DECODE_REASON:  # tilefuse's call site, beside the partitions
                lines.append(f"  beside the partitions: {f['node']}: {f['reason']}")
                totals["decode attention calls"] += 1
                continue
            lines.append(f"  in PyTorch: {f['node']} ({f['op']}): {f['reason']}")
            totals["ops left to PyTorch"] += 1
        lines.append("")
    lines.append(
        "totals: " + ", ".join(f"{n} {what}" for what, n in totals.items()) if totals else "totals: none"
    )
    return "\n".join(lines) + "\n"
