"""Per-group selection: a GEMM group's kernel against its library path (compiler/group_selection.py).

The GPU's clock is faked (no GPU here): the tests decide which candidate is faster and check the
program that results, and that the library path computes what the kernel does (eager PyTorch is
the oracle), on ragged shapes.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tilefuse
from tilefuse.backends.triton import decode_attention
from tilefuse.compiler import group_selection, library_attention, runtime


@pytest.fixture(autouse=True)
def _fresh_tuning_database(monkeypatch, tmp_path):
    """Measured choices are recorded in the tuning database and read back by later compiles: each
    test starts from an empty one, so its fake clock decides."""
    monkeypatch.setenv("TILEFUSE_TUNING_DB", str(tmp_path / "tuning.db"))


def _fake_gpu(monkeypatch, faster: str, seen: list | None = None) -> None:
    """Group selection on (it runs on CUDA only), with `faster` ("kernel" or "library") winning. A fake
    clock decides on one sample, and warm-up runs would only run the interpreter: one each."""
    monkeypatch.setattr(runtime, "group_selection_enabled", lambda device: True)
    monkeypatch.setattr(group_selection, "SAMPLES", 1)
    monkeypatch.setattr(group_selection, "WARMUP", 0)

    def clock(kind, run, device):
        run()
        if seen is not None:
            seen.append(kind)
        return 1.0 if kind == faster else 2.0

    monkeypatch.setattr(group_selection, "default_clock", clock)


def _run(fn, *args, dump=None):
    compiled = tilefuse.compile(fn, dump=dump)
    with torch.no_grad():
        got, want = compiled(*args), fn(*args)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    (report,) = compiled.tilefuse_reports
    return report


def _mlp(x, w1, b1, w2, w3, r):
    h = F.silu(x @ w1.t() + b1) * (x @ w3.t())  # SwiGLU: two accumulators in one GEMM group
    return F.gelu(h @ w2.t()) + r  # an epilogue with math, then a residual


@settings(max_examples=6, deadline=None)
@given(
    m=st.integers(1, 40),
    k=st.integers(3, 40),
    n=st.integers(3, 40),
    faster=st.sampled_from(["kernel", "split"]),
)
def test_either_choice_computes_what_eager_does(m, k, n, faster):
    torch._dynamo.reset()
    with pytest.MonkeyPatch.context() as mp:
        _fake_gpu(mp, faster)
        x, r = torch.randn(m, k), torch.randn(m, k)
        w1, w3, w2, b1 = torch.randn(n, k), torch.randn(n, k), torch.randn(k, n), torch.randn(n)
        report = _run(_mlp, x, w1, b1, w2, w3, r)
    (partition,) = report["partitions"]
    choices = partition["group_selection"]
    assert len(choices) == 2 and {c["chosen"] for c in choices} == {faster}
    assert all(c[f"{faster}_ms"] == 1.0 and "library_ms" not in c for c in choices)  # split beats it
    assert ("split: library GEMM" in partition["executor"]) == (faster == "split")


@pytest.mark.parametrize("faster", ["library", "split"])
def test_the_program_calls_the_library_where_it_won_and_launches_the_rest(monkeypatch, tmp_path, faster):
    """A GEMM without an epilogue measured faster on the library runs as a matmul; one with an
    epilogue (here a norm) split: its GEMM a library matmul, the norm a row kernel."""
    seen = []
    _fake_gpu(monkeypatch, faster, seen)
    x = torch.randn(2, 7, 24)
    w, g = torch.randn(40, 24), torch.randn(24)

    def fn(x, w, g):  # a GEMM group and a pointwise kernel: the GEMM is measured
        y = x @ w.t() if faster == "library" else F.layer_norm(torch.relu(x @ w.t()), (40,)) * 2
        return y, torch.exp(x * g)

    report = _run(fn, x, w, g, dump=tmp_path)
    (partition,) = report["partitions"]
    assert [c["chosen"] for c in partition["group_selection"]] == [faster]
    assert sorted(set(seen)) == ["kernel", faster]  # both candidates were timed
    (program,) = tmp_path.glob("*/program_*.py")
    source = program.read_text()
    wanted = (
        "the library path"
        if faster == "library"
        else "its GEMM(s) on the library, its epilogue as kernel row_"
    )
    assert source.count(wanted) == 1
    assert "(pointwise)" in source and "1 kernel launch(es)" in source  # the other group still launches


@pytest.mark.parametrize("faster, tokens", [("split", 24), ("library", 37)])
def test_a_library_call_reads_an_activation_whose_buffer_is_its_transposes(monkeypatch, tmp_path, faster, tokens):
    """A kernel output read elsewhere only through one transpose (GPT-2's MLP activation, saved
    transposed for the backward) is allocated as the transpose's tensor; launches read it by its
    literal strides, and a GEMM reading it on the library path (cuBLASLt's addmm on the split path,
    or the library path) gets the activation itself, not the transpose (its shape was refused there:
    the training forward failed at run time on the H200 once a database choice put it there)."""
    _fake_gpu(monkeypatch, faster)
    x, w, b = torch.randn(tokens, 48), torch.randn(48, 16), torch.randn(16)

    def fn(x, w, b):
        h = F.gelu(x, approximate="tanh")  # a pointwise kernel (no library way)
        return (torch.addmm(b, h, w) if faster == "split" else h @ w), h.t()

    compiled = tilefuse.compile(fn, dump=tmp_path)
    with torch.no_grad():
        got, want = compiled(x, w, b), fn(x, w, b)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    (source,) = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert "its buffer was allocated as this view" in source, source
    assert f".as_strided(({tokens}, 48), (48, 1))" in source, source  # the transposed buffer as the activation
    assert "failed at run time" not in str(compiled.tilefuse_reports)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [24, 37])
def test_a_linear_layers_bias_goes_to_cublaslt_on_the_split_path(monkeypatch, tmp_path, dtype, tokens):
    """The split path of a GEMM whose epilogue begins with a bias adds it in the library GEMM
    (`torch.addmm`, cuBLASLt's bias epilogue, as eager's linear layer does): a bias alone needs no
    kernel after it; a bias then GELU leaves the GELU to the kernel. Ragged token counts."""
    _fake_gpu(monkeypatch, "split")
    lin1, lin2 = torch.nn.Linear(32, 48).to(dtype), torch.nn.Linear(48, 16).to(dtype)

    def fn(x):
        return lin2(F.gelu(lin1(x), approximate="tanh"))

    x = torch.randn(tokens, 32, dtype=dtype)
    compiled = tilefuse.compile(fn, dump=tmp_path)
    with torch.no_grad():
        got, want = compiled(x), fn(x)
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance)
    (program,) = tmp_path.glob("*/program_*.py")
    source = program.read_text()
    assert source.count("torch.addmm: cuBLASLt's bias epilogue") == 1  # lin2: the bias alone
    assert source.count("its GEMM(s) on the library, its epilogue as kernel") == 1  # lin1: bias, GELU
    assert source.count("kernel launch(es)") == 1 and "0 kernel launch(es)" in source


def test_identical_layers_are_measured_once(monkeypatch):
    seen = []
    _fake_gpu(monkeypatch, "kernel", seen)
    ws = [torch.randn(16, 16) for _ in range(3)]

    def fn(x):
        for w in ws:
            x = torch.tanh(x @ w)
        return x

    report = _run(fn, torch.randn(5, 16))
    (partition,) = report["partitions"]
    assert len(partition["group_selection"]) == 3
    assert seen.count("kernel") == group_selection.SAMPLES  # one measurement for three launches


def test_candidates_are_timed_outside_the_callers_dispatch_modes(monkeypatch):
    """The first call of a graph, where its groups are measured, runs under AOTAutograd's analysis mode
    (a Python dispatch mode that made each aten op of a library path ~20x slower on the H200). A mode
    around the choice stands in for it: the candidates' ops must not go through it."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counting.ops += 1
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(runtime, "group_selection_enabled", lambda device: True)
    modes_seen = []

    def clock(kind, run, device):
        modes_seen.append(torch._C._len_torch_dispatch_stack())
        before = Counting.ops
        run()
        assert Counting.ops == before, f"the {kind} candidate ran under the caller's mode"
        return 1.0 if kind == "split" else 2.0

    monkeypatch.setattr(group_selection, "default_clock", clock)
    choose = group_selection.GroupSelector.choose

    def choose_under_a_mode(self, kernel, metas):  # as the graph's first call chooses
        with Counting():
            return choose(self, kernel, metas)

    monkeypatch.setattr(group_selection.GroupSelector, "choose", choose_under_a_mode)
    report = _run(lambda x, w: torch.relu(x @ w), torch.randn(9, 12), torch.randn(12, 5))
    (choice,) = report["partitions"][0]["group_selection"]
    assert choice["chosen"] == "split" and modes_seen and set(modes_seen) == {0}


