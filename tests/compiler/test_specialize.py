"""Sizes a dynamic graph keeps seeing get a static compile (compiler/specialize.py); sizes seen once
run the dynamic graph; every call matches eager."""

from __future__ import annotations

import pytest
import torch

import tilefuse
from helpers import TinyBlock
from tilefuse.compiler import specialize


def _kernels(report: dict) -> int:
    return sum(1 for p in report.get("partitions", []) for g in p["groups"] if g["kernel"])


def test_a_size_called_twice_in_a_row_is_compiled_for_that_size_and_others_are_not():
    """Ragged lengths (no tile divides them): the first size compiles statically, the second makes
    the dims dynamic (PyTorch for other sizes), and a size called twice in a row gets its own
    static compile, whose kernels then run it; sizes that recur but never back to back (decode
    lengths when `generate` runs again) do not; every call matches eager."""
    torch._dynamo.reset()
    block = TinyBlock().eval()
    compiled = tilefuse.compile(block)
    calls = [(2, 5), (3, 7), (2, 12), (4, 17), (3, 7), (3, 7), (2, 33), (4, 17), (2, 33), (4, 17), (4, 17)]
    with torch.no_grad():
        for b, s in calls:
            x = torch.randn(b, s, 16)
            torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)
    reports = compiled.tilefuse_reports
    names = [r["name"] for r in reports]
    dynamic = next(r for r in reports if "specialized" in r)
    assert [e["sizes"] for e in dynamic["specialized"]] == ["3x7", "4x17"], dynamic["specialized"]
    assert all("failed" not in e and e["compile_s"] >= 0 for e in dynamic["specialized"])
    # the first size's static graph, the dynamic graph, and one static graph per size seen again
    assert len(reports) == 4, names
    for static in reports[2:]:
        assert _kernels(static) >= 4 and not static["fallbacks"], static["fallbacks"]
        assert static["name"].startswith(dynamic["name"])


def test_the_limit_and_the_switch(monkeypatch):
    torch._dynamo.reset()
    monkeypatch.setenv(specialize.SPECIALIZE_ENV, "1")
    fn = lambda x: torch.softmax(x @ x.transpose(-1, -2), -1)  # noqa: E731
    compiled = tilefuse.compile(fn)
    for n in (6, 9, 9, 11, 11, 11, 9):  # 9 takes the one slot; 11 stays dynamic
        x = torch.randn(n, 5)
        torch.testing.assert_close(compiled(x), fn(x), rtol=1e-4, atol=1e-4)
    dynamic = next(r for r in compiled.tilefuse_reports if "specialized" in r)
    assert [e["sizes"] for e in dynamic["specialized"]] == ["9"]
    assert len(compiled.tilefuse_reports) == 3

    torch._dynamo.reset()
    monkeypatch.setenv(specialize.SPECIALIZE_ENV, "0")
    compiled = tilefuse.compile(fn)
    for n in (6, 9, 9, 9):
        torch.testing.assert_close(compiled(torch.ones(n, 5)), fn(torch.ones(n, 5)))
    assert len(compiled.tilefuse_reports) == 2 and all("specialized" not in r for r in compiled.tilefuse_reports)
    monkeypatch.setenv(specialize.SPECIALIZE_ENV, "many")
    with pytest.raises(ValueError, match="TILEFUSE_SPECIALIZE"):
        specialize.specialize_limit()


def test_a_failing_specialization_is_reported_and_the_dynamic_graph_runs_on():
    calls = []

    def general(x, n):
        calls.append("general")
        return x * n

    def broken(args, label):
        raise RuntimeError("simulated: the static compile failed")

    examples = [torch.empty(3, 4), 4]  # neither symbolic here: the key is the grad mode only
    report: dict = {"name": "g"}
    runner = specialize.ShapeSpecializations(general, broken, examples, report, limit=4)
    x = torch.randn(3, 4)
    for _ in range(3):
        torch.testing.assert_close(runner(x, 2), x * 2)
    assert calls == ["general"] * 3
    assert "simulated" in report["specialized"][0]["failed"]
    assert len(report["specialized"]) == 1  # tried once, not at every call


