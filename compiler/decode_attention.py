"""Decode attention of a symbolic KV length through tilefuse's flash-decoding kernel (an aten graph pass).

With `generate`'s dynamic cache the keys' length is a symbolic size, so a decode step's attention
stays beside the compiled partitions, and ran as PyTorch's SDPA: on the H200 its cuDNN backend
builds a plan for every new length (`backends/triton/decode_attention.py`). Each such attention
with at most `MAX_ROWS` query rows (one token; a grouped-query step, `grouped_queries`, has
`group` rows), no dropout and no causal flag becomes a `DecodeAttentionCall`: the kernels take the
length at launch, so one binary serves every step.

Never slower, never wrong: on a GPU the call checks the kernels against SDPA at its first call
and then times both over real decode steps (each step a new length, as `generate` calls it,
synchronized around the call: host and GPU time together); the faster serves every later call.
Operands the kernels do not take (a mask that does not broadcast, gradients) go to SDPA. The
graph's report keeps each call's choice and times (`summary["decode_attention"]`).
"""

from __future__ import annotations

import logging
import os
import statistics
import time

import torch
from torch import Tensor
from torch.fx import GraphModule, Node

from ..backends.triton.decode_attention import (
    MAX_HEAD_DIM,
    MAX_ROWS,
    DecodeKernels,
    Unsupported,
    decode_attention,
)
from .causal_masks import MASKED_ATTENTION
from .grouped_queries import _first_output_users, _sizes
from .lowering_table import bound_args
from .runtime import INTERPRET_ENV

aten = torch.ops.aten
log = logging.getLogger("tilefuse")
_PUBLIC_ATTENTION = (
    torch.nn.functional.scaled_dot_product_attention,
    torch._C._nn.scaled_dot_product_attention,
)

# what the report says of a call site (a "fallback" entry: it runs beside the partitions)
REASON = "flash-decoding kernel over a symbolic KV length (or SDPA, by measurement at its first calls)"
TIMED_CALLS = 5  # decode steps timed per candidate
# how far the kernels' first output may stand from SDPA's before SDPA keeps the call
TOLERANCE = {torch.float32: 1e-3, torch.float16: 2e-2, torch.bfloat16: 5e-2}


