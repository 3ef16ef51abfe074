"""Split an aten graph into parts tilefuse compiles and parts PyTorch runs.

Every call whose op has an `ein` lowering (and whose dtypes and shapes ein
supports) may join a compiled partition; everything else stays in the outer
graph, run by PyTorch, with the reason recorded for the dump. What stays there
should not cut a partition in two: training-mode dropout leaves only its mask
to PyTorch, and cheap ops computed from the graph's inputs alone run beside
the PyTorch op they feed.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass
from functools import partial

import torch
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx import Graph, GraphModule, Node
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

from ..ir.dtypes import size_of, size_text
from .conv_layout import is_explicit_copy
from .duplicate_ops import functional
from .input_mutations import written_args
from .lowering_table import only_first_output_read, target_name, unsupported_reason

aten = torch.ops.aten


@dataclass(frozen=True)
class Fallback:
    """One node (or partition) that runs in PyTorch, and why."""

    node: str
    op: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "reason": self.reason}


# work a partition should keep even when it only feeds an op left to PyTorch
_HEAVY_OPS = {
    aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default,
    aten.scaled_dot_product_attention.default, aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_flash_attention.default, aten._scaled_dot_product_efficient_attention.default,
    # not compute-bound, but ATen's scans are 2-7x slower than the scan kernel (H200): work, not glue
    aten.cumsum.default, aten.cumprod.default,
}  # fmt: skip
# elements a result may hold and still count as a cheap input (a position table, a mask built with
# arange): a larger one (a convolution's output, a BatchNorm of a graph input) is work, and what follows
# it compiles. A ResNet block (conv, eval BatchNorm, ReLU, conv) ran its BatchNorm and ReLU as five
# aten ops because the first convolution, reading only graph inputs, counted as a cheap input.
_SMALL_RESULT = 1 << 16


# elements an input of a cheap op may hold: a reduction of a large tensor to a small result is work
# (a training BatchNorm's statistics over a graph input ran in PyTorch beside its running-stat updates)
_SMALL_INPUT = 1 << 20


def _elements(node: Node) -> int | None:
    """Elements of `node`'s tensor results, None where a size is symbolic."""
    vals = node.meta.get("val")
    vals = vals if isinstance(vals, (tuple, list)) else [vals]
    total = 0
    for v in vals:
        if isinstance(v, torch.Tensor):
            if not all(isinstance(d, int) for d in v.shape):
                return None
            total += v.numel()
    return total


def _small_result(node: Node) -> bool:
    """A small result of small inputs (views are cheap apart: `_FREE_VIEWS`)."""
    total = _elements(node)
    if total is None or total > _SMALL_RESULT:
        return False
    return all((n := _elements(a)) is not None and n <= _SMALL_INPUT for a in node.all_input_nodes)


def ops_in_pytorch(gm: GraphModule) -> dict[Node, str]:
    """The compute nodes of `gm` that run in PyTorch, each with the reason.

    Those without an `ein` lowering, and the cheap supported ops that compute their inputs from
    the graph's inputs (a mask cast before a `cumsum`, say): compiled, such a prefix would be a
    partition of its own, cut off from the rest by the op it feeds; in PyTorch it is an input.
    Cheap means a view or a small result (`_SMALL_RESULT`): a chain over large tensors is work, and
    compiled it is one kernel.
    """
    in_pytorch: dict[Node, str] = {}
    from_inputs: set[Node] = set()  # computed from graph inputs by cheap or PyTorch-only ops
    for node in gm.graph.nodes:
        if node.op != "call_function":
            from_inputs |= {node} if node.op in ("placeholder", "get_attr") else set()
            continue
        source = node.args[0] if node.target is operator.getitem else node
        reason = in_pytorch.get(source) if source is not node else unsupported_reason(node)
        if reason is not None:
            in_pytorch[node] = reason
        # an explicit copy (a layout conversion, conv_layout.py) is work: a tiled kernel beats ATen's copy
        heavy = node.target in _HEAVY_OPS or is_explicit_copy(node)
        cheap = node.target in _FREE_VIEWS or node.target is operator.getitem or _small_result(node)
        if not heavy and cheap and all(a in from_inputs for a in node.all_input_nodes):
            from_inputs.add(node)
    for node in reversed(gm.graph.nodes):
        feeds = sorted(u.name for u in node.users if u in in_pytorch)
        if node.op == "call_function" and node in from_inputs and node not in in_pytorch and feeds:
            in_pytorch[node] = f"cheap and computed from graph inputs only: runs beside {', '.join(feeds)}"
    for node in gm.graph.nodes:  # an item goes with its op (a partition takes tensors, not a tuple)
        if node.target is operator.getitem and node.args[0] in in_pytorch and node not in in_pytorch:
            in_pytorch[node] = in_pytorch[node.args[0]]
    for _ in range(4):  # a level left to PyTorch may leave another alone between ops in PyTorch
        lonely = [level for level in _levels(gm, in_pytorch) if _not_worth_a_partition(level, in_pytorch)]
        for level in lonely:
            for node in level:
                in_pytorch[node] = LONE_OP
        if not lonely:
            break
    return in_pytorch


