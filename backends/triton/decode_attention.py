"""Decode attention over a KV cache of any length: flash-decoding with the length a runtime argument.

A decode step's attention has a few query rows (one token; with grouped KV heads, the `group` query
heads that share one, `compiler.grouped_queries`) against a cache whose length changes every step.
With `generate`'s dynamic cache that length is a symbolic size: the attention ran as PyTorch's SDPA,
~89 µs of host time and 16 µs of GPU time a call on the H200 at ~540 keys (cuDNN's backend;
`benchmarks/NOTES.md`). Here the length, the strides and the mask's layout are kernel arguments, so
one binary serves every step. One launch, grid (batch x heads, chunks): each program runs the online
softmax of its rows over one chunk of the keys; with several chunks it writes its (max, sum,
unnormalized output) in float32, and the last program of a (batch, head) to arrive (an atomic counter,
reset by that program) combines them and writes the output. The grid is fixed per call site
(`grid_chunks`: about `PROGRAMS_WANTED` programs per SM); the kernel sizes the chunks from the length
(`active_chunks`), programs past the keys' end doing nothing. One query row a head (a model without
grouped KV heads) is not padded to the 16 rows `tl.dot` takes: its products and sums run on the CUDA
cores in f32, and the last program combines the chunks' partials in one vectorized step. The mask is
SDPA's: none, boolean (True attends) or additive, any shape that broadcasts to [batch, heads, rows,
keys]. A row no key may attend gives zeros (PyTorch's backends differ there: NaN in the math path).

A call site keeps a plan per operand layout (`_Plan`: grid, constexprs, workspace, compiled launches),
so a call checks what varies, allocates its output and launches the binary directly
(`launcher._raw_launch`), keyed by what Triton specializes on that may vary (pointer alignment, the keys'
row strides); the lengths are not specialized.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from .launcher import _direct_launch_possible, _raw_launch, import_kernels

SOURCE = """\
import triton
import triton.language as tl


@triton.jit
def _load_values(V_head, keys, inside, vdims, sv2, DV: tl.constexpr):
    return tl.load(V_head + keys[:, None] * sv2 + vdims[None, :],
                   mask=inside[:, None] & (vdims[None, :] < DV), other=0.0)


