"""The partitioner (`partition._levels`): on random graphs where some ops stay in PyTorch, every
compiled op lands in exactly one partition and no partition waits on a later one (the contracted
graph is acyclic); a layered graph gets one partition per stretch between PyTorch ops, and its
cost stays linear in the depth."""

from __future__ import annotations

import operator

import networkx as nx
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.fx import Graph, GraphModule, Node

from tilefuse.compiler.partition import _levels

aten = torch.ops.aten


def _contracted(gm: GraphModule, parts: list[list[Node]]) -> nx.DiGraph:
    home = {n: f"p{i}" for i, part in enumerate(parts) for n in part}
    g = nx.DiGraph()
    for n in gm.graph.nodes:
        for a in n.all_input_nodes:
            src, dst = home.get(a, a.name), home.get(n, n.name)
            if src != dst:
                g.add_edge(src, dst)
    return g


@st.composite
def graphs(draw):
    """A random DAG of binary ops over two inputs; some ops (and multi-output items) stay in PyTorch."""
    g = Graph()
    values = [g.placeholder("x"), g.placeholder("y")]
    in_pytorch: dict[Node, str] = {}
    for _ in range(draw(st.integers(1, 40))):
        a, b = (values[draw(st.integers(0, len(values) - 1))] for _ in range(2))
        if draw(st.integers(0, 9)) == 0:  # a multi-output op and one of its items
            op = g.call_function(aten.var_mean.correction, (a,))
            item = g.call_function(operator.getitem, (op, draw(st.integers(0, 1))))
            if draw(st.booleans()):
                in_pytorch[op] = in_pytorch[item] = "left out"
            values.append(item)
            continue
        node = g.call_function(aten.add.Tensor, (a, b))
        if draw(st.integers(0, 3)) == 0:
            in_pytorch[node] = "left out"
        values.append(node)
    g.output(tuple(values[-draw(st.integers(1, 3)) :]))
    return GraphModule(torch.nn.Module(), g), in_pytorch


@settings(max_examples=150, deadline=None)
@given(graphs())
def test_every_compiled_op_is_in_one_partition_and_partitions_never_wait_on_later_ones(case):
    gm, in_pytorch = case
    parts = _levels(gm, in_pytorch)
    placed = [n for part in parts for n in part]
    compiled = [n for n in gm.graph.nodes if n.op == "call_function" and n not in in_pytorch]
    assert sorted(placed, key=str) == sorted(compiled, key=str) and len(set(placed)) == len(placed)
    assert nx.is_directed_acyclic_graph(_contracted(gm, parts))
    for part in parts:  # an item is never cut from its op
        members = set(part)
        assert all(n.args[0] in members for n in part if n.target is operator.getitem)


def _layers(depth: int) -> tuple[GraphModule, dict[Node, str]]:
    """`depth` layers of three compiled ops around one op left to PyTorch (a MoE router's topk)."""
    g = Graph()
    x = g.placeholder("x")
    in_pytorch = {}
    for _ in range(depth):
        h = g.call_function(aten.mul.Tensor, (x, x))
        routed = g.call_function(aten.cumsum.default, (h, 0))
        in_pytorch[routed] = "left out"
        x = g.call_function(aten.add.Tensor, (g.call_function(aten.add.Tensor, (h, routed)), x))
    g.output(x)
    return GraphModule(torch.nn.Module(), g), in_pytorch


def test_a_layered_graph_gets_a_partition_per_stretch_between_pytorch_ops():
    gm, in_pytorch = _layers(5)
    parts = _levels(gm, in_pytorch)
    assert [len(p) for p in parts] == [1, 3, 3, 3, 3, 2]
    gm, in_pytorch = _layers(400)  # linear: the merge search it replaced grew with the cube of the depth
    assert len(_levels(gm, in_pytorch)) == 401