LONE_OP = "only views or one small op between ops in PyTorch: cheaper there than as a partition of its own"


def _not_worth_a_partition(level: list[Node], in_pytorch: dict[Node, str]) -> bool:
    """Whether a partition would hold only views, or one small op (not a GEMM, an attention or a
    copy), and read and feed only ops in PyTorch. Mixtral's routing left two such per layer: the
    experts' indices flattened (a view) between topk and sort, and their cast to float between sort
    and histc; each cost a partition's call on the host (a program, its guard, a launch) for what
    PyTorch does in one call or none."""
    members = set(level)
    compute = [n for n in level if n.target is not operator.getitem]
    outside_in = {a for n in level for a in n.all_input_nodes if a not in members}
    outside_out = {u for n in level for u in n.users if u not in members}
    if not compute or not all(a in in_pytorch for a in outside_in | outside_out):
        return False  # reads a graph input or a parameter, or feeds a partition or the output
    if all(n.target in _FREE_VIEWS for n in compute):
        return True
    if len(compute) != 1:
        return False
    op = compute[0]
    return op.target not in _HEAVY_OPS and not is_explicit_copy(op) and _small_result(op)


def isolate_random_ops(gm: GraphModule) -> None:
    """Rewrite training-mode dropout so only its random mask comes from PyTorch.

    `native_dropout(x, p)` becomes `x * mask * 1/(1-p)` with `mask` from `native_dropout` of a
    tensor of ones like `x`: PyTorch draws exactly the numbers it would have drawn for `x` (they
    depend on the shape, not the values), but that call reads no computed tensor, so it runs
    before the partition instead of cutting it in two, and the product compiles. A dropout of a
    symbolic size stays whole (in PyTorch). Idempotent; the graph stays runnable as it is.
    """
    graph = gm.graph
    for node in list(graph.nodes):
        if node.target is not aten.native_dropout.default or not node.args[2]:
            continue
        x, p = node.args[0], float(node.args[1])
        if _mask_source(x):
            continue  # already a mask source
        val = x.meta["val"]
        if not all(isinstance(d, int) for d in val.shape):
            continue  # a symbolic size: the graph has no node naming it for the ones' shape; stays whole
        fake_mode = detect_fake_mode([val])
        if fake_mode is None:  # no fake tensors to compute metadata on: leave the dropout to PyTorch
            continue
        call = partial(call_with_value, graph, fake_mode)
        with graph.inserting_before(node):
            ones = _ones_laid_out_like(call, val)
            mask = call(operator.getitem, [call(aten.native_dropout.default, [ones, p, True]), 1])
            kept = call(aten.mul.Tensor, [x, mask])
            out = call(aten.mul.Tensor, [kept, 0.0 if p >= 1 else 1 / (1 - p)])
        for made in (ones, mask.args[0], mask, kept, out):
            made.meta["stack_trace"] = node.meta.get("stack_trace")
        for user in list(node.users):
            user.replace_all_uses_with(out if user.args[1] == 0 else mask)
            graph.erase_node(user)
        graph.erase_node(node)
    graph.lint()
    gm.recompile()


def _mask_source(x: Node) -> bool:
    """Whether `x` is the ones `isolate_random_ops` made (a `full`, or a permute of one)."""
    if x.op == "call_function" and x.target is aten.permute.default:
        x = x.args[0]
    return x.op == "call_function" and x.target is aten.full.default


