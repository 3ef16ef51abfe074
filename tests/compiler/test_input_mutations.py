"""Graphs that update their inputs in place (a static KV cache, a step counter): the update is
applied once a call, in place, as eager applies it (compiler/input_mutations.py)."""

from __future__ import annotations

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from tilefuse.compiler.input_mutations import batch_write_backs, mutated_inputs, reinplace

aten = torch.ops.aten


def _cache_step(cache, pos, new, q, counter):
    """One decoding step: write the new key at `pos`, read the whole cache, count the step."""
    cache.index_copy_(2, pos, new)
    counter.add_(1)
    scores = torch.softmax(q @ cache.transpose(-1, -2) * 0.25, -1)
    return scores @ cache * 2


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    cache = torch.randn(1, 2, 11, 16, generator=g)
    return cache, torch.zeros((), dtype=torch.int64)


def test_a_cache_update_is_written_in_place_once_a_call_and_matches_eager():
    cache, counter = _state()
    ref_cache, ref_counter = cache.clone(), counter.clone()
    compiled = tilefuse.compile(_cache_step)
    with torch.no_grad():
        for step in range(3):
            pos = torch.tensor([3 + step])
            new, q = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
            got = compiled(cache, pos, new, q, counter)
            want = _cache_step(ref_cache, pos, new, q, ref_counter)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cache, ref_cache)
            assert counter.item() == ref_counter.item() == step + 1
    ops = {f["op"] for r in compiled.tilefuse_reports for f in r["fallbacks"]}
    assert "aten.index_put_.default" in ops and "aten.index_put.default" not in ops  # no copy of the cache


def _timed_graph_run(monkeypatch, pytorch_ms: float, restored_bytes: int | None = None):
    """Three steps of `_cache_step` compiled with the graph-level selection on (a fake clock: the
    program 1 ms, PyTorch `pytorch_ms`), each checked against eager on a copy of the state."""
    from tilefuse.compiler import backend, runtime, selection

    monkeypatch.setattr(runtime, "selection_enabled", lambda device: False)
    monkeypatch.setattr(backend, "selection_enabled", lambda device: True)
    monkeypatch.setattr(
        selection, "timed", lambda kind, run, device: (run(), 1.0 if kind == "program" else pytorch_ms)
    )
    if restored_bytes is not None:
        monkeypatch.setattr(selection, "RESTORED_BYTES", restored_bytes)
    cache, counter = _state(1)
    ref_cache, ref_counter = cache.clone(), counter.clone()
    compiled = tilefuse.compile(_cache_step)
    with torch.no_grad():
        for step in range(3):
            args = (torch.tensor([step % 11]), torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16))
            got = compiled(cache, args[0], args[1], args[2], counter)
            want = _cache_step(ref_cache, *args, ref_counter)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(cache, ref_cache)
            assert counter.item() == ref_counter.item() == step + 1
    (report,) = compiled.tilefuse_reports
    return report["selection"]


@pytest.mark.parametrize("pytorch_ms, chosen", [(3.0, "tilefuse"), (0.5, "pytorch (the eager graph)")])
def test_a_graph_that_updates_its_inputs_is_timed_and_its_inputs_put_back(monkeypatch, pytorch_ms, chosen):
    """The graph-level measurement runs both ways several times in one call: for a graph that updates
    its inputs (a cache, a counter, BatchNorm's running statistics) the written inputs are copied
    aside and put back after timing, then the chosen way runs once: each call updates them once."""
    summary = _timed_graph_run(monkeypatch, pytorch_ms)
    assert summary["chosen"] == chosen
    assert summary["pytorch_ms"] / summary["tilefuse_ms"] == pytest.approx(pytorch_ms)
    assert "not_measured" not in summary


def test_a_graph_whose_written_inputs_are_too_large_to_copy_is_not_timed(monkeypatch):
    from tilefuse.compiler import selection

    summary = _timed_graph_run(monkeypatch, 0.5, restored_bytes=0)
    assert summary["not_measured"] == selection.MUTATES_INPUTS and summary["chosen"] == "tilefuse"


def test_reinplace_rewrites_only_an_update_nobody_else_reads_the_old_value_of():
    def f(cache, idx, v, other):
        new = aten.index_put.default(cache, [None, idx], v)
        aten.copy_.default(cache, new)
        kept = aten.index_put.default(other, [None, idx], v)  # `other`'s old value is read below
        aten.copy_.default(other, kept)
        return new.sum() + other.sum()

    gm = torch.fx.symbolic_trace(f)
    assert reinplace(gm) == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.index_put_.default) == 1 and targets.count(aten.index_put.default) == 1
    assert mutated_inputs(gm) == [True, False, False, True]
    cache, other = torch.randn(3, 5), torch.randn(3, 5)
    idx, v = torch.tensor([1, 4]), torch.randn(3, 2)
    ref_cache, ref_other = cache.clone(), other.clone()
    want = f(ref_cache, idx, v, ref_other)
    torch.testing.assert_close(gm(cache, idx, v, other), want)
    torch.testing.assert_close(cache, ref_cache)
    torch.testing.assert_close(other, ref_other)