def test_a_specialized_training_graph_matches_eager_gradients():
    """With gradients, the size's static compile is a training graph (forward and backward); its
    gradients match eager's on a ragged length."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = TinyBlock()
    reference = TinyBlock()
    reference.load_state_dict(block.state_dict())
    compiled = tilefuse.compile(block)
    for b, s in [(2, 5), (3, 9), (3, 9), (3, 9)]:
        x = torch.randn(b, s, 16)
        block.zero_grad(), reference.zero_grad()
        compiled(x).square().sum().backward()
        reference(x).square().sum().backward()
        for p, q in zip(block.parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)
    dynamic = next(r for r in compiled.tilefuse_reports if "specialized" in r)
    assert [e["sizes"] for e in dynamic["specialized"]] == ["3x9"]
    assert any(r.get("trains") or r["name"].endswith("3x9") for r in compiled.tilefuse_reports)


def test_a_size_is_not_compiled_when_device_memory_is_short(monkeypatch):
    """Each compile keeps its own weights derived from parameters: short of device memory, a size
    runs the dynamic graph, said once in the report."""
    monkeypatch.setattr(
        specialize.ShapeSpecializations, "_short_of_memory", classmethod(lambda cls, args: "simulated: 1 GiB free")
    )
    compiled_sizes = []

    def compile_static(args, label):
        compiled_sizes.append(label)
        return lambda x, n: x * n

    report: dict = {"name": "g"}
    runner = specialize.ShapeSpecializations(lambda x, n: x * n, compile_static, [torch.empty(3), 3], report, 4)
    x = torch.randn(3)
    for _ in range(4):
        torch.testing.assert_close(runner(x, 2), x * 2)
    assert compiled_sizes == [] and report["specialized"] == [{"sizes": "", "skipped": "simulated: 1 GiB free"}]


def test_sizes_keyed_by_dynamos_size_ints_and_other_strides_stay_correct():
    """Dynamo passes each size symbol as an int input: those are the key (cheap with many cache
    tensors). A call of a compiled size with other strides (a transposed input) still matches
    eager (whichever guard, Dynamo's or the specialized program's, sends it elsewhere)."""
    torch._dynamo.reset()
    made = []
    init = specialize.ShapeSpecializations.__init__

    def spy(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    fn = lambda x, y: torch.softmax(x @ y.transpose(-1, -2), -1) * 2  # noqa: E731
    with pytest.MonkeyPatch.context() as m:
        m.setattr(specialize.ShapeSpecializations, "__init__", spy)
        compiled = tilefuse.compile(fn)
        for n in (6, 9, 9):
            x, y = torch.randn(n, 5), torch.randn(n + 1, 5)
            torch.testing.assert_close(compiled(x, y), fn(x, y))
        x_t, y = torch.randn(5, 9).t(), torch.randn(10, 5)  # the compiled sizes, transposed strides
        torch.testing.assert_close(compiled(x_t, y), fn(x_t, y))
    # (Dynamo itself guards strides: the transposed call may compile its own dynamic graph)
    assert made and all(runner.ints_suffice for runner in made)
    dynamic = next(r for r in compiled.tilefuse_reports if "specialized" in r)
    assert len(dynamic["specialized"]) == 1


def test_a_repeated_size_waits_while_another_dynamic_graph_changes_size():
    """Generation: the first decode step's graph sees the same sizes once per `generate`, while the
    decode graph's length changes at every token in between: no compile there. A loop where every
    graph repeats its size (a model split by a graph break) compiles each graph's size."""
    import sympy
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    length = ShapeEnv().create_symintnode(sympy.Symbol("s0", positive=True, integer=True), hint=9)
    compiled = {"first": [], "decode": []}

    def runner(name):
        def compile_static(args, label):
            compiled[name].append(label)
            return lambda n, x: x + n

        return specialize.ShapeSpecializations(
            lambda n, x: x + n, compile_static, [length, torch.empty(1)], {"name": name}, limit=4
        )

    first, decode = runner("first"), runner("decode")
    x = torch.zeros(1)
    for _ in range(3):  # three `generate` calls of four tokens
        first(9, x)
        for n in (10, 11, 12):
            decode(n, x)
    assert compiled == {"first": [], "decode": []}
    for _ in range(3):  # a steady loop over both graphs (a graph break between them)
        first(9, x)
        decode(12, x)
    assert compiled == {"first": ["9"], "decode": ["12"]}


def test_a_graph_whose_specializer_cannot_be_made_runs_the_dynamic_way(monkeypatch, caplog):
    """Never break the model: if the specializer cannot be set up for a dynamic graph, the dynamic
    graph runs every size, with a warning."""
    torch._dynamo.reset()

    def broken(self, *args, **kwargs):
        raise AttributeError("simulated: a size without a sympy expression")

    monkeypatch.setattr(specialize.ShapeSpecializations, "__init__", broken)
    fn = lambda x: torch.relu(x) * 2 + 1  # noqa: E731
    compiled = tilefuse.compile(fn)
    with caplog.at_level("WARNING", logger="tilefuse"):
        for n in (5, 7, 7, 9):
            x = torch.randn(n, 3)
            torch.testing.assert_close(compiled(x), fn(x))
    assert "no size will be specialized" in caplog.text and "simulated" in caplog.text