def _ones_laid_out_like(call: partial, val: torch.Tensor) -> Node:
    """Ones of `val`'s shape laid out as PyTorch's dropout lays out the tensor it draws its mask on
    (`empty_like(x)`: a dense transpose or head permute keeps its strides), as a permute of ones in
    that memory order: the random numbers follow the layout (CPU: memory order; CUDA: a contiguous
    input takes another kernel), so contiguous ones drew another mask for `dropout(h.t())` than eager."""
    ones = partial(call, aten.full.default, kwargs={"dtype": val.dtype, "device": val.device})
    like = torch.empty_like(torch.empty_strided(tuple(val.shape), val.stride(), device="meta"))
    if like.is_contiguous():
        return ones([list(val.shape), 1.0])
    # dims from the outermost in memory to the innermost (a dim of one anywhere: it moves nothing)
    order = sorted(range(like.dim()), key=lambda d: (-like.stride(d), d))
    laid_out = ones([[val.shape[d] for d in order], 1.0])
    return call(aten.permute.default, [laid_out, [order.index(d) for d in range(val.dim())]])


def call_with_value(
    graph: Graph, fake_mode: FakeTensorMode, target: object, args: list, kwargs: dict | None = None
) -> Node:
    """Insert a call of `target` with its `val` metadata, computed on the arguments' fake tensors
    (never on real ones: a random op would draw from the generator at compile time); a list argument
    (`cat`'s tensors) has its nodes' values too. A call whose value cannot be computed raises and
    inserts nothing."""
    kwargs = kwargs or {}

    def value(a: object) -> object:
        if isinstance(a, Node):
            return a.meta["val"]
        return [value(x) for x in a] if isinstance(a, (list, tuple)) else a

    with fake_mode:
        val = target(*(value(a) for a in args), **kwargs)
    node = graph.call_function(target, tuple(args), kwargs)
    node.meta["val"] = val
    return node


_POOLS_WITH_INDICES = {
    aten.max_pool2d_with_indices.default: aten.max_pool2d.default,
    aten.max_pool3d_with_indices.default: aten.max_pool3d.default,
}


def drop_unused_pool_indices(gm: GraphModule) -> None:
    """A max pool whose indices nobody reads (inference: no backward) becomes the pool without
    them, as eager's `F.max_pool2d` calls it: in PyTorch it then writes no int64 index tensor
    (the H200 took 45 us with them, 31 without, for a dilated 2-d pool), and it lowers the same."""
    graph = gm.graph
    pools = [
        n for n in graph.nodes if n.target in _POOLS_WITH_INDICES and n.users and only_first_output_read(n)
    ]
    for node in pools:
        plain = _POOLS_WITH_INDICES[node.target]
        with graph.inserting_before(node):
            pooled = graph.call_function(plain, node.args, node.kwargs)
        pooled.meta = dict(node.meta, val=node.meta["val"][0])
        for user in list(node.users):
            user.replace_all_uses_with(pooled)
            graph.erase_node(user)
        graph.erase_node(node)
    if pools:  # recompiled only when a pool changed: both passes over the graph call this
        graph.lint()
        gm.recompile()


def _prepared(gm: GraphModule) -> GraphModule:
    """`gm` with training-mode dropout isolated and unread pool indices dropped (idempotent)."""
    isolate_random_ops(gm)
    drop_unused_pool_indices(gm)
    return gm


def find_fallbacks(gm: GraphModule) -> list[Fallback]:
    """The compute nodes of `gm` that have no `ein` lowering, with reasons (training-mode dropout
    rewritten first, see `isolate_random_ops`, and unread pool indices dropped)."""
    in_pytorch = ops_in_pytorch(_prepared(gm))
    return [
        Fallback(node.name, target_name(node), in_pytorch[node])
        for node in gm.graph.nodes
        if node in in_pytorch and node.target is not operator.getitem
        and not isinstance(node.meta.get("val"), (torch.SymInt, int))  # size arithmetic: no tensor op
    ]  # fmt: skip