def test_a_failed_measurement_keeps_the_kernel_and_says_why(monkeypatch):
    monkeypatch.setattr(runtime, "group_selection_enabled", lambda device: True)

    def broken(kind, run, device):
        raise RuntimeError("simulated timer failure")

    monkeypatch.setattr(group_selection, "default_clock", broken)
    report = _run(lambda x, w: torch.relu(x @ w), torch.randn(9, 12), torch.randn(12, 5))
    (choice,) = report["partitions"][0]["group_selection"]
    assert choice["chosen"] == "kernel" and "simulated timer failure" in choice["not_measured"]


def test_off_without_cuda_or_when_selection_is_off(monkeypatch):
    assert not group_selection.group_selection_enabled(torch.device("cpu"))
    monkeypatch.setenv(group_selection.SELECT_ENV, "0")
    assert not group_selection.group_selection_enabled(torch.device("cuda", 0))


@pytest.mark.parametrize("faster", ["library", "split"])
def test_a_transformers_model_matches_eager_with_every_gemm_on_the_library_path(monkeypatch, faster):
    """GPT-2 (Conv1D, a sliced fused QKV, tied LM head, tanh GELU epilogue) with every GEMM group
    measured "faster" on the library path (or split: the GEMM there, the epilogue a kernel):
    still eager's logits."""
    name = "gpt2"
    pytest.importorskip("transformers")
    from tiny_models import MODELS, _inputs

    _fake_gpu(monkeypatch, faster)
    model, inputs = MODELS[name]().eval(), _inputs(name)
    with torch.no_grad():
        expected = model(**inputs).logits
        compiled = tilefuse.compile(model)
        actual = compiled(**inputs).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    (partition,) = compiled.tilefuse_reports[0]["partitions"]
    choices = partition["group_selection"]
    with_epilogue = [c for c in choices if "split_ms" in c]  # the LM head has none: no split path
    assert len(choices) >= 8 and with_epilogue, choices
    # a tie keeps the kernel: the library is not a candidate where a split path is, nor for an
    # attention group that is one SDPA call (SDPA is its library path)
    chosen = {"split": ("split", "kernel"), "library": ("kernel", "library")}[faster]

    def expected(c: dict) -> str:
        return chosen[0] if c in with_epilogue else ("kernel" if "sdpa_ms" in c else chosen[1])

    assert any("sdpa_ms" in c for c in choices), choices  # GPT-2's attention, [batch, position, head, dim]
    assert all(c["chosen"] == expected(c) for c in choices), choices


@pytest.mark.parametrize("spec", ["mk,kn->mn", "mk,nk->mn", "km,kn->mn", "bmk,bnk->bmn", "bkm,bkn->bmn",
                                  "mk,kn->nm", "bmk,kn->bmn", "bmk,nk->bmn", "bkm,kn->bmn", "mk,k->m",
                                  "ik,jk->ij"])  # fmt: skip
def test_matmul_form_matches_einsum(spec):
    from tilefuse.compiler.group_selection import matmul_form

    inputs, _ = spec.split("->")
    sizes = {"b": 3, "m": 5, "n": 4, "k": 7, "i": 2, "j": 6}
    a, b = (torch.randn([sizes[c] for c in term]) for term in inputs.split(","))
    form = matmul_form(spec)
    if spec in ("mk,kn->nm", "mk,k->m"):
        assert form is None  # einsum runs those
        return
    ta, tb = form
    torch.testing.assert_close(torch.matmul(a.mT if ta else a, b.mT if tb else b), torch.einsum(spec, a, b))


BF16_EPILOGUE = """
builtin.module {
  func.func @f(%r: tensor<5x24xbf16>, %b: tensor<24xbf16>, %y: tensor<5x24xbf16>) -> tensor<5x24xbf16> {
    %0 = ein.map(%r, %b, %y) : (tensor<5x24xbf16>, tensor<24xbf16>, tensor<5x24xbf16>) -> tensor<5x24xbf16> {
    ^bb0(%2: bf16, %3: bf16, %4: bf16):
      %5 = arith.extf %3 : bf16 to f32
      %6 = arith.extf %4 : bf16 to f32
      %7 = arith.addf %5, %6 : f32
      %8 = arith.truncf %7 : f32 to bf16
      %9 = arith.extf %8 : bf16 to f32
      %10 = arith.constant 1.000000e+00 : f32
      %11 = arith.negf %9 : f32
      %12 = math.exp %11 : f32
      %13 = arith.addf %10, %12 : f32
      %14 = arith.divf %10, %13 : f32
      %15 = arith.mulf %9, %14 : f32
      %16 = arith.truncf %15 : f32 to bf16
      %17 = arith.extf %16 : bf16 to f32
      %18 = arith.extf %2 : bf16 to f32
      %19 = arith.addf %17, %18 : f32
      %20 = arith.truncf %19 : f32 to bf16
      ein.yield %20 : bf16
    }
    func.return %0 : tensor<5x24xbf16>
  }
}
"""


def test_the_library_map_runs_16_bit_arithmetic_as_one_op_with_the_same_bits(monkeypatch):
    """bias + SiLU + residual in bf16, as imported (widen, compute, round per op): the library path
    adds in bf16 directly where that is what the widen-add-round spells, bit for bit the op-by-op
    reference interpreter, with fewer PyTorch ops."""
    from tilefuse.compiler import library_plan
    from tilefuse.ir import einsum as ein
    from tilefuse.ir.interpreter import run_op
    from tilefuse.ir.module import parse_module

    (fn,) = parse_module(BF16_EPILOGUE).ops
    (map_op,) = [op for op in fn.body.block.ops if isinstance(op, ein.MapOp)]
    r, b, y = torch.randn(5, 24).bfloat16(), torch.randn(24).bfloat16(), torch.randn(5, 24).bfloat16()
    adds = []
    counting = lambda *a: (adds.append(a[0].dtype), torch.add(*a))[1]  # noqa: E731
    monkeypatch.setitem(library_plan.ROUNDED_ONCE, "arith.addf", counting)
    step = library_plan.planned_map(map_op)  # resolved once: the counting add is bound here
    want = run_op(map_op, dict(zip(map_op.operands, [r, b, y])), torch.device("cpu"))
    for _ in range(2):  # the plan runs again alike (its constants made once)
        adds.clear()
        got = step(torch.device("cpu"), r, b, y)
        assert adds == [torch.bfloat16, torch.bfloat16]  # the bias and the residual: rounded-once adds
        assert got.dtype == torch.bfloat16 and torch.equal(got, want)


def _attention_choices(report) -> list[dict]:
    attention = {g["name"] for p in report["partitions"] for g in p["groups"] if g["kind"] == "attention"}
    choices = [c for p in report["partitions"] for c in p["group_selection"] if c["group"] in attention]
    assert attention and len(choices) == len(attention), (attention, choices)
    return choices


def test_attention_on_its_math_path_matches_eager(monkeypatch):
    """An attention group that is not one SDPA call (Gemma 2's soft-capped scores, causal with more
    keys than queries) measured "faster" on its library path (the math path: scores through a matmul,
    softmax op by op) still computes eager's result; ragged lengths, grouped heads."""
    _fake_gpu(monkeypatch, "library")
    q, k, v = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 13, 16), torch.randn(2, 2, 13, 16)

    def attend(q, k, v):
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        scores = torch.tanh(q @ k.transpose(-1, -2) * 0.25 / 5.0) * 5.0
        scores = scores.masked_fill(torch.ones(7, 13, dtype=torch.bool).triu(1), float("-inf"))
        return torch.softmax(scores, -1) @ v * 2

    choices = _attention_choices(_run(attend, q, k, v))
    assert all(c["chosen"] == "library" for c in choices), choices
    assert all("not a scale" in c["sdpa_not_built"] for c in choices), choices


def test_causal_attention_with_more_keys_than_queries_runs_on_sdpa_with_a_mask(monkeypatch):
    """Causal with more keys than queries is SDPA's `attn_mask` (its `is_causal` is left to square
    scores): measured faster, the program's SDPA call gets the mask and computes eager's result;
    ragged lengths, grouped heads."""
    _fake_gpu(monkeypatch, "sdpa")
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((kw.get("is_causal"), None if kw.get("attn_mask") is None else tuple(kw["attn_mask"].shape[-2:])))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(library_attention.F, "scaled_dot_product_attention", spy)
    q, k, v = torch.randn(2, 4, 7, 16), torch.randn(2, 2, 13, 16), torch.randn(2, 2, 13, 16)

    def attend(q, k, v):
        k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
        return sdpa(q, k, v, is_causal=True) * 2

    choices = _attention_choices(_run(attend, q, k, v))
    assert [c["chosen"] for c in choices] == ["sdpa"], choices
    assert calls and all(c == (False, (7, 13)) for c in calls), calls