def test_a_data_dependent_trace_stops_every_later_size_from_being_tried():
    """A static compile whose trace reads a tensor's value (a BatchNorm module's `momentum.item()`)
    fails at every size: after the first failure no size is traced again (each try cost a whole
    trace and a warning); every call still runs the general way."""
    import sympy
    from torch._subclasses.fake_tensor import DataDependentOutputException
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    length = ShapeEnv().create_symintnode(sympy.Symbol("s0", positive=True, integer=True), hint=9)
    tried = []

    def compile_static(args, label):
        tried.append(label)
        raise DataDependentOutputException(torch.ops.aten._local_scalar_dense.default)

    report: dict = {"name": "g"}
    runner = specialize.ShapeSpecializations(
        lambda n, x: x + n, compile_static, [length, torch.empty(1)], report, limit=4
    )
    x = torch.zeros(1)
    for n in (9, 9, 12, 12, 15, 15):
        torch.testing.assert_close(runner(n, x), x + n)
    assert tried == ["9"]
    assert "DataDependent" in report["specialize_refused"] and len(report["specialized"]) == 1


def test_a_float_read_as_a_tensor_is_baked_into_each_size_and_keys_it():
    """Under `dynamic=True` Dynamo passes a Python float as a 0-d tensor the graph reads with
    `.item()`; a static trace cannot read it (it refused every size, "DataDependent"). A size's compile
    takes the value as a constant, and the value is part of the key: the same sizes with another
    value compile again, never reusing the first value (each named by its value)."""
    torch._dynamo.reset()

    def fn(x, scale):
        return torch.relu(x) * scale + 1

    compiled = tilefuse.compile(fn, dynamic=True)
    for n, scale in [(300, 2.0), (261, 2.0), (261, 2.0), (261, 3.5), (261, 3.5), (261, 2.0), (261, 3.5)]:
        x = torch.randn(n, 257)
        torch.testing.assert_close(compiled(x, scale), fn(x, scale))
    [general, *sizes] = compiled.tilefuse_reports
    assert "specialize_refused" not in general
    assert [s["sizes"] for s in general["specialized"]] == ["261x257_v2.0", "261x257_v3.5"]
    assert all("failed" not in s for s in general["specialized"])
    assert [_kernels(r) > 0 for r in sizes] == [True, True]


def test_a_dynamic_llama_specializes_a_repeated_size():
    """`tilefuse.compile(model, dynamic=True)` on a transformers Llama: its rotary embedding's
    `attention_scaling` float reaches the graph as a tensor read with `.item()`; a size called twice
    in a row now compiles for that size (it failed, and no size was ever specialized)."""
    pytest.importorskip("transformers")
    from tiny_models import MODELS

    torch.manual_seed(0)
    model = MODELS["llama"]().eval()
    torch._dynamo.reset()
    compiled = tilefuse.compile(model, dynamic=True)
    with torch.no_grad():
        for batch, length in [(2, 7), (2, 13), (2, 13)]:
            ids = torch.randint(0, 128, (batch, length), generator=torch.Generator().manual_seed(length))
            torch.testing.assert_close(
                compiled(input_ids=ids).logits, model(input_ids=ids).logits, rtol=1e-4, atol=1e-5
            )
    general = compiled.tilefuse_reports[0]
    assert "specialize_refused" not in general, general.get("specialize_refused")
    [entry] = general["specialized"]
    assert entry["sizes"].startswith("2x13") and "failed" not in entry, entry


def test_floats_key_by_their_bits_and_a_users_own_scalar_tensor_is_not_baked(monkeypatch):
    """-0.0 and 0.0 are two values (x / -0.0 is -inf): each gets its own compile. A user's 0-d tensor
    read with `.item()` (Dynamo's `capture_scalar_outputs`) is not a Python number: its value may change
    inside the graph (here an in-place add before the read), so it is never a constant of a size's
    compile (that size's compile is refused, as before, and every call matches eager)."""
    torch._dynamo.reset()

    def divide(x, scale):
        return x / scale + 1

    compiled = tilefuse.compile(divide, dynamic=True)
    for n, scale in [(300, 1.0), (261, 0.0), (261, 0.0), (261, -0.0), (261, -0.0), (261, 0.0)]:
        x = torch.rand(n, 257) + 0.5
        torch.testing.assert_close(compiled(x, scale), divide(x, scale))
    general = compiled.tilefuse_reports[0]
    assert [s["sizes"] for s in general["specialized"]] == ["261x257_v0.0", "261x257_v-0.0"]
    assert specialize.exact(float("nan")) == specialize.exact(float("nan"))

    monkeypatch.setattr(torch._dynamo.config, "capture_scalar_outputs", True)
    torch._dynamo.reset()

    def bump(x, t):
        t.add_(1.0)
        return x * t.item()

    compiled = tilefuse.compile(bump, dynamic=True)
    for n in (5, 6, 6, 6):
        x = torch.randn(n, 4)
        t, t_eager = torch.tensor(1.0), torch.tensor(1.0)
        torch.testing.assert_close(compiled(x, t), bump(x, t_eager))
        assert t.item() == t_eager.item() == 2.0
    assert all("_v" not in s["sizes"] for s in compiled.tilefuse_reports[0]["specialized"])