def partition_graph(gm: GraphModule) -> tuple[GraphModule, list[str]]:
    """Fuse maximal supported regions of `gm` into `fused_N` submodules.

    Returns the rewritten module and the names of the compiled submodules.
    Regions made only of views are left to PyTorch: they cost nothing there.
    """
    in_pytorch = ops_in_pytorch(_prepared(gm))
    levels = _levels(gm, in_pytorch)
    if copy_constants_per_level(gm, levels):
        levels = _levels(gm, in_pytorch)
    partitions = [dict.fromkeys(nodes) for nodes in levels]
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    fused = fuse_by_partitions(gm, partitions) if partitions else gm
    names = [n.target for n in fused.graph.nodes if n.op == "call_module" and n.target.startswith("fused_")]
    sink_boundary_views(fused, names)
    order_reads_before_writes(fused, order, partitions)
    return fused, names


def order_reads_before_writes(
    gm: GraphModule, order: dict[str, int], partitions: list[dict], prefix: str = "fused_"
) -> int:
    """Put back before an in-place op (an input's write-back, `copy_(x, new)`) every partition that
    reads its destination and held a node that ran before the write in the captured graph (`order`:
    each node's position there, by name: fusing may copy the graph's nodes; `partitions`: the nodes
    fused into `{prefix}{i}`). A partition is one node placed after all of its inputs, and fusing
    orders by data only: one reading `x` beside a value made before the write could run after it
    and read the new `x`. A partition whose inputs
    are all ready before the write moves before it; else the write moves after the partition where
    everything that reads the written value comes later; else ValueError (not seen: functionalized
    graphs write inputs back at their end, read after only by the output). Readers that ran after
    the write (the graph's output returning `x`) stay after it.
    Returns how many partitions moved."""
    first = {f"{prefix}{i}": min((order[n.name] for n in nodes if n.name in order), default=None)
             for i, nodes in enumerate(partitions)}  # fmt: skip
    moved = 0
    for write in [n for n in gm.graph.nodes if written_args(n) and n.name in order]:
        for target in written_args(write):
            position = {n: i for i, n in enumerate(gm.graph.nodes)}
            late = [
                r for r in target.users
                if r.op == "call_module" and position[r] > position[write]
                and (first.get(r.target) is not None and first[r.target] < order[write.name])
            ]  # fmt: skip
            for reader in sorted(late, key=position.__getitem__):
                # what reads the written value (the graph's output returning `x`, say) after the write
                after = [u for u in (*target.users, *write.users) if u is not write and u is not reader
                         and order.get(u.name, -1) > order[write.name]]  # fmt: skip
                if all(position[a] < position[write] for a in reader.all_input_nodes):
                    write.prepend(reader)
                elif all(position[u] > position[reader] for u in after):
                    reader.append(write)  # the write moves after the reader, still before its readers
                else:
                    raise ValueError(
                        f"{reader.target} reads {target.name} before {write.name} writes it, and reads"
                        " values made after it"
                    )
                moved += 1
                position = {n: i for i, n in enumerate(gm.graph.nodes)}
    if moved:
        gm.graph.lint()
        gm.recompile()
    return moved


SYMBOLIC_PREFIX = "dynamic_"  # partitions of symbolic sizes (`partition_symbolic`)
SYMBOLIC_KERNELS_ENV = "TILEFUSE_SYMBOLIC_KERNELS"  # "0": nodes of symbolic sizes stay in PyTorch
# ops of symbolic sizes left to PyTorch: contractions (cuBLAS) and concatenations (a KV cache's
# growth: along the symbolic dim)
_SYMBOLIC_IN_PYTORCH = {
    aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default, aten.cat.default,
}  # fmt: skip
# "1": 2-d contractions of symbolic sizes (a linear layer over a dynamic number of tokens) compile
# into GEMM kernels taking their sizes as arguments, their epilogues fused, a config per size bucket;
# default "0" (cuBLAS runs them, the epilogue is a kernel of its own) until measured on a GPU
SYMBOLIC_GEMM_ENV = "TILEFUSE_SYMBOLIC_GEMM"
_SYMBOLIC_GEMMS = {aten.mm.default, aten.addmm.default}


def _compiled_symbolic_gemm(node: Node) -> bool:
    """Whether `node` is a GEMM that compiles where its sizes are symbolic (`SYMBOLIC_GEMM_ENV`)."""
    return node.target in _SYMBOLIC_GEMMS and os.environ.get(SYMBOLIC_GEMM_ENV, "0") == "1"