class DecodeAttentionCall:
    """One attention node's replacement: the decode kernels or SDPA, chosen at its first calls.

    Called as the graph's node: (query, keys, values, mask or None). `report` is the node's entry
    in the graph's summary (filled as the choice is made)."""

    def __init__(self, name: str, scale: float | None, report: dict, group: int = 1) -> None:
        self.__name__ = name  # torch.fx names the callable in the generated code by these two
        self.__module__ = __name__
        self.scale = scale
        self.group = group  # SDPA's enable_gqa: query heads a KV head serves (one query row each)
        self.report = report
        self.launches = DecodeKernels()
        self.choice: str | None = None  # "kernels" or "sdpa" once decided
        self.calls = 0
        self.times: dict[str, list[float]] = {"kernels": [], "sdpa": []}
        self.tilefuse_reason = REASON

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        if self.choice == "kernels":
            try:
                return self.kernel(q, k, v, mask)
            except Unsupported:
                return self.sdpa(q, k, v, mask)
            except Exception as e:  # never break the model: SDPA from now on
                return self._failed(e, q, k, v, mask)
        if self.choice == "sdpa":
            return self.sdpa(q, k, v, mask)
        try:
            return self._choose(q, k, v, mask)
        except Unsupported as e:
            self._decide("sdpa", f"unsupported operands: {e}")
        except Exception as e:
            return self._failed(e, q, k, v, mask)
        return self.sdpa(q, k, v, mask)

    def sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        gqa = self.group > 1
        return aten.scaled_dot_product_attention.default(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=gqa
        )

    def kernel(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        if self.group == 1:
            return decode_attention(q, k, v, mask, self.scale, self.launches)
        # grouped query heads (one row each) are the rows of one attention over their KV head
        batch, heads, _, dim = q.shape
        grouped = q.reshape(batch, heads // self.group, self.group, dim)
        out = decode_attention(grouped, k, v, mask, self.scale, self.launches)
        return out.reshape(batch, heads, 1, out.shape[-1])

    def _failed(self, error: Exception, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        log.warning("tilefuse: %s runs as SDPA: the decode kernel failed (%s: %s)",
                    self.report.get("node"), type(error).__name__, error)  # fmt: skip
        self._decide("sdpa", f"the kernel failed: {type(error).__name__}: {error}")
        return self.sdpa(q, k, v, mask)

    def _decide(self, choice: str, why: str) -> None:
        self.choice = choice
        self.report.update(choice=choice, why=why)
        for name, times in self.times.items():
            if times:
                self.report[f"{name}_us"] = round(statistics.median(times) * 1e6, 1)

    def _choose(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        if not q.is_cuda:
            if os.environ.get(INTERPRET_ENV, "0") != "1":  # the interpreter only where asked for
                self._decide("sdpa", f"not on a GPU ({INTERPRET_ENV} unset)")
                return self.sdpa(q, k, v, mask)
            out = self.kernel(q, k, v, mask)
            self._decide("kernels", "no GPU to measure on (Triton's interpreter)")
            return out
        if torch.cuda.is_current_stream_capturing():  # no synchronizing inside a CUDA graph's capture
            return self.sdpa(q, k, v, mask)
        self.calls += 1
        if self.calls == 1:
            reference = self.sdpa(q, k, v, mask)
            out = self.kernel(q, k, v, mask)
            error = (out.float() - reference.float()).abs().nan_to_num(0.0).max().item()
            scale = reference.float().abs().max().nan_to_num(0.0).item() + 1.0
            if error > TOLERANCE[q.dtype] * scale:
                self._decide("sdpa", f"the kernel's output differed from SDPA's by {error:.3g}")
            return reference
        name = "kernels" if self.calls % 2 == 0 else "sdpa"
        torch.cuda.synchronize(q.device)
        start = time.perf_counter()
        if name == "sdpa":
            out = self.sdpa(q, k, v, mask)
        else:
            out = self.kernel(q, k, v, mask)
        torch.cuda.synchronize(q.device)
        self.times[name].append(time.perf_counter() - start)
        if len(self.times["sdpa"]) >= TIMED_CALLS and len(self.times["kernels"]) >= TIMED_CALLS:
            kernels, sdpa = (statistics.median(self.times[n]) for n in ("kernels", "sdpa"))
            self._decide("kernels" if kernels < sdpa else "sdpa", "measured over decode steps")
        return out


def decode_step_attention(node: Node) -> bool:
    """Whether a node of Dynamo's graph is `F.scaled_dot_product_attention` with few query rows over
    keys of a symbolic length, no dropout and no causal flag (isinstance checks only: no guard)."""
    if node.op != "call_function" or node.target not in _PUBLIC_ATTENTION or len(node.args) < 3:
        return False
    if node.kwargs.get("is_causal") or node.kwargs.get("dropout_p"):
        return False
    q, k = (a.meta.get("example_value") if isinstance(a, Node) else None for a in node.args[:2])
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() != 4 or k.dim() != 4:
        return False
    rows = q.shape[2]
    return isinstance(rows, int) and rows <= MAX_ROWS and not isinstance(k.shape[2], int)


def decode_kernels_enabled() -> bool:
    """Whether decode attention of a symbolic length may use the kernels (TILEFUSE_DECODE_KERNELS, on)."""
    return os.environ.get("TILEFUSE_DECODE_KERNELS", "1") != "0"


def use_decode_kernels(gm: GraphModule, reports: list[dict]) -> int:
    """Replace each decode attention of a symbolic KV length in `gm` (an inference graph) by a
    `DecodeAttentionCall`; appends each one's report entry to `reports`, returns how many."""
    replaced = 0
    if not decode_kernels_enabled():
        return 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in MASKED_ATTENTION:
            continue
        operands = _decode_operands(node)
        if operands is None:
            continue
        outputs = _first_output_users(node)
        if outputs is None:
            continue
        q, k, v, mask, scale, group = operands
        report = {"node": node.name, "choice": None}
        call = DecodeAttentionCall(f"decode_attention_{replaced}", scale, report, group)
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(call, (q, k, v, mask))
        new.meta["val"] = outputs[0].meta.get("val")
        for user in outputs:
            user.replace_all_uses_with(new)
        reports.append(report)
        replaced += 1
    if replaced:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return replaced


def _decode_operands(node: Node) -> tuple | None:
    """(query, keys, values, mask, scale, group) of an attention the decode kernel takes: few query
    rows and a head dim of static sizes, keys of a symbolic length, no dropout, no causal flag; with
    `enable_gqa` (or fewer KV heads than query heads), one query row, static head counts and a mask
    shared by a KV head's `group` query heads; else None."""
    args = bound_args(node)
    if args.get("is_causal") or args.get("dropout_p", 0.0):
        return None
    q, k, v = node.args[:3]
    qs, ks, vs = _sizes(q), _sizes(k), _sizes(v)
    if qs is None or ks is None or vs is None or not len(qs) == len(ks) == len(vs) == 4:
        return None
    rows, dim, dim_v = qs[2], qs[3], vs[3]
    if not all(isinstance(d, int) for d in (rows, dim, dim_v)) or isinstance(ks[2], int):
        return None
    if rows > MAX_ROWS or max(dim, dim_v) > MAX_HEAD_DIM:
        return None
    mask = args.get(MASKED_ATTENTION[node.target])
    if mask is not None and not isinstance(mask, Node):
        return None
    scale = args.get("scale")
    if scale is not None and not isinstance(scale, (int, float)):
        return None  # a scale computed in the graph
    group = 1
    heads, kv_heads = qs[1], ks[1]
    if args.get("enable_gqa") or heads != kv_heads:  # CPU's private flash op takes fewer KV heads as is
        if rows != 1 or not isinstance(heads, int) or not isinstance(kv_heads, int) or heads % kv_heads:
            return None
        mask_shape = _sizes(mask) if mask is not None else ()
        if mask_shape is None or any(d != 1 for d in mask_shape[-3:-1]):
            return None  # a mask per query head (or of unknown shape) is not one a KV head's rows share
        group = heads // kv_heads
    return q, k, v, mask, scale, group
