"""Views at the end of a partition's result move into the partitions that read it
(`partition.sink_boundary_views`): the producer returns the view chain's base, so no program copies a
permuted layout to hand it over, and every result stays the same."""

from __future__ import annotations

import copy
import operator

import pytest
import torch
from tiny_models import MODELS, VOCAB
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.utils.fuser_utils import fuse_by_partitions

import tilefuse
import tilefuse.compiler.driver  # noqa: F401  (registers the lowerings partition.py consults)
from tilefuse.compiler.partition import _VIEW_OPS, sink_boundary_views

aten = torch.ops.aten


def _f(a, b, w):
    s = a + b  # [16, 64]
    v = s.view(2, 8, 4, 16).permute(0, 2, 1, 3).reshape(8, 128)  # a copy wherever it is made
    return torch.relu(v @ w), s * 3


def _fused(reader_in_pytorch: bool = False):
    args = torch.randn(16, 64), torch.randn(16, 64), torch.randn(128, 24)
    gm = make_fx(_f, tracing_mode="fake")(*args)
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    producer = [n for n in calls if n.target in (aten.add.Tensor, *_VIEW_OPS)]
    reader = [n for n in calls if n.target in (aten.mm.default, aten.relu.default)]
    parts = [dict.fromkeys(producer)] + ([] if reader_in_pytorch else [dict.fromkeys(reader)])
    fused = fuse_by_partitions(gm, parts, always_return_tuple=True)
    names = [n.target for n in fused.graph.nodes if n.op == "call_module"]
    return fused, names, args


def _outputs(module) -> list:
    values = module.graph.output_node().args[0]
    return list(values) if isinstance(values, (tuple, list)) else [values]


def test_a_view_chain_read_by_another_partition_moves_there():
    fused, names, args = _fused()
    want = _f(*args)
    producer, reader = (getattr(fused, n) for n in names)
    assert any(o.target in _VIEW_OPS for o in _outputs(producer))  # the chain ends the producer
    assert sink_boundary_views(fused, names) == 1
    assert not any(o.target in _VIEW_OPS for o in _outputs(producer))  # its base is returned instead
    reader_ops = [n.target for n in reader.graph.nodes if n.op == "call_function"]
    assert aten.permute.default in reader_ops and aten.mm.default in reader_ops
    handle = next(u for n in fused.graph.nodes if n.op == "call_module" and n.target == names[0]
                  for u in n.users if u.target is operator.getitem and u.args[1] == 0)  # fmt: skip
    assert tuple(handle.meta["val"].shape) == (16, 64)  # the base's value, not the view's
    for got, expected in zip(fused(*args), want):
        torch.testing.assert_close(got, expected)


def test_a_view_read_by_pytorch_stays():
    fused, names, args = _fused(reader_in_pytorch=True)
    assert sink_boundary_views(fused, names) == 0
    for got, expected in zip(fused(*args), _f(*args)):
        torch.testing.assert_close(got, expected)


def test_training_backward_hands_no_permuted_copy_between_partitions(tmp_path, monkeypatch):
    """A tiny Llama trained on CPU: the attention backward runs in PyTorch between the backward's
    partitions, and the gradients the q/k/v projections read are a permute + reshape of the
    attention's: no backward program makes those copies, and the gradients match eager."""
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")  # the backward compiled on CPU too
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = MODELS["llama"]().train()
    reference = MODELS["llama"]().train()
    reference.load_state_dict(model.state_dict())
    compiled = tilefuse.compile(model, dump=tmp_path)
    ids = torch.randint(0, VOCAB, (2, 13))  # ragged: 13 tokens
    compiled(input_ids=ids, labels=ids).loss.backward()
    reference(input_ids=ids, labels=ids).loss.backward()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5)
    programs = [p.read_text() for p in tmp_path.glob("*_backward/program_*.py")]
    assert programs
    for source in programs:
        permuted = {line.split(" = ")[0].strip() for line in source.splitlines() if ".permute(" in line}
        copied = [line for line in source.splitlines()
                  if ".reshape(" in line and line.split(" = ")[1].split(".")[0].strip() in permuted]  # fmt: skip
        assert not copied, copied


def test_items_of_an_op_left_to_pytorch_stay_with_it():
    """ConvNeXt's training forward: a small LayerNorm between convolutions runs in PyTorch beside
    the convolution that reads its output, and its other items (mean, rstd, saved for the backward)
    must go with it; a partition once took the op's tuple as an input and the graph ran in PyTorch."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ConvNextConfig(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3, image_size=32
    )
    torch.manual_seed(0)
    model = transformers.ConvNextForImageClassification(config).train()
    ref = copy.deepcopy(model)
    compiled = tilefuse.compile(model)
    pixels, labels = torch.randn(1, 3, 32, 32), torch.tensor([1])
    got = compiled(pixel_values=pixels, labels=labels).loss
    want = ref(pixel_values=pixels, labels=labels).loss
    got.backward()
    want.backward()
    torch.testing.assert_close(got, want)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    forward = compiled.tilefuse_reports[0]
    assert forward["partitions"] and not any(f["node"] == "<graph>" for f in forward["fallbacks"])


def test_a_training_output_that_is_a_view_of_a_kernels_buffer_can_be_written_in_place():
    """A training graph's output that is a view of the program's own buffer (dropout of p=0 passes
    the linear's output on; a reshape) was a view created inside AOTAutograd's autograd Function, and
    autograd refused a write into it (Wav2Vec2's `hidden_states[~mask] = 0` after a graph break): it
    is handed out as a tensor of its own over that memory. A view over memory the backward saves
    stays a view, and the write is refused as before (eager refuses it at the backward); never is the
    saved memory written under the backward."""
    torch.manual_seed(0)

    def f(x, w, b):
        n = torch.nn.functional.layer_norm(x, (16,))
        h = torch.nn.functional.linear(n, w, b)
        return torch.nn.functional.dropout(h, 0.0, True, False).reshape(2, 40), n

    x = torch.randn(2, 5, 16)
    w, b = torch.randn(8, 16), torch.randn(8)
    compiled = tilefuse.compile(f)
    grads = []
    for fn in (compiled, f):
        wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
        out, n = fn(x, wg, bg)
        out[out > 0] = 0  # in place, as eager allows
        (out.square().sum() + n.sum()).backward()
        grads.append((out.detach(), wg.grad, bg.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    def saved(x, w):
        y = torch.sigmoid(x @ w)  # sigmoid's backward reads y
        return y.view(-1)

    compiled = tilefuse.compile(saved)
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    wg = w.clone().requires_grad_()
    out = compiled(x, wg)
    try:  # a view over saved memory is refused; memory of its own is written and the backward unharmed
        out.mul_(2)
        out.sum().backward()
    except RuntimeError as e:
        assert "modified inplace" in str(e) or "inplace operation" in str(e)
    else:
        ref = w.clone().requires_grad_()
        (saved(x, ref) * 2).sum().backward()
        torch.testing.assert_close(wg.grad, ref.grad, rtol=1e-4, atol=1e-5)