def symbolic_kernel_reason(node: Node) -> str | None:
    """Why a node of symbolic sizes cannot join a partition of symbolic sizes, or None when it can:
    its lowering reads sizes only as expressions (`symbolic.symbolic_reason`), and its kernel is
    one that takes sizes as arguments (pointwise, reduction and row kernels, and GEMMs where
    `TILEFUSE_SYMBOLIC_GEMM=1`: `SYMBOLIC_KINDS` of `lower_to_tile`)."""
    from .symbolic import symbolic_reason, tensors_of

    if node.target in _SYMBOLIC_IN_PYTORCH and not _compiled_symbolic_gemm(node):
        return f"{target_name(node)} of symbolic sizes runs in PyTorch"
    values = [node.meta.get("val"), *(a.meta.get("val") for a in node.all_input_nodes)]
    for t in [t for v in values for t in tensors_of(v)]:
        for d in t.shape:
            try:
                size_text(size_of(d))  # a kernel computes its sizes with + and * of its size arguments
            except ValueError:
                return f"its size {d} is not a sum or product of sizes (a kernel's size arguments)"
    return symbolic_reason(node)


def symbolic_reasons(gm: GraphModule) -> dict[str, str]:
    """For each node of symbolic sizes, why it runs in PyTorch if `partition_symbolic` leaves it
    there: `symbolic_kernel_reason`, or, for one that could join, that its level held views only."""
    from .symbolic import has_symbolic_size

    reasons = {}
    for node in gm.graph.nodes:
        if node.op == "call_function" and has_symbolic_size(node):
            reasons[node.name] = symbolic_kernel_reason(node) or (
                "of symbolic sizes, in a level of views only: runs in PyTorch (a view costs nothing)"
            )
    return reasons


def partition_symbolic(gm: GraphModule) -> tuple[GraphModule, list[str]]:
    """The second round of a graph of symbolic sizes (after `partition_graph`, whose partitions
    hold its nodes of static sizes): its nodes of symbolic sizes that can become kernels taking
    their sizes as arguments (`symbolic_kernel_reason`) in partitions named `dynamic_N`, by the
    same levels. Partitions of views only are left to PyTorch."""

    if os.environ.get(SYMBOLIC_KERNELS_ENV, "1") == "0":
        return gm, []
    joins: set[Node] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is operator.getitem:
            if node.args[0] in joins:
                joins.add(node)
        elif _of_symbolic_sizes(node) and symbolic_kernel_reason(node) is None:
            joins.add(node)
    if not joins:
        return gm, []
    ops = [n for n in gm.graph.nodes if n.op in ("call_function", "call_module")]
    in_pytorch = {n: "" for n in ops if n not in joins}
    levels = [level for level in _levels(gm, in_pytorch) if any(map(_computes, level))]
    if not levels:
        return gm, []
    partitions = [dict.fromkeys(nodes) for nodes in levels]
    order = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    fused = fuse_by_partitions(gm, partitions, prefix=SYMBOLIC_PREFIX)
    order_reads_before_writes(fused, order, partitions, SYMBOLIC_PREFIX)
    views_as_reshapes(fused)
    modules = [n.target for n in fused.graph.nodes if n.op == "call_module"]
    names = [name for name in modules if name.startswith(SYMBOLIC_PREFIX)]
    return fused, names


def _of_symbolic_sizes(node: Node) -> bool:
    """Whether a node's results have a symbolic size, or, for a GEMM where they compile
    (`SYMBOLIC_GEMM_ENV`), its operands (a weight's gradient contracts over the tokens)."""
    from .symbolic import has_symbolic_size

    if has_symbolic_size(node):
        return True
    return _compiled_symbolic_gemm(node) and any(map(has_symbolic_size, node.all_input_nodes))


def _computes(node: Node) -> bool:
    """Whether a node of a level of symbolic sizes is work a kernel does: not a view, an item, or a
    tensor made at a size (`zeros`, `arange`: alone, a partition of them would only make them, in
    the interpreter, and hand PyTorch a broadcast constant where it may write in place)."""
    from .symbolic import CREATION_OPS

    return node.target is not operator.getitem and node.target not in _FREE_VIEWS | CREATION_OPS


