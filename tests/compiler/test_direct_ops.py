"""Graphs tilefuse runs call PyTorch's bindings instead of boxed OpOverloads (compiler/direct_ops.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from tilefuse.compiler.direct_ops import DIRECT_OPS_ENV, bind_direct, direct_table

aten = torch.ops.aten
g = torch.Generator().manual_seed(0)


def _r(*shape):
    return torch.randn(*shape, generator=g)


# each entry: the op and arguments as an ATen graph would call it (positional and keyword)
CASES = [
    (
        aten.convolution.default,
        (_r(2, 3, 9, 7), _r(4, 3, 3, 2), _r(4), [2, 1], [1, 0], [1, 1], False, [0, 0], 1),
        {},
    ),
    (
        aten.convolution.default,
        (_r(2, 4, 6, 6), _r(4, 2, 3, 3), None, [1, 1], [1, 1], [1, 1], True, [0, 0], 2),
        {},
    ),
    (aten.permute.default, (_r(2, 3, 4), [2, 0, 1]), {}),
    (aten.view.default, (_r(6, 4), [3, 8]), {}),
    (aten.reshape.default, (_r(6, 4).t(), [24]), {}),
    (aten.expand.default, (_r(3, 1), [2, 3, 5]), {}),
    (aten.t.default, (_r(3, 5),), {}),
    (aten.transpose.int, (_r(2, 3, 5), 0, 2), {}),
    (aten.unsqueeze.default, (_r(3, 5), -1), {}),
    (aten.squeeze.dim, (_r(3, 1, 5), 1), {}),
    (aten.select.int, (_r(3, 4, 5), 1, -1), {}),
    (aten.mm.default, (_r(3, 4), _r(4, 5)), {}),
    (aten.bmm.default, (_r(2, 3, 4), _r(2, 4, 5)), {}),
    (aten.addmm.default, (_r(5), _r(3, 4), _r(4, 5)), {"beta": 0.5, "alpha": 2.0}),
    (aten.baddbmm.default, (_r(2, 3, 5), _r(2, 3, 4), _r(2, 4, 5)), {"beta": 2.0}),
    (aten.embedding.default, (_r(10, 4), torch.tensor([[1, 9], [0, 3]]), 0), {}),
    (aten.cat.default, ([_r(2, 3), _r(4, 3)], 0), {}),
    (aten.clone.default, (_r(2, 3, 4, 5),), {"memory_format": torch.channels_last}),
    (aten.relu.default, (_r(7, 3),), {}),
    (aten.constant_pad_nd.default, (_r(2, 3), [1, 2, 0, 1], 0.5), {}),
    (aten.native_layer_norm.default, (_r(3, 8), [8], _r(8), _r(8), 1e-5), {}),
    (aten.native_group_norm.default, (_r(2, 6, 5), _r(6), _r(6), 2, 6, 5, 3, 1e-5), {}),
    (
        aten._native_batch_norm_legit_no_training.default,
        (_r(2, 3, 4), _r(3), _r(3), _r(3), _r(3).abs(), 0.1, 1e-5),
        {},
    ),
    (aten.max_pool2d_with_indices.default, (_r(2, 3, 9, 8), [3, 3], [2, 2], [1, 1]), {}),
    (aten.avg_pool2d.default, (_r(2, 3, 9, 8), [3, 2], [2, 2], [1, 0], False, True), {}),
]


@pytest.mark.parametrize("op,args,kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_a_direct_binding_computes_what_its_op_overload_does(op, args, kwargs):
    direct = direct_table()[op]
    want, got = op(*args, **kwargs), direct(*args, **kwargs)
    want = want if isinstance(want, (tuple, list)) else (want,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    assert len(want) == len(got)
    for w, o in zip(want, got):
        assert w.shape == o.shape and w.dtype == o.dtype and w.stride() == o.stride()
        torch.testing.assert_close(o, w, rtol=0, atol=0)


def test_every_op_of_the_table_is_covered_or_needs_a_gpu():
    gpu_only = {
        aten._scaled_dot_product_flash_attention.default,
        aten._scaled_dot_product_efficient_attention.default,
        aten._scaled_dot_product_cudnn_attention.default,
    }
    covered = {c[0] for c in CASES}
    assert set(direct_table()) - covered <= gpu_only
    for op in gpu_only & set(direct_table()):  # same name, same schema: the binding is generated from it
        assert direct_table()[op].__name__ == op._schema.name.split("::")[1]


def test_only_functional_ops_are_retargeted():
    for op in direct_table():
        assert not op._schema.is_mutable, op


def _conv_block(x, w, s):
    y = F.conv2d(x, w, padding=1)
    return torch.relu(y * s).permute(0, 2, 3, 1).reshape(x.shape[0], -1)


def test_bind_direct_retargets_an_aten_graph_and_keeps_its_result(monkeypatch):
    x, w, s = _r(2, 3, 6, 5), _r(4, 3, 3, 3), _r(4, 1, 1)
    gm = make_fx(_conv_block)(x, w, s)
    want = gm(x, w, s)
    assert bind_direct(gm) >= 2
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert torch.convolution in targets and aten.convolution.default not in targets
    assert "torch.convolution(" in gm.code
    torch.testing.assert_close(gm(x, w, s), want, rtol=0, atol=0)
    monkeypatch.setenv(DIRECT_OPS_ENV, "0")
    captured = make_fx(_conv_block)(x, w, s)
    assert bind_direct(captured) == 0 and "aten.convolution.default" in captured.code


def test_a_compiled_graph_calls_convolutions_through_the_binding(monkeypatch):
    monkeypatch.setenv("TILEFUSE_INTERPRET", "1")
    monkeypatch.setenv("TILEFUSE_CACHE", "0")
    x, w, s = _r(2, 3, 6, 5), _r(4, 3, 3, 3), _r(4, 1, 1)
    calls = []
    real = torch.convolution

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(torch, "convolution", counted)  # what the generated code looks up per call
    compiled = tilefuse.compile(_conv_block)
    torch.testing.assert_close(compiled(x, w, s), _conv_block(x, w, s), rtol=1e-5, atol=1e-5)
    assert calls, "the partitioned graph still calls aten.convolution.default"


def test_a_backward_left_to_pytorch_calls_the_bindings():
    from tilefuse.compiler.backend import _pytorch_backward

    def grads(g, x, w):  # the shape of a linear layer's backward
        return g @ w, (x.t() @ g).t()

    g_, x, w = _r(4, 5), _r(4, 3), _r(5, 3)
    bw = make_fx(grads)(g_, x, w)
    want = bw(g_, x, w)
    run = _pytorch_backward(bw, [g_, x, w])
    got = run([g_, x, w])
    assert "torch.mm(" in bw.code and "aten.mm" not in bw.code, bw.code
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reports_name_the_captured_aten_ops(monkeypatch):
    monkeypatch.setenv("TILEFUSE_INTERPRET", "1")
    monkeypatch.setenv("TILEFUSE_CACHE", "0")
    x = _r(2, 3, 11)
    compiled = tilefuse.compile(lambda x: x.view(6, 11).t() * 2)
    compiled(x)
    ops = {op for r in compiled.tilefuse_reports for p in r["partitions"] for op in p["aten_ops"]}
    assert {"aten.view.default", "aten.permute.default", "aten.mul.Tensor"} == ops, ops
