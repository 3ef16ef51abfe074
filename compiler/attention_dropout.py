"""Attention with dropout (a model in train mode: BERT's and GPT-2's default configs), in the
inputs' dtype.

AOTAutograd cannot keep `scaled_dot_product_attention` whole when it drops out: the fused
kernels' random draws are not traceable, so PyTorch traces its math fallback, which computes the
whole attention in float32 (bf16 inputs upcast): on the H200 BERT's step (4 layers, 8 x 512
tokens) spent ~0.4 ms a layer in FFMA float32 batched GEMMs and ~0.1 ms in float32 dropout, and
was slower than eager's cuDNN attention. Before AOTAutograd traces a Dynamo graph, each such call
is replaced by `attention_with_dropout`: the products in the inputs' dtype (tensor cores, float32
accumulation), the softmax in float32, dropout on the 16-bit probabilities, as eager's unfused
attention computes it. Calls without dropout are left to the attention matcher, and a graph that
does not train keeps its dropping-out SDPA whole (it runs in PyTorch, drawing eager's masks).

The same copy of any graph, training or not, drops the masks transformers builds while tracing
where eager passes none (BERT's and ViT's all-visible mask, a decoder's causal mask:
`causal_masks.py`), so AOTAutograd traces SDPA's fused kernels, not the float32 math fallback a
mask sends it to: ViT-base's inference (197 tokens, a mask the memory-efficient kernel cannot take
unpadded) traced float32 FFMA batched GEMMs, ~1.7 ms of a 3.8 ms forward on the H200, where eager
ran cuDNN's attention.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.fx import Graph, GraphModule, Node

from .causal_masks import constant_attention_masks, sdpa_options

SDPA = F.scaled_dot_product_attention  # torch._C._nn's, as Dynamo records it
# graph meta of the copy `attention_for_tracing` makes: how many masks became is_causal=True ("causal")
# and how many went as hiding nothing ("visible")
MASKS_DROPPED = "tilefuse_masks_dropped"


def attention_with_dropout(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
) -> torch.Tensor:  # fmt: skip
    """`F.scaled_dot_product_attention` in train mode (dropout drawn), unfused, in the inputs' dtype."""
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa and key.size(-3) != query.size(-3):
        groups = query.size(-3) // key.size(-3)
        key, value = key.repeat_interleave(groups, -3), value.repeat_interleave(groups, -3)
    # scaled before the product, as PyTorch's math path does (a 16-bit product of unscaled
    # operands can overflow in fp16); masks added in float32
    root = math.sqrt(scale)
    scores = (query * root) @ (key * root).transpose(-2, -1)
    scores = scores.to(torch.promote_types(query.dtype, torch.float32))
    if is_causal:
        keep = torch.ones(query.size(-2), key.size(-2), dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    # a row masked whole has no probabilities: zeros forward and backward, as SDPA's `_safe_softmax`
    probs = torch._safe_softmax(scores, -1).to(query.dtype)
    return F.dropout(probs, dropout_p, training=True) @ value


def _erase_unread(graph: Graph, masks: list[Node]) -> None:
    """Erase each dropped mask and its ancestors that nothing reads any more (all pure: the masks
    were evaluated, `causal_masks._dynamo_value`); nothing else of the graph is touched (FX's dead
    code elimination would also take in-place methods whose results nobody reads)."""
    stack, erased = list(masks), set()
    while stack:
        node = stack.pop()
        if node in erased or node.users or node.op not in ("call_function", "call_method"):
            continue
        inputs = node.all_input_nodes
        graph.erase_node(node)
        erased.add(node)
        stack.extend(inputs)


def _drops_out(node: Node) -> bool:
    """Whether a Dynamo graph's SDPA call drops out (a rate that is not a literal 0 may)."""
    rate = sdpa_options(node).get("dropout_p", 0.0)
    return not isinstance(rate, int | float) or rate != 0


def attention_for_tracing(gm: GraphModule, training: bool) -> GraphModule:
    """`gm`, or a copy of it (sharing its attributes) in which attention calls whose mask is a
    constant that hides nothing have no mask, those whose mask is the causal mask take
    `is_causal=True` (`causal_masks.constant_attention_masks`: AOTAutograd then traces the fused
    kernels that take no mask), and, in a graph that trains (`training`), calls that drop out call
    `attention_with_dropout`; `gm` itself is unchanged (Dynamo's graph is also the PyTorch side of
    the graph's measured choice)."""
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is SDPA]
    drops = [n for n in calls if _drops_out(n)] if training else []  # inference keeps them whole
    masks = constant_attention_masks(gm, SDPA) if calls else {}
    if not drops and not masks:
        return gm
    graph, copies = dynamo_graph_copy(gm)
    dropped: list[Node] = []  # the masks no call reads any more
    for node, kind in masks.items():
        made = copies[node]
        options = sdpa_options(made)
        dropped.append(options["attn_mask"])
        made.args = made.args[:3]  # query, key, value; the rest by name (the copy's nodes)
        made.kwargs = {**options, "attn_mask": None, "is_causal": kind == "causal"}
    for node in drops:
        copies[node].target = attention_with_dropout
    _erase_unread(graph, dropped)
    copy = dynamo_module(gm, graph)
    kinds = list(masks.values())
    copy.meta[MASKS_DROPPED] = {kind: kinds.count(kind) for kind in ("causal", "visible")}
    return copy


def dynamo_graph_copy(gm: GraphModule) -> tuple[Graph, dict[Node, Node]]:
    """A copy of Dynamo's graph to rewrite, and its nodes by the originals; its placeholders keep
    the sources Dynamo names them by (AOTAutograd reads them: `dynamo_module`)."""
    graph = Graph()
    copies: dict[Node, Node] = {}
    graph.output(graph.graph_copy(gm.graph, copies))
    graph._codegen = gm.graph._codegen
    for node, made in copies.items():
        if hasattr(node, "_dynamo_source"):
            made._dynamo_source = node._dynamo_source
    return graph, copies


def dynamo_module(gm: GraphModule, graph: Graph) -> GraphModule:
    """`graph` (a `dynamo_graph_copy` of `gm`, rewritten) as a module with what AOTAutograd reads off
    Dynamo's graph: its metadata (input guards, static inputs) and its parameters' sources."""
    copy = GraphModule(gm, graph)
    copy.meta.update(gm.meta)
    if hasattr(gm, "_param_name_to_source"):
        copy._param_name_to_source = gm._param_name_to_source
    return copy
