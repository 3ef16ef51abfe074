"""What tilefuse cannot compile runs in PyTorch: results stay right and the dump says why."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from helpers import compile_and_compare
from tilefuse.compiler import lowering_table
from tilefuse.compiler.backend import TilefuseBackend


def partly_supported(x, w):
    h = torch.relu(x @ w)
    return torch.sort(h, dim=-1).values * 2 + h.sum(-1, keepdim=True)


def test_unsupported_op_falls_back_and_stays_correct(tmp_path):
    x, w = torch.randn(5, 7), torch.randn(7, 9)
    reports = compile_and_compare(partly_supported, x, w, allow_fallbacks=True, dump=tmp_path)
    (report,) = reports
    assert [f["op"] for f in report["fallbacks"]] == ["aten.sort.default"]
    assert "no ein lowering for aten.sort.default" in report["fallbacks"][0]["reason"]
    assert len(report["partitions"]) >= 1
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["graphs"][0]["fallbacks"] == report["fallbacks"]
    assert "fallback  sort (aten.sort.default)" in (tmp_path / "index.txt").read_text()


def test_unsupported_arguments_fall_back():
    def fn(x):
        return torch.div(x, 3, rounding_mode="floor") + F.dropout(x, 0.0)

    (report,) = compile_and_compare(fn, torch.randn(4, 6) * 10, allow_fallbacks=True)
    assert any("rounding_mode" in f["reason"] for f in report["fallbacks"])


def test_attention_with_dropout_falls_back():
    q = torch.randn(1, 2, 5, 8)

    def fn(q):
        torch.manual_seed(1)
        return F.scaled_dot_product_attention(q, q, q, dropout_p=0.5)

    torch.manual_seed(1)
    compiled = tilefuse.compile(fn)
    out = compiled(q)
    # the same masks (dropout runs in PyTorch); the products around them are kernels of f32 math
    torch.testing.assert_close(out, fn(q), rtol=1e-5, atol=1e-6)
    reasons = [f["reason"] for r in compiled.tilefuse_reports for f in r["fallbacks"]]
    assert any("dropout" in r for r in reasons)


def test_a_lowering_that_crashes_leaves_its_partition_to_pytorch(monkeypatch):
    original = lowering_table.LOWERINGS[torch.ops.aten.relu.default]

    def broken(ctx, node):
        raise RuntimeError("simulated lowering bug")

    monkeypatch.setitem(
        lowering_table.LOWERINGS, torch.ops.aten.relu.default, lowering_table.Lowering(broken, original.check)
    )
    x, w = torch.randn(5, 7), torch.randn(7, 9)
    (report,) = compile_and_compare(lambda x, w: torch.relu(x @ w) + 1, x, w, allow_fallbacks=True)
    (fallback,) = report["fallbacks"]
    assert fallback["op"] == "partition" and "simulated lowering bug" in fallback["reason"]
    assert report["partitions"] == []


def test_a_pipeline_crash_leaves_the_whole_graph_to_pytorch(monkeypatch, tmp_path):
    from tilefuse.compiler import driver

    def exploding(art):
        raise ValueError("simulated pipeline bug")

    monkeypatch.setattr(driver, "STAGES", [driver.Stage("partition", exploding)])
    x = torch.randn(3, 4)
    (report,) = compile_and_compare(torch.tanh, x, allow_fallbacks=True, dump=tmp_path)
    assert "simulated pipeline bug" in report["fallbacks"][0]["reason"]
    assert (tmp_path / report["dir"] / "error.txt").exists()


def test_complex_dtype_falls_back():
    def fn(x):
        return (torch.view_as_complex(x) * 2).abs() + 1

    (report,) = compile_and_compare(fn, torch.randn(4, 3, 2), allow_fallbacks=True)
    reasons = {f["op"]: f["reason"] for f in report["fallbacks"]}
    assert "complex64, which ein does not support" in reasons["aten.mul.Tensor"]
    assert [p["aten_ops"] for p in report["partitions"]] == [["aten.add.Tensor"]]


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_products_of_integers_run_in_pytorch_and_the_rest_compiles(dtype):
    """An integer mm/addmm became a GEMM kernel whose dot refused integer tiles at its first launch
    (the partition then ran in PyTorch from the runtime error on): it stays in PyTorch instead."""

    def fn(a, w, b):
        return (torch.addmm(b, a, w) + a @ w) * 3

    a, w, b = (torch.randint(-99, 99, s, dtype=dtype) for s in ((5, 16), (16, 8), (8,)))
    (report,) = compile_and_compare(fn, a, w, b, allow_fallbacks=True)
    reasons = {f["op"]: f["reason"] for f in report["fallbacks"]}
    assert f"a product of {dtype} runs in PyTorch" in reasons["aten.mm.default"], reasons
    assert f"a product of {dtype} runs in PyTorch" in reasons["aten.addmm.default"], reasons
    assert all("runtime_error" not in p for p in report["partitions"]), report["partitions"]
    assert [p["aten_ops"] for p in report["partitions"]] == [["aten.add.Tensor", "aten.mul.Tensor"]]


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x @ x.t(),
        lambda x: torch.softmax(x, -1),
        lambda x: torch.relu(x) * 2 + x.sum(1, keepdim=True),
    ],
    ids=["matmul", "softmax", "pointwise_and_sum"],
)
def test_float64_runs_in_pytorch_at_float64_precision(fn):
    """The kernels compute in at most f32 (a float64 GEMM came out as garbage under the interpreter, a
    softmax at f32 accuracy): float64 work runs in PyTorch, exactly as eager, and the report says why."""
    x = torch.randn(17, 37, dtype=torch.float64)
    (report,) = compile_and_compare(fn, x, rtol=0, atol=0, allow_fallbacks=True)
    assert report["fallbacks"] and all("float64" in f["reason"] for f in report["fallbacks"])
    assert not report["partitions"]


@torch.library.custom_op("tilefuse_test::scale_by_counts", mutates_args=())
def _scale_by_counts(x: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return x * 2


@_scale_by_counts.register_fake
def _(x, counts):
    return torch.empty_like(x)


def _save_counts(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _backward_reading_counts(ctx, grad):
    (counts,) = ctx.saved_tensors
    factor = sum(counts.tolist())  # data dependent, as transformers' MoE grouped-matmul fallback backward
    return grad * 2 + 0 * factor, None


_scale_by_counts.register_autograd(_backward_reading_counts, setup_context=_save_counts)


# the backward's deliberate failure, re-raised by anomaly mode's note (expected: the test is about it)
@pytest.mark.filterwarnings("ignore:Error detected in")
def test_a_graph_aot_autograd_cannot_trace_is_reported_and_the_step_matches_eager(caplog):
    """A training graph whose backward reads a tensor's values cannot be traced ahead: Dynamo splits it
    and runs that part in PyTorch; the report and one warning say why, and the gradients are eager's."""

    def fn(x, w, counts):
        return _scale_by_counts(torch.tanh(x @ w), counts).relu().sum()

    x, counts = torch.randn(4, 8), torch.tensor([1, 3])
    w = torch.randn(8, 8, requires_grad=True)
    compiled = tilefuse.compile(fn)
    with caplog.at_level("WARNING", logger="tilefuse"):
        compiled(x, w, counts).backward()
    got, w.grad = w.grad, None
    fn(x, w, counts).backward()
    torch.testing.assert_close(got, w.grad)
    untraced = [f for r in compiled.tilefuse_reports for f in r["fallbacks"] if f["op"] == "not traced"]
    assert untraced and "could not trace" in untraced[0]["reason"]
    assert any("could not trace" in m for m in caplog.messages)