def _assert_sdpa_chosen_and_eager(fn, args: tuple, dtype: torch.dtype) -> None:
    """`fn` compiled computes eager's result on `args`, its attention groups on SDPA alone (the math
    path not built beside it)."""
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        got, want = compiled(*args), fn(*args)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(got, want, **tol)
    (report,) = compiled.tilefuse_reports
    choices = _attention_choices(report)
    assert all(c["chosen"] == "sdpa" and "library_ms" not in c for c in choices), choices


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "causal, kv_heads, scale", [(False, 4, None), (True, 4, 0.3), (True, 2, None), (False, 1, 0.5)],
    ids=["plain", "causal-scaled", "grouped", "one-kv-head"],
)  # fmt: skip
def test_attention_on_sdpa_matches_eager(monkeypatch, dtype, causal, kv_heads, scale):
    """An attention group that is one SDPA call (a scale of q @ k^T, causal or not, grouped heads)
    has SDPA as its library path; measured faster, the program calls it with the group's scale and
    mask, and computes eager's result. Ragged lengths (L = S = 13), head dim 24."""
    _fake_gpu(monkeypatch, "sdpa")
    q = torch.randn(2, 4, 13, 24, dtype=dtype)
    k, v = torch.randn(2, kv_heads, 13, 24, dtype=dtype), torch.randn(2, kv_heads, 13, 24, dtype=dtype)

    def attend(q, k, v):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

    _assert_sdpa_chosen_and_eager(attend, (q, k, v), dtype)


@pytest.mark.parametrize("causal, masked", [(True, False), (False, True)], ids=["causal", "masked"])
def test_grouped_heads_repeated_where_sdpa_has_no_fused_kernel_for_them(monkeypatch, causal, masked):
    """Where SDPA's fused kernels do not take grouped query heads (CUDA: float32, a mask; its math
    path would run), the library path repeats the key and value heads and calls SDPA without
    `enable_gqa`; the result is eager's. Ragged lengths (L = S = 13), 6 query heads over 2 key heads."""
    _fake_gpu(monkeypatch, "sdpa")
    monkeypatch.setattr(library_attention, "sdpa_reads_grouped_heads", lambda *a: False)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((q.shape[1], k.shape[1], v.shape[1], kw.get("enable_gqa", False)))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(library_attention.F, "scaled_dot_product_attention", spy)
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(2, 6, 13, 24, generator=g), *(torch.randn(2, 2, 13, 24, generator=g) for _ in "kv")
    pad = torch.zeros(2, 1, 1, 13)
    pad[0, ..., -4:] = float("-inf")

    def attend(q, k, v, pad):
        k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
        scores = q @ k.transpose(-1, -2) * 24**-0.5
        if causal:
            scores = scores.masked_fill(torch.ones(13, 13, dtype=torch.bool).triu(1), float("-inf"))
        if masked:
            scores = scores + pad
        return torch.softmax(scores, dim=-1) @ v

    _assert_sdpa_chosen_and_eager(attend, (q, k, v, pad), torch.float32)
    assert calls and all(c == (6, 6, 6, False) for c in calls), calls


def test_sdpa_reads_grouped_heads_where_flash_runs():
    """`enable_gqa` is kept where SDPA's flash kernel takes the call (CUDA, half precision, no mask,
    head dim <= 256) and on a CPU; elsewhere the heads are repeated."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert library_attention.sdpa_reads_grouped_heads(cuda, torch.bfloat16, False, 128)
    assert library_attention.sdpa_reads_grouped_heads(cuda, torch.float16, False, 256)
    assert not library_attention.sdpa_reads_grouped_heads(cuda, torch.float32, False, 128)
    assert not library_attention.sdpa_reads_grouped_heads(cuda, torch.bfloat16, True, 128)
    assert not library_attention.sdpa_reads_grouped_heads(cuda, torch.bfloat16, False, 512)
    assert library_attention.sdpa_reads_grouped_heads(cpu, torch.float32, True, 128)


@pytest.mark.parametrize(
    "rows, keys, kv_heads, masked, dtype",
    [(40, 1500, 3, True, torch.float32), (7, 1100, 1, False, torch.float32), (64, 1025, 3, True, torch.bfloat16)],
    ids=["masked", "grouped", "bf16-64-rows"],
)  # fmt: skip
def test_split_keys_attention_matches_float64(monkeypatch, rows, keys, kv_heads, masked, dtype):
    """An attention of a few (batch, head)s over many keys (BigBird's first and last query blocks
    against all 4096 keys: 12 programs of the flash kernel on 132 SMs) has the split-keys kernel as a
    candidate; measured faster, the program runs it (in Triton's interpreter here): its result is
    float64's to eager's order. Ragged rows and keys (not multiples of its 128-key blocks), an additive
    mask hiding the last keys, query heads sharing a key head folded into one program's rows."""
    _fake_gpu(monkeypatch, "split-keys")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 3, rows, 32, generator=g).to(dtype)
    k, v = (torch.randn(1, kv_heads, keys, 32, generator=g).to(dtype) for _ in range(2))
    mask = torch.zeros(1, 1, 1, keys, dtype=dtype)
    mask[..., -7:] = float("-inf")

    def attend(q, k, v, mask):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = q @ k.transpose(-1, -2) * 0.2
        if masked:
            scores = scores + mask
        return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v

    compiled = tilefuse.compile(attend)
    with torch.no_grad():
        got = compiled(q, k, v, mask)
        want = attend(*(x.double() for x in (q, k, v, mask)))
        eager = attend(q, k, v, mask)
    bound = 2 * (eager.double() - want).abs().max().item() + (1e-6 if dtype == torch.float32 else 1e-3)
    assert (got.double() - want).abs().max().item() <= bound
    (report,) = compiled.tilefuse_reports
    choices = _attention_choices(report)
    assert choices and all(c["chosen"] == "split-keys" for c in choices), choices


@pytest.mark.parametrize(
    "heads, rows, keys, causal, reason",
    [(3, 40, 700, False, "700 keys"), (6, 8, 1024, False, "fill the 6 SMs"),
     (3, 100, 1100, False, "100 query rows"), (3, 40, 40, True, "causal")],
    ids=["few-keys", "many-heads", "many-rows", "causal"],
)  # fmt: skip
def test_split_keys_is_built_only_where_the_flash_grid_underfills(
    monkeypatch, heads, rows, keys, causal, reason
):
    """The split-keys kernel is a candidate only where it pays and takes the attention: at least 1024
    keys, fewer flash programs (64 rows of a head each) than SMs, at most 64 rows a head, no causal
    mask; elsewhere the report says why it was not built, and SDPA and the kernel compete as before.
    (A GPU of 6 SMs here: 132 would take 132 heads in Triton's interpreter.)"""
    _fake_gpu(monkeypatch, "split-keys")
    monkeypatch.setattr(decode_attention, "HOST_SMS", 6)
    q, k, v = (torch.randn(1, heads, n, 16) for n in (rows, keys, keys))

    def attend(q, k, v):
        if causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.softmax(q @ k.transpose(-1, -2) * 0.25, dim=-1) @ v

    choices = _attention_choices(_run(attend, q, k, v))
    assert choices and all(reason in c["split-keys_not_built"] for c in choices), choices


def test_attention_on_sdpa_from_a_sequence_major_layout(monkeypatch):
    """q, k and v as [batch, position, head, dim] (GPT-2's and OPT's projections, transposed in the
    function): the group's contractions read that layout, and SDPA gets them permuted."""
    _fake_gpu(monkeypatch, "sdpa")
    q, k, v = (torch.randn(2, 11, 3, 8) for _ in range(3))

    def attend(q, k, v):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return out.transpose(1, 2).reshape(2, 11, 24)

    choices = _attention_choices(_run(attend, q, k, v))
    assert all(c["chosen"] == "sdpa" for c in choices), choices