def test_a_counter_update_becomes_one_in_place_op_and_other_updates_stay_copies():
    """BatchNorm's `num_batches_tracked += 1` reaches the graph as `copy_(n, add(n, 1))`: one `add_`.
    An update that is not an op on `x` itself, or that promotes `x`'s dtype (the copy rounds it
    back) stays a copy."""

    def f(n, mean, x, y):
        aten.copy_.default(n, aten.add.Tensor(n, 1))
        aten.copy_.default(mean, aten.add.Tensor(aten.mul.Tensor(mean, 0.9), y))  # not an op on `mean`
        aten.copy_.default(x, aten.add.Tensor(x, y))  # bf16 + f32 is f32: copy_ rounds it back
        return y * 2

    args = (torch.tensor(3), torch.randn(4), torch.randn(4, dtype=torch.bfloat16), torch.randn(4))
    gm = make_fx(f)(*(a.clone() for a in args))
    assert reinplace(gm) == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.add_.Tensor) == 1 and targets.count(aten.copy_.default) == 2
    assert mutated_inputs(gm) == [True, True, True, False]
    got, want = [a.clone() for a in args], [a.clone() for a in args]
    torch.testing.assert_close(gm(*got), f(*want))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_batch_norm_in_training_counts_its_batches_in_place():
    torch._dynamo.reset()
    bn, ref = torch.nn.BatchNorm1d(6), torch.nn.BatchNorm1d(6)
    compiled = tilefuse.compile(bn)
    for _ in range(3):
        x = torch.randn(5, 6)
        torch.testing.assert_close(compiled(x), ref(x), rtol=1e-5, atol=1e-5)
    assert bn.num_batches_tracked.item() == ref.num_batches_tracked.item() == 3
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    ops = [f["op"] for r in compiled.tilefuse_reports for f in r["fallbacks"]]
    # the running mean and variance are written back by one multi-tensor copy (batch_write_backs)
    assert "aten.add_.Tensor" in ops and ops.count("aten._foreach_copy_.default") == 1, ops
    assert "aten.copy_.default" not in ops, ops


