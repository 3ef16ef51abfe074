"""Per-group selection: each fused group's generated kernel against the library paths, measured.

The library path of a group is the group's own `ein` ops run as PyTorch ops:
contractions as `torch.matmul` (or `torch.einsum`) in the operands' dtype
(cuBLAS, with its own choice of GEMV, split-K and tile shapes; an output row
that is not a multiple of 16 bytes is computed on a padded weight, as
Inductor's pad_mm does), maps and reductions as ATen elementwise and
reduction kernels, one per op, as eager PyTorch would run them. A GEMM group
with an epilogue has a third candidate, the split path: its contractions on
the library and the rest of the group (bias, activation, residual, or the
norm or softmax of the product) as one generated kernel, which is how
Inductor runs a GEMM it does not template. Where a library kernel is strong
(a decode-sized GEMV; SGEMM against an f32 kernel) the library or split path
can beat the fused kernel even after paying the product's memory round
trip; where fusion wins the kernel stays.

When a partition's program is written (its first call, on a GPU), each
distinct group (by kernel, configuration and operand layouts: a model's
identical layers are measured once) is timed every way on random operands
of its own shapes, with two figures per candidate (`queued_timing`): its
host time (enqueueing a call) and its GPU time (its kernels back to back,
queued behind a sleeping kernel so that no host gap is counted). Which
figure decides depends on the whole program, not on the group: a program
whose kernels take longer than its host needs to launch them is GPU-bound,
and a library call that costs 30 us of host time (SDPA through cuDNN) is
free there if its kernels are faster, while in a host-bound program (a
decode step, a short prompt) the same call costs its host time. So the
program is written twice: a first pass only surveys its launches (which
groups, how many launches each), then every surveyed group is measured and
the choices are made together (`GroupSelector.settle`): starting from every
group on its kernel, a group moves to another candidate where that lowers
the program's estimated time, max(host, GPU) plus a little of the smaller
(`program_cost`), and the second pass writes the program with the choices,
literally: a group on the library or split path is one call that runs its
ops, and its outputs land in fresh buffers in the layout the kernel's would
have had (row-major, or rows padded to 128 bytes where a wide row is
unaligned: the library matmul writes an unaligned product into such rows).
The program's GPU time counts the launches that are not measured too
(pointwise, row and reduction kernels, estimated from the bytes they move:
`estimated_gpu_ms`). The choice and the times go in the partition's report
(`group_selection`, with the program's estimate in `group_selection_program`)
and in the tuning database (`choices`, keyed by the kernel's task, the device,
the versions and the launch's configuration and operand layouts): a later
compile on the same device reads the choice back instead of measuring
(the report says `"from": "database"`; `TILEFUSE_TUNED=0` ignores it).
`TILEFUSE_SELECT=0` turns this off with the rest of selection.

Under `backend="auto"` (codegen.with_cuda_kernel), a pointwise, reduction or
row group with a CUDA C++ kernel beside its Triton one is measured the same
way, the two kernels against each other, and the program launches the faster.

Groups computed once from parameters (`runtime._parameter_derived`) are not
measured: their cost is paid once. A group whose library path cannot be
built (an op it reads that neither the group nor a view chain computes) keeps
its kernel and says why.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from xdsl.dialects import func
from xdsl.ir import BlockArgument, Operation, SSAValue

from ..autotune.database import device_name
from ..autotune.heuristics import default_config
from ..autotune.tasks import record_choice, recorded_choice
from ..backends.triton.emit import padded_row
from ..ir import einsum as ein
from ..ir.dtypes import shape_of, to_torch_dtype
from ..ir.module import parameter_args
from ..passes.fusion_groups import VIRTUAL_OPS
from .library_attention import SDPA, SPLIT_KEYS, NoSdpaPath, sdpa_path, split_keys_path
from .library_plan import LIBRARY_DTYPES, Plan
from .program import empty_output, empty_padded, is_packed, output_strides, stream_getter
from .selection import SELECT_ENV, outside_dispatch_modes, selection_enabled  # noqa: F401  (SELECT_ENV: one switch for both)

LIBRARY, KERNEL = "library", "kernel"
# a GEMM group's contractions on the library (cuBLAS) and the rest of the group (its epilogue) as
# one generated kernel: how Inductor runs a GEMM it does not template (see `split_path`)
SPLIT = "split"
CALLS_PER_SAMPLE, SAMPLES, WARMUP = 8, 5, 3
# kinds with a library alternative worth measuring: a GEMM (cuBLAS), and attention, whose library
# path is SDPA where the group is one SDPA call (library_attention: cuDNN's or FlashAttention's
# kernels), else the math path (score matrix through cuBLAS, softmax op by op: where an exact-f32
# flash kernel runs without tensor cores, SGEMM can win). Memory-bound kernels fused from several
# ops beat their one-kernel-per-op library path by construction.
LIBRARY_KINDS = ("gemm", "attention")
# the largest intermediate (bytes) a library path may materialize while measured: attention's score
# matrix at long sequences would need gigabytes
MAX_LIBRARY_BYTES = 1 << 30
# narrower unaligned products are not worth the weight's copy
PAD_MIN_N = 256
# a library path must be this much faster to replace a kernel: two medians within noise keep the kernel
MARGIN = 0.97


class NoLibraryPath(Exception):
    """The group's library path cannot be built; the message says why."""


def group_selection_enabled(device: torch.device) -> bool:
    """On wherever the rest of selection is (a GPU; `TILEFUSE_SELECT=0` turns both off)."""
    return selection_enabled(device)


def library_path(kernel: object) -> Callable[..., tuple[torch.Tensor, ...]]:
    """`fn(*inputs) -> outputs`: the group of `kernel` (a `CompiledKernel`) as PyTorch ops, taking
    the kernel's inputs (`lowered.inputs`, in order) and returning its outputs row-major, in the
    outputs' dtypes. Views, splats and iotas between the inputs and the group (which the kernel
    indexes through) are run as well. The ops are resolved once (`library_plan.Plan`)."""
    lowered = kernel.lowered
    inputs, outputs = list(lowered.inputs), list(lowered.outputs)
    plan = Plan(inputs, _library_order(inputs, outputs, set(lowered.group.ops)), library_contraction)
    slots = [plan.slot(v) for v in outputs]
    layouts = [kernel_layout(kernel, v) for v in outputs]

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = plan.run(tensors, tensors[0].device if tensors else torch.device("cpu"))
        return tuple(in_layout(env[i], layout) for i, layout in zip(slots, layouts))

    return run


