"""SDPA as an attention group's library path: `torch.nn.functional.scaled_dot_product_attention`.

An attention group (passes/flash_attention.py's pattern) whose scores are a plain scale of
`q @ k^T`, optionally causal, with no mask tensor, is what SDPA computes; on an H200 SDPA
dispatches it to cuDNN's or FlashAttention's kernels, which beat the generated flash kernel at
some shapes (GPT-NeoX's 4 x 16 heads x 512 x 128, causal: cuDNN 19.7 µs a layer against 33.6).
The measured selection (`group_selection`) times it against the kernel like any library path.

The group's layout must be SDPA's up to reshapes: scores `B.. R.. q d, B.. k d -> B.. R.. q k`
(batch letters `B` shared by q, k and v; `R`, the query heads sharing a key head under grouped-
query attention, in q alone) and the output `B.. R.. q k, B.. k e -> B.. R.. q e`. q is viewed
[prod(B[:-1]), prod(B[-1:] R), L, E], k and v [prod(B[:-1]), B[-1], S, E] (`enable_gqa` where R is
not empty), and the result back. A causal mask needs L == S (SDPA's `is_causal` is the top-left
triangle; with L == S it is the `key <= query` the pattern recognises).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from xdsl.dialects import arith
from xdsl.ir import SSAValue

from ..ir import einsum as ein
from ..ir.builder import strip_casts, yielded_value
from ..ir.dtypes import shape_of, to_torch_dtype
from ..passes.flash_attention import AttentionPattern, match_attention
from .library_plan import LIBRARY_DTYPES, Plan

SDPA = "sdpa"


class NoSdpaPath(Exception):
    """The attention group is not one SDPA call; the message says why."""


def attention_pattern(group_ops: list) -> AttentionPattern:
    contracts = [op for op in group_ops if isinstance(op, ein.ContractOp)]
    pattern = match_attention(contracts[-1]) if contracts else None
    if pattern is None:
        raise NoSdpaPath("not an attention pattern")
    return pattern


def _constant(value: SSAValue) -> float | None:
    owner = strip_casts(value).owner
    if isinstance(owner, arith.ConstantOp):
        return float(owner.value.value.data)
    return None


def pre_softmax_scale(pattern: AttentionPattern) -> float:
    """The factor the pre-softmax map multiplies the scores by (1 without one); NoSdpaPath where the
    map does more than scale (and, if causal, mask)."""
    pre = pattern.pre
    if pre is None:
        return 1.0
    scores = [v for v in pre.inputs if isinstance(_peel(v).owner, ein.ContractOp)]
    others = [v for v in pre.inputs if v not in scores]
    if any(not isinstance(v.owner, ein.IotaOp) for v in others) or (others and not pattern.causal):
        raise NoSdpaPath("the scores read a mask or bias tensor")
    value = yielded_value(pre)
    if pattern.causal:
        value = value.owner.lhs  # select(key <= query, x, -inf): x
    arg = pre.body.block.args[list(pre.inputs).index(scores[0])]
    value = strip_casts(value)
    if value is arg:
        return 1.0
    op = value.owner
    if isinstance(op, arith.MulfOp | arith.DivfOp):
        lhs, rhs = strip_casts(op.lhs), strip_casts(op.rhs)
        c = _constant(rhs) if lhs is arg else None
        if c is None and rhs is arg and isinstance(op, arith.MulfOp):
            c = _constant(lhs)
        if c is not None and c != 0.0 and math.isfinite(c):
            return c if isinstance(op, arith.MulfOp) else 1.0 / c
    raise NoSdpaPath("the pre-softmax map is not a scale")


def _peel(value: SSAValue) -> SSAValue:
    while isinstance(value.owner, ein.ViewOp) and value.owner.kind.data == "reshape":
        value = value.owner.input
    return value


def _source(value: SSAValue, upcast) -> SSAValue:
    """An operand as the library reads it: a 16-bit tensor's widening (SDPA's math path) dropped."""
    return upcast.inputs[0] if upcast is not None else value


def sdpa_layout(pattern: AttentionPattern) -> tuple[int, int]:
    """(batch letters, head letters of q alone) of the pattern, checked against SDPA's layout
    (module docstring)."""
    s_lhs, s_rhs, s_out = ein.parse_spec(pattern.scores.spec.data)
    o_lhs, o_rhs, o_out = ein.parse_spec(pattern.output.spec.data)
    if len(s_lhs) < 2 or len(s_rhs) < 2:
        raise NoSdpaPath("scores of fewer than two dims")
    q, d = s_lhs[-2], s_lhs[-1]
    k = s_rhs[-2]
    batch = s_rhs[:-2]
    heads = s_lhs[len(batch):-2]
    e = o_rhs[-1]
    ok = (
        s_lhs == batch + heads + q + d and s_rhs == batch + k + d and s_out == batch + heads + q + k
        and o_lhs == s_out and o_rhs == batch + k + e and o_out == batch + heads + q + e
    )  # fmt: skip
    if not ok:
        raise NoSdpaPath(f"layouts {pattern.scores.spec.data} / {pattern.output.spec.data} are not SDPA's")
    if pattern.causal:
        sizes = dict(zip(s_out, shape_of(pattern.scores.result.type)))
        if sizes[q] != sizes[k]:
            raise NoSdpaPath("causal with queries and keys of different lengths")
    return len(batch), len(heads)


def sdpa_path(kernel: object) -> Callable[..., tuple[torch.Tensor, ...]]:
    """`fn(*inputs) -> (output,)` for an attention group's kernel (a `CompiledKernel`), as
    `group_selection.library_path`'s; raises NoSdpaPath where the group is not one SDPA call."""
    from .group_selection import _library_order, library_contraction

    lowered = kernel.lowered
    pattern = attention_pattern(list(lowered.group.ops))
    outputs = list(lowered.outputs)
    if len(outputs) != 1:
        raise NoSdpaPath("the group has more than one output")
    scale = pre_softmax_scale(pattern)
    n_batch, n_heads = sdpa_layout(pattern)
    q_up, k_up = pattern.upcasts
    q, k, v = _source(pattern.scores.lhs, q_up), _source(pattern.scores.rhs, k_up), pattern.output.rhs
    dtypes = {to_torch_dtype(x.type.get_element_type()) for x in (q, k, v)}
    if len(dtypes) != 1 or not dtypes <= set(LIBRARY_DTYPES):
        raise NoSdpaPath(f"operand dtypes {sorted(map(str, dtypes))}")
    inputs = list(lowered.inputs)
    plan = Plan(inputs, _library_order(inputs, [q, k, v], set()), library_contraction)
    q_at, k_at, v_at = plan.slot(q), plan.slot(k), plan.slot(v)
    out_shape = tuple(shape_of(outputs[0].type))
    out_dtype = to_torch_dtype(outputs[0].type.get_element_type())
    causal, gqa = pattern.causal, n_heads > 0

    def as_heads(x: torch.Tensor) -> torch.Tensor:
        """[B.., R.., L, E] -> [outer, heads, L, E]: the batch letters but the last are the outer
        dim, the last (the key heads) and q's own head letters the heads."""
        lead = x.shape[:-2]
        outer = math.prod(lead[: max(n_batch - 1, 0)])
        return x.reshape(outer, math.prod(lead) // outer, *x.shape[-2:])

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = plan.run(tensors, tensors[0].device)
        qh, kh, vh = (as_heads(env[i]) for i in (q_at, k_at, v_at))
        extra = {"enable_gqa": True} if gqa and kh.shape[1] != qh.shape[1] else {}
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale, **extra)
        return (out.reshape(out_shape).to(out_dtype).contiguous(),)

    run.title = f"SDPA ({'causal, ' if causal else ''}scale {scale:.4g}{', grouped queries' if gqa else ''})"
    return run
