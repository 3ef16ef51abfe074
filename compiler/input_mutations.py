"""Inputs a graph updates in place: a static KV cache's `index_copy_`, a counter's `+= 1`.

AOTAutograd turns an in-place update of a graph input into a functional op and
a write-back. With `keep_inference_input_mutations` (inference graphs, as
Inductor compiles them) the write-back stays in the graph as
`copy_(input, new_value)`, so the graph itself says which inputs it updates.
Two things follow:

- `reinplace`: where the new value is `index_put`/`index_copy` of that very
  input and nothing else reads the old value, the pair becomes the in-place op
  (`index_put_`), as Inductor's reinplacing pass does: the functional form
  copies the whole cache to write one position (a 4096-token cache of a 32-layer
  model: gigabytes a decoding step), the in-place one writes the position.
  The same holds for an `index_put` into a buffer the graph has just filled
  (`full`/`zeros`) and reads nowhere else: an embedding's weight gradient
  (zeros of the vocabulary's size, the token gradients accumulated in) copied
  its 32000 x 2048 buffer once more to accumulate (123 µs of a Llama training
  step on the H200).
- `mutated_inputs`: which placeholders the graph writes. A CUDA graph replay
  must run on those very tensors (a capture on copies would update the copies),
  and a graph that updates its inputs must not be run twice in one call to
  time it against PyTorch (a counter would be incremented twice).
"""

from __future__ import annotations

import torch
from torch.fx import GraphModule, Node

from .duplicate_ops import alias_chain, aliases_its_input

aten = torch.ops.aten
# functional update -> its in-place form, with the updated tensor as argument 0 of both
_IN_PLACE = {
    aten.index_put.default: aten.index_put_.default,
    aten.index_copy.default: aten.index_copy_.default,
    aten.slice_scatter.default: None,  # no in-place form: left functional
    # a counter's `+= 1` (BatchNorm's num_batches_tracked, one a layer in training): an add and a copy
    # were two launches a call, the in-place add is one; only where the update keeps `x`'s shape and dtype
    aten.add.Tensor: aten.add_.Tensor,
    aten.sub.Tensor: aten.sub_.Tensor,
    aten.mul.Tensor: aten.mul_.Tensor,
}
_ELEMENTWISE = (aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor)