@pytest.mark.parametrize("length", [13, 40])
def test_attention_masked_by_a_tril_buffer_runs_on_sdpa(monkeypatch, length):
    """minGPT's attention (matmuls, `masked_fill` with a registered tril buffer): the mask folds
    into the causal pattern (causal_masks.fold_causal_selects), so the group is one causal SDPA call,
    which float32 attention measures faster than the kernel's exact float32 dots on the H200."""
    _fake_gpu(monkeypatch, "sdpa")

    class Attend(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("bias", torch.tril(torch.ones(64, 64)).view(1, 1, 64, 64))

        def forward(self, q, k, v):
            t = q.shape[-2]
            att = (q @ k.transpose(-2, -1)) * 0.25
            att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf"))
            return F.softmax(att, dim=-1) @ v

    strides = []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, **kw):  # the fused kernels need rows of q, k and v contiguous
        strides.append([x.stride(-1) for x in (q, k, v)])
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(library_attention.F, "scaled_dot_product_attention", recording)
    q, k, v = (torch.randn(2, 3, length, 16) for _ in range(3))
    choices = _attention_choices(_run(Attend(), q, k, v))
    assert all(c["chosen"] == "sdpa" for c in choices), choices
    # rows contiguous, whatever layout the group's inputs have (on the H200 minGPT's k arrived as a
    # copy of k^T, which sent SDPA to its math fallback; this CPU graph stores k row-major already)
    assert strides and all(s == [1, 1, 1] for s in strides), strides


def _t5_attention(q, k, v, bias):
    # T5: no scale, a position bias added to the scores, the softmax in float32
    scores = q @ k.transpose(-2, -1) + bias
    return F.softmax(scores.float(), dim=-1).type_as(scores) @ v


def _padded_attention(q, k, v, keep):
    # a padding mask on the keys, written with masked_fill, scaled as BERT's eager attention
    scores = (q @ k.transpose(-2, -1)) / 4.0
    return F.softmax(scores.masked_fill(~keep[:, None, None, :], float("-inf")), dim=-1) @ v


def _sdpa_bias(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def _causal_and_padded(q, k, v, keep):
    i = torch.arange(q.shape[-2])
    seen = (i[None, :] <= i[:, None]) & keep[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=seen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "fn, extra", [
        (_t5_attention, lambda b, h, n: torch.randn(1, h, n, n)),
        (_padded_attention, lambda b, h, n: torch.arange(n)[None, :] < torch.tensor([[n], [n - 5]])),
        (_sdpa_bias, lambda b, h, n: torch.randn(n, n)),
        (_causal_and_padded, lambda b, h, n: torch.arange(n)[None, :] < torch.tensor([[n], [n - 3]])),
    ], ids=["t5 bias", "padding masked_fill", "sdpa bias", "causal and padding"],
)  # fmt: skip
def test_attention_with_a_mask_or_bias_runs_on_sdpa(monkeypatch, dtype, fn, extra):
    """A mask or bias tensor read by the scores: SDPA takes the map's value at zero scores as its
    additive mask (library_attention.pre_softmax); measured faster, the program computes eager's
    result. Ragged lengths (13), two sequences, one of them padded."""
    _fake_gpu(monkeypatch, "sdpa")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 13, 16, dtype=dtype) for _ in range(3))
    other = extra(2, 3, 13)
    other = other.to(dtype) if other.is_floating_point() else other
    _assert_sdpa_chosen_and_eager(fn, (q, k, v, other), dtype)


def _second_call_ops(fn, args: tuple) -> tuple[dict, Counter]:
    """`fn` compiled: its second call matches eager; the report, and the aten ops that call ran
    (the profiler's)."""
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        compiled(*args)
        with torch.profiler.profile() as prof:
            got = compiled(*args)
        torch.testing.assert_close(got, fn(*args), rtol=1e-4, atol=1e-4)
    (report,) = compiled.tilefuse_reports
    return report, Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


@pytest.mark.parametrize("heads_first", [True, False], ids=["[B, H, L, E]", "[B, L, H, E]"])
def test_an_sdpa_call_runs_no_view_that_changes_nothing(monkeypatch, heads_first):
    """The library path of an attention already in SDPA's layout calls SDPA on its inputs as they
    are: no permute, reshape or cast a call (host time, where a small program is host-bound). Laid
    out [B, L, H, E], it permutes each operand and the result once and matches eager; ragged lengths."""
    _fake_gpu(monkeypatch, "sdpa")
    if heads_first:
        fn, shape = (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)), (2, 3, 13, 16)
    else:

        def fn(q, k, v):
            q, k, v = (x.transpose(1, 2) for x in (q, k, v))
            return F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2) * 2.0

        shape = (2, 13, 3, 16)
    report, ops = _second_call_ops(fn, tuple(torch.randn(*shape) for _ in range(3)))
    assert _attention_choices(report)[0]["chosen"] == "sdpa"
    assert ops["aten::scaled_dot_product_attention"] == 1, ops
    assert ops["aten::reshape"] == 0 and ops["aten::to"] == 0 and ops["aten::_to_copy"] == 0, ops
    assert ops["aten::permute"] == (0 if heads_first else 4), ops


@pytest.mark.parametrize("faster", ["sdpa", "kernel"])
def test_attention_transposed_back_for_its_projection_is_not_copied(monkeypatch, faster):
    """Transformers' attention: [B, H, L, E] operands, the result transposed to [B, L, H, E] and
    flattened for the output projection. The attention's output is written in that order (the
    permute folds into its second product), which SDPA's fused kernels write in memory already (a
    stand-in here: CPU's SDPA follows q's layout): the program copies nothing between SDPA and the
    projection. Ragged lengths; eager's result either way."""
    _fake_gpu(monkeypatch, faster)
    sdpa = F.scaled_dot_product_attention

    def fused(q, k, v, **kw):  # as CUDA's fused kernels: [B, H, L, E] stored [B, L, H, E]
        out = sdpa(q, k, v, **kw)
        b, h, n, e = out.shape
        return out.new_empty(b, n, h, e).transpose(1, 2).copy_(out)

    monkeypatch.setattr(library_attention.F, "scaled_dot_product_attention", fused)

    def layer(q, k, v, w):
        b, h, n, e = q.shape
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return out.transpose(1, 2).reshape(b, n, h * e) @ w

    args = (*(torch.randn(2, 3, 13, 16) for _ in range(3)), torch.randn(48, 24))
    report, ops = _second_call_ops(layer, args)
    assert _attention_choices(report)[0]["chosen"] == faster
    if faster == "sdpa":  # (the interpreted GEMM copies its operands with copy_, not clone)
        assert ops["aten::clone"] == 0, ops


def test_attention_with_a_bias_that_is_not_added_is_not_an_sdpa_call(monkeypatch):
    """Scores multiplied by a tensor (not a scale plus a bias): SDPA is not built (the reason is
    kept), the math path competes instead."""
    _fake_gpu(monkeypatch, "library")
    q, k, v = (torch.randn(1, 2, 9, 16) for _ in range(3))
    gain = torch.rand(9, 9) + 0.5

    def attend(q, k, v, gain):
        return F.softmax((q @ k.transpose(-2, -1)) * gain, dim=-1) @ v

    choices = _attention_choices(_run(attend, q, k, v, gain))
    assert all(c["chosen"] == "library" and "not a scale" in c["sdpa_not_built"] for c in choices), choices


def test_a_library_path_too_large_to_measure_keeps_the_kernel(monkeypatch):
    _fake_gpu(monkeypatch, "library")
    monkeypatch.setattr(group_selection, "MAX_LIBRARY_BYTES", 64)
    report = _run(lambda x, w: torch.relu(x @ w), torch.randn(9, 12), torch.randn(12, 5))
    (choice,) = report["partitions"][0]["group_selection"]
    assert choice["chosen"] == "kernel" and "GiB intermediate" in choice["not_measured"]