class _Dropped(torch.nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.lin = torch.nn.Linear(16, 16)
        self.p = p

    def forward(self, x):
        return F.dropout(self.lin(x), p=self.p, training=self.training) * 2.0


def test_dynamos_restart_signal_is_not_taken_for_a_failure(monkeypatch):
    """A second model of a class whose dropout probability differs: Dynamo recompiles with the float
    symbolic, and AOTAutograd raises TensorifyScalarRestartAnalysis, Dynamo's signal to trace again
    with it specialized. Caught as "could not trace", the graph ran in PyTorch with no kernel (Electra,
    XLM-R, DeBERTa-v2 training after an eval model of the same class); it goes back to Dynamo, and the
    second model compiles its forward and backward like the first."""
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch._dynamo.reset()
    x = torch.randn(4, 16)
    for p in (0.1, 0.0):
        torch.manual_seed(0)
        model = _Dropped(p).train()
        compiled = tilefuse.compile(model)
        torch.manual_seed(1)
        compiled(x).sum().backward()
        reports = compiled.tilefuse_reports
        assert not [f for r in reports for f in r["fallbacks"] if f["op"] == "not traced"], reports
        assert {r.get("kind", "forward") for r in reports if r["partitions"]} == {"forward", "backward"}
        if p == 0.0:  # deterministic: the gradients against eager's
            grads = [q.grad.clone() for q in model.parameters()]
            model.zero_grad()
            model(x).sum().backward()
            for got, want in zip(grads, (q.grad for q in model.parameters())):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _traces_badly(name: str):
    """A function (a code object of its own: Dynamo marks frames per code object) that takes another
    path under tracing, as transformers' SDPA path does, and fails in Dynamo's fake-tensor run; eager
    runs it."""
    namespace = {"torch": torch}
    exec(
        f"def {name}(x):\n"
        "    if torch.compiler.is_compiling():\n"
        "        return x @ torch.ones(3, 5)\n"
        "    return x * 2\n",
        namespace,
    )
    return namespace[name]


def test_a_frame_dynamo_cannot_trace_runs_in_eager_with_a_warning():
    """Where Dynamo's trace of a frame fails (a TorchRuntimeError where eager runs), the compiled
    function runs that frame in eager PyTorch and warns once; Dynamo's setting is restored after the
    call, so torch.compile's own behaviour is unchanged, and fullgraph=True raises as torch.compile's."""
    x = torch.randn(2, 4)
    compiled = tilefuse.compile(_traces_badly("first"))
    with pytest.warns(UserWarning, match="Dynamo could not trace first .* runs in eager PyTorch"):
        assert torch.equal(compiled(x), x * 2)
    assert torch.equal(compiled(x), x * 2)
    assert torch._dynamo.config.suppress_errors is False
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError):
        torch.compile(_traces_badly("second"), backend="eager")(x)
    with pytest.raises(torch._dynamo.exc.TorchRuntimeError):
        tilefuse.compile(_traces_badly("third"), fullgraph=True)(x)