@dataclass(frozen=True)
class Layout:
    """An output's shape, strides and dtype, and whether the strides are row-major (decided once,
    when a path is built: its calls only compare)."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: torch.dtype
    packed: bool

    def empty(self, device: torch.device) -> torch.Tensor:
        """An uninitialized tensor in this layout (padded rows' storage to the last row's end)."""
        if self.packed:
            return torch.empty(self.shape, dtype=self.dtype, device=device)
        return empty_padded(self.shape, self.strides, self.dtype, device)


def kernel_layout(kernel: object, value: SSAValue) -> Layout:
    """The layout the kernel's output `value` has in a program (`output_strides`: row-major, or rows
    padded to 128 bytes where a GEMM's or row kernel's wide row is unaligned). A library path returns
    its outputs in this layout too, so the program reads them alike."""
    shape, dtype = tuple(shape_of(value.type)), to_torch_dtype(value.type.get_element_type())
    strides = output_strides(kernel, shape, dtype)
    return Layout(shape, strides, dtype, is_packed(shape, strides))


def _packed_layout(value: SSAValue) -> Layout:
    shape, dtype = tuple(shape_of(value.type)), to_torch_dtype(value.type.get_element_type())
    return Layout(shape, torch.empty(shape, device="meta").stride(), dtype, True)


def in_layout(t: torch.Tensor, layout: Layout) -> torch.Tensor:
    """`t` (a library path's result) in `layout` (`kernel_layout`): as it is where it already has
    those strides (an unaligned product the library matmul wrote into padded rows), else copied."""
    t = t.to(layout.dtype)
    if layout.packed:
        return t.contiguous()
    if t.stride() == layout.strides and t.shape == layout.shape:
        return t
    out = layout.empty(t.device)
    out.copy_(t)
    return out


def library_contraction(op: ein.ContractOp) -> Callable[..., torch.Tensor] | None:
    """A contraction the library way, `step(device, a, b)`: in its operands' dtype (the reference
    interpreter widens to f32 for accuracy, which would make cuBLAS run SGEMM), a matmul-shaped
    one by `library_matmul`; None where the operands' dtypes are not the library's (the
    interpreter runs it)."""
    a_type, b_type = (to_torch_dtype(v.type.get_element_type()) for v in op.operands)
    if a_type != b_type or a_type not in LIBRARY_DTYPES:
        return None
    transposes = matmul_form(op.spec.data)
    if transposes is None:
        spec = op.spec.data
        return lambda device, a, b: torch.einsum(spec, a, b)
    ta, tb = transposes
    return lambda device, a, b: library_matmul(a, b, ta, tb)


def split_path(kernel: object, device: torch.device) -> Callable[..., tuple[torch.Tensor, ...]]:
    """`fn(*inputs) -> outputs` as `library_path`'s, for a GEMM group with an epilogue: its
    contractions as library matmuls (cuBLAS), then every other op of the group in one generated
    kernel (a chain of maps: pointwise; with the row statistics of a norm or softmax over the
    product: a row kernel) reading the products from memory. One memory round trip of the product
    more than the fused kernel; the library's GEMM instead of the generated one. Raises
    NoLibraryPath where the group has no epilogue (that is the library path) or the rest of the
    group has no kernel of its own (a row chunked for split-reduction)."""
    from ..backends.triton import TritonOptions
    from ..passes.fusion_groups import FusionGroup, RowSpace
    from ..passes.lower_to_tile import lower_group
    from .codegen import load_shared, shared_source, triton_function_name

    lowered = kernel.lowered
    group = lowered.group
    contracts = [op for op in group.ops if isinstance(op, ein.ContractOp)]
    rest = [op for op in group.ops if not isinstance(op, ein.ContractOp)]
    if group.kind != "gemm" or not contracts or not rest:
        raise NoLibraryPath("no epilogue to run apart from the GEMM")
    reductions = [op for op in rest if isinstance(op, ein.ReduceOp)]
    product_shape = tuple(shape_of(contracts[0].result.type))
    if reductions and RowSpace.of(reductions[0]).shape != product_shape:
        raise NoLibraryPath("its row epilogue reads the product in chunks (split-reduction)")
    epilogue = lower_group(FusionGroup(f"{group.name}_epilogue", "row" if reductions else "pointwise", rest),
                           f"{group.name}_epilogue")  # fmt: skip
    if epilogue.kernel is None:
        raise NoLibraryPath(f"its epilogue has no kernel of its own: {epilogue.error}")
    products = [c.results[0] for c in contracts]
    if any(v not in lowered.inputs and v not in products for v in epilogue.inputs):
        raise NoLibraryPath("its epilogue reads a value neither an input nor a product is")
    bias = _bias_epilogue(contracts, rest, lowered)
    if bias is not None and bias.whole:  # the epilogue is the bias alone: cuBLASLt adds it
        return _addmm_path(lowered, bias, device)
    options = TritonOptions.for_interpreter() if device.type != "cuda" else TritonOptions()
    source = shared_source(epilogue.kernel, options, {})
    launcher = load_shared(source, triton_function_name(source))
    config = default_config(epilogue.group.kind, epilogue.problem)
    # a bound launch reuses the binary of its first launch, which Triton specialized on 16-byte aligned
    # pointers where they were, and its switches (row tails, merged dims) decided from that launch's
    # strides: the measurement's tensors are always aligned, a program's inputs may not be (a slice at an
    # odd offset), and groups sharing this split path (`_kernel_key`) may pass other strides, so each
    # alignment and set of strides takes a launch of its own
    bind = functools.partial(launcher.bind, config.params, config.num_warps, config.num_stages)
    launches: dict[tuple, object] = {}
    stream = stream_getter(device) if device.type == "cuda" else (lambda: 0)
    inputs, kernel_outputs = list(lowered.inputs), list(epilogue.outputs)
    # the epilogue writes the group's outputs in the kernel's layout (padded rows where its would be)
    metas = [kernel_layout(kernel, v) if v in lowered.outputs else _packed_layout(v) for v in kernel_outputs]
    layouts = [kernel_layout(kernel, v) for v in lowered.outputs]
    if bias is None:
        plan = Plan(inputs, _library_order(inputs, products, set(contracts)), library_contraction)
    else:  # cuBLASLt adds the bias (the product's slot); the epilogue kernel then adds zeros
        plan = Plan(inputs, bias.operand_order(inputs), library_contraction)
        a_at, b_at, bias_at = (plan.slot(v) for v in bias.addmm_operands)
        zeros: dict[tuple, torch.Tensor] = {}  # a bias's shape and dtype -> zeros, made once
    # every value read below as an index into the call's list: the plan's slots, then the product
    # and the bias's zeros (with a bias), then the epilogue kernel's outputs
    base = plan.size
    at = {v: plan.slot(v) for v in [*inputs, *(op.results[0] for op in plan.ops)]}
    if bias is not None:
        at[bias.product], at[bias.value] = base, base + 1
    at |= {v: base + 2 + j for j, v in enumerate(kernel_outputs)}
    epilogue_at = [at[v] for v in epilogue.inputs]
    outputs_at = [at[v] for v in lowered.outputs]

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = plan.run(tensors, device)
        if bias is None:
            env += (None, None)
        else:
            vector = env[bias_at]
            key = (vector.shape, vector.dtype, vector.device)
            if key not in zeros:
                zeros[key] = torch.zeros_like(vector)
            env += (bias.addmm(vector, env[a_at], env[b_at]), zeros[key])
        written = [layout.empty(device) for layout in metas]
        env += written
        args = [*(env[i] for i in epilogue_at), *written]
        key = (all(t.data_ptr() % 16 == 0 for t in args), *(t.stride() for t in args))
        launch = launches.get(key)
        if launch is None:
            launch = launches[key] = bind()
        launch(stream(), *_launch_args(args))
        return tuple(in_layout(env[i], layout) for i, layout in zip(outputs_at, layouts))

    run.title = f"its GEMM(s) on the library, its epilogue as kernel {launcher.name}"
    run.launcher, run.config = launcher, config  # for compiling ahead (GroupSelector.prepare)
    return run


@dataclass(frozen=True)
class BiasEpilogue:
    """A GEMM group whose epilogue begins with `product + bias` (a linear layer's bias: one value
    per output column), which cuBLASLt adds in its epilogue (`torch.addmm`), as eager and Inductor
    run a linear layer; `whole` where the bias is all the epilogue does. `pad`: columns an unaligned
    N is padded by (the kernel's padded rows: `padded_row`), where the group is the bias alone and the
    weight and the bias are parameters (`_padded_addmm_path`); 0 where every row is aligned."""

    contract: ein.ContractOp
    value: SSAValue  # the bias, [N]
    product: SSAValue
    transposes: tuple[bool, bool]
    whole: bool
    pad: int = 0

    @property
    def addmm_operands(self) -> tuple[SSAValue, SSAValue, SSAValue]:
        """The GEMM's operands and the bias, in the order `addmm` takes them after the bias."""
        a, b = self.contract.operands
        return a, b, self.value

    def operand_order(self, inputs: list[SSAValue]) -> list[Operation]:
        """The views between the group's inputs and `addmm`'s operands (`_library_order`)."""
        return _library_order(inputs, list(self.addmm_operands), set())

    def addmm(self, bias: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ta, tb = self.transposes
        if a.dim() > 2:  # a linear layer on [batch, tokens, features]: its rows as one GEMM
            out = torch.addmm(bias.reshape(-1), a.reshape(-1, a.shape[-1]), b.mT if tb else b)
            return out.unflatten(0, a.shape[:-1])
        return torch.addmm(bias.reshape(-1), a.mT if ta else a, b.mT if tb else b)


def _bias_epilogue(
    contracts: Sequence[ein.ContractOp], rest: Sequence[Operation], lowered: object
) -> BiasEpilogue | None:
    """The group's bias, where its one aligned matmul of a 2-d weight (a linear layer, on rows or on
    [batch, tokens, features]) is read first by a map adding a vector along the product's columns
    to it ([N], or [1, .., N]: BART's `final_logits_bias`; widened alike, or both f32) and reading
    it for nothing else. An unaligned N alone (an LM head's vocabulary) is taken where the bias is
    the whole epilogue and the weight and the bias are parameters: they are padded once
    (`_padded_addmm_path`)."""
    if len(contracts) != 1:
        return None
    contract = contracts[0]
    product = contract.result
    transposes = matmul_form(contract.spec.data)
    shape, lhs = tuple(shape_of(product.type)), shape_of(contract.lhs.type)
    if transposes is None or len(shape_of(contract.rhs.type)) != 2 or (len(shape) > 2 and transposes[0]):
        return None
    elem = product.type.get_element_type()
    m, n = math.prod(shape[:-1]), shape[-1]
    k = lhs[-2] if transposes[0] else lhs[-1]
    rows = (k, m) if transposes[0] else (k,)  # the row lengths of the operands and the product, but N's
    itemsize = to_torch_dtype(elem).itemsize
    if any(d * itemsize % 16 for d in rows):
        return None  # an unaligned row: cuBLAS's slow kernels (the library matmul pads it; addmm would not)
    row = padded_row("gemm", shape, itemsize) if n * itemsize % 16 else n
    if row is None:
        return None
    readers = [op for op in rest if product in op.operands]
    if len(readers) != 1 or not isinstance(readers[0], ein.MapOp) or product in lowered.outputs:
        return None
    add = readers[0]
    vectors = [v for v in add.inputs if v is not product and _a_row_vector(shape_of(v.type), shape)]
    if len(vectors) != 1 or vectors[0].type.get_element_type() != elem or len(add.inputs) != 2:
        return None
    args = dict(zip(add.inputs, add.body.block.args))
    p_arg, b_arg = args[product], args[vectors[0]]
    p_val, b_val = _widened_use(p_arg), _widened_use(b_arg)
    if p_val is None or b_val is None:
        return None
    total = next(iter(p_val.uses)).operation
    if total.name != "arith.addf" or set(total.operands) != {p_val, b_val} or not _one_use(b_val):
        return None
    body = [op for op in add.body.block.ops if op.name != "ein.yield"]
    whole = list(lowered.outputs) == [add.results[0]] and _rounds_back(total, body, elem)
    parameters = all(_parameter_input(v, lowered.inputs) for v in (contract.rhs, vectors[0]))
    if row != n and not (whole and parameters):
        return None
    return BiasEpilogue(contract, vectors[0], product, transposes, whole, row - n)


def _a_row_vector(vector: Sequence[int], shape: Sequence[int]) -> bool:
    """Whether a tensor of shape `vector` is one value per column of `shape`, broadcast over its rows."""
    return 0 < len(vector) <= len(shape) and vector[-1] == shape[-1] and all(d == 1 for d in vector[:-1])


def _viewed_input(value: SSAValue, inputs: Sequence[SSAValue]) -> SSAValue | None:
    """The input of `inputs` that `value` is, or is a chain of views of; None if neither."""
    while value not in inputs and isinstance(value.owner, ein.ViewOp):
        value = value.owner.operands[0]
    return value if value in inputs else None


def _parameter_input(value: SSAValue, inputs: Sequence[SSAValue]) -> bool:
    """Whether `value` is one of the group's `inputs` that is a parameter argument of its function
    (or a view of one): the same tensor at every call, changed only where its version is."""
    value = _viewed_input(value, inputs)
    if value is None or not isinstance(value, BlockArgument):
        return False
    fn = value.block.parent_op()
    return isinstance(fn, func.FuncOp) and value in parameter_args(fn)


def _widened_use(arg: SSAValue) -> SSAValue | None:
    """The block argument `arg` as its one reader sees it: itself, or its one `arith.extf`."""
    if not _one_use(arg):
        return None
    reader = next(iter(arg.uses)).operation
    if reader.name == "arith.extf":
        return reader.results[0] if _one_use(reader.results[0]) else None
    return arg


def _one_use(value: SSAValue) -> bool:
    return len(list(value.uses)) == 1


def _rounds_back(total: Operation, body: Sequence[Operation], elem) -> bool:
    """Whether the map's body is the addition alone (after the widenings), rounded back to `elem`."""
    after = body[body.index(total) + 1 :]
    if not after:
        return total.results[0].type == elem
    return len(after) == 1 and after[0].name == "arith.truncf" and after[0].results[0].type == elem


def _addmm_path(lowered, bias: BiasEpilogue, device: torch.device) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The group as one `torch.addmm`: a linear layer with a bias, cuBLASLt's fused-bias GEMM (its
    result is row-major already)."""
    inputs = list(lowered.inputs)
    plan = Plan(inputs, bias.operand_order(inputs), library_contraction)
    a_at, b_at, bias_at = (plan.slot(v) for v in bias.addmm_operands)
    if bias.pad:
        return _padded_addmm_path(plan, inputs, bias, (a_at, b_at, bias_at), device)

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = plan.run(tensors, device)
        return (bias.addmm(env[bias_at], env[a_at], env[b_at]),)

    run.title = "its GEMM and bias on the library (torch.addmm: cuBLASLt's bias epilogue)"
    return run


# distinct weights one padded path keeps padded copies of (the launches of identical layers share it)
MAX_PADDED_WEIGHTS = 16


def _padded_addmm_path(
    plan: Plan, inputs: list[SSAValue], bias: BiasEpilogue, slots: tuple[int, int, int], device: torch.device
) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The group as one `torch.addmm` where N is not a multiple of 16 bytes (an LM head with a bias
    over a 50358-token vocabulary): on such rows cuBLAS runs its slow unaligned kernels, and padding the
    weight at every call copies it (Inductor's pad_mm does). The weight and the bias are parameters
    (`_bias_epilogue`), so they are padded with zeros to the kernel's padded row once and kept while
    their versions stand (`program._version_key`: an optimizer step or a `.data` write pads them
    again); the product is written into rows of that length and returned as the view of its first N
    columns, the layout the kernel's output has (`output_strides`), so nothing copies it. `prepared`
    binds a call to one set of inputs with the copies made ahead, for the measurement, which rotates
    through several sets where the program reuses one."""
    from .program import _version_key, tensor_token, watch_parameter_data

    a_at, b_at, bias_at = slots
    params = sorted({inputs.index(_viewed_input(v, inputs)) for v in (bias.contract.rhs, bias.value)})
    ta, tb = bias.transposes
    watch_parameter_data()  # a `.data` write to a parameter shows in `_version_key`
    kept: dict[tuple, tuple[tuple, torch.Tensor, torch.Tensor]] = {}

    def padded(env: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        w, b = env[b_at], env[bias_at].reshape(-1)  # the weight as stored: [N, K] (tb) or [K, N]
        w = F.pad(w, (0, 0, 0, bias.pad) if tb else (0, bias.pad))
        return (w.mT if tb else w), F.pad(b, (0, bias.pad))

    def addmm(env: list[torch.Tensor], w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor]:
        a = env[a_at].mT if ta else env[a_at]
        lead = a.shape[:-1]  # [batch, tokens] of a linear layer on [batch, tokens, features]: one GEMM
        a = a.reshape(-1, a.shape[-1])
        out = torch.empty((a.shape[0], w.shape[1]), dtype=a.dtype, device=a.device)
        torch.addmm(b, a, w, out=out)
        return (out[:, : w.shape[1] - bias.pad].unflatten(0, lead),)

    def run(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env = plan.run(tensors, device)
        key = _version_key(*(tensors[i] for i in params))
        if key is None:  # untracked (inference tensors): padded at every call
            return addmm(env, *padded(env))
        who = tuple(tensor_token(tensors[i]) for i in params)
        hit = kept.get(who)
        if hit is None or hit[0] != key:
            if hit is None and len(kept) >= MAX_PADDED_WEIGHTS:
                kept.pop(next(iter(kept)))
            hit = kept[who] = (key, *padded(env))
        return addmm(env, hit[1], hit[2])

    def prepared(*tensors: torch.Tensor) -> Callable[[], tuple[torch.Tensor, ...]]:
        w, b = padded(plan.run(tensors, device))
        return lambda: addmm(plan.run(tensors, device), w, b)

    run.title = "its GEMM and bias on the library (torch.addmm on the weight and bias padded once)"
    run.prepared = prepared
    return run


def _library_order(
    inputs: list[SSAValue], outputs: Sequence[SSAValue], members: set[Operation]
) -> list[Operation]:
    """The ops that compute `outputs` from `inputs`, in program order: `members`, and the views,
    splats and iotas between them and the inputs. Raises NoLibraryPath where a value is read that
    neither an input nor such an op computes."""
    order: list[Operation] = []
    seen: set[Operation] = set()

    def need(value: SSAValue) -> None:
        if value in inputs:
            return
        owner = value.owner
        if not isinstance(owner, Operation) or not (owner in members or isinstance(owner, VIRTUAL_OPS)):
            what = value.name_hint or "a value"
            raise NoLibraryPath(f"the group reads {what} that neither an input nor a view computes")
        if owner in seen:
            return
        for operand in owner.operands:
            need(operand)
        seen.add(owner)
        order.append(owner)

    for value in outputs:
        need(value)
    return order


def library_matmul(a: torch.Tensor, b: torch.Tensor, ta: bool, tb: bool) -> torch.Tensor:
    """`(a.mT if ta else a) @ (b.mT if tb else b)` through cuBLAS. A dim whose rows are not a
    multiple of 16 bytes (an LM head over a 50257-token vocabulary: the product's width, the
    backward's reduction depth, its weight gradient's height) makes cuBLAS run its unaligned
    kernels, several times slower: 2.21 ms against 0.32 ms at 2048 x 1024 x 50257 in bf16 on the
    H200, and a 1.5 ms `align1` kernel for GPT-2's weight gradient where the aligned shape takes 0.29.
    Such a dim of at least PAD_MIN_N is padded with zeros to the next aligned size in both operands
    that hold it (a copy of each, as Inductor's pad_mm makes), and the product sliced back; zeros
    along K add nothing. The result is then a strided view. An unaligned dim alone, over operands
    whose rows are already aligned (the log-softmax gradient a row kernel writes with padded rows,
    `program.output_strides`; a weight of 1024 columns), is split instead, with no copy: the aligned
    body of K is one cuBLAS GEMM that adds the product of the last few columns (`torch.addmm`,
    rounded once); the aligned body of M or N is one GEMM into its rows or columns of the result
    (N's into rows padded as a GEMM kernel's are), the last few rows or columns another."""
    if a.dim() > 2 and b.dim() == 2 and not ta:  # a linear layer on [batch, tokens, features]
        return library_matmul(a.reshape(-1, a.shape[-1]), b, False, tb).unflatten(0, a.shape[:-1])
    if a.dim() != 2 or b.dim() != 2:
        return torch.matmul(a.mT if ta else a, b.mT if tb else b)
    lhs, rhs = (a.mT if ta else a), (b.mT if tb else b)
    (m, k), n = lhs.shape, rhs.shape[1]
    align = max(1, 16 // a.element_size())
    pm, pk, pn = (-d % align if d >= PAD_MIN_N else 0 for d in (m, k, n))
    if not (pm or pk or pn):
        return torch.matmul(lhs, rhs)
    body = k - k % align
    if pk and not (pm or pn) and _aligned_strides(lhs[:, :body]) and _aligned_strides(rhs[:body]):
        return torch.addmm(torch.matmul(lhs[:, body:], rhs[body:]), lhs[:, :body], rhs[:body])
    body = n - n % align
    # mm(out=) records no gradient: the splits of M and N are for operands that want none (a program's)
    plain = not (lhs.requires_grad or rhs.requires_grad) or not torch.is_grad_enabled()
    if plain and pn and not (pm or pk) and _aligned_strides(lhs) and _aligned_strides(rhs[:, :body]):
        # the product's rows padded as a GEMM kernel pads them (`padded_row`, so that the program takes the
        # product as it is); its columns' aligned body, then the last few
        row = padded_row("gemm", (m, n), lhs.element_size()) or n + pn
        out = torch.empty((m, row), dtype=lhs.dtype, device=lhs.device)
        torch.mm(lhs, rhs[:, :body], out=out[:, :body])
        torch.mm(lhs, rhs[:, body:], out=out[:, body:n])
        return out[:, :n]
    body = m - m % align
    if plain and pm and not (pk or pn) and _aligned_strides(lhs[:body]) and _aligned_strides(rhs):
        out = torch.empty((m, n), dtype=lhs.dtype, device=lhs.device)
        torch.mm(lhs[:body], rhs, out=out[:body])
        torch.mm(lhs[body:], rhs, out=out[body:])
        return out
    # pad each operand in its stored orientation, so the copy is one contiguous pass
    a = F.pad(a, (0, pm, 0, pk) if ta else (0, pk, 0, pm)) if pm or pk else a
    b = F.pad(b, (0, pk, 0, pn) if tb else (0, pn, 0, pk)) if pk or pn else b
    return torch.matmul(a.mT if ta else a, b.mT if tb else b)[:m, :n]


def _aligned_strides(t: torch.Tensor) -> bool:
    """Whether cuBLAS takes 2-d `t` as an aligned operand: a unit stride, the other a multiple of 16
    bytes, and a 16-byte aligned start."""
    size, strides = t.element_size(), t.stride()
    return 1 in strides and t.data_ptr() % 16 == 0 and all(s * size % 16 == 0 for s in strides if s != 1)


def matmul_form(spec: str) -> tuple[bool, bool] | None:
    """Whether the einsum `spec` is a (batched) matmul, as (transpose lhs, transpose rhs): the
    same batch letters leading all three terms (or none in the rhs: a weight broadcast over the
    batch, a linear layer on [batch, tokens, features]), out = batch + i j, lhs = batch + (i k | k i),
    rhs = batch + (k j | j k). None otherwise (einsum runs it; it costs more host time)."""
    inputs, out = spec.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    if len(out) < 2 or len(lhs) != len(out) or len(rhs) not in (2, len(out)) or len(set(out)) != len(out):
        return None
    batch, (i, j) = out[:-2], out[-2:]
    if lhs[:-2] != batch or rhs[:-2] not in (batch, ""):  # a 2-d rhs is broadcast over the batch
        return None
    a, b = lhs[-2:], rhs[-2:]
    k = a.replace(i, "", 1)
    if len(k) != 1 or k in out or i not in a or j not in b or b.replace(j, "", 1) != k:
        return None
    return a == k + i, b == j + k


# a measured group's inputs rotate through copies that together pass this many times the GPU's L2 cache:
# in a model, a layer's weights come from memory (every other layer passed through the cache since), and
# a candidate timed on inputs the cache still holds from its previous call looks faster than it runs there
COLD_L2_FACTOR = 2
MAX_INPUT_COPIES = 8


def _input_copies(input_metas: Sequence[torch.Tensor], device: torch.device) -> int:
    """How many copies of a group's inputs its measurement rotates through (`COLD_L2_FACTOR`)."""
    if device.type != "cuda":
        return 1
    cache = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
    size = sum(
        m.untyped_storage().nbytes() if m.device.type != "meta" else _meta_bytes(m) for m in input_metas
    )
    if not cache or size >= COLD_L2_FACTOR * cache:
        return 1
    return min(MAX_INPUT_COPIES, -(-COLD_L2_FACTOR * cache // max(size, 1)))


def _meta_bytes(meta: torch.Tensor) -> int:
    """Bytes a tensor laid out as `meta` spans (its shape and strides)."""
    if meta.numel() == 0:
        return 0
    return (1 + sum((n - 1) * st for n, st in zip(meta.shape, meta.stride()))) * meta.element_size()


def random_like(meta: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A tensor with `meta`'s shape, strides and dtype on `device`: normal values for floats, zeros
    for integers (in range of any index), random booleans."""
    # storage to the end of the last row's padding, as the program allocates padded rows: a kernel reads
    # such rows to their rounded end (`launcher.row_tails_fit`)
    out = empty_padded(meta.shape, meta.stride(), meta.dtype, device)
    if meta.dtype.is_floating_point:
        out.normal_()
    elif meta.dtype == torch.bool:
        out.copy_(torch.rand(meta.shape, device=device) < 0.5)
    else:
        out.zero_()
    return out


def wall_ms(run: Callable[[], object], device: torch.device, calls: int = CALLS_PER_SAMPLE) -> float:
    """Milliseconds per call of `calls` back-to-back calls, the device synchronized around them."""
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        run()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3 / calls


@dataclass(frozen=True)
class Timing:
    """A candidate's cost per call: host time (ms to enqueue it) and GPU time (ms of its kernels)."""

    host_ms: float
    gpu_ms: float

    @property
    def alone_ms(self) -> float:
        """Its time per call run back to back on its own: whichever of the two limits it."""
        return max(self.host_ms, self.gpu_ms)


@functools.cache
def _sleep_cycles_per_ms(device: torch.device) -> float:
    """Clock cycles `torch.cuda._sleep` spins per millisecond on `device` (measured once)."""
    cycles = 1 << 20
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.cuda.device(device):
        torch.cuda._sleep(cycles)  # the first call loads the kernel
        torch.cuda.synchronize(device)
        begin.record()
        torch.cuda._sleep(cycles)
        end.record()
        end.synchronize()
    return cycles / max(begin.elapsed_time(end), 1e-3)


def queued_timing(run: Callable[[], object], device: torch.device, calls: int = CALLS_PER_SAMPLE) -> Timing:
    """`run`'s host and GPU time per call over `calls` back-to-back calls, queued behind a sleeping
    kernel that outlasts the host's enqueueing, so that the events around the calls time the GPU
    working without a gap and the host's clock times the enqueueing alone. Where the host took
    longer than the sleep, the GPU may have waited for it: measured again with a longer sleep."""
    if not hasattr(torch.cuda, "_sleep"):  # no way to queue ahead: both are the wall time
        ms = wall_ms(run, device, calls)
        return Timing(ms, ms)
    per_ms = _sleep_cycles_per_ms(device)
    sleep_ms = 0.2
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(4):
        torch.cuda.synchronize(device)
        with torch.cuda.device(device):
            torch.cuda._sleep(int(sleep_ms * per_ms))
        begin.record()
        start = time.perf_counter()
        for _ in range(calls):
            run()
        host = (time.perf_counter() - start) * 1e3
        end.record()
        end.synchronize()
        if host < 0.8 * sleep_ms:
            break
        sleep_ms = 2 * host + 0.1
    return Timing(host / calls, begin.elapsed_time(end) / calls)


def default_clock(kind: str, run: Callable[[], object], device: torch.device) -> Timing:
    """How a candidate (`kind`: "kernel", "library", "split", "sdpa", "split-keys" or "cuda") is timed:
    `queued_timing`."""
    return queued_timing(run, device)


def as_timing(measured: Timing | float) -> Timing:
    """A clock's answer as a Timing: a bare number (a wall time: tests' fake clocks) is both figures."""
    return measured if isinstance(measured, Timing) else Timing(float(measured), float(measured))


# set while a graph that will be replayed as a CUDA graph runs its warm-up calls (cudagraphs.py): the
# programs written then are replayed, where host time costs nothing
replayed: contextvars.ContextVar[bool] = contextvars.ContextVar("tilefuse_replayed", default=False)


# "0": each group's choice is made on its own (the fastest alone, back to back), not for the program
PROGRAM_CLOCK_ENV = "TILEFUSE_PROGRAM_CLOCK"
# The program's host time is estimated from its launches' measured host times; the Python between the
# launches (views, allocations, the wrapper's own lines) and the call's fixed cost (Dynamo's guards) come
# on top: counted as this many times the launches' own time. On the H200's host, OPT at 1 x 128 tokens
# (host-bound) took 0.735 ms a call against 0.732 summed over its launches' measured host times.
HOST_FACTOR = 1.25
# host and GPU time overlap imperfectly (the first launches run before the GPU is busy, a synchronizing
# op drains the queue): the smaller of the two counts this much in the program's time
OVERLAP_LOSS = 0.1


def program_cost(host_ms: float, gpu_ms: float, host_free: bool = False) -> float:
    """Estimated ms of a program call from its launches' host time and its kernels' GPU time: the
    larger limits a pipelined call, and a little of the smaller shows (`OVERLAP_LOSS`). Replayed as
    a CUDA graph (`host_free`), only the GPU time counts."""
    if host_free:
        return gpu_ms
    host = HOST_FACTOR * host_ms
    return max(host, gpu_ms) + OVERLAP_LOSS * min(host, gpu_ms)


@dataclass
class GroupChoice:
    """One group's measured choice: the kernel against the other candidates (`times`: ms per
    candidate run alone, the kernel's included; `timings`: host and GPU ms): "library" and, for a
    GEMM with an epilogue, "split"; "sdpa" and "split-keys" for attention; or "cuda", the CUDA C++
    backend's kernel for the group under backend "auto"."""

    group: str
    chosen: str
    times: dict[str, float] = field(default_factory=dict)
    why: str | None = None  # why it was not measured
    source: str = "measured"  # or "database": measured by an earlier compile, read back
    unbuilt: dict[str, str] = field(default_factory=dict)  # candidates that could not be built, and why
    timings: dict[str, Timing] = field(default_factory=dict)
    program: str | None = None  # "gpu-bound" or "host-bound": the program the choice was made for

    @property
    def kernel_ms(self) -> float | None:
        return self.times.get(KERNEL)

    def as_dict(self) -> dict:
        out = {"group": self.group, "chosen": self.chosen}
        if self.why is not None:
            out["not_measured"] = self.why
        else:
            out |= {f"{name}_ms": round(ms, 5) for name, ms in self.times.items()}
            for name, t in self.timings.items():
                out |= {f"{name}_gpu_ms": round(t.gpu_ms, 5), f"{name}_host_ms": round(t.host_ms, 5)}
            if self.program is not None:
                out["program"] = self.program
            if self.source != "measured":
                out["from"] = self.source
        out |= {f"{name}_not_built": why for name, why in self.unbuilt.items()}
        return out


@dataclass
class GroupSelector:
    """Chooses, per kernel launch, between the kernel and its library paths (the group's ops in
    PyTorch; its GEMMs in PyTorch and the rest as one kernel), or (backend "auto") between the
    Triton kernel and the CUDA C++ one (module docstring).

    A program is written twice: with `survey` as its chooser (every launch on its kernel, the
    selectable ones counted), then, after `settle` measured and chose, with `choose`. `choose` alone
    (no survey) measures each group as it comes and decides it on its own (`Timing.alone_ms`).
    `clock(kind, run, device) -> Timing | ms` times one candidate (`default_clock`; tests fake it).
    Choices are kept per (kernel, configuration, operand layouts), so identical layers share one.
    `host_free`: the program is replayed as a CUDA graph, where only GPU time counts.
    """

    device: torch.device
    clock: Callable[[str, Callable[[], object], torch.device], Timing | float] | None = None
    host_free: bool = False
    choices: list[GroupChoice] = field(default_factory=list)
    program: dict | None = None  # the estimate the choices were made on (`settle`)
    _known: dict[tuple, tuple[GroupChoice, dict]] = field(default_factory=dict)
    _split_paths: dict[tuple, Callable | str] = field(default_factory=dict)  # built ahead, or why not
    _surveyed: dict[tuple, list] = field(default_factory=dict)  # key -> [kernel, input metas, launches]
    _launches: int = 0  # launches the survey saw, selectable or not
    _other_gpu_ms: float = 0.0  # the GPU time estimated for the surveyed launches that are not measured

    def prepare(self, kernels: Sequence[object]) -> None:
        """Build the split paths of `kernels` (those a program is about to measure) now, and compile
        their epilogue kernels ahead on threads, as the compiler compiles its own kernels: built one at
        a time when each group is measured, each would add its Triton compile to a cold first call."""
        if self.device.type != "cuda":
            return
        from ..backends.triton import precompile

        hopper = torch.cuda.get_device_capability(self.device)[0] >= 9
        jobs, functions = [], []
        for kernel in kernels:
            key = _kernel_key(kernel)
            if key in self._split_paths or SPLIT not in self._library_candidates(kernel):
                continue
            built, unbuilt = _library_paths(kernel, (SPLIT,), self.device)
            if SPLIT not in built:  # said when the group is measured
                self._split_paths[key] = unbuilt[SPLIT]
                continue
            split = self._split_paths[key] = built[SPLIT]
            if getattr(split, "launcher", None) is None:  # no kernel of its own (a bias alone: addmm)
                continue
            config = split.config
            jobs.append(precompile.compile_job(split.launcher, config.params, config.num_warps,
                                               config.num_stages, hopper))  # fmt: skip
            functions.append(split.launcher.function)
        if jobs:
            threads = max(1, precompile.thread_count())
            precompile.precompile_in_threads(jobs, functions, threads, device=self.device.index)

    def _key(self, kernel: object, input_metas: Sequence[torch.Tensor]) -> tuple | None:
        """The launch's key (module docstring), or None where nothing is chosen for it."""
        others = self._others(kernel)
        if not others:
            return None
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None  # nothing can be timed inside a CUDA graph capture
        layouts = tuple((tuple(m.shape), tuple(m.stride()), m.dtype) for m in input_metas)
        return (*_kernel_key(kernel), layouts, ",".join(others))

    def selects_any(self, kernels: Sequence[object]) -> bool:
        """Whether any of `kernels` has a candidate to measure against (else no survey is needed)."""
        return any(self._others(kernel) for kernel in kernels)

    def _others(self, kernel: object) -> tuple[str, ...]:
        """The candidates against the kernel: the other backend's kernel (backend "auto"), and the
        library paths of a GEMM or attention group."""
        library = self._library_candidates(kernel) if kernel.lowered.group.kind in LIBRARY_KINDS else ()
        return (("cuda",) if getattr(kernel, "alternative", None) is not None else ()) + library

    def survey(self, kernel: object, input_metas: Sequence[torch.Tensor]) -> tuple[str, None]:
        """A first pass's chooser: every launch on its kernel; the selectable ones counted by key."""
        self._launches += 1
        key = self._key(kernel, input_metas)
        if key is not None and key not in self._known:
            self._surveyed.setdefault(key, [kernel, list(input_metas), 0])[2] += 1
        else:
            self._other_gpu_ms += estimated_gpu_ms(kernel, input_metas)
        return KERNEL, None

    def settle(self) -> None:
        """Measure every surveyed group, then choose for all of them together: from every group on its
        kernel, move a group to another candidate where that lowers `program_cost` of the program
        (its launches' host time, measured for these groups and estimated for the others as a kernel
        launch's, against its GPU time, measured for these groups and estimated for the others from
        their bytes), until no move helps; record the choices."""
        surveyed, self._surveyed = self._surveyed, {}
        measured: dict[tuple, int] = {}
        for key, (kernel, metas, launches) in surveyed.items():
            known = self._settle(key, kernel, metas, record=False)
            if known.source == "measured" and known.why is None and KERNEL in known.timings:
                measured[key] = launches
        if os.environ.get(PROGRAM_CLOCK_ENV) == "0":  # each group as measured alone
            measured = {}
        for key in surveyed.keys() - measured.keys():  # decided on their own (or not measured)
            self._record(surveyed[key][0], key, self._known[key][0])
        if not measured:
            return
        timings = {key: self._known[key][0].timings for key in measured}
        launch_host = statistics.median(t[KERNEL].host_ms for t in timings.values())
        other_host = launch_host * max(0, self._launches - sum(measured.values()))

        other_gpu = self._other_gpu_ms

        def cost(chosen: dict[tuple, str]) -> tuple[float, float, float]:
            host = other_host + sum(n * timings[k][chosen[k]].host_ms for k, n in measured.items())
            gpu = other_gpu + sum(n * timings[k][chosen[k]].gpu_ms for k, n in measured.items())
            return program_cost(host, gpu, self.host_free), host, gpu

        chosen = dict.fromkeys(measured, KERNEL)
        for _ in range(4):  # each round moves every group to its best given the others
            moved = False
            for key, launches in measured.items():
                current = cost(chosen)[0]
                kernel_noise = (1 - MARGIN) * launches * timings[key][KERNEL].alone_ms
                for name in timings[key]:
                    if name == chosen[key]:
                        continue
                    trial = cost(chosen | {key: name})[0]
                    # leaving the kernel must win by more than the noise of its measurement
                    noise = kernel_noise if chosen[key] == KERNEL else 0.0
                    if trial < current - noise:
                        chosen[key], current, moved = name, trial, True
            if not moved:
                break
        total, host, gpu = cost(chosen)
        bound = "host-bound" if not self.host_free and HOST_FACTOR * host > gpu else "gpu-bound"
        self.program = {"estimate_ms": round(total, 5), "host_ms": round(HOST_FACTOR * host, 5),
                        "gpu_ms": round(gpu, 5), "gpu_ms_of_unmeasured_launches": round(other_gpu, 5),
                        "bound": bound, "launches": self._launches}  # fmt: skip
        for key in measured:
            known = self._known[key][0]
            known.chosen, known.program = chosen[key], bound
            self._record(surveyed[key][0], key, known)

    def choose(self, kernel: object, input_metas: Sequence[torch.Tensor]) -> tuple[str, object | None]:
        """("kernel", None); ("library", a function of the kernel's inputs returning its outputs:
        the library path or the split one); or ("alternative", the other backend's kernel)."""
        key = self._key(kernel, input_metas)
        if key is None:
            return KERNEL, None
        if key not in self._known:
            self._settle(key, kernel, input_metas, record=True)
        known, candidates = self._known[key]
        self.choices.append(dataclasses.replace(known, group=kernel.lowered.group.name))
        if known.chosen == KERNEL:
            return KERNEL, None
        return ("alternative" if known.chosen == "cuda" else LIBRARY), candidates[known.chosen]

    def _settle(
        self, key: tuple, kernel: object, input_metas: Sequence[torch.Tensor], record: bool
    ) -> GroupChoice:
        """The choice for `key`: read back from the database, or measured (and chosen for the group
        on its own: the fastest alone); kept in `_known` with the candidates it may need."""
        group = kernel.lowered.group.name
        alternative = getattr(kernel, "alternative", None)
        others = tuple(name for name in self._others(kernel) if name != "cuda")
        candidates = {"cuda": alternative} if alternative is not None else {}
        known = self._recorded(kernel, key)
        prebuilt = self._split_paths.get(_kernel_key(kernel))
        if known is None:
            built, unbuilt = _library_paths(kernel, others, self.device, prebuilt)
            candidates |= built
            known = self._measure(kernel, candidates, input_metas) if candidates else GroupChoice(
                group, KERNEL, why=unbuilt.get(LIBRARY, "no library path"))  # fmt: skip
            known.unbuilt = unbuilt if candidates else {}
            if record:
                self._record(kernel, key, known)
        elif known.chosen not in (KERNEL, *candidates):
            built, unbuilt = _library_paths(kernel, (known.chosen,), self.device, prebuilt)
            candidates |= built
            if known.chosen not in candidates:  # recorded, but not buildable now: keep the kernel
                known = GroupChoice(group, KERNEL, why=unbuilt[known.chosen])
        self._known[key] = (known, candidates)
        return known

    def _record(self, kernel: object, key: tuple, known: GroupChoice) -> None:
        """Keep a measured choice in the tuning database, so later compiles decide without measuring."""
        if known.source == "measured" and known.why is None and kernel.task_key:
            best = min(ms for name, ms in known.times.items() if name != KERNEL)
            detail = _detail(key, self.host_free)
            record_choice(kernel.task_key, device_name(), detail, known.chosen, known.kernel_ms, best)

    def _library_candidates(self, kernel: object) -> tuple[str, ...]:
        """The library ways a group may run: its ops in PyTorch; for a GEMM with an epilogue, its
        GEMMs in PyTorch and the rest as one kernel instead (that beats the epilogue op by op),
        unless that cannot be built (`_library_paths`)."""
        group = kernel.lowered.group
        epilogue = any(not isinstance(op, ein.ContractOp) for op in group.ops)
        if group.kind == "attention":
            return (SDPA, SPLIT_KEYS, LIBRARY)
        return (SPLIT, LIBRARY) if group.kind == "gemm" and epilogue else (LIBRARY,)

    def _recorded(self, kernel: object, key: tuple) -> GroupChoice | None:
        """The choice measured for this launch by an earlier compile on this device and versions
        (the tuning database's `choices`), or None."""
        if not kernel.task_key:
            return None
        found = recorded_choice(kernel.task_key, device_name(), _detail(key, self.host_free))
        if found is None:
            return None
        chosen, kernel_ms, other_ms = found
        group = kernel.lowered.group.name
        times = {KERNEL: kernel_ms, ("best_other" if chosen == KERNEL else chosen): other_ms}
        return GroupChoice(group, chosen, times, source="database")

    def _measure(
        self, kernel: object, candidates: dict[str, object], input_metas: Sequence[torch.Tensor]
    ) -> GroupChoice:
        group = kernel.lowered.group.name
        try:
            with outside_dispatch_modes():
                return self._time_candidates(kernel, candidates, input_metas)
        except Exception as e:  # measuring never costs the kernel: keep it, say why
            return GroupChoice(group, KERNEL, why=f"{type(e).__name__}: {e}")

    def _time_candidates(
        self, kernel: object, candidates: dict[str, object], input_metas: Sequence[torch.Tensor]
    ) -> GroupChoice:
        sets = [
            [random_like(m, self.device) for m in input_metas]
            for _ in range(_input_copies(input_metas, self.device))
        ]

        def rotating(make: Callable[[list[torch.Tensor]], Callable[[], object]]) -> Callable[[], object]:
            calls, turn = [make(inputs) for inputs in sets], itertools.count()
            return lambda: calls[next(turn) % len(calls)]()

        runs = {KERNEL: rotating(lambda inputs: _launching(kernel, inputs, self.device))}
        for name, candidate in candidates.items():
            if name == "cuda":
                runs[name] = rotating(lambda inputs, c=candidate: _launching(c, inputs, self.device))
            else:
                runs[name] = rotating(lambda inputs, c=candidate: _bound(c, inputs))
        clock = self.clock or default_clock
        for _ in range(WARMUP):  # compiles, library handles, allocator
            for run in runs.values():
                run()
        samples: dict[str, list[Timing]] = {name: [] for name in runs}
        order = list(runs)
        for i in range(SAMPLES):  # rotating which goes first
            for name in order[i % len(order) :] + order[: i % len(order)]:
                samples[name].append(as_timing(clock(name, runs[name], self.device)))
        timings = {
            name: Timing(statistics.median(t.host_ms for t in ts), statistics.median(t.gpu_ms for t in ts))
            for name, ts in samples.items()
        }
        times = {name: t.alone_ms for name, t in timings.items()}
        best = min((ms, name) for name, ms in times.items() if name != KERNEL)
        chosen = best[1] if best[0] < MARGIN * times[KERNEL] else KERNEL
        return GroupChoice(kernel.lowered.group.name, chosen, times, timings=timings)

    def summary(self) -> list[dict]:
        return [c.as_dict() for c in self.choices]


# the GPU time of a launch that is not measured (a pointwise, row or reduction kernel: memory-bound) is
# estimated from the bytes its operands and outputs span at this rate (an H100's HBM3 streams ~3 TB/s in
# a kernel, an H200's ~4), and at least MIN_LAUNCH_GPU_MS (a small kernel's time on the GPU, queued). Left
# out, a program whose norms, softmaxes and concatenations take much of its GPU time looked host-bound,
# and its GEMMs kept the launch that spares host time though cuBLAS's took a fraction of the GPU time.
ESTIMATED_BYTES_PER_MS = 3e9
MIN_LAUNCH_GPU_MS = 0.002


def estimated_gpu_ms(kernel: object, input_metas: Sequence[torch.Tensor]) -> float:
    """A memory-bound launch's GPU time: the bytes it reads and writes, streamed once."""
    spans = sum(_meta_bytes(m) for m in input_metas)
    for value in kernel.lowered.outputs:
        spans += math.prod(shape_of(value.type)) * to_torch_dtype(value.type.get_element_type()).itemsize
    return max(MIN_LAUNCH_GPU_MS, spans / ESTIMATED_BYTES_PER_MS)


def _kernel_key(kernel: object) -> tuple:
    """Kernels with one launcher and configuration (a model's identical layers) share a split path."""
    return (getattr(kernel.launcher, "name", kernel.lowered.group.name), kernel.config.key())


def _library_paths(
    kernel: object, names: Sequence[str], device: torch.device, split: Callable | str | None = None
) -> tuple[dict[str, Callable], dict[str, str]]:
    """The candidates `names` ("library", "split", "sdpa", "split-keys") that can be built, and why the others
    cannot. The library path is not built where a split path was: the same library GEMMs, and the
    epilogue op by op (a full pass over the product each, its host time per scalar op) instead of
    one kernel; nor where SDPA was (its math path is that library path, chosen by SDPA itself where
    it is the best it has)."""
    built: dict[str, Callable] = {}
    unbuilt: dict[str, str] = {}
    for name in names:
        if name == LIBRARY and (SPLIT in built or SDPA in built):
            continue
        try:
            if name == SDPA:  # materializes nothing: no size check
                built[name] = sdpa_path(kernel)
                continue
            if name == SPLIT_KEYS:  # nor does the split-keys kernel (partials of a few rows)
                built[name] = split_keys_path(kernel, device)
                continue
            _check_library_size(kernel)  # the split path materializes the products as well
            if name == LIBRARY:
                built[name] = library_path(kernel)
            elif name == SPLIT and isinstance(split, str):  # built ahead, and it failed then
                unbuilt[name] = split
            elif name == SPLIT:
                built[name] = split or split_path(kernel, device)
        except (NoLibraryPath, NoSdpaPath) as e:
            unbuilt[name] = str(e)
        except Exception as e:  # a split path whose kernel fails to build: the others still compete
            unbuilt[name] = f"{type(e).__name__}: {e}"
    return built, unbuilt


def _detail(key: tuple, host_free: bool = False) -> str:
    """A launch's key (function, configuration, operand layouts, the other way) as the database
    keeps it beside the kernel's task key. A choice made for a program replayed as a CUDA graph
    (`host_free`: GPU time alone) is kept apart from one made where host time counts: the same
    group can go either way (GPT-2's forward kept its GEMM kernels to spare host time, and its
    reduce-overhead compile read that choice back)."""
    function, config, layouts, other = key
    shown = [[list(size), list(stride), str(dtype).removeprefix("torch.")] for size, stride, dtype in layouts]
    detail = {"function": function, "config": config, "layouts": shown, "other": other}
    return json.dumps(detail | ({"replayed": True} if host_free else {}))


def _check_library_size(kernel: object) -> None:
    """Refuse (NoLibraryPath) a library path whose intermediates would exceed MAX_LIBRARY_BYTES."""
    for op in kernel.lowered.group.ops:
        for value in op.results:
            elements = 1
            for d in shape_of(value.type):
                elements *= d
            size = elements * to_torch_dtype(value.type.get_element_type()).itemsize
            if size > MAX_LIBRARY_BYTES:
                gib = size / 2**30
                raise NoLibraryPath(f"its library path would hold a {gib:.1f} GiB intermediate ({op.name})")


def _bound(candidate: Callable, inputs: Sequence[torch.Tensor]) -> Callable[[], object]:
    """A library candidate called on `inputs`; one that keeps work across calls of the same inputs
    (padded weights) does it ahead (`prepared`), as the program's calls find it done."""
    prepared = getattr(candidate, "prepared", None)
    return prepared(*inputs) if prepared is not None else functools.partial(candidate, *inputs)


def _launching(kernel: object, inputs: Sequence[torch.Tensor], device: torch.device) -> Callable[[], None]:
    """A call that launches `kernel` (a `CompiledKernel`) on `inputs` into fresh outputs (laid out as
    the program lays them out: `program.output_strides`),
    its arguments written as the program writes them (each tensor, then its strides)."""
    outputs = [_empty_like_value(kernel, v, device) for v in kernel.lowered.outputs]
    config = kernel.config
    launch = kernel.launcher.bind(config.params, config.num_warps, config.num_stages)
    args = _launch_args([*inputs, *outputs])
    stream = stream_getter(device)() if device.type == "cuda" else 0
    return lambda: launch(stream, *args)


def _launch_args(tensors: Sequence[torch.Tensor]) -> list:
    """A bound launch's arguments as the program writes them: each tensor, then its strides."""
    args: list = []
    for t in tensors:
        args.append(t)
        args.extend(t.stride())
    return args


def _empty_like_value(kernel: object, value: SSAValue, device: torch.device) -> torch.Tensor:
    """An output buffer of `kernel` for `value`, laid out as the program allocates it."""
    dtype = to_torch_dtype(value.type.get_element_type())
    shape = tuple(shape_of(value.type))
    return empty_output(shape, output_strides(kernel, shape, dtype), dtype, device)
