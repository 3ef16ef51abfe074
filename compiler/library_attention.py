"""SDPA as an attention group's library path: `torch.nn.functional.scaled_dot_product_attention`.

An attention group (passes/flash_attention.py's pattern) whose scores are a plain scale of
`q @ k^T`, optionally causal, with no mask tensor, is what SDPA computes; on an H200 SDPA
dispatches it to cuDNN's or FlashAttention's kernels, which beat the generated flash kernel at
some shapes (GPT-NeoX's 4 x 16 heads x 512 x 128, causal: cuDNN 19.7 µs a layer against 33.6).
The measured selection (`group_selection`) times it against the kernel like any library path.

So is a group whose pre-softmax map adds a bias or hides keys with a mask (a padding mask, T5's
position bias, `masked_fill(mask, -inf)`): the map is then `c * s + map(0)` for every score s
(`pre_softmax`), and SDPA gets scale c and the map's value at zero scores as its additive
`attn_mask` (computed every call from the mask's tensors, a broadcast view where they are).
With a mask SDPA runs its memory-efficient kernel, which in float32 beats the kernel's exact
float32 dots, and the math path (the library path) that eager's own graph would run.

The group's layout must be SDPA's up to permutations and reshapes: scores `B.. R.. q d, B.. k d
-> B.. R.. q k` in some order of the letters (batch letters `B` shared by q, k and v; `R`, the
query heads sharing a key head under grouped-query attention, in q alone; GPT-2 and OPT keep q as
[batch, position, head, dim]) and the output `.. q k, .. k e -> .. q e`. q is permuted to
(B.., R.., q, d) and viewed [prod(B[:-1]), prod(B[-1:] R), L, E], k and v likewise without R
(`enable_gqa` where R is not empty), and the result viewed and permuted back. A causal mask needs
L == S (SDPA's `is_causal` is the top-left triangle; with L == S it is the `key <= query` the
pattern recognises).

`split_keys_path` is the same call on the flash-decoding kernel (`backends/triton/decode_attention.py`):
each (batch, head)'s keys split across programs and their partial softmaxes combined by the last
program to finish, up to 64 query rows a program. The flash kernel runs one program per 64 queries of a
(batch, head), so a few heads over many keys leave most SMs idle: BigBird's first and last query blocks
(12 heads x 64 queries against 4096 keys) were 12 programs on 132 SMs, 48 us a layer on the H100. It is
built (and measured) only there: fewer flash programs than SMs, at least `SPLIT_KEYS_MIN_KEYS` keys, no
causal mask, and query heads sharing a key head only without a mask (they are folded into its rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from xdsl.dialects import arith
from xdsl.ir import Operation, SSAValue

from ..ir import einsum as ein
from ..ir.builder import strip_casts, yielded_value
from ..ir.dtypes import shape_of, to_torch_dtype
from ..passes.flash_attention import AttentionPattern, causal_select, match_attention, negative_infinity
from ..passes.flash_attention import _source as _peel  # reshape views peeled off
from .library_plan import LIBRARY_DTYPES, Plan, planned_op

SDPA = "sdpa"
SPLIT_KEYS = "split-keys"
# the split-keys path is built where the flash kernel (a program per FLASH_ROWS query rows of a batch and
# head) runs fewer programs than the GPU has SMs over at least this many keys: a long loop on a few SMs
FLASH_ROWS = 64
SPLIT_KEYS_MIN_KEYS = 1024
# SDPA's flash kernel reads grouped query heads (`enable_gqa`) as they are, on CUDA in half precision,
# unmasked, up to this head dim; elsewhere its memory-efficient kernel takes the call, which has no grouped
# heads, and SDPA falls back to its math path: the scores materialized and the keys repeated anyway.
# There the key and value heads are repeated before the call (`sdpa_reads_grouped_heads`): H100, float32,
# 4 x 32 query heads over 8 key heads, 4096 x 128, causal: SDPA with `enable_gqa` took 52.8 ms against
# 11.9 for the same query heads with as many key heads.
FLASH_GQA_DTYPES = (torch.float16, torch.bfloat16)
FLASH_MAX_HEAD_DIM = 256


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


def _scale_of(value: SSAValue, arg: SSAValue) -> float | None:
    """c where `value` is `arg * c` or `arg / c`, or a chain of them (`arg * a / b`: the scale that
    canonicalize moves past a contraction lands after the map's own), casts looked through; 1 for
    `arg` itself; else None."""
    value = strip_casts(value)
    if value is arg:
        return 1.0
    op = value.owner
    if isinstance(op, arith.MulfOp | arith.DivfOp):
        pairs = [(op.lhs, op.rhs)] + ([(op.rhs, op.lhs)] if isinstance(op, arith.MulfOp) else [])
        for inner, other in pairs:
            c = _constant(other)
            if c is None or c == 0.0 or not math.isfinite(c):
                continue
            scale = _scale_of(inner, arg)
            if scale is not None:
                return scale * (c if isinstance(op, arith.MulfOp) else 1.0 / c)
    return None


def _reads(value: SSAValue, arg: SSAValue) -> bool:
    """Whether `value`, in a map body, is computed from the block argument `arg`."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v is arg:
            return True
        if v in seen or not isinstance(v.owner, Operation):
            continue
        seen.add(v)
        stack.extend(v.owner.operands)
    return False


def _hides(value: SSAValue, pre: ein.MapOp) -> bool:
    """`value` is -inf, casts looked through: a constant, or an argument reading a splat of -inf."""
    return negative_infinity(strip_casts(value), pre)


def _is_scores(value: SSAValue) -> bool:
    """Whether a pre-softmax map's input is the scores (the contraction, reshape views peeled off)."""
    return isinstance(_peel(value).owner, ein.ContractOp)


def _masked_scale(value: SSAValue, arg: SSAValue, pre: ein.MapOp) -> float:
    """The scale c where `value` (the pre-softmax map's, in terms of the scores `arg`) is `arg * c`
    plus terms that do not read `arg` (`+ bias`, `- bias`), or that scaled score selected against
    -inf by a condition that does not read `arg` (`masked_fill(mask, -inf)`): then the map is
    `c * s + map(0)` for every s, SDPA's `scale` and additive `attn_mask`. NoSdpaPath otherwise."""
    scale = _scale_of(value, arg)
    if scale is not None:
        return scale
    op = strip_casts(value).owner
    if isinstance(op, arith.AddfOp | arith.SubfOp):
        reading = [v for v in (op.lhs, op.rhs) if _reads(v, arg)]
        if len(reading) == 1 and (isinstance(op, arith.AddfOp) or reading[0] is op.lhs):
            return _masked_scale(reading[0], arg, pre)
    if isinstance(op, arith.SelectOp) and not _reads(op.cond, arg):
        if _hides(op.rhs, pre) and _reads(op.lhs, arg):
            return _masked_scale(op.lhs, arg, pre)
        if _hides(op.lhs, pre) and _reads(op.rhs, arg):
            return _masked_scale(op.rhs, arg, pre)
    raise NoSdpaPath("the pre-softmax map is not a scale plus a bias or mask")


def _square_scores(pattern: AttentionPattern) -> bool:
    """Whether the scores have as many queries as keys (their last two dims, `sdpa_layout`)."""
    shape = shape_of(pattern.scores.result.type)
    return shape[-2] == shape[-1]


@dataclass(frozen=True)
class PreSoftmax:
    """What the pre-softmax map does, in SDPA's terms: scores times `scale`, plus (`masked`) the
    map's own value at zero scores as an additive mask (a bias, -inf where a mask hides a key)."""

    scale: float
    masked: bool


def pre_softmax(pattern: AttentionPattern) -> PreSoftmax:
    """The pre-softmax map as SDPA's scale and mask (NoSdpaPath where it is neither): a plain
    scale, the causal select of a scale (`is_causal`), or a scale with a bias or mask tensor."""
    pre = pattern.pre
    if pre is None:
        return PreSoftmax(1.0, False)
    scores = [v for v in pre.inputs if _is_scores(v)]
    others = [v for v in pre.inputs if v not in scores]
    arg = pre.body.block.args[list(pre.inputs).index(scores[0])]
    causal_inputs = (ein.IotaOp, ein.ConstantOp)  # the positions compared, the -inf filled in
    # (SDPA's `is_causal` where queries and keys are as many; else the mask is SDPA's `attn_mask`)
    if pattern.causal and _square_scores(pattern) and all(isinstance(v.owner, causal_inputs) for v in others):
        # select(key <= query, x, -inf): x
        scale = _scale_of(causal_select(pre), arg)
        if scale is None:
            raise NoSdpaPath("the pre-softmax map is not a scale")
        return PreSoftmax(scale, False)
    if all(isinstance(v.owner, ein.ConstantOp) for v in others):
        scale = _scale_of(yielded_value(pre), arg)
        if scale is None:
            raise NoSdpaPath("the pre-softmax map is not a scale")
        return PreSoftmax(scale, False)
    return PreSoftmax(_masked_scale(yielded_value(pre), arg, pre), True)


def _source(value: SSAValue, upcast) -> SSAValue:
    """An operand as the library reads it: a 16-bit tensor's widening (SDPA's math path) dropped."""
    return upcast.inputs[0] if upcast is not None else value


@dataclass(frozen=True)
class SdpaLayout:
    """How the pattern's tensors map onto SDPA's [outer, heads, length, dim] (module docstring): the
    dims of q, k and v permuted to (batch.., q heads.., position, dim), and SDPA's result, laid out
    (batch.., q heads.., query, value dim), permuted to the output's order."""

    q_perm: tuple[int, ...]
    k_perm: tuple[int, ...]
    v_perm: tuple[int, ...]
    out_perm: tuple[int, ...]
    scores_perm: tuple[int, ...]  # the scores' dims to (batch.., q heads.., query, key): a mask's
    n_batch: int  # letters shared by q, k and v; the last is the key heads
    n_heads: int  # letters of q alone besides its position (the query heads sharing a key head)


def sdpa_layout(pattern: AttentionPattern) -> SdpaLayout:
    """The pattern's letters sorted into SDPA's roles (NoSdpaPath where they do not fit): the
    contracted letter d, the query position q (the scores' second-to-last), the key position k (their
    last), batch letters in q, k and the scores, q's own head letters; the output's letters matched
    to the scores' by position."""
    s_lhs, s_rhs, s_out = ein.parse_spec(pattern.scores.spec.data)
    o_lhs, o_rhs, o_out = ein.parse_spec(pattern.output.spec.data)
    specs = f"{pattern.scores.spec.data} / {pattern.output.spec.data}"
    contracted = [c for c in s_lhs if c in s_rhs and c not in s_out]
    if len(s_out) < 2 or len(contracted) != 1 or len(o_lhs) != len(s_out):
        raise NoSdpaPath(f"layouts {specs} are not SDPA's")
    (d,), q, k = contracted, s_out[-2], s_out[-1]
    batch = [c for c in s_out if c in s_lhs and c in s_rhs]
    heads = [c for c in s_out if c in s_lhs and c not in s_rhs and c != q]
    rename = dict(zip(s_out, o_lhs))  # a scores letter -> the output contraction's letter for it
    values = [c for c in o_rhs if c not in o_lhs]
    if (
        q not in s_lhs or q in s_rhs or k not in s_rhs or k in s_lhs
        or sorted(s_lhs) != sorted([*batch, *heads, q, d]) or sorted(s_rhs) != sorted([*batch, k, d])
        or len(values) != 1 or sorted(o_rhs) != sorted([*(rename[c] for c in batch), rename[k], *values])
        or rename[k] in o_out
    ):  # fmt: skip
        raise NoSdpaPath(f"layouts {specs} are not SDPA's")
    sdpa_out = [rename[c] for c in (*batch, *heads, q)] + values
    if sorted(o_out) != sorted(sdpa_out):
        raise NoSdpaPath(f"layouts {specs} are not SDPA's")
    return SdpaLayout(
        q_perm=tuple(s_lhs.index(c) for c in (*batch, *heads, q, d)),
        k_perm=tuple(s_rhs.index(c) for c in (*batch, k, d)),
        v_perm=tuple(o_rhs.index(c) for c in (*(rename[c] for c in batch), rename[k], *values)),
        out_perm=tuple(sdpa_out.index(c) for c in o_out),
        scores_perm=tuple(s_out.index(c) for c in (*batch, *heads, q, k)),
        n_batch=len(batch), n_heads=len(heads),
    )  # fmt: skip


def _additive_mask(pattern: AttentionPattern, plan: Plan) -> Callable:
    """`fn(env, device)`: the pre-softmax map's value at zero scores (`pre_softmax`), from the
    plan's tensors; broadcast (a view) to the map's shape. Zero where a key is seen unbiased, the
    bias where one is added, -inf where a mask hides the key."""
    pre = pattern.pre
    step = planned_op(pre)
    scores_at = [i for i, x in enumerate(pre.inputs) if _is_scores(x)]
    slots = [None if i in scores_at else plan.slot(x) for i, x in enumerate(pre.inputs)]
    zero_dtype = to_torch_dtype(pre.inputs[scores_at[0]].type.get_element_type())
    rank = len(shape_of(pre.result.type))
    zeros: dict[torch.device, torch.Tensor] = {}

    def mask(env: list, device: torch.device) -> torch.Tensor:
        zero = zeros.get(device)
        if zero is None:
            zero = torch.zeros((1,) * rank, dtype=zero_dtype, device=device)
            if not (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
                zeros[device] = zero
        return step(device, *[zero if at is None else env[at] for at in slots])

    return mask


def sdpa_path(kernel: object) -> Callable[..., tuple[torch.Tensor, ...]]:
    """`fn(*inputs) -> (output,)` for an attention group's kernel (a `CompiledKernel`), as
    `group_selection.library_path`'s; raises NoSdpaPath where the group is not one SDPA call."""
    return _attention_path(kernel, None)


def split_keys_path(kernel: object, device: torch.device) -> Callable[..., tuple[torch.Tensor, ...]]:
    """As `sdpa_path`, the attention run by the flash-decoding kernel instead
    (`backends/triton/decode_attention.py`): each (batch, head)'s keys split across programs, their
    partial softmaxes combined by the last to finish. Built only where the flash kernel's grid would
    leave most of the GPU idle (module docstring); raises NoSdpaPath elsewhere."""
    return _attention_path(kernel, device)


def _split_keys_fits(
    pattern: AttentionPattern, layout: SdpaLayout, device: torch.device, masked: bool
) -> None:
    """NoSdpaPath unless the split-keys kernel takes this attention and it pays: no causal mask (the
    kernel has none), query rows a program holds, keys enough to split, and a flash grid (a program per
    64 rows of a (batch, head)) that fills less than the GPU's SMs."""
    from ..backends.triton import decode_attention as kernels

    if pattern.causal:
        raise NoSdpaPath("split keys: a causal mask")
    sizes = [shape_of(pattern.scores.result.type)[i] for i in layout.scores_perm]
    rows, keys = sizes[-2], sizes[-1]
    heads = math.prod(sizes[: layout.n_batch])  # batch and key heads: one (batch, head) each
    group = math.prod(sizes[layout.n_batch : -2])  # query heads sharing a key head: rows of its program
    if group > 1 and masked:
        raise NoSdpaPath("split keys: grouped query heads with a mask")
    if rows * group > kernels.MAX_PROGRAM_ROWS:
        raise NoSdpaPath(f"split keys: {rows * group} query rows a head (at most {kernels.MAX_PROGRAM_ROWS})")
    if keys < SPLIT_KEYS_MIN_KEYS:
        raise NoSdpaPath(f"split keys: {keys} keys (fewer than {SPLIT_KEYS_MIN_KEYS})")
    sms = kernels.sm_count(device)
    programs = heads * group * math.ceil(rows / FLASH_ROWS)
    if programs >= sms:
        raise NoSdpaPath(f"split keys: the flash grid's {programs} programs fill the {sms} SMs")


def sdpa_reads_grouped_heads(device: torch.device, dtype: torch.dtype, masked: bool, head_dim: int) -> bool:
    """Whether SDPA with `enable_gqa` runs a fused kernel on fewer key heads than query heads (else the
    key and value heads are repeated before the call: FLASH_GQA_DTYPES). A CPU's flash kernel takes
    them in every dtype and with a mask."""
    if device.type != "cuda":
        return True
    return dtype in FLASH_GQA_DTYPES and not masked and head_dim <= FLASH_MAX_HEAD_DIM


def _attention_path(
    kernel: object, split_keys: torch.device | None
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """SDPA's call (`split_keys` None) or the split-keys kernel's (on that device)."""
    from ..backends.triton.decode_attention import DecodeKernels
    from .group_selection import _library_order, library_contraction

    lowered = kernel.lowered
    pattern = attention_pattern(list(lowered.group.ops))
    outputs = list(lowered.outputs)
    if len(outputs) != 1:
        raise NoSdpaPath("the group has more than one output")
    pre = pre_softmax(pattern)
    scale = pre.scale
    layout = sdpa_layout(pattern)
    if split_keys is not None:
        _split_keys_fits(pattern, layout, split_keys, pre.masked)
    q_up, k_up = pattern.upcasts
    q, k = _source(pattern.scores.lhs, q_up), _source(pattern.scores.rhs, k_up)
    v = _source(pattern.output.rhs, pattern.v_upcast)
    dtypes = {to_torch_dtype(x.type.get_element_type()) for x in (q, k, v)}
    if len(dtypes) != 1 or not dtypes <= set(LIBRARY_DTYPES):
        raise NoSdpaPath(f"operand dtypes {sorted(map(str, dtypes))}")
    inputs = list(lowered.inputs)
    # the mask's tensors, computed beside q, k and v
    extras = [x for x in pattern.pre.inputs if not _is_scores(x)] if pre.masked else []
    plan = Plan(inputs, _library_order(inputs, [q, k, v, *extras], set()), library_contraction)
    q_at, k_at, v_at = plan.slot(q), plan.slot(k), plan.slot(v)
    mask = _additive_mask(pattern, plan) if pre.masked else None
    out_dtype = to_torch_dtype(outputs[0].type.get_element_type())
    causal, gqa = pattern.causal and not pre.masked, layout.n_heads > 0
    # (unmasked or causal, every query sees a key: the causal mask keeps the diagonal)
    zero_rows = pattern.safe is not None and mask is not None
    n_outer = max(layout.n_batch - 1, 0)
    launches = None
    if split_keys is not None:  # (rows with no visible key: zeros, as a safe softmax gives)
        launches, zero_rows = DecodeKernels(), False

    def as_heads(x: torch.Tensor) -> torch.Tensor:
        """[B.., R.., L, E] (permuted to that order) -> [outer, heads, L, E]: the batch letters but
        the last are the outer dim, the last (the key heads) and q's own head letters the heads."""
        lead = x.shape[:-2]
        outer = math.prod(lead[:n_outer])
        return x.reshape(outer, math.prod(lead) // outer, *x.shape[-2:])

    # decided once: each per-call view that would change nothing is skipped (the host time of an
    # attention call is a dozen such ops where a small program is host-bound)
    def heads_already(perm: tuple[int, ...]) -> bool:
        return len(perm) == 4 and n_outer == 1  # [outer, heads, L, E] as it stands, once permuted

    def viewer(perm: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
        if perm == tuple(range(len(perm))):
            return (lambda x: x) if heads_already(perm) else as_heads
        return (lambda x: x.permute(perm)) if heads_already(perm) else (lambda x: as_heads(x.permute(perm)))

    q_view, k_view, v_view = (viewer(p) for p in (layout.q_perm, layout.k_perm, layout.v_perm))
    q_reshaped = not heads_already(layout.q_perm)
    out_permuted = layout.out_perm != tuple(range(len(layout.out_perm)))
    out_cast = next(iter(dtypes)) != out_dtype

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = plan.run(tensors, tensors[0].device)
        q = env[q_at]
        qh, kh, vh = q_view(q), k_view(env[k_at]), v_view(env[v_at])
        # SDPA's fused kernels read each row of q, k and v contiguously: a k stored transposed (a
        # `q @ k.transpose(-2, -1)` traced as a copy of k^T) sent minGPT's to the math fallback
        # (H200, bf16, 16 x 12 heads x 1024: 4.39 ms against 0.22 for the flash kernel)
        if qh.stride(-1) != 1:
            qh = qh.contiguous()
        if kh.stride(-1) != 1:
            kh = kh.contiguous()
        if vh.stride(-1) != 1:
            vh = vh.contiguous()
        extra = {}
        if gqa and kh.shape[1] != qh.shape[1]:
            if split_keys is not None or sdpa_reads_grouped_heads(
                qh.device, qh.dtype, mask is not None, qh.shape[-1]
            ):
                extra["enable_gqa"] = True
            else:
                # each key head `group` times in a row: query head h reads key head h // group
                group = qh.shape[1] // kh.shape[1]
                kh, vh = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
        if mask is not None:  # [outer, heads, L, S], broadcast where the map's value is
            bias = mask(env, tensors[0].device).to(qh.dtype)
            extra["attn_mask"] = as_heads(bias.reshape(scores_shape).permute(layout.scores_perm))
        if split_keys is not None:
            out = _split_keys(qh, kh, vh, extra.get("attn_mask"), scale, launches)
        else:
            out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, scale=scale, **extra)
        if zero_rows:  # a safe softmax: a query the mask leaves no key reads zeros (fused kernels need not)
            out = out.masked_fill(~(extra["attn_mask"] > float("-inf")).any(-1, keepdim=True), 0)
        if q_reshaped:  # q's permuted shape (batch.., heads.., L, value dim), then the output's order
            out = out.reshape(*(q.shape[i] for i in layout.q_perm[:-1]), out.shape[-1])
        if out_permuted:
            out = out.permute(layout.out_perm)
        if out_cast:
            out = out.to(out_dtype)
        return (out.contiguous(),)

    scores_shape = tuple(shape_of(pattern.scores.result.type))
    what = "causal, " if causal else ("masked, " if mask is not None else "")
    how = "split-keys flash-decoding kernel" if split_keys is not None else "SDPA"
    run.title = f"{how} ({what}scale {scale:.4g}{', grouped queries' if gqa else ''})"
    return run


def _split_keys(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float | None,
    launches: object,
) -> torch.Tensor:  # fmt: skip
    """SDPA's result from the split-keys kernel: [outer, heads, L, E] operands (their last dim
    contiguous, as `run` leaves them), query heads that share a key head (grouped-query attention, no
    mask) folded into the rows of its program."""
    from ..backends.triton.decode_attention import decode_attention

    outer, heads, rows, dim = q.shape
    group = heads // k.shape[1]
    if group == 1:
        return decode_attention(q, k, v, mask, scale, launches)
    folded = q.reshape(outer, k.shape[1], group * rows, dim)
    out = decode_attention(folded, k, v, None, scale, launches)
    return out.reshape(outer, heads, rows, out.shape[-1])
