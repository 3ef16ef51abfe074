"""Complex tensors as pairs of real ones on the aten graph: rotations written with complex numbers compile.

Llama 4 (and Meta's reference Llama code) rotate queries and keys by a complex product:
`view_as_real(view_as_complex(x.reshape(..., -1, 2)) * freqs_cis)`, with `freqs_cis =
polar(ones, angles)`. `ein` has no complex dtype, so each of those ops stayed in PyTorch and the
graph split around every layer's rotation (Llama 4's tiny config: 5 partitions and 17 ops in
PyTorch, of which 6 complex).

Here each connected set of complex-valued ops (`component`) whose producers and consumers are all
understood is rewritten on (real, imaginary) pairs of its real dtype:

- `view_as_complex(x)` is `(x[..., 0], x[..., 1])`; `polar(r, t)` is `(r cos t, r sin t)`;
  `complex(a, b)` is `(a, b)`;
- products, sums and differences are written out (`(a + bi)(c + di) = (ac - bd) + (ad + bc)i`; a
  real factor or a real scalar scales both parts), `neg` negates both;
- views, copies and indexing (`view`, `unsqueeze`, `expand`, `slice`, `select`, `permute`,
  `clone`, `index`, ...) apply to both parts with the same arguments: a complex tensor of shape S
  is two real tensors of shape S;
- `view_as_real(c)` stacks the parts on a new last dim (`cat` of two `unsqueeze`s), `real(c)` and
  `imag(c)` are the parts;
- a complex graph input (Meta's Llama keeps `freqs_cis` as a complex buffer) is read through
  `view_as_real` (a view PyTorch takes beside the kernels) and its two `select`s.

A set that touches anything else (a complex graph output, an FFT, a complex scalar, a division,
a conjugate) is left as it was and runs in PyTorch, as before. Numerics: PyTorch's complex
product computes the same four products and two sums in the real dtype; the generated kernel may
contract one product and sum into an FMA (a rounding of the real dtype's order).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._guards import detect_fake_mode
from torch.fx import GraphModule, Node

from .partition import call_with_value

aten = torch.ops.aten

# ops that apply to both parts with the same arguments (the complex tensor is their first argument,
# no other argument is complex)
BOTH_PARTS = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
    aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.expand.default, aten.permute.default,
    aten.transpose.int, aten.t.default, aten.slice.Tensor, aten.select.int, aten.clone.default,
    aten.alias.default, aten.index.Tensor, aten.index_select.default, aten.repeat.default,
    aten.flip.default, aten.roll.default,
}  # fmt: skip
PRODUCERS = {aten.view_as_complex.default, aten.polar.default, aten.complex.default}
ARITHMETIC = {aten.mul.Tensor, aten.add.Tensor, aten.sub.Tensor, aten.neg.default}
CONSUMERS = {aten.view_as_real.default, aten.real.default, aten.imag.default}


def _is_complex(node: object) -> bool:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return isinstance(val, torch.Tensor) and val.dtype.is_complex


def _complex_args(node: Node) -> list[Node]:
    return [a for a in node.all_input_nodes if _is_complex(a)]


def _supported(node: Node) -> bool:
    """Whether a complex-valued node can be computed on pairs from its arguments."""
    if node.op == "placeholder":  # a complex input (Meta's precomputed `freqs_cis`): read as real pairs
        return True
    if node.op != "call_function":
        return False
    target, args = node.target, node.args
    if target in PRODUCERS:
        return not _complex_args(node)
    if target in BOTH_PARTS:
        return isinstance(args[0], Node) and _complex_args(node) == [args[0]]
    if target in ARITHMETIC:
        if node.kwargs.get("alpha", 1) != 1:
            return False
        # a complex Python scalar has no pair form here; real scalars and tensors scale or shift, where
        # a real addend does not broadcast the complex one (its imaginary part is read unchanged)
        if any(isinstance(a, complex) for a in args) or len(args) > 2:
            return False
        shape = node.meta["val"].shape
        return target not in (aten.add.Tensor, aten.sub.Tensor) or all(
            a.meta["val"].shape == shape for a in _complex_args(node)
        )
    return False


def _consumable(user: Node, node: Node) -> bool:
    """Whether a real-valued user of a complex node reads it in a way written on pairs."""
    return user.op == "call_function" and user.target in CONSUMERS and user.args[0] is node


def components(gm: GraphModule) -> list[list[Node]]:
    """The connected sets of complex-valued nodes that can be rewritten on pairs, each in graph order."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    complex_nodes = [n for n in order if _is_complex(n)]
    seen: set[Node] = set()
    found = []
    for start in complex_nodes:
        if start in seen:
            continue
        members, stack, ok = [], [start], True
        seen.add(start)
        while stack:
            node = stack.pop()
            members.append(node)
            ok = ok and _supported(node)
            neighbours = list(_complex_args(node)) if node.op == "call_function" else []
            for user in node.users:
                if _is_complex(user):
                    neighbours.append(user)
                elif not _consumable(user, node):
                    ok = False  # a graph output, or an op on complex values not written here
            for other in neighbours:
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        if ok:
            found.append(sorted(members, key=order.__getitem__))
    return found