@pytest.mark.parametrize("program_clock", ["1", "0"])
def test_a_later_compile_reads_the_choice_from_the_tuning_database(monkeypatch, tmp_path, program_clock):
    """Both times and the choice are recorded (keyed by the kernel's task, device, versions and the
    launch's layouts), whether chosen for the program or for the group alone; a later compile of the
    same graph decides without measuring and says so. Other shapes are another launch: measured again."""
    monkeypatch.setenv(group_selection.PROGRAM_CLOCK_ENV, program_clock)
    seen = []
    _fake_gpu(monkeypatch, "split", seen)
    x, w1, b1, w2, w3, r = _mlp_inputs(9, 12, 10)
    first = _run(_mlp, x, w1, b1, w2, w3, r)["partitions"][0]["group_selection"]
    assert {c["chosen"] for c in first} == {"split"} and "from" not in first[0] and seen
    from tilefuse.autotune.database import Database

    with Database(tmp_path / "tuning.db") as db:
        assert db._conn.execute("SELECT COUNT(*) FROM choices").fetchone()[0] == len(first)

    seen.clear()
    torch._dynamo.reset()
    _fake_gpu(monkeypatch, "kernel", seen)  # a clock that would now choose otherwise: not asked
    again = _run(_mlp, x, w1, b1, w2, w3, r)["partitions"][0]["group_selection"]
    assert not seen
    assert [(c["chosen"], c["split_ms"], c["from"]) for c in again] == [
        (c["chosen"], c["split_ms"], "database") for c in first
    ]
    torch._dynamo.reset()
    token = group_selection.replayed.set(True)  # a program replayed as a CUDA graph: GPU time alone
    try:
        replayed = _run(_mlp, x, w1, b1, w2, w3, r)["partitions"][0]["group_selection"]
    finally:
        group_selection.replayed.reset(token)
    assert seen and all("from" not in c for c in replayed)  # measured: the recorded choice was host-bound
    seen.clear()
    torch._dynamo.reset()
    _run(_mlp, *_mlp_inputs(5, 12, 10))  # other shapes: measured
    assert seen