def _same_layout(a: Node, b: Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (
        isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
        and va.dtype == vb.dtype and tuple(va.shape) == tuple(vb.shape)
    )  # fmt: skip


def reinplace(gm: GraphModule) -> int:
    """Rewrite `copy_(x, index_put(x, ...))` on a placeholder `x` nobody else reads into
    `index_put_(x, ...)` (`index_copy`, and `add`/`sub`/`mul` of `x` of its own shape and dtype
    alike), and `index_put` into a freshly filled buffer nothing else reads into `index_put_`;
    returns how many were rewritten."""
    graph = gm.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.copy_.default:
            continue
        dest, src = node.args[0], node.args[1]
        if not (isinstance(dest, Node) and dest.op == "placeholder" and isinstance(src, Node)):
            continue
        in_place = _IN_PLACE.get(src.target)
        if in_place is None or src.args[0] is not dest or set(dest.users) != {src, node}:
            continue
        if src.target in _ELEMENTWISE and not _same_layout(src, dest):
            continue  # the in-place op would not broadcast or promote as the copy does
        with graph.inserting_before(src):
            updated = graph.call_function(in_place, src.args, src.kwargs)
        updated.meta = dict(src.meta)
        src.replace_all_uses_with(updated)
        node.replace_all_uses_with(updated)  # copy_ returns its destination, now `updated`
        graph.erase_node(node)
        graph.erase_node(src)
        rewritten += 1
    rewritten += _reinplace_fresh(graph)
    if rewritten:
        graph.lint()
        gm.recompile()
    return rewritten


_FRESH = (aten.full.default, aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default)


def _reinplace_fresh(graph: torch.fx.Graph) -> int:
    """`index_put(full(...), ...)` where the filled buffer has no other reader -> `index_put_` on it."""
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.index_put.default:
            continue
        buffer = node.args[0]
        if not (isinstance(buffer, Node) and buffer.target in _FRESH and set(buffer.users) == {node}):
            continue
        with graph.inserting_before(node):
            updated = graph.call_function(aten.index_put_.default, node.args, node.kwargs)
        updated.meta = dict(node.meta)
        node.replace_all_uses_with(updated)
        graph.erase_node(node)
        rewritten += 1
    return rewritten


def written_args(node: Node) -> list[Node]:
    """The nodes an in-place op writes: its arguments (or the tensors of a list argument, as
    `_foreach_copy_`'s) that its schema marks written; none for any other node."""
    schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
    if schema is None or not schema.is_mutable:  # aten overloads have a schema; getitem has none
        return []
    written = []
    for arg, spec in zip(node.args, schema.arguments):
        if spec.alias_info is not None and spec.alias_info.is_write:
            written += [a for a in (arg if isinstance(arg, (list, tuple)) else [arg]) if isinstance(a, Node)]
    return written


def mutated_inputs(gm: GraphModule) -> list[bool]:
    """For each placeholder of `gm`, whether an op writes it in place (`copy_`, `index_put_`,
    `add_`, `_foreach_copy_`...)."""
    written = {w for node in gm.graph.nodes for w in written_args(node)}
    return [n in written for n in gm.graph.nodes if n.op == "placeholder"]


def batch_write_backs(gm: GraphModule) -> int:
    """The graph's write-backs into its inputs as one op each kind, at its end: every `copy_(x, new)`
    of a placeholder `x` of `new`'s shape and dtype -> one `_foreach_copy_`, and every counter's
    `add_(x, c)` -> one `_foreach_add_` per constant `c`, where nothing reads `x` after its write and
    nothing reads the write's result. BatchNorm in training writes back its running mean and variance
    and counts its batches: three launches a layer (EfficientNet-B0's graph: 80 copies and 40 adds,
    each a PyTorch call between partitions); batched, a couple of multi-tensor launches a call.
    Returns how many writes were batched (0 where a kind has fewer than two)."""
    graph = gm.graph
    position = {n: i for i, n in enumerate(graph.nodes)}
    copies: list[Node] = []
    counters: dict[object, list[Node]] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.users or not node.args:
            continue
        dest = node.args[0]
        if not (isinstance(dest, Node) and dest.op == "placeholder"):
            continue
        if any(position[u] > position[node] for a in _aliases(dest) for u in a.users):
            continue  # read (or written) again after this write, itself or through a view: it stays
        if node.target is aten.copy_.default and len(node.args) == 2 and not node.kwargs:
            src = node.args[1]
            # a source that views an input may see that input written before the batch reads it
            if isinstance(src, Node) and _same_layout(src, dest) and alias_chain(src)[-1].op != "placeholder":
                copies.append(node)
        elif node.target is aten.add_.Tensor and len(node.args) == 2 and not node.kwargs:
            constant = node.args[1]
            if isinstance(constant, (int, float)) and not isinstance(constant, bool):
                counters.setdefault(constant, []).append(node)
    sources = [n.args[1] for n in copies]
    batches = [(aten._foreach_copy_.default, copies, ([n.args[0] for n in copies], sources))]
    batches += [(aten._foreach_add_.Scalar, ns, ([n.args[0] for n in ns], c)) for c, ns in counters.items()]
    batched = 0
    output = graph.output_node()
    for op, nodes, arguments in batches:
        if len(nodes) < 2:
            continue
        with graph.inserting_before(output):
            graph.call_function(op, arguments)
        for node in nodes:
            graph.erase_node(node)
        batched += len(nodes)
    if batched:
        graph.lint()
        gm.recompile()
    return batched


def _aliases(node: Node) -> list[Node]:
    """`node` and every view of it in the graph, through chains of views."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        found.append(current)
        stack += [u for u in current.users if aliases_its_input(u) and u.args[0] is current]
    return found