def test_an_index_put_into_a_fresh_buffer_accumulates_in_place():
    """An embedding's weight gradient: zeros of the table's size, the rows' gradients accumulated in
    (repeated positions add up); a buffer read elsewhere too keeps the functional form."""

    def f(idx, grad):
        zeros = aten.full.default([7, 3], 0.0, dtype=torch.float32)
        table = aten.index_put.default(zeros, [idx], grad, True)
        kept = aten.full.default([7, 3], 1.0, dtype=torch.float32)
        other = aten.index_put.default(kept, [idx], grad, True)
        return table, other + kept

    idx, grad = torch.tensor([1, 4, 1, 6, 4]), torch.randn(5, 3)
    gm = make_fx(f)(idx, grad)  # the buffers as graph nodes, as AOTAutograd traces them
    assert reinplace(gm) == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert targets.count(aten.index_put_.default) == 1 and targets.count(aten.index_put.default) == 1
    for got, want in zip(gm(idx, grad), f(idx, grad)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_static_cache_generation_matches_eager(mode):
    """transformers' static cache (`index_copy_` into preallocated keys and values) through `generate`,
    the forward compiled: eager's greedy tokens."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 96, (1, 6))
    kwargs = dict(max_new_tokens=4, do_sample=False, cache_implementation="static", disable_compile=True)
    with torch.no_grad():
        want = model.generate(ids, **kwargs)
        model.forward = tilefuse.compile(model.forward, mode=mode)
        got = model.generate(ids, **kwargs)
    assert torch.equal(got, want)


def test_no_room_to_copy_the_written_inputs_keeps_the_graph_unmeasured(monkeypatch):
    """Copying the written inputs aside runs out of memory: the graph is kept compiled, unmeasured,
    and the call still updates its inputs once."""
    from tilefuse.compiler import selection

    class NoRoom:
        def clone(self):
            raise torch.OutOfMemoryError("no room")

    monkeypatch.setattr(selection.GraphSelection, "_restorable", lambda self, args: [NoRoom()])
    summary = _timed_graph_run(monkeypatch, 0.5)
    assert summary["not_measured"] == selection.MUTATES_INPUTS and summary["chosen"] == "tilefuse"


def test_write_backs_are_batched_at_the_end_unless_read_after():
    """`copy_` write-backs of a graph's inputs become one `_foreach_copy_` and counters' `add_` one
    `_foreach_add_` per constant, at the graph's end; a write whose destination is read after it, a
    copy that converts its dtype, or a lone write stays where it is. Inputs end as eager's."""

    def f(m1, v1, m2, v2, n1, n2, read_after, x):
        aten.copy_.default(m1, aten.add.Tensor(aten.mul.Tensor(m1, 0.9), x.mean(0)))
        aten.copy_.default(v1, aten.mul.Tensor(v1, 0.5))
        aten.copy_.default(m2, aten.sub.Tensor(m2, x.amax(0)))
        aten.copy_.default(v2, x.sum(0).to(torch.bfloat16))  # converts: a copy_ of its own
        aten.add_.Tensor(n1, 1)
        aten.add_.Tensor(n2, 1)
        aten.copy_.default(read_after, aten.mul.Tensor(x.min(0).values, 3))
        return read_after * 2 + m1.sum()

    args = (torch.randn(7), torch.rand(7), torch.randn(7), torch.randn(7), torch.tensor(3), torch.tensor(5),
            torch.randn(7), torch.randn(4, 7))  # fmt: skip
    gm = make_fx(f)(*(a.clone() for a in args))
    gm.graph.eliminate_dead_code()
    assert batch_write_backs(gm) == 4  # v1 and m2 copied, n1 and n2 counted
    calls = [n for n in gm.graph.nodes if n.op == "call_function"]
    targets = [n.target for n in calls]
    assert targets.count(aten._foreach_copy_.default) == 1 and targets.count(aten._foreach_add_.Scalar) == 1
    assert targets.count(aten.copy_.default) == 3  # m1 and read_after (read after), v2 (converts)
    assert calls[-1].target in (aten._foreach_copy_.default, aten._foreach_add_.Scalar)
    assert mutated_inputs(gm) == [True] * 7 + [False]
    got, want = [a.clone() for a in args], [a.clone() for a in args]
    torch.testing.assert_close(gm(*got), f(*want))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_batch_norms_in_training_write_their_statistics_back_in_two_launches():
    """Three BatchNorms in train mode (KernelBench leaves its modules so): each call's outputs, running
    statistics and batch counts as eager's, over three calls; the write-backs are one multi-tensor
    copy and one multi-tensor add instead of nine PyTorch calls."""
    torch._dynamo.reset()

    def block() -> torch.nn.Module:
        torch.manual_seed(0)
        layers = []
        for c_in, c_out in ((3, 5), (5, 6), (6, 4)):
            conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
            layers += [conv, torch.nn.BatchNorm2d(c_out), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers)

    model, ref = block(), block()
    compiled = tilefuse.compile(model)
    for i in range(3):
        x = torch.randn(2, 3, 9, 7, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), ref(x), rtol=1e-4, atol=1e-5)
    for got, want in zip(model.buffers(), ref.buffers()):
        torch.testing.assert_close(got, want)
    ops = [f["op"] for r in compiled.tilefuse_reports for f in r["fallbacks"]]
    assert ops.count("aten._foreach_copy_.default") == 1 and ops.count("aten._foreach_add_.Scalar") == 1, ops
    assert "aten.copy_.default" not in ops and "aten.add_.Tensor" not in ops, ops


def test_write_backs_that_alias_other_inputs_stay_where_they_are():
    """`a.copy_(b); b.add_(1)` reaches the graph as two write-backs, the first of `b` itself: batched
    into one multi-tensor copy, `a` could read `b` already updated. And a view of `x` made before
    `x`'s write and read after it sees the new value in eager: that write stays too."""

    def f(a, b, x, y, z, w):
        aten.copy_.default(a, b)  # its source is an input: stays
        aten.copy_.default(b, aten.add.Tensor(b, 1))
        view = aten.view.default(x, [2, 3])
        aten.copy_.default(x, aten.mul.Tensor(y, 2))  # read after, through `view`: stays
        aten.copy_.default(z, aten.mul.Tensor(y, 3))
        aten.copy_.default(w, aten.mul.Tensor(y, 4))
        return view * 2

    args = [torch.randn(6) for _ in range(6)]
    gm = make_fx(f)(*(a.clone() for a in args))
    assert batch_write_backs(gm) == 3  # b, z and w
    got, want = [a.clone() for a in args], [a.clone() for a in args]
    torch.testing.assert_close(gm(*got), f(*want))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_batch_norms_in_a_training_step_write_back_as_eager():
    """AOTAutograd keeps the buffers' write-backs in a training forward too: batched there, one
    training step leaves the running statistics, the counts and the gradients as eager's."""
    torch._dynamo.reset()

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.BatchNorm2d(4),
            torch.nn.Conv2d(4, 5, 3),
            torch.nn.BatchNorm2d(5),
        )

    trained, ref = model(), model()
    compiled = tilefuse.compile(trained)
    x = torch.randn(2, 3, 8, 9, generator=torch.Generator().manual_seed(1))
    compiled(x).square().sum().backward()
    ref(x).square().sum().backward()
    for got, want in zip(trained.buffers(), ref.buffers()):
        torch.testing.assert_close(got, want)
    for got, want in zip(trained.parameters(), ref.parameters()):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)  # sums of ~100 terms
    ops = [f["op"] for r in compiled.tilefuse_reports for f in r["fallbacks"]]
    assert ops.count("aten._foreach_copy_.default") == 1 and "aten.copy_.default" not in ops, ops