def _mlp_inputs(m, k, n):
    torch.manual_seed(0)
    x, r = torch.randn(m, k), torch.randn(m, k)
    return x, torch.randn(n, k), torch.randn(n), torch.randn(k, n), torch.randn(n, k), r


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(
    "m,k,n",
    [
        (33, 24, 257),
        (33, 24, 301),
        (33, 24, 40),
        (301, 24, 40),
        (33, 259, 40),
        (257, 263, 301),
        (16, 264, 256),
    ],
)
@pytest.mark.parametrize("ta,tb", [(False, True), (False, False), (True, True), (True, False)])
def test_the_library_matmul_pads_unaligned_dims_and_computes_the_same(dtype, m, k, n, ta, tb, monkeypatch):
    """A dim of the product (M, K or N) whose rows are not a multiple of 16 bytes is padded with
    zeros in the operands that hold it (cuBLAS's aligned kernels) and the product sliced back:
    the product of the unpadded operands, in float64, whichever operands are transposed."""
    from tilefuse.compiler.group_selection import PAD_MIN_N, library_matmul

    torch.manual_seed(m + k + n)
    a = torch.randn(k, m) if ta else torch.randn(m, k)
    b = torch.randn(n, k) if tb else torch.randn(k, n)
    a, b = a.to(dtype), b.to(dtype)
    shapes, matmul, mm = [], torch.matmul, torch.mm
    monkeypatch.setattr(torch, "matmul", lambda x, y: shapes.append((*x.shape, y.shape[1])) or matmul(x, y))
    monkeypatch.setattr(torch, "mm", lambda x, y, out: shapes.append(("mm", *x.shape, y.shape[1])) or mm(x, y, out=out))
    got = library_matmul(a, b, ta, tb)
    want = (a.mT if ta else a).double() @ (b.mT if tb else b).double()
    assert got.shape == (m, n) and got.dtype == dtype
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-1 if dtype == torch.bfloat16 else 1e-4)
    align = 16 // got.element_size()
    aligned = [d + (-d % align if d >= PAD_MIN_N else 0) for d in (m, k, n)]
    if shapes[0][0] == "mm":  # M or N alone unaligned, over aligned operands: split, no copy
        (unaligned,) = [i for i, (d, p) in enumerate(zip((m, k, n), aligned)) if d != p]
        split = [m, k, n]
        split[unaligned] -= split[unaligned] % align
        tail = [m, k, n]
        tail[unaligned] %= align
        assert shapes == [("mm", *split), ("mm", *tail)]
    else:
        assert shapes == [tuple(aligned)]  # what cuBLAS multiplied
    split_n = shapes[0][0] == "mm" and n != aligned[2]  # into rows padded as a GEMM kernel pads them
    assert got.stride(0) == (-(-n // (8 * align)) * 8 * align if split_n else aligned[2])  # a view of them
    if not ta:  # the same rows as [batch, tokens, features]: flattened to one GEMM, as the 2-d product
        first = list(shapes)
        shapes.clear()
        batched = library_matmul(a.unflatten(0, (1, m)), b, False, tb)
        assert shapes == first and torch.equal(batched, got.unflatten(0, (1, m)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [257, 301, 50 * 16 + 7])
@pytest.mark.parametrize("tb", [False, True])
def test_an_unaligned_k_over_aligned_rows_is_split_without_a_copy(dtype, k, tb, monkeypatch):
    """K not a multiple of 16 bytes, over a left operand with padded rows (as a row kernel writes the
    log-softmax gradient) and a right operand whose K rows are aligned: no operand is padded (no copy);
    one GEMM over K's aligned body adds the last columns' product, and the result is float64's. Where
    the right operand's rows are not aligned (K-major with an odd K), both are padded, as before.
    The rows' padding holds a large finite value, which a product reading it as data gets wrong by
    thousands: not NaN, since PyTorch's own CPU bf16 GEMM (oneDNN's AVX-512 kernels) reads a strided
    operand's row past K, up to a multiple of 32, and multiplies it by zeros (NaN * 0 is NaN)."""
    from tilefuse.compiler import group_selection
    from tilefuse.compiler.group_selection import library_matmul

    torch.manual_seed(k)
    m, n = 40, 24
    stride = -(-k // 64) * 64
    a = torch.full((m * stride,), 4096.0, dtype=dtype).as_strided((m, k), (stride, 1))
    a.copy_(torch.randn(m, k))
    b = (torch.randn(n, k) if tb else torch.randn(k, n)).to(dtype)
    pads = []
    pad = group_selection.F.pad
    monkeypatch.setattr(group_selection.F, "pad", lambda *args: pads.append(args[1]) or pad(*args))
    got = library_matmul(a, b, False, tb)
    want = a.double() @ (b.mT if tb else b).double()
    assert got.shape == (m, n) and got.dtype == dtype and got.isfinite().all()
    torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-1 if dtype == torch.bfloat16 else 1e-4)
    assert bool(pads) == tb  # b.mT's K rows are k apart: unaligned, so the copies stay


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("ta", [False, True])
def test_an_unaligned_m_or_n_over_aligned_operands_is_split_without_a_copy(dtype, ta, tb, monkeypatch):
    """An LM head's logits (N = 301 over a weight of 64 aligned columns) and its weight gradient
    (M = 301): the aligned body is one GEMM into the result's rows or columns and the last few another;
    no operand is padded; float64's product; the logits' rows padded to an aligned length."""
    from tilefuse.compiler import group_selection
    from tilefuse.compiler.group_selection import library_matmul

    torch.manual_seed(11)
    pads = []
    pad = group_selection.F.pad
    monkeypatch.setattr(group_selection.F, "pad", lambda *args: pads.append(args[1]) or pad(*args))
    align = 16 // torch.empty(0, dtype=dtype).element_size()
    # N's body needs the weight's rows K-major (b [n, k] read transposed), M's the rows of a [m, k]:
    # the other layouts hold the unaligned dim along their rows, and are padded as before
    for m, n, padded in ((40, 301, not tb), (301, 40, ta)):
        pads.clear()
        a = (torch.randn(64, m) if ta else torch.randn(m, 64)).to(dtype)
        b = (torch.randn(n, 64) if tb else torch.randn(64, n)).to(dtype)
        got = library_matmul(a, b, ta, tb)
        want = (a.mT if ta else a).double() @ (b.mT if tb else b).double()
        torch.testing.assert_close(got.double(), want, rtol=2e-2, atol=2e-1 if dtype == torch.bfloat16 else 1e-4)
        # split: rows of 128 bytes, as a GEMM kernel's; padded operands: an aligned length
        row = n if n % align == 0 else n + -n % align if padded else -(-n // (8 * align)) * 8 * align
        assert got.shape == (m, n) and got.stride(0) == row
        assert bool(pads) == padded


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tokens", [37, 64])
def test_an_unaligned_vocabulary_with_a_bias_runs_on_addmm_over_a_weight_padded_once(
    monkeypatch, tmp_path, dtype, tokens
):
    """An LM head with a bias over a vocabulary whose rows are not a multiple of 16 bytes (BigBird's
    50358, BERT's 30522; here 301): its library way is one addmm on the weight and bias padded with
    zeros to the kernel's padded row, padded once and kept while they stand (an in-place update or a
    `.data` assignment pads them again). Eager's result at every step; ragged token counts."""
    from tilefuse.compiler import group_selection

    _fake_gpu(monkeypatch, "split")
    pads, pad = [], group_selection.F.pad
    monkeypatch.setattr(group_selection.F, "pad", lambda *args: pads.append(args[1]) or pad(*args))
    torch.manual_seed(tokens)
    head = torch.nn.Linear(32, 301).to(dtype)
    x = torch.randn(tokens, 32, dtype=dtype)
    compiled = tilefuse.compile(head, dump=tmp_path)
    tolerance = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)

    def check() -> None:
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), head(x), **tolerance)

    check()
    (source,) = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert "torch.addmm on the weight and bias padded once" in source, source
    (choice,) = compiled.tilefuse_reports[0]["partitions"][0]["group_selection"]
    assert choice["chosen"] == "split"
    assert len(pads) >= 4  # the weight and the bias: for the measurement and for the program
    check()  # AOTAutograd's first call reads `.data` of the parameters (a change, unseen): padded again
    first = len(pads)
    for _ in range(2):
        check()
    assert len(pads) == first  # kept
    with torch.no_grad():
        head.weight.mul_(-1)  # the version counter moves
    check()
    assert len(pads) == first + 2
    head.bias.data = torch.randn(301, dtype=dtype)  # no version counter shows this
    check()
    assert len(pads) == first + 4


def test_training_steps_through_a_padded_vocabulary_follow_the_optimizer(monkeypatch, tmp_path):
    """Training an LM head with a bias over an unaligned vocabulary, its forward on addmm over the
    weight and bias padded once: every optimizer step changes them, and each step's loss and
    gradients are eager's (the padded copies are made again after each step, never reused stale)."""
    _fake_gpu(monkeypatch, "split")
    torch.manual_seed(5)
    heads = [torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.Linear(32, 301)) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    optimizers = [torch.optim.SGD(h.parameters(), lr=0.5) for h in heads]
    compiled = tilefuse.compile(heads[1], dump=tmp_path)
    x, target = torch.randn(19, 24), torch.randint(0, 301, (19,))
    for _ in range(3):
        losses = []
        for fn, optimizer in zip((heads[0], compiled), optimizers):
            loss = F.cross_entropy(fn(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-5)
        for a, b in zip(heads[0].parameters(), heads[1].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    sources = "".join(p.read_text() for p in tmp_path.glob("*/program_*.py"))
    assert "torch.addmm on the weight and bias padded once" in sources


class _FinalLogitsBias(torch.nn.Module):
    """BART's LM head: a linear layer without a bias on [batch, tokens, features], then a [1, V]
    buffer added (`final_logits_bias`)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.lm_head = torch.nn.Linear(32, vocab, bias=False)
        self.register_buffer("final_logits_bias", torch.randn(1, vocab))

    def forward(self, x):
        return self.lm_head(x) + self.final_logits_bias


@pytest.mark.parametrize("vocab, title", [(304, "cuBLASLt's bias epilogue"), (301, "padded once")])
def test_a_bias_added_to_a_linear_layer_on_tokens_runs_on_addmm(monkeypatch, tmp_path, vocab, title):
    """A [1, V] bias added to a linear layer's product on [batch, tokens, features] (BART's, Marian's,
    Pegasus's `final_logits_bias`) is cuBLASLt's bias epilogue over the tokens as one GEMM; over an
    unaligned vocabulary, on the weight and bias padded once. Eager's logits; ragged tokens."""
    _fake_gpu(monkeypatch, "split")
    head = _FinalLogitsBias(vocab)
    x = torch.randn(3, 13, 32)
    compiled = tilefuse.compile(head, dump=tmp_path)
    for _ in range(2):
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), head(x), rtol=1e-4, atol=1e-4)
    (source,) = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert title in source and "0 kernel launch(es)" in source, source


def test_an_unaligned_vocabulary_whose_weight_is_no_parameter_pads_nothing_ahead(monkeypatch, tmp_path):
    """The same head with its weight and bias passed as tensors (not parameters: another tensor may
    come at every call): no padded copy is kept; the split path's GEMM writes padded rows and its
    bias kernel reads them. Eager's result for two different weights in turn."""
    _fake_gpu(monkeypatch, "split")
    x = torch.randn(37, 32)
    compiled = tilefuse.compile(lambda x, w, b: F.linear(x, w, b), dump=tmp_path)
    for _ in range(2):
        w, b = torch.randn(301, 32), torch.randn(301)
        with torch.no_grad():
            torch.testing.assert_close(compiled(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4)
    (source,) = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert "its GEMM(s) on the library, its epilogue as kernel" in source and "padded once" not in source


def test_an_unaligned_product_on_the_library_is_kept_in_its_padded_rows(monkeypatch, tmp_path):
    """A GEMM alone over an unaligned N on the library (GPT-2's LM head, no bias): cuBLAS writes the
    logits into rows padded as the kernel's would be and the program reads them there (no copy); a
    row kernel after it (a log-softmax) gets eager's result."""
    from tilefuse.compiler import group_selection

    _fake_gpu(monkeypatch, "library")
    copies, padded = [], group_selection.empty_padded
    monkeypatch.setattr(group_selection, "empty_padded", lambda *args: copies.append(args) or padded(*args))
    x, w = torch.randn(37, 32), torch.randn(301, 32)
    report = _run(lambda x, w: torch.log_softmax(x @ w.t(), -1), x, w, dump=tmp_path)
    assert [c["chosen"] for c in report["partitions"][0]["group_selection"]] == ["library"]
    (source,) = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert "the library path" in source
    assert len(copies) == 2  # the measurement's random inputs, none for the logits


def test_a_split_path_launches_a_misaligned_operand_through_a_launch_of_its_own(monkeypatch):
    """The split path's epilogue kernel was first launched (measured) on aligned random tensors;
    a program input at an odd offset takes another bound launch, compiled for what it gets."""
    _fake_gpu(monkeypatch, "split")
    x, w, storage = torch.randn(6, 16), torch.randn(16, 24), torch.randn(25)
    bias = storage[1:]  # 4 bytes past a 16-byte boundary
    assert bias.data_ptr() % 16 != 0
    report = _run(lambda x, w, b: torch.relu(x @ w + b), x, w, bias)
    assert [c["chosen"] for c in report["partitions"][0]["group_selection"]] == ["split"]


def test_split_paths_are_built_and_compiled_ahead_once_per_distinct_kernel(monkeypatch):
    """Before a program's groups are measured (on a GPU), their split paths are built and their
    epilogue kernels compiled together on threads; identical kernels share one, and measuring uses it."""
    from tilefuse.backends.triton import precompile

    kernels = []
    real_choose = group_selection.GroupSelector.choose

    def spy(self, kernel, metas):
        kernels.append(kernel)
        return real_choose(self, kernel, metas)

    _fake_gpu(monkeypatch, "kernel")
    monkeypatch.setattr(group_selection.GroupSelector, "choose", spy)
    ws = [torch.randn(16, 16) for _ in range(3)]
    _run(lambda x: torch.tanh(torch.tanh(torch.tanh(x @ ws[0]) @ ws[1]) @ ws[2]), torch.randn(5, 16))
    assert len(kernels) == 3  # three GEMM groups with a tanh epilogue, one kernel structure
    compiled = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(group_selection, "stream_getter", lambda device: lambda: 0)  # no CUDA here
    monkeypatch.setattr(
        precompile, "precompile_in_threads", lambda jobs, fns, threads, device=None: compiled.extend(jobs)
    )
    selector = group_selection.GroupSelector(torch.device("cuda"))
    selector.prepare(kernels)
    assert len(compiled) == 1 and len(selector._split_paths) == 1
    (prebuilt,) = selector._split_paths.values()
    built, unbuilt = group_selection._library_paths(kernels[2], ("split",), selector.device, prebuilt)
    assert built["split"] is prebuilt and not unbuilt


# --- the program's clock: host time against GPU time -------------------------------------------------

T = group_selection.Timing


def _settle(monkeypatch, groups: dict, launches: int, host_free: bool = False, other_gpu_ms: float = 0.0):
    """`GroupSelector.settle` on surveyed groups `{name: (launches, {candidate: Timing})}` in a
    program of `launches` launches in all (the unmeasured ones taking `other_gpu_ms` of GPU time in
    all), their measurements faked: the choices and the estimate."""

    def measured(self, key, kernel, metas, record):
        timings = groups[key[0]][1]
        alone = min(timings, key=lambda n: timings[n].alone_ms)  # as `_time_candidates` chooses
        known = group_selection.GroupChoice(key[0], alone, {n: t.alone_ms for n, t in timings.items()},
                                            timings=timings)  # fmt: skip
        self._known[key] = (known, {})
        return known

    monkeypatch.setattr(group_selection.GroupSelector, "_settle", measured)
    monkeypatch.setattr(group_selection.GroupSelector, "_record", lambda *args: None)
    selector = group_selection.GroupSelector(torch.device("cpu"), host_free=host_free)
    selector._surveyed = {(name,): [None, [], n] for name, (n, _) in groups.items()}
    selector._launches = launches
    selector._other_gpu_ms = other_gpu_ms
    selector.settle()
    return {name: selector._known[(name,)][0].chosen for name in groups}, selector.program


# four layers of a GPU-bound prefill (ms): a GEMM whose split path's cuBLAS is faster, and attention whose
# SDPA call is faster on the GPU but costs more host time than the flash kernel takes alone
PREFILL = {
    "qkv": (4, {"kernel": T(0.004, 0.80), "split": T(0.030, 0.60), "library": T(0.040, 0.70)}),
    "attention": (4, {"kernel": T(0.004, 0.034), "sdpa": T(0.050, 0.020)}),
}


def test_a_gpu_bound_program_takes_the_faster_gpu_time_whatever_its_host_time(monkeypatch):
    chosen, program = _settle(monkeypatch, PREFILL, launches=40)
    assert chosen == {"qkv": "split", "attention": "sdpa"}
    assert program["bound"] == "gpu-bound" and program["launches"] == 40
    # alone, SDPA's host time is longer than the flash kernel's GPU time: measured alone, the kernel won
    assert PREFILL["attention"][1]["sdpa"].alone_ms > PREFILL["attention"][1]["kernel"].alone_ms


def test_a_host_bound_program_keeps_the_launch_that_costs_less_host_time(monkeypatch):
    # the same groups among thousands of launches (a decode step's many small kernels)
    chosen, program = _settle(monkeypatch, PREFILL, launches=4000)
    assert program["bound"] == "host-bound"
    # the host's time is the program's: GPU time saved at the cost of host time is lost
    assert chosen == {"qkv": "kernel", "attention": "kernel"}
    cheaper = {"gemm": (4, {"kernel": T(0.006, 0.05), "library": T(0.004, 0.02)})}
    assert _settle(monkeypatch, PREFILL | cheaper, launches=4000)[0]["gemm"] == "library"


def test_the_unmeasured_launches_gpu_time_counts_toward_the_programs(monkeypatch):
    """A program whose norms and softmaxes (not measured) take most of its GPU time is GPU-bound
    though its measured groups alone would leave it host-bound: its GEMMs take the faster GPU time."""
    groups = {"bmm": (2, {"kernel": T(0.006, 0.12), "library": T(0.025, 0.02)})}
    chosen, program = _settle(monkeypatch, groups, launches=40)
    assert program["bound"] == "host-bound" and chosen == {"bmm": "kernel"}
    chosen, program = _settle(monkeypatch, groups, launches=40, other_gpu_ms=1.5)
    assert program["bound"] == "gpu-bound" and chosen == {"bmm": "library"}
    assert program["gpu_ms_of_unmeasured_launches"] == 1.5


@pytest.mark.parametrize("elements, floor", [(10, True), (1 << 20, False)])
def test_an_unmeasured_launch_is_estimated_from_its_bytes(monkeypatch, elements, floor):
    """The survey adds each launch it does not measure (a pointwise kernel) at its bytes' streaming
    time, or a small kernel's floor."""
    seen = []
    monkeypatch.setattr(group_selection.GroupSelector, "settle", lambda self: seen.append(self._other_gpu_ms))
    _fake_gpu(monkeypatch, "kernel")
    x, w, y = torch.randn(9, 12), torch.randn(12, 5), torch.randn(elements)
    _run(lambda x, w, y: (torch.relu(x @ w), torch.exp(y) * 2), x, w, y)
    (estimate,) = seen
    if floor:
        assert estimate == pytest.approx(group_selection.MIN_LAUNCH_GPU_MS, rel=0.5, abs=0.0021)
    else:
        assert estimate > elements * 4 / group_selection.ESTIMATED_BYTES_PER_MS


def test_under_cuda_graphs_only_gpu_time_counts(monkeypatch):
    chosen, program = _settle(monkeypatch, PREFILL, launches=4000, host_free=True)
    assert chosen == {"qkv": "split", "attention": "sdpa"} and program["bound"] == "gpu-bound"


def test_a_gain_within_the_measurements_noise_keeps_the_kernel(monkeypatch):
    groups = {"gemm": (2, {"kernel": T(0.004, 1.00), "library": T(0.004, 0.99)})}
    chosen, _ = _settle(monkeypatch, groups, launches=10)
    assert chosen == {"gemm": "kernel"}
    groups = {"gemm": (2, {"kernel": T(0.004, 1.00), "library": T(0.004, 0.90)})}
    assert _settle(monkeypatch, groups, launches=10)[0] == {"gemm": "library"}


def test_the_program_cost_is_the_larger_of_host_and_gpu_time_and_a_little_of_the_other():
    cost, factor = group_selection.program_cost, group_selection.HOST_FACTOR
    assert cost(0.1, 1.0) == pytest.approx(1.0 + 0.1 * factor * 0.1)
    assert cost(1.0, 0.1) == pytest.approx(factor * 1.0 + 0.1 * 0.1)
    assert cost(1.0, 0.1, host_free=True) == 0.1


def test_the_report_shows_both_figures_and_the_programs_estimate(monkeypatch):
    _fake_gpu(monkeypatch, "kernel")

    def clock(kind, run, device):
        run()
        return T(0.002, 0.5) if kind == "kernel" else T(0.02, 0.2)  # the library: more host, less GPU

    monkeypatch.setattr(group_selection, "default_clock", clock)
    report = _run(lambda x, w: torch.relu(x @ w), torch.randn(9, 12), torch.randn(12, 5))
    partition = report["partitions"][0]
    (choice,) = partition["group_selection"]
    assert choice["chosen"] in ("split", "library") and choice["program"] == "gpu-bound"
    assert choice["kernel_gpu_ms"] == 0.5 and choice["kernel_host_ms"] == 0.002 and choice["kernel_ms"] == 0.5
    estimate = partition["group_selection_program"]
    assert estimate["bound"] == "gpu-bound" and estimate["launches"] >= 1


def test_the_switch_leaves_each_group_to_its_own_measurement(monkeypatch):
    monkeypatch.setenv(group_selection.PROGRAM_CLOCK_ENV, "0")
    chosen, program = _settle(monkeypatch, PREFILL, launches=40)
    assert chosen == {"qkv": "split", "attention": "kernel"} and program is None


def test_measured_inputs_rotate_through_copies_that_overflow_the_l2_cache(monkeypatch):
    """A layer's weights come from memory in a model: a measurement rotates its inputs through enough
    copies to pass twice the L2 cache (at most 8), one set where the inputs alone already do."""

    class Properties:
        L2_cache_size = 50 << 20

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties())
    cuda = torch.device("cuda", 0)
    mib = lambda n: torch.empty(n << 19, dtype=torch.bfloat16, device="meta")  # noqa: E731  n MiB
    copies = group_selection._input_copies
    assert copies([mib(40)], cuda) == 3 and copies([mib(30), mib(10)], cuda) == 3
    assert copies([mib(1)], cuda) == group_selection.MAX_INPUT_COPIES
    assert copies([mib(100)], cuda) == 1 and copies([mib(1)], torch.device("cpu")) == 1
    # a strided view spans its storage's extent, not its element count
    assert group_selection._meta_bytes(torch.empty(64, 128, device="meta").t()) == 64 * 128 * 4
    assert group_selection._meta_bytes(torch.empty(64, 128, device="meta")[:, :1]) == (63 * 128 + 1) * 4


@pytest.mark.parametrize("view", ["reshape", "permute", "expand", "flip", "slice"])
def test_a_planned_view_is_the_interpreters_view(view):
    """Views on a library path are resolved once (`library_plan.planned_view`); each kind gives the
    reference interpreter's tensor, strides included (a view, not a copy)."""
    from tilefuse.compiler import library_plan
    from tilefuse.ir import einsum as ein
    from tilefuse.ir.builder import EinBuilder
    from tilefuse.ir.dtypes import f32
    from tilefuse.ir.interpreter import run_op

    b = EinBuilder("f")
    x = b.add_argument([3, 1, 10], f32, "x")
    made = {
        "reshape": lambda: b.reshape(x, [3, 10]),
        "permute": lambda: b.permute(x, [2, 0, 1]),
        "expand": lambda: b.expand(x, [2, 3, 4, 10]),
        "flip": lambda: b.flip(x, [0, 2]),
        "slice": lambda: b.slice(x, 2, 1, 9, 3),  # ragged: 8 elements in steps of 3
    }[view]()
    fn = b.finish([made])
    ops = [op for op in fn.body.block.ops if isinstance(op, ein.ViewOp)]
    tensor = torch.randn(3, 1, 10)
    for op in ops:
        want = run_op(op, {op.input: tensor}, torch.device("cpu"))
        got = library_plan.planned_op(op)(torch.device("cpu"), tensor)
        assert torch.equal(got, want) and got.stride() == want.stride()
        tensor = want


_PLANNED_KINDS = ["sum", "mean", "max", "min", "prod", "argmax", "cumsum", "cumprod", "reverse_cumsum"]


@pytest.mark.parametrize(
    ("kind", "dtype"),
    [(k, d) for d in (torch.float32, torch.bfloat16) for k in _PLANNED_KINDS]
    + [(k, torch.int64) for k in _PLANNED_KINDS if k != "mean"]
    + [("max", torch.bool), ("min", torch.bool)],
    ids=str,
)
def test_a_planned_reduction_or_scan_is_the_interpreters_and_reads_no_ir(kind, dtype, monkeypatch):
    """Reductions and scans on a library path (Mixtral's expert offsets, a cumsum) are resolved once
    (`interpreter.reduce_function`, `scan_function`): the same tensor as the reference interpreter's,
    and a call reads no IR attribute (run op by op, each read its dims and kind every call)."""
    from tilefuse.compiler import library_plan
    from tilefuse.ir import einsum as ein
    from tilefuse.ir.builder import EinBuilder
    from tilefuse.ir.dtypes import to_mlir_type
    from tilefuse.ir.interpreter import run_op

    b = EinBuilder("f")
    x = b.add_argument([4, 5, 6], to_mlir_type(dtype), "x")
    if kind.endswith(("cumsum", "cumprod")):
        scan = kind.removeprefix("reverse_").removeprefix("cum")
        made = b.scan(scan, x, 1, reverse=kind.startswith("reverse"))
    else:
        made = b.reduce(kind, x, [1] if kind == "argmax" else [0, 2], keepdim=kind == "sum")
    fn = b.finish([made])
    (op,) = [op for op in fn.body.block.ops if isinstance(op, ein.ReduceOp | ein.ScanOp)]
    tensor = (torch.randn(4, 5, 6) * 3).to(dtype)
    want = run_op(op, {op.input: tensor}, torch.device("cpu"))
    step = library_plan.planned_op(op)
    monkeypatch.setattr(type(op), "kind", property(lambda self: pytest.fail("read the IR")), raising=False)
    got = step(torch.device("cpu"), tensor)
    assert got.dtype == want.dtype and torch.equal(got, want)


def test_a_planned_embedding_is_the_interpreters_gather_resolved_once(monkeypatch):
    """An embedding on a library path (a GEMM group whose epilogue reads it) is resolved once
    (`library_plan.planned_op`): reading the gather's attributes per call cost ~0.1 ms on the H200's
    host. It gives the interpreter's rows, negative indices counted from the end."""
    from tilefuse.compiler import library_plan
    from tilefuse.ir import einsum as ein
    from tilefuse.ir import interpreter
    from tilefuse.ir.builder import EinBuilder
    from tilefuse.ir.dtypes import f32, i64

    b = EinBuilder("f")
    table, ids = b.add_argument([10, 4], f32, "table"), b.add_argument([2, 3, 1], i64, "ids")
    fn = b.finish([b.gather(table, [ids], [-1, 2], [2, 3, 4])])
    (op,) = [op for op in fn.body.block.ops if isinstance(op, ein.GatherOp)]
    step = library_plan.planned_op(op)
    monkeypatch.setattr(interpreter, "reads_table_rows", lambda op: pytest.fail("the IR read per call"))
    t, i = torch.randn(10, 4), torch.tensor([[0, 9, -1], [3, -10, 5]])[..., None]
    torch.testing.assert_close(step(torch.device("cpu"), t, i), t[i[..., 0]], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask_kind", ["boolean", "additive", "causal"])
def test_sdpas_math_path_runs_on_sdpa_with_its_zero_rows(monkeypatch, dtype, mask_kind):
    """SDPA's math path in the graph (one key head for four query heads, no `enable_gqa`: Falcon),
    whose safe softmax writes zeros for a query the mask leaves no key, measured faster on SDPA:
    the program's SDPA call zeroes those rows itself (a fused SDPA kernel need not). Ragged lengths."""
    _fake_gpu(monkeypatch, "sdpa")
    monkeypatch.setattr(library_attention, "F", _FusedSdpa)  # the CPU's SDPA zeroes such rows itself
    torch.manual_seed(0)
    q = torch.randn(2, 4, 11, 16, dtype=dtype)
    k, v = torch.randn(2, 1, 13, 16, dtype=dtype), torch.randn(2, 1, 13, 16, dtype=dtype)
    keep = torch.rand(2, 1, 11, 13) > 0.4
    keep[..., 0] = True
    keep[1, :, 4, :] = False  # a query that sees no key
    if mask_kind == "causal":
        fn = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
    else:
        mask = keep if mask_kind == "boolean" else torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, -math.inf)
        fn = lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)  # noqa: E731
        keep = mask
    if mask_kind != "causal":
        assert (fn(q, k, v, keep)[1, :, 4] == 0).all()
    _assert_sdpa_chosen_and_eager(fn, (q, k, v, keep), dtype)