def views_as_reshapes(gm: GraphModule) -> int:
    """Make the views of the graph's PyTorch part (outside its partitions) reshapes, which copy where
    the strides they get do not allow a view. A partition's kernels may lay a result out otherwise
    than eager did (a row kernel's output is row-major), and a PyTorch op reading it may then return
    other strides than traced (the CPU's flash attention returns its output in its query's memory
    order), which a `view` traced for eager's strides refuses (Llama's attention output, viewed
    after its transpose). The graph is functional (AOTAutograd), so no write goes through a view.
    Returns how many views changed."""
    changed = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in (aten.view.default, aten._unsafe_view.default):
            node.target = aten.reshape.default
            changed += 1
    if changed:
        gm.recompile()
    return changed


def copy_constants_per_level(gm: GraphModule, levels: list[list[Node]]) -> int:
    """Give each partition its own copy of a compiled op that reads no tensor (a `full` of zeros, an
    `arange`) where ops of several partitions read it: made in the first reader's partition only, it
    was a result of that partition (copied for the caller every call, as a constant is) and an input
    of every later one, read from memory where a constant folds into the kernels. A training step's
    backward has a partition per layer (SDPA's backward runs in PyTorch between them), and
    `merge_duplicate_ops` made one zeros tensor of the `slice_scatter`s of every layer's RoPE
    gradient. Returns how many copies were made."""
    level_of = {n: i for i, nodes in enumerate(levels) for n in nodes}
    copied = 0
    for node in list(gm.graph.nodes):
        # (a random tensor, not `functional`, is one draw, read alike by every reader)
        if node not in level_of or node.all_input_nodes or node.target is operator.getitem:
            continue
        if not functional(node):
            continue
        by_level: dict[int, list[Node]] = {}
        for user in node.users:
            if user in level_of:
                by_level.setdefault(level_of[user], []).append(user)
        for level in sorted(by_level)[1:]:
            with gm.graph.inserting_after(node):
                copy = gm.graph.node_copy(node)
            for user in by_level[level]:
                user.replace_input_with(node, copy)
            copied += 1
    if copied:
        gm.graph.lint()
        gm.recompile()
    return copied


def _levels(gm: GraphModule, in_pytorch: dict[Node, str]) -> list[list[Node]]:
    """The compiled ops of `gm` in partitions, in linear time: an op's level is the most ops left to
    PyTorch on any path from the graph's inputs to it, taken as late as its readers allow (the latest
    level at or under every reader's: a weight's transpose joins the layer that reads it; a result only
    the graph returns, the last level), and each
    level is one partition. No partition depends on a later one: a path from one op to another that
    runs through an op in PyTorch raises the level. So a graph where every op compiles is one
    partition, and one with an op in PyTorch per layer (MoE routing's `topk`) a partition per layer.
    (torch's CapabilityBasedPartitioner proposes the same cuts through a merge search whose cost grew
    with the cube of the depth: 14 s of a 32-layer Llama's compile with one op per layer left out.)"""
    order = [n for n in gm.graph.nodes]
    earliest: dict[Node, int] = {}  # the most ops in PyTorch on a path from an input
    for n in order:
        earliest[n] = max((earliest[a] + (a in in_pytorch) for a in n.all_input_nodes), default=0)
    # the last level that has a compiled op (the output's may be one more: it reads an op in PyTorch)
    last = max((earliest[n] for n in order if n.op == "call_function" and n not in in_pytorch), default=0)
    latest: dict[Node, int] = {}
    for n in reversed(order):
        if n.op != "call_function" or n in in_pytorch:
            continue
        bounds = [latest[u] if u in latest else earliest[u] for u in n.users if u.op == "call_function"]
        latest[n] = min(bounds, default=last)  # read only as the graph's output: the last partition
    levels: dict[int, list[Node]] = {}
    for n in order:
        if n.target is operator.getitem and n.args[0] in latest:  # an item goes with its op
            latest[n] = latest[n.args[0]]
        if n in latest:
            levels.setdefault(latest[n], []).append(n)
    return [levels[k] for k in sorted(levels)]


# ops that only re-index their one tensor argument (a contiguous clone is a copy PyTorch makes to let a
# view follow, and inside a partition it folds into the kernels' indexing like the views)
_VIEW_OPS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.default,
    aten.alias.default, aten.clone.default,
}  # fmt: skip
# views cost nothing whatever their size (a clone, in _VIEW_OPS for partitions' boundaries, is a copy)
_FREE_VIEWS = _VIEW_OPS - {aten.clone.default} | {aten.expand.default, aten.slice.Tensor, aten.select.int}


