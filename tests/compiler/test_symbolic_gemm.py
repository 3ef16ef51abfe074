"""GEMM kernels of symbolic sizes (issue 14, `TILEFUSE_SYMBOLIC_GEMM=1`): a linear layer over a dynamic
number of tokens compiles once into a GEMM kernel that takes its sizes as arguments, its epilogue
fused, a config per size bucket; weight gradients contract over the symbolic tokens (Triton
interpreter; oracles: eager PyTorch, float64)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from helpers import step_matches_eager
from tilefuse.compiler.partition import SYMBOLIC_GEMM_ENV
from tilefuse.compiler.specialize import SPECIALIZE_ENV

torch.manual_seed(0)
LIN = torch.nn.Linear(32, 48)
DOWN = torch.nn.Linear(48, 32, bias=False)
UP = torch.nn.Linear(32, 48, bias=False)

CASES = {
    # fn, dim of the first argument that is dynamic
    "linear_gelu_tokens": (lambda x: F.gelu(LIN(x)), 1),
    "mlp_with_residual": (lambda x: DOWN(F.relu(LIN(x))) + x, 0),
    "swiglu": (lambda x: DOWN(F.silu(LIN(x)) * UP(x)), 0),
    "softmax_over_whole_rows": (lambda x: torch.softmax(LIN(x), -1), 0),
    "contracted_over_tokens": (lambda x: (x.t() @ x[:, :16]) * 2, 0),  # K symbolic
}


@pytest.fixture
def symbolic_gemms(monkeypatch):
    monkeypatch.setenv(SYMBOLIC_GEMM_ENV, "1")
    monkeypatch.setenv(SPECIALIZE_ENV, "0")  # every size runs the dynamic graph
    torch._dynamo.reset()


def _dynamic(shape: tuple[int, ...], dim: int, dtype=torch.float32) -> torch.Tensor:
    x = torch.randn(*shape).to(dtype)
    torch._dynamo.mark_dynamic(x, dim)
    return x


def _matches_eager_at(compiled, fn, rows) -> None:
    """`compiled` agrees with `fn` on [n, 32] inputs, n dynamic, for each n of `rows`."""
    with torch.no_grad():
        for n in rows:
            x = _dynamic((n, 32), 0)
            torch.testing.assert_close(compiled(x), fn(x), rtol=1e-4, atol=1e-4)


def _dynamic_groups(compiled) -> list[dict]:
    partitions = [p for r in compiled.tilefuse_reports for p in r["partitions"]]
    assert all("runtime_error" not in p for p in partitions), partitions
    return [g for p in partitions if p["name"].startswith("dynamic_") for g in p["groups"]]


@pytest.mark.parametrize("name", CASES)
def test_a_gemm_of_symbolic_sizes_runs_every_size(symbolic_gemms, name):
    fn, dim = CASES[name]
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        for n in (3, 17, 5, 40):  # ragged: no tile divides them
            shape = (2, n, 32) if dim == 1 else (n, 32)
            x = _dynamic(shape, dim)
            torch.testing.assert_close(compiled(x), fn(x), rtol=1e-4, atol=1e-4)
    assert len(compiled.tilefuse_reports) == 1  # one compile for every size
    gemms = [g for g in _dynamic_groups(compiled) if g["kind"] == "gemm"]
    assert gemms and all(g["kernel"] for g in gemms), gemms
    assert all("config_buckets" in g for g in gemms), gemms


def test_bf16_against_float64(symbolic_gemms):
    lin = torch.nn.Linear(64, 80).to(torch.bfloat16)
    fn = lambda x: F.gelu(lin(x)) * 0.5  # noqa: E731
    compiled = tilefuse.compile(fn)
    exact = torch.nn.Linear(64, 80).double()
    exact.load_state_dict(lin.state_dict())
    with torch.no_grad():
        for n in (7, 33):
            x = _dynamic((n, 64), 0, torch.bfloat16)
            out, eager, ref = compiled(x), fn(x), F.gelu(exact(x.double())) * 0.5
            assert out.dtype == torch.bfloat16
            kernel_err, eager_err = (out.double() - ref).abs().max(), (eager.double() - ref).abs().max()
            assert kernel_err <= 2 * eager_err + 1e-2, (kernel_err, eager_err)
    assert [g["kind"] for g in _dynamic_groups(compiled)] == ["gemm"]


def test_small_and_large_token_counts_launch_their_buckets_configs(symbolic_gemms, tmp_path):
    """A decode step's few rows get small tiles, a prefill's many large ones: one program, a
    branch per config."""
    fn = lambda x: F.gelu(LIN(x))  # noqa: E731
    compiled = tilefuse.compile(fn, dump=tmp_path)
    _matches_eager_at(compiled, fn, (2, 1100, 9))
    (gemm,) = _dynamic_groups(compiled)
    configs = list(gemm["config_buckets"].values())
    assert configs[0] != configs[1] and "BLOCK_M=16" in configs[0], configs
    (program,) = tmp_path.glob("*/program_dynamic_*.py")
    text = program.read_text()
    assert "(gemm): a config per size bucket" in text and "if bucket_" in text, text


def test_a_training_step_with_symbolic_tokens_matches_eager(symbolic_gemms, monkeypatch):
    """Forward and backward (compiled on the CPU where asked): the weight gradients contract over
    the tokens, a GEMM of symbolic K."""
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    model = torch.nn.Sequential(torch.nn.Linear(32, 48), torch.nn.GELU(), torch.nn.Linear(48, 16))
    compiled = tilefuse.compile(model)
    for n in (3, 17, 6):
        step_matches_eager(compiled, model, _dynamic((n, 32), 0), rtol=1e-4, atol=1e-4)
    backward = [r for r in compiled.tilefuse_reports if r.get("kind") == "backward"]
    kinds = [
        g["kind"]
        for r in backward
        for p in r["partitions"]
        if p["name"].startswith("dynamic_")
        for g in p["groups"]
    ]
    assert kinds.count("gemm") >= 2, kinds  # the input's gradient and a weight's


def test_off_by_default_cublas_runs_them(symbolic_gemms, monkeypatch):
    """Off, contractions of symbolic sizes run in PyTorch, even where a compile with the switch on
    cached the same graph (the switch is part of the compile-cache key)."""
    fn, _ = CASES["mlp_with_residual"]
    with torch.no_grad():
        tilefuse.compile(fn)(_dynamic((4, 32), 0))
    monkeypatch.delenv(SYMBOLIC_GEMM_ENV)
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn)
    _matches_eager_at(compiled, fn, (3, 17))
    assert "gemm" not in [g["kind"] for g in _dynamic_groups(compiled)]
    reasons = [f["reason"] for r in compiled.tilefuse_reports for f in r["fallbacks"]]
    assert "aten.addmm.default of symbolic sizes runs in PyTorch" in reasons, reasons


def test_a_tuning_job_tunes_a_gemm_s_smallest_bucket(symbolic_gemms, tmp_path):
    """A GEMM's few-row bucket has configs of its own: tuned at a decode-like size, read back there."""
    fn = lambda x: F.gelu(LIN(x))  # noqa: E731
    summary = tilefuse.tune(
        fn, (_dynamic((8, 32), 0),), budget=2, strategy="random", database=tmp_path / "t.db", progress=False,
        sizes=[4],
    )  # fmt: skip
    (result,) = [r for r in summary.results if r.task.sizes]
    ((s, size),) = result.task.sizes
    assert size == 4 and result.task.name.endswith(f"[{s}<=16]") and result.best is not None
    assert result.task.untuned is not None and "USE_TMA" not in result.task.untuned.params
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn)
    _matches_eager_at(compiled, fn, (3, 40))
    (gemm,) = _dynamic_groups(compiled)
    assert gemm["config_buckets"][f"{s}<=16"] == f"{result.best.config.key()} (tuned)", gemm
    assert gemm["config_buckets"][f"{s}<=1024"].endswith("(default)"), gemm