class _FusedSdpa:
    """SDPA as a fused kernel may compute it: a plain softmax, so a query with no visible key
    reads 0/0 (NaN)."""

    @staticmethod
    def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
        if enable_gqa:
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
        scores = (q.float() @ k.float().transpose(-2, -1)) * (scale or q.shape[-1] ** -0.5)
        if is_causal:
            hidden = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
            scores = scores.masked_fill(hidden, -math.inf)
        if attn_mask is not None:
            scores = scores + (attn_mask.float() if attn_mask.is_floating_point() else
                               torch.zeros(attn_mask.shape).masked_fill(~attn_mask, -math.inf))
        return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


def _math_decomposition_gqa_causal(q, k, v):
    """SDPA's math path as CUDA's trace of a float32 `enable_gqa` call spells it: a boolean tril
    turned into a -inf/0 bias and added, key heads repeated, q and k each scaled by d^-1/4."""
    length, keys = q.shape[-2], k.shape[-2]
    visible = torch.ones(length, keys, dtype=torch.bool).tril() & torch.ones(length, keys, dtype=torch.bool)
    bias = torch.where(visible.logical_not(), float("-inf"), 0.0)
    group = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(group, -3), v.repeat_interleave(group, -3)
    s = q.shape[-1] ** -0.25
    return torch.softmax((q * s) @ (k.transpose(-2, -1) * s) + bias, -1) @ v