def test_a_result_only_the_graph_returns_joins_the_last_partition_not_one_of_its_own():
    """x -> a (compiled) -> output, and x -> u (PyTorch) -> output: `a` has no reader to place it, and
    the output reads `u`; `a` goes to the last level that has compiled ops, here its only one."""
    g = Graph()
    x = g.placeholder("x")
    a = g.call_function(aten.mul.Tensor, (x, x))
    b = g.call_function(aten.add.Tensor, (a, x))
    u = g.call_function(aten.cumsum.default, (b, 0))
    c = g.call_function(aten.neg.default, (x,))
    g.output((u, c))
    gm = GraphModule(torch.nn.Module(), g)
    assert _levels(gm, {u: "left out"}) == [[a, b, c]]


def test_a_constant_read_in_several_partitions_is_made_in_each(tmp_path):
    """A compiled op that reads no tensor (the zeros a backward's `slice_scatter`s start from, one
    for every layer after `merge_duplicate_ops`) is copied into each partition that reads it: made
    only in the first, it was that partition's result (copied for the caller every call) and a
    tensor read from memory by the later ones, where a constant folds into their kernels."""
    import tilefuse
    from tilefuse.compiler.partition import copy_constants_per_level

    w = torch.randn(5, 8)

    def fn(x):
        zeros = torch.zeros(6, 8)
        a = torch.sin(x @ w + zeros)  # a product: work, so compiled (not a cheap op of the inputs)
        top = torch.topk(a, 3, dim=-1).values  # runs in PyTorch: the ops after it are a second partition
        return torch.cos(top.sum(-1, keepdim=True) + zeros)

    x = torch.randn(6, 5)
    compiled = tilefuse.compile(fn, dump=tmp_path)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), fn(x))
    programs = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert len(programs) == 2
    assert not any("clone" in p for p in programs)  # no constant handed from one partition to the next

    g = Graph()  # the copy, on a graph: one per later level, its readers there rewired to it
    y = g.placeholder("y")
    zeros = g.call_function(aten.zeros.default, ([4],), {"device": "cpu"})
    first = g.call_function(aten.add.Tensor, (y, zeros))
    cut = g.call_function(aten.neg.default, (first,))
    second = g.call_function(aten.mul.Tensor, (cut, zeros))
    third = g.call_function(aten.sub.Tensor, (second, zeros))
    g.output((third,))
    gm = GraphModule(torch.nn.Module(), g)
    in_pytorch = {cut: "left out"}
    assert copy_constants_per_level(gm, _levels(gm, in_pytorch)) == 1
    copies = [n for n in gm.graph.nodes if n.target is aten.zeros.default]
    assert len(copies) == 2 and second.args[1] is third.args[1] is not first.args[1]
    levels = _levels(gm, in_pytorch)
    assert first.args[1] in levels[0] and second.args[1] in levels[1]
    torch.testing.assert_close(gm(torch.ones(4)), (torch.zeros(4),))


def _routing(x, w):
    """A mixture of experts' routing, as Mixtral's: the chosen experts flattened (a view) between topk
    and sort, their count taken by histc on a float copy (one small cast between sort and histc), then
    work that compiles."""
    top = torch.topk(x @ w, 2)
    order = torch.sort(top.indices.reshape(-1))
    counts = torch.histc(order.values.float(), 4, 0, 3)
    return torch.relu(x @ w * counts) + order.indices.sum()


def test_a_view_or_one_small_op_between_ops_in_pytorch_is_not_a_partition():
    """The flattening view and the cast run in PyTorch, each named in the report with the reason; the
    result matches eager; a lone small op the graph reads from its inputs is still compiled."""
    import tilefuse
    from helpers import compile_and_compare
    from tilefuse.compiler.partition import LONE_OP

    torch.manual_seed(0)
    x, w = torch.randn(8, 16), torch.randn(16, 4)
    compiled = tilefuse.compile(_routing)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, w), _routing(x, w))
    (report,) = compiled.tilefuse_reports
    lone = sorted(f["op"] for f in report["fallbacks"] if f["reason"] == LONE_OP)
    assert lone == ["aten._to_copy.default", "aten.view.default"], report["fallbacks"]
    assert len(report["partitions"]) == 2, [p["name"] for p in report["partitions"]]
    compile_and_compare(lambda v: v.float() * 2, torch.arange(6))  # reads the graph's input