def complex_as_pairs(gm: GraphModule) -> int:
    """Rewrite every rewritable complex component of `gm` on real pairs; returns how many complex
    ops went."""
    sets = components(gm)
    if not sets:
        return 0
    vals = [n.meta["val"] for s in sets for n in s]
    fake_mode = detect_fake_mode(vals)
    if fake_mode is None:  # no fake tensors to compute the new nodes' metadata on
        return 0
    graph = gm.graph
    removed = 0
    for members in sets:
        pairs: dict[Node, tuple[Node, Node]] = {}
        made: list[Node] = []
        try:
            for node in members:
                # an input's parts are read after the last input, every other node's where it was
                at = node if node.op != "placeholder" else _after_inputs(graph)
                with graph.inserting_before(at):
                    pairs[node] = _pair(_caller(graph, fake_mode, made), node, pairs)
        except Exception:  # a view the parts' strides cannot take, say: the component stays complex
            for new in reversed(made):
                graph.erase_node(new)
            continue
        own = set(made)  # an input's view_as_real, made above: its parts' source, not a reader
        for node in members:
            for user in list(node.users):
                if _is_complex(user) or user in own:
                    continue
                re, im = pairs[node]
                with graph.inserting_before(user):
                    if user.target == aten.real.default:
                        new = re
                    elif user.target == aten.imag.default:
                        new = im
                    else:  # view_as_real: the parts on a new last dim
                        call = _caller(graph, fake_mode, [])
                        parts = [call(aten.unsqueeze.default, [p, -1]) for p in (re, im)]
                        new = call(aten.cat.default, [parts, -1])
                user.replace_all_uses_with(new)
                graph.erase_node(user)
        for node in reversed(members):
            if node.op != "placeholder":  # an input stays, read through its parts
                graph.erase_node(node)
                removed += 1
    graph.lint()
    gm.recompile()
    return removed


def _after_inputs(graph: object) -> Node:
    """The graph's first node that is not an input."""
    return next(n for n in graph.nodes if n.op != "placeholder")


def _caller(graph: object, fake_mode: object, made: list[Node]) -> Callable[..., Node]:
    """Insert a call with its metadata at the graph's insertion point, noting it in `made`."""

    def call(target: object, args: list, kwargs: dict | None = None) -> Node:
        node = call_with_value(graph, fake_mode, target, args, kwargs)
        made.append(node)
        return node

    return call


def _pair(call: Callable[..., Node], node: Node, pairs: dict[Node, tuple[Node, Node]]) -> tuple[Node, Node]:
    """The (real, imaginary) nodes of a complex node, made by `call` at the graph's insertion point."""
    if node.op == "placeholder":  # its memory as [..., 2] reals (a view PyTorch takes beside the kernels)
        as_real = call(aten.view_as_real.default, [node])
        return tuple(call(aten.select.int, [as_real, -1, i]) for i in (0, 1))
    target, args = node.target, list(node.args)
    if target == aten.view_as_complex.default:
        return tuple(call(aten.select.int, [args[0], -1, i]) for i in (0, 1))
    if target == aten.polar.default:
        radius, angle = args
        return call(aten.mul.Tensor, [radius, call(aten.cos.default, [angle])]), call(
            aten.mul.Tensor, [radius, call(aten.sin.default, [angle])]
        )
    if target == aten.complex.default:
        return args[0], args[1]
    if target in BOTH_PARTS:
        re, im = pairs[args[0]]
        return call(target, [re, *args[1:]], dict(node.kwargs)), call(
            target, [im, *args[1:]], dict(node.kwargs)
        )
    if target == aten.neg.default:
        re, im = pairs[args[0]]
        return call(aten.neg.default, [re]), call(aten.neg.default, [im])
    a, b = args
    if target in (aten.add.Tensor, aten.sub.Tensor):
        ar, ai = pairs[a] if a in pairs else (a, None)
        br, bi = pairs[b] if b in pairs else (b, None)
        real = call(target, [ar, br])
        if ai is None:  # a real left side: its imaginary part is 0
            imag = bi if target == aten.add.Tensor else call(aten.neg.default, [bi])
        elif bi is None:
            imag = ai
        else:
            imag = call(target, [ai, bi])
        return real, imag
    # mul
    if a in pairs and b in pairs:
        (ar, ai), (br, bi) = pairs[a], pairs[b]
        real = call(aten.sub.Tensor, [call(aten.mul.Tensor, [ar, br]), call(aten.mul.Tensor, [ai, bi])])
        imag = call(aten.add.Tensor, [call(aten.mul.Tensor, [ar, bi]), call(aten.mul.Tensor, [ai, br])])
        return real, imag
    (cr, ci), factor = (pairs[a], b) if a in pairs else (pairs[b], a)
    return call(aten.mul.Tensor, [cr, factor]), call(aten.mul.Tensor, [ci, factor])