@pytest.mark.parametrize("faster", ["sdpa", "kernel"])
def test_the_math_decompositions_causal_mask_is_read_as_causal(monkeypatch, faster):
    """CUDA traces a float32 SDPA with grouped heads (or a mask) as its math decomposition. Its causal
    mask (`scores + where(!(tril(ones) & true), -inf, 0)`) is rewritten to the causal select, so the
    SDPA path calls SDPA with `is_causal` and no dense bias (H100: 35.5 ms against ~12 on the suite's
    float32 GQA row), and the flash kernel skips the blocks above the diagonal; both give eager's
    result. Its two d^-1/4 scalings of q and the repeated keys move past `q @ k^T` (canonicalize's
    ScaleAfterContract): no pointwise kernel before the attention, and SDPA gets the scale d^-1/2.
    Ragged length 37, 8 query heads over 2 key heads."""
    _fake_gpu(monkeypatch, faster)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        calls.append((kw.get("is_causal"), kw.get("attn_mask") is None))
        assert kw.get("scale") == pytest.approx(q.shape[-1] ** -0.5, rel=1e-6)
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(library_attention.F, "scaled_dot_product_attention", spy)
    g = torch.Generator().manual_seed(5)
    q, k, v = torch.randn(2, 8, 37, 32, generator=g), *(torch.randn(2, 2, 37, 32, generator=g) for _ in "kv")
    want = sdpa(q, k, v, is_causal=True, enable_gqa=True)
    compiled = tilefuse.compile(_math_decomposition_gqa_causal)
    with torch.no_grad():
        got = compiled(q, k, v)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    (report,) = compiled.tilefuse_reports
    assert [c["chosen"] for c in _attention_choices(report)] == [faster]
    (partition,) = report["partitions"]
    assert [g["kind"] for g in partition["groups"]] == ["attention"]
    if faster == "sdpa":
        assert calls and all(c == (True, True) for c in calls), calls