@triton.jit(do_not_specialize=["L", "sk0", "sk1", "sv0", "sv1", "sm0", "sm1", "sm2"])
def decode_attention(
    Q, K, V, M, O, WORK, COUNT, L, scale,
    sq0, sq1, sq2, sk0, sk1, sk2, sv0, sv1, sv2, sm0, sm1, sm2, sm3, so0, so1, so2,
    HEADS: tl.constexpr, ROWS: tl.constexpr, ROWS_P: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
    D_P: tl.constexpr, DV_P: tl.constexpr, BLOCK_L: tl.constexpr, MIN_CHUNK: tl.constexpr,
    MASK: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, CHUNKS_P: tl.constexpr,
):
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    chunks = tl.num_programs(1)
    # the keys split into chunks of whole blocks, none under MIN_CHUNK: `active` of the grid's work
    # (tl.cdiv's expression written out: in Triton's interpreter a call of a `@jit` helper re-patches
    # triton.language, 3 ms a program instance; 3840 of them were a third of a tiny generation test)
    chunk_len = tl.maximum(((L + chunks - 1) // chunks + BLOCK_L - 1) // BLOCK_L * BLOCK_L, MIN_CHUNK)
    active = (L + chunk_len - 1) // chunk_len
    if chunk < active:
        b = bh // HEADS
        h = bh % HEADS
        rows = tl.arange(0, ROWS_P)
        dims = tl.arange(0, D_P)
        vdims = tl.arange(0, DV_P)
        live = rows < ROWS
        q = tl.load(Q + b * sq0 + h * sq1 + rows[:, None] * sq2 + dims[None, :],
                    mask=live[:, None] & (dims[None, :] < D), other=0.0)
        if UPCAST:  # the interpreter multiplies 16-bit floats' bit patterns as integers
            q = q.to(tl.float32)
        m_i = tl.full([ROWS_P], float("-inf"), tl.float32)
        l_i = tl.zeros([ROWS_P], tl.float32)
        acc = tl.zeros([ROWS_P, DV_P], tl.float32)
        start = chunk * chunk_len
        end = tl.minimum(start + chunk_len, L)
        for s in range(start, end, BLOCK_L):
            keys = s + tl.arange(0, BLOCK_L)
            inside = keys < end
            k = tl.load(K + b * sk0 + h * sk1 + keys[:, None] * sk2 + dims[None, :],
                        mask=inside[:, None] & (dims[None, :] < D), other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
            if ROWS_P == 1:  # one query row: products and sums on the CUDA cores, no dot padded to 16 rows
                # no dot whose operands the pipeliner stages: the values' load goes out now
                v = _load_values(V + b * sv0 + h * sv1, keys, inside, vdims, sv2, DV)
                scores = tl.sum(q[:, None, :].to(tl.float32) * k[None, :, :].to(tl.float32), axis=2) * scale
            else:
                scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            if MASK != 0:
                m_ptrs = M + b * sm0 + h * sm1 + rows[:, None] * sm2 + keys[None, :] * sm3
                bias = tl.load(m_ptrs, mask=live[:, None] & inside[None, :], other=0)
                if MASK == 1:
                    scores = tl.where(bias != 0, scores, float("-inf"))
                else:
                    scores = scores + bias.to(tl.float32)
            scores = tl.where(inside[None, :], scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(scores - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            if ROWS_P != 1:  # after the scores, as the pipeliner expects the dot's operand
                v = _load_values(V + b * sv0 + h * sv1, keys, inside, vdims, sv2, DV)
            if UPCAST:
                v = v.to(tl.float32)
            if ROWS_P == 1:
                acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :].to(tl.float32), axis=1)
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        o_ptrs = O + b * so0 + h * so1 + rows[:, None] * so2 + vdims[None, :]
        o_mask = live[:, None] & (vdims[None, :] < DV)
        if active == 1:
            out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
            tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=o_mask)
        else:
            # partials: (max, sum) a row, then the rows' unnormalized outputs, per (bh, chunk)
            base = WORK + (bh * chunks) * ROWS_P * (DV_P + 2)
            slot = base + chunk * ROWS_P * (DV_P + 2)
            tl.store(slot + rows, m_i, mask=live)
            tl.store(slot + ROWS_P + rows, l_i, mask=live)
            tl.store(slot + 2 * ROWS_P + rows[:, None] * DV_P + vdims[None, :], acc, mask=o_mask)
            # the last of the bh's programs to finish combines (its counter back to 0 for the next call)
            arrived = tl.atomic_add(COUNT + bh, 1, sem="acq_rel")
            if ROWS_P == 1:
                if arrived == active - 1:
                    # one row: every chunk's partials loaded at once, weighted by exp(m_c - m), summed
                    cs = tl.arange(0, CHUNKS_P)
                    used = cs < active
                    part = base + cs * (DV_P + 2)
                    m_c = tl.load(part, mask=used, other=float("-inf"), cache_modifier=".cg")
                    l_c = tl.load(part + 1, mask=used, other=0.0, cache_modifier=".cg")
                    parts = part[:, None] + 2 + vdims[None, :]
                    parts_mask = used[:, None] & (vdims[None, :] < DV)
                    acc_c = tl.load(parts, mask=parts_mask, other=0.0, cache_modifier=".cg")
                    m = tl.max(m_c, 0)
                    weight = tl.exp(m_c - tl.where(m == float("-inf"), 0.0, m))
                    l = tl.sum(l_c * weight, 0)
                    out = tl.sum(acc_c * weight[:, None], 0) / tl.where(l == 0.0, 1.0, l)
                    tl.store(o_ptrs, out[None, :].to(O.dtype.element_ty), mask=o_mask)
                    tl.atomic_xchg(COUNT + bh, 0)
            elif arrived == active - 1:
                m = tl.full([ROWS_P], float("-inf"), tl.float32)
                l = tl.zeros([ROWS_P], tl.float32)
                acc = tl.zeros([ROWS_P, DV_P], tl.float32)
                for c in range(0, active):
                    part = base + c * ROWS_P * (DV_P + 2)
                    # padded rows and dims are not read
                    m_c = tl.load(part + rows, mask=live, other=float("-inf"), cache_modifier=".cg")
                    l_c = tl.load(part + ROWS_P + rows, mask=live, other=0.0, cache_modifier=".cg")
                    acc_ptrs = part + 2 * ROWS_P + rows[:, None] * DV_P + vdims[None, :]
                    acc_c = tl.load(acc_ptrs, mask=o_mask, other=0.0, cache_modifier=".cg")
                    m_new = tl.maximum(m, m_c)
                    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                    alpha = tl.exp(m - m_safe)
                    beta = tl.exp(m_c - m_safe)
                    l = l * alpha + l_c * beta
                    acc = acc * alpha[:, None] + acc_c * beta[:, None]
                    m = m_new
                out = acc / tl.where(l == 0.0, 1.0, l)[:, None]
                tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=o_mask)
                tl.atomic_xchg(COUNT + bh, 0)
"""

MAX_ROWS = 16  # query rows of a decode step sent here (`compiler/decode_attention.py`)
# query rows a program holds (padded to 16: tl.dot's smallest M; one row is not padded): up to 64 for an
# attention of few (batch, head)s over many keys, whose flash kernel would run a few long programs
# (`compiler/library_attention.split_keys_path`)
MAX_PROGRAM_ROWS = 64
MAX_HEAD_DIM = 256
# keys a loop step reads. H200 sweep (CUDA-graph replays, .scratch/decsweep.py; benchmarks/NOTES.md),
# bf16 at 4097 keys: 128 against 64, µs, B=1 H=4 4 rows 16.0 / 17.3, B=8 51.1 / 57.7, 1 row x 32 heads
# 51.0 / 57.3; fp32 (8 warps) 1 row x 32 heads 164.8 / 279.3, B=8 H=4 4 rows 165.9 / 236.3
BLOCK_L = 128
# one query row (no grouped KV heads): [keys, head dim] products on the CUDA cores, in small steps of few
# warps, many programs a SM. H200, bf16, 32 heads of 128 at 4097 keys (SDPA 23.2 µs): the padded dot at
# 64 keys 57.4, these products at 32 keys and 2 warps 36.4; fp32 at 32 keys and 4 warps 50.9 (SDPA 407.9)
ONE_ROW_BLOCK_L = 32
MIN_CHUNK = 128  # keys a program reads at least (fewer: combining costs more than splitting saves)
PROGRAMS_WANTED = 4  # programs per SM the grid aims for
MAX_CHUNKS = 64
NUM_STAGES = 2
DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class Unsupported(ValueError):
    """The attention's operands are not ones the kernel takes (the caller runs SDPA)."""


@functools.cache
def kernel() -> object:
    """The `decode_attention` JIT function (imported once; interpreted without CUDA)."""
    return import_kernels(SOURCE, "decode_attention").decode_attention


def grid_chunks(programs: int, sms: int) -> int:
    """Programs a (batch, head) gets for its keys: enough for `PROGRAMS_WANTED` a SM over all of
    them, at most `MAX_CHUNKS` (the kernel leaves those past the keys' end idle)."""
    return max(1, min(MAX_CHUNKS, (PROGRAMS_WANTED * sms) // max(programs, 1)))


def active_chunks(length: int, chunks: int, block: int = BLOCK_L) -> tuple[int, int]:
    """(keys a chunk, chunks that have keys) of `length` keys over `chunks` programs, as the kernel
    computes them: whole blocks of `block` keys, none under `MIN_CHUNK` keys."""
    per = max(_cdiv(_cdiv(length, chunks), block) * block, MIN_CHUNK)
    return per, _cdiv(length, per)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


HOST_SMS = 132  # the SMs a grid is sized for off a GPU (Triton's interpreter: tests)


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """The SMs of `device`, or HOST_SMS off a GPU."""
    return _sm_count(device.index or 0) if device.type == "cuda" else HOST_SMS


class _Plan:
    """What every call with one (query, operand layout, mask layout) shares: the grid, the constexprs,
    the partials' workspace and arrival counters (the kernel leaves them at zero), and each
    specialization's compiled launch."""

    __slots__ = ("grid", "constexprs", "warps", "out_shape", "scale", "work", "count", "launches")

    def __init__(self, grid, constexprs, warps, out_shape, scale, work, count) -> None:
        self.grid, self.constexprs, self.warps, self.out_shape = grid, constexprs, warps, out_shape
        self.scale, self.work, self.count = scale, work, count
        self.launches: dict[tuple, tuple] = {}  # specialization -> (C launch or None, binary)


class DecodeKernels:
    """One call site's plans (`_Plan`), each specialization's binary called directly from its second
    launch on (`launcher._raw_launch`; `binary.run` where that is not possible)."""

    def __init__(self) -> None:
        self.plans: dict[tuple, _Plan] = {}

    @property
    def count(self) -> torch.Tensor | None:
        """The arrival counters of the latest plan (zero between calls)."""
        return next(reversed(self.plans.values())).count if self.plans else None

    def launch(self, plan: _Plan, args: tuple, key: tuple) -> None:
        entry = plan.launches.get(key)
        if entry is not None:
            raw, binary = entry
            stream = torch._C._cuda_getCurrentRawStream(args[0].device.index)
            if raw is not None:
                raw(stream, args)
            else:
                g0, g1 = plan.grid
                binary.run(g0, g1, 1, stream, binary.function, binary.packed_metadata, None, None, None,
                           *args, *plan.constexprs.values())  # fmt: skip
            return
        binary = kernel()[plan.grid](*args, **plan.constexprs, num_warps=plan.warps, num_stages=NUM_STAGES)
        if _direct_launch_possible(binary):
            raw = _raw_launch(binary, (*plan.grid, 1), tuple(plan.constexprs.values()))
            plan.launches[key] = (raw, binary)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
    scale: float | None = None, launches: DecodeKernels | None = None,
) -> torch.Tensor:  # fmt: skip
    """SDPA (no dropout, not causal) of `q` [B, H, rows, D] over `k` [B, H, L, D] and `v` [B, H, L, Dv]
    with `mask` (SDPA's attn_mask); raises `Unsupported` for operands the kernel does not take."""
    launches = launches or _DEFAULT
    k_shape, v_shape = k.shape, v.shape
    mask_layout = None if mask is None else (mask.shape[:-1], mask.dtype, mask.device)
    plan_key = (q.shape, q.stride(), q.dtype, q.device, q.requires_grad or k.requires_grad or v.requires_grad,
                k_shape[:2], k_shape[3:], v_shape[:2], v_shape[3:], k.dtype, v.dtype, k.device, v.device,
                mask_layout, scale)  # fmt: skip
    plan = launches.plans.get(plan_key)
    if plan is None:
        plan = launches.plans[plan_key] = _plan(q, k, v, mask, scale)
    length = k_shape[2]  # the plan's key pins every dim but the keys' and the operands' ranks (4)
    if v_shape[2] != length or k.stride(3) != 1 or v.stride(3) != 1:
        raise Unsupported(f"keys {tuple(k_shape)}, values {tuple(v_shape)}: lengths differ, or a strided dim")
    out = torch.empty(plan.out_shape, dtype=q.dtype, device=q.device)
    if length == 0:
        return out.zero_()
    if mask is None:
        mask, mask_strides = q, (0, 0, 0, 0)
    else:
        mask_strides = _broadcast_strides(mask, length)
    qs, ks, vs, os_ = q.stride(), k.stride(), v.stride(), out.stride()
    # offsets are 32-bit in the kernel (and the binary kept for direct launches took 32-bit integers)
    if max(ks[0] * k_shape[0], vs[0] * v_shape[0], mask_strides[0] * k_shape[0] + length) >= _INT32:
        raise Unsupported("operands past 2**31 elements")
    args = (
        q, k, v, mask, out, plan.work, plan.count, length, plan.scale,
        qs[0], qs[1], qs[2], ks[0], ks[1], ks[2], vs[0], vs[1], vs[2], *mask_strides, os_[0], os_[1], os_[2],
    )  # fmt: skip
    # what Triton specializes on that may vary between calls: the pointers' 16-byte alignment, the
    # keys', values' and mask's row strides (the rest is the plan's)
    aligned = (q.data_ptr() | k.data_ptr() | v.data_ptr() | mask.data_ptr() | out.data_ptr()) % 16 == 0
    launches.launch(plan, args, (aligned, ks[2], vs[2], mask_strides[3] == 1, mask_strides[3] % 16 == 0))
    return out


def _plan(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> _Plan:
    """The plan of calls like this one, or `Unsupported` for operands the kernel does not take."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise Unsupported("operands of rank other than 4")
    batch, heads, rows, dim = q.shape
    length, dim_v = k.shape[2], v.shape[3]
    if k.shape != (batch, heads, length, dim) or v.shape[:3] != (batch, heads, length):
        raise Unsupported(f"query {tuple(q.shape)}, keys {tuple(k.shape)}, values {tuple(v.shape)}")
    too_large = rows > MAX_PROGRAM_ROWS or max(dim, dim_v) > MAX_HEAD_DIM
    if too_large or not (q.dtype == k.dtype == v.dtype in DTYPES):
        raise Unsupported(f"{rows} query rows, head dims {dim}/{dim_v}, dtypes {q.dtype}/{k.dtype}/{v.dtype}")
    if q.stride(3) != 1:
        raise Unsupported("a query head dim that is not contiguous")
    if q.device != k.device or q.device != v.device or q.requires_grad or k.requires_grad or v.requires_grad:
        raise Unsupported("operands on several devices, or requiring gradients")
    switch = 0
    if mask is not None:
        if mask.dim() > 4 or mask.device != q.device:
            raise Unsupported(f"a mask of rank {mask.dim()} on {mask.device}")
        if mask.dtype != torch.bool and mask.dtype not in DTYPES:
            raise Unsupported(f"a mask of dtype {mask.dtype}")
        try:
            mask.expand((batch, heads, rows, length))
        except RuntimeError:
            raise Unsupported(f"a mask of shape {tuple(mask.shape)} for attention {tuple(q.shape)}") from None
        switch = 1 if mask.dtype == torch.bool else 2
    rows_p = 1 if rows == 1 else max(16, _pow2(rows))
    d_p, dv_p = max(16, _pow2(dim)), max(16, _pow2(dim_v))
    programs = batch * heads
    chunks = grid_chunks(programs, sm_count(q.device))
    work = torch.empty(max(programs * chunks * rows_p * (dv_p + 2), 1), dtype=torch.float32, device=q.device)
    count = torch.zeros(max(programs, 1), dtype=torch.int32, device=q.device)
    # fp32 keys and values through TF32 only where PyTorch's matmul precision allows it
    tf32 = q.dtype != torch.float32 or (q.is_cuda and torch.backends.cuda.matmul.allow_tf32)
    constexprs = dict(HEADS=heads, ROWS=rows, ROWS_P=rows_p, D=dim, DV=dim_v, D_P=d_p, DV_P=dv_p,
                      BLOCK_L=ONE_ROW_BLOCK_L if rows == 1 else BLOCK_L, MIN_CHUNK=MIN_CHUNK, MASK=switch,
                      PRECISION="tf32" if tf32 else "ieee",
                      UPCAST=not q.is_cuda, CHUNKS_P=_pow2(chunks))  # fmt: skip
    sc = 1.0 / math.sqrt(dim) if scale is None else float(scale)
    warps = launch_warps(q.dtype, rows)
    return _Plan((programs, chunks), constexprs, warps, (batch, heads, rows, dim_v), sc, work, count)


def launch_warps(dtype: torch.dtype, rows: int) -> int:
    """Warps a program (the sweeps above): twice as many for float32, whose tiles take twice the
    registers, or for more than 16 rows; a one-row step's small tiles take half as many."""
    warps = 8 if dtype == torch.float32 or rows > 16 else 4
    return warps // 2 if rows == 1 else warps


def _broadcast_strides(mask: torch.Tensor, length: int) -> tuple[int, int, int, int]:
    """The mask's strides broadcast to [batch, heads, rows, keys] (its leading dims were checked by
    the plan; its last is the keys' or one)."""
    shape, strides = mask.shape, mask.stride()
    n = len(shape)
    if n and shape[-1] != length and shape[-1] != 1:
        raise Unsupported(f"a mask over {shape[-1]} keys for {length}")
    out = [0, 0, 0, 0]
    for i in range(n):
        if shape[i] != 1:
            out[4 - n + i] = strides[i]
    return out[0], out[1], out[2], out[3]


_INT32 = 2**31


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


_DEFAULT = DecodeKernels()