def sink_boundary_views(gm: GraphModule, names: list[str]) -> int:
    """Move the views at the end of a partition's result into the partitions that read it.

    A result that is a view chain of a value (`x.permute(0, 2, 1, 3).reshape(b * s, h * d)`, the
    attention gradient a backward's projection reads) cannot be handed over as a torch view when
    the chain reshapes a permuted layout: the producing program copies it (a PyTorch copy kernel,
    24 a Llama training step on the H200). Where every reader of the result is another compiled
    partition, the producer returns the chain's base and each reader applies the chain itself,
    where it folds into its kernels' indexing. Returns how many results were moved."""
    modules = {n for n in gm.graph.nodes if n.op == "call_module" and n.target in names}
    moved = 0
    touched: set[str] = set()  # readers' submodules given a chain: linted and recompiled once, at the end
    for producer in list(modules):
        sub = getattr(gm, producer.target)
        out = sub.graph.output_node()
        values = out.args[0]
        if not isinstance(values, (tuple, list)):
            continue  # a lone result: its readers get the module node itself (left alone)
        handles = {u.args[1]: u for u in producer.users if u.target is operator.getitem}
        new_values = list(values)
        for i, value in enumerate(values):
            chain = _view_chain(value)
            handle = handles.get(i)
            if not chain or handle is None or not handle.users:
                continue
            if any(u not in modules or u is producer for u in handle.users):
                continue  # read by PyTorch or returned: the view is made here, as before
            base = chain[0].args[0]
            if not _sinkable(chain) or "val" not in base.meta:
                continue
            for reader in list(handle.users):
                _apply_chain_in(gm, reader, handle, chain)
                touched.add(reader.target)
            new_values[i] = base
            handle.meta["val"] = base.meta["val"]
            moved += 1
        if new_values != list(values):
            out.args = (tuple(new_values),)
            sub.graph.eliminate_dead_code()
            sub.recompile()
    for target in touched:  # once each: DenseNet-201's 1705 chains recompiled their readers 3.6 s
        sub = getattr(gm, target)
        sub.graph.lint()
        sub.recompile()
    if moved:
        gm.graph.lint()
        gm.recompile()
    return moved


def _view_chain(value: object) -> list[Node]:
    """The view ops ending at `value`, base first (empty when `value` is not a view op)."""
    chain: list[Node] = []
    node = value
    while isinstance(node, Node) and node.op == "call_function" and node.target in _VIEW_OPS:
        chain.append(node)
        node = node.args[0]
        if not isinstance(node, Node) or len(chain) > 16:
            return []
    return chain[::-1]


def _sinkable(chain: list[Node]) -> bool:
    """Views whose other arguments are plain values (no tensors, no symbolic sizes), and clones that
    keep the default (contiguous) layout."""
    for node in chain:
        if node.target is aten.clone.default and node.kwargs.get("memory_format") not in (
            None, torch.contiguous_format,
        ):  # fmt: skip
            return False
        for arg in [*node.args[1:], *node.kwargs.values()]:
            flat = arg if isinstance(arg, (list, tuple)) else [arg]
            if any(isinstance(a, (Node, torch.SymInt)) for a in flat):
                return False
    return True


def _apply_chain_in(gm: GraphModule, reader: Node, handle: Node, chain: list[Node]) -> None:
    """In `reader`'s submodule, the placeholder of `handle` now receives the chain's base: copy the
    chain after it and let its users read the chain's end. The caller lints and recompiles it."""
    sub = getattr(gm, reader.target)
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    for position, arg in enumerate(reader.args):
        if arg is not handle:
            continue
        placeholder = placeholders[position]
        users = list(placeholder.users)
        env = {chain[0].args[0]: placeholder}
        last = placeholder  # placeholders sit among the nodes: the chain follows its own
        for node in chain:
            with sub.graph.inserting_after(last):
                copy = sub.graph.node_copy(node, env.__getitem__)
            env[node] = last = copy
        for user in users:
            user.replace_input_with(placeholder, last)
        placeholder.meta["val"] = chain[0].args[0].meta["val"]