def _failing_graphs(monkeypatch, runs: list) -> None:
    """Every graph tilefuse compiles from now on runs, then raises: a failure outside any partition's
    own guard (as a frame Dynamo ran eagerly disagreeing with a compiled one)."""
    compile_graph = TilefuseBackend.__call__

    def failing(self, gm, example_inputs):
        compiled = compile_graph(self, gm, example_inputs)

        def run(*args):
            runs.append(compiled(*args))
            raise RuntimeError("injected failure after the graph ran")

        return run

    monkeypatch.setattr(TilefuseBackend, "__call__", failing)


def test_a_call_that_fails_at_run_time_runs_in_eager_pytorch_from_then_on(monkeypatch):
    """A compiled call that raises, where eager PyTorch runs it, returns eager's result, warns once with
    the cause, records it in the report, and later calls run eagerly (the compiled graph not again)."""
    runs: list = []
    _failing_graphs(monkeypatch, runs)
    torch._dynamo.reset()
    w = torch.randn(7, 5)

    def fn(x):
        return torch.relu(x @ w) + 1

    compiled = tilefuse.compile(fn)
    x = torch.randn(3, 7)
    with pytest.warns(UserWarning, match="injected failure after the graph ran; eager PyTorch ran it"):
        torch.testing.assert_close(compiled(x), fn(x))
    assert len(runs) == 1
    (call,) = [f for r in compiled.tilefuse_reports for f in r["fallbacks"] if f["op"] == "call"]
    assert "RuntimeError: injected failure" in call["reason"]
    y = torch.randn(6, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(compiled(y), fn(y))
    assert len(runs) == 1
    with torch.inference_mode():  # inference tensors keep no version counter: the call runs again
        compiled = tilefuse.compile(fn)
        with pytest.warns(UserWarning, match="injected failure"):
            torch.testing.assert_close(compiled(x.clone()), fn(x))


def test_an_error_eager_raises_too_is_the_users(monkeypatch):
    """Where eager PyTorch fails on the call as well, its error reaches the user, and the compiled
    callable keeps compiling (it is not switched to eager by the user's own error)."""
    torch._dynamo.reset()
    w = torch.randn(7, 5)

    def fn(x):
        return torch.relu(x @ w)

    compiled = tilefuse.compile(fn)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        compiled(torch.randn(3, 6))
    assert not [f for r in compiled.tilefuse_reports for f in r["fallbacks"] if f["op"] == "call"]
    x = torch.randn(4, 7)
    torch.testing.assert_close(compiled(x), fn(x))


def test_a_call_that_changed_its_arguments_is_not_run_twice(monkeypatch):
    """A failed call that had changed a tensor argument in place (or was given an object that may hold
    state: a cache) raises its error instead of running again: the change would be made twice."""
    runs: list = []
    _failing_graphs(monkeypatch, runs)
    torch._dynamo.reset()

    def fn(x, counter):
        counter.add_(1)
        return x * 2

    compiled = tilefuse.compile(fn)
    counter = torch.zeros(())
    with pytest.raises(RuntimeError, match="injected failure"):
        compiled(torch.randn(4), counter)
    assert counter.item() == 1.0

    class Cache:
        pass

    def with_state(x, cache):
        return x + 1

    compiled = tilefuse.compile(with_state)
    with pytest.raises(RuntimeError, match="injected failure"):
        compiled(torch.randn(4), [Cache()])


def test_a_generate_whose_compiled_forward_fails_runs_in_eager(monkeypatch):
    """`generate` of a compiled transformers model whose forward fails at run time: the forward's call
    holds the KV cache (not run twice), so the whole `generate` runs again in eager PyTorch, with the
    model's own forward: eager's greedy tokens, and the report says why."""
    transformers = pytest.importorskip("transformers")
    runs: list = []
    _failing_graphs(monkeypatch, runs)
    torch._dynamo.reset()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 128, (1, 8))
    want = model.generate(ids, max_new_tokens=4, do_sample=False)
    compiled = tilefuse.compile(model)
    with pytest.warns(UserWarning, match="generate: the compiled call raised RuntimeError: injected failure"):
        got = compiled.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(got, want) and runs
    assert "forward" not in vars(model)
    reasons = [f["reason"] for r in compiled.tilefuse_reports for f in r["fallbacks"] if f["op"] == "call"]
    assert len(reasons) == 1 and "injected failure" in reasons[0]


def test_a_tensor_without_a_version_counter_is_not_read():
    """The retry's version read passes over tensors that keep no version counter (inference tensors,
    a subclass whose counter raises) instead of failing the call."""
    from tilefuse.compiler.api import _versions

    class NoVersion(torch.Tensor):
        @property
        def _version(self):
            raise RuntimeError("no version counter here")

    plain = torch.zeros(2)
    odd = torch.zeros(3).as_subclass(NoVersion)
    with torch.inference_mode():
        inference = torch.zeros(1)
    assert _versions((plain, odd, 3), {"b": inference}) == [plain._version, None, None]