def test_a_contraction_whose_only_symbolic_sizes_are_its_inputs_compiles(symbolic_gemms):
    """[8, s] @ [s, 16]: every op's result is static, the graph's inputs are not (the graph counts
    as dynamic for its inputs' sizes too)."""
    fn = lambda x, y: torch.mm(x, y) * 2  # noqa: E731
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        for k in (5, 33, 7):
            x, y = _dynamic((8, k), 1), _dynamic((k, 16), 0)
            torch.testing.assert_close(compiled(x, y), fn(x, y), rtol=1e-4, atol=1e-4)
    assert "gemm" in [g["kind"] for g in _dynamic_groups(compiled) if g["kernel"]]


def test_attention_written_with_2d_products_compiles_at_every_size(symbolic_gemms):
    """softmax(q @ k.t()) @ v over a symbolic length: two GEMMs and a row kernel between them (the
    attention matcher compared symbolic sizes and sent the whole graph to PyTorch)."""
    fn = lambda q, k, v: torch.softmax(q @ k.t() / 4, -1) @ v  # noqa: E731
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        for n in (3, 17, 40):
            q, k, v = (_dynamic((n, 16), 0) for _ in range(3))
            torch.testing.assert_close(compiled(q, k, v), fn(q, k, v), rtol=1e-4, atol=1e-4)
    groups = _dynamic_groups(compiled)
    assert [g["kind"] for g in groups] == ["gemm", "row", "gemm"] and all(g["kernel"] for g in groups), groups
    assert not [f for r in compiled.tilefuse_reports for f in r["fallbacks"] if f["node"] == "<graph>"]


@settings(max_examples=6, deadline=None)
@given(
    st.lists(st.tuples(st.integers(2, 70), st.integers(2, 70)), min_size=2, max_size=3), st.integers(1, 40)
)
def test_random_sizes_of_m_and_k_through_one_program(sizes, n):
    """x[m, k] @ w[k, n] + b with m and k symbolic (ragged, across a bucket edge), n static."""
    fn = lambda x, w, b: torch.tanh(torch.addmm(b, x, w))  # noqa: E731
    with pytest.MonkeyPatch.context() as env:  # (a function-scoped fixture is not reset per example)
        env.setenv(SYMBOLIC_GEMM_ENV, "1")
        env.setenv(SPECIALIZE_ENV, "0")
        torch._dynamo.reset()
        compiled = tilefuse.compile(fn)
        b = torch.randn(n)
        with torch.no_grad():
            for m, k in sizes:
                x, w = _dynamic((m, k), 0), torch.randn(k, n)
                torch._dynamo.mark_dynamic(x, 1)
                torch._dynamo.mark_dynamic(w, 0)
                torch.testing.assert_close(compiled(x, w, b), fn(x, w, b), rtol=1e-4, atol=1e-4)
        assert "gemm" in [g["kind"] for g in _dynamic_groups(compiled) if g["kernel"]]
