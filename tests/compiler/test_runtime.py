"""The runtime: generated programs, the graph's device, run-time fallback, CPU default."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

import tilefuse
from helpers import step_matches_eager, train_update
from tilefuse.backends.triton.launcher import BoundLaunch
from tilefuse.compiler.codegen import Target
from tilefuse.compiler.driver import compile_aten_graph
from tilefuse.compiler.fx_import import InputInfo
from tilefuse.compiler.runtime import KernelPlan, graph_device


def _plans(compiled_graph) -> list[KernelPlan]:
    module = getattr(compiled_graph, "__self__", compiled_graph)  # the partitioned graph's forward
    return [m for m in module.modules() if isinstance(m, KernelPlan)]


def _compile_aten(fn, *args, dump=None):
    aten = make_fx(fn)(*args)
    inputs = [InputInfo(f"x{i}") for i in range(len(args))]
    return compile_aten_graph(aten, "g", inputs, dump, Target(interpret=True, allow_tf32=False))


def test_injected_launch_failure_falls_back_once_with_a_correct_result(monkeypatch, caplog):
    def broken(self, stream, *args):
        raise RuntimeError("simulated: an illegal memory access")

    monkeypatch.setattr(BoundLaunch, "__call__", broken)
    x, w, b = torch.randn(9, 12), torch.randn(12, 7), torch.randn(7)
    compiled = tilefuse.compile(lambda x, w, b: torch.tanh(x @ w + b))
    with caplog.at_level(logging.WARNING, logger="tilefuse"):
        for _ in range(3):
            torch.testing.assert_close(compiled(x, w, b), torch.tanh(x @ w + b))
    warned = [r for r in caplog.records if "failed at run time" in r.getMessage()]
    assert len(warned) == 1 and "simulated" in warned[0].getMessage()
    (partition,) = compiled.tilefuse_reports[0]["partitions"]
    assert "simulated: an illegal memory access" in partition["runtime_error"]
    assert partition["executor"].startswith("pytorch (failed at run time")


def test_a_failure_after_some_kernels_ran_still_gives_the_right_result(monkeypatch):
    calls = []
    real = BoundLaunch.__call__

    def fails_second(self, stream, *args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated")
        return real(self, stream, *args)

    monkeypatch.setattr(BoundLaunch, "__call__", fails_second)
    x = torch.randn(5, 33)
    fn = lambda x: torch.softmax(x @ x.T, dim=-1).sum(0) * 3  # noqa: E731
    compiled = tilefuse.compile(fn)
    torch.testing.assert_close(compiled(x), fn(x))
    torch.testing.assert_close(compiled(x), fn(x))


def test_a_lowering_gap_at_run_time_falls_back(monkeypatch):
    from tilefuse.compiler import program

    def gap(op, env, device):
        raise NotImplementedError("simulated lowering gap")

    monkeypatch.setattr(program, "run_op", gap)
    x = torch.randn(4, 6)
    fn = lambda x: torch.cat([x.exp(), x.relu() + 1], dim=0)  # noqa: E731  (cat is glue)
    compiled = tilefuse.compile(fn)
    torch.testing.assert_close(compiled(x), fn(x))
    assert "simulated lowering gap" in compiled.tilefuse_reports[0]["partitions"][0]["runtime_error"]


def test_a_partition_with_no_tensor_inputs_gets_the_graphs_device():
    """Positions built by arange(device=...) have no argument to take a device from."""
    gm = make_fx(lambda: torch.arange(8, device="meta").float() * 2)()
    assert not [n for n in gm.graph.nodes if n.op == "placeholder"]
    assert graph_device(gm, gm, interpret=True) == torch.device("meta")


def test_partition_device_comes_from_the_graph_not_the_arguments():
    # the second partition (after an op PyTorch runs) reads no tensor: it builds positions itself
    def fn(x):
        pos = torch.arange(x.shape[0], device=x.device).float()
        return torch.nn.functional.embedding(torch.tensor([0, 1]), x) + pos[:2, None], pos * 2

    compiled, summary = _compile_aten(fn, torch.randn(5, 3))
    plans = _plans(compiled)
    assert plans and all(p.device == torch.device("cpu") for p in plans)
    out = compiled(torch.ones(5, 3))
    torch.testing.assert_close(out[1], torch.arange(5).float() * 2)


def test_the_program_is_generated_dumped_and_straight_line(tmp_path):
    x, w = torch.randn(6, 20), torch.randn(20, 20)
    def fn(x, w):  # the second result is a concatenation: materialized outside the kernels
        return torch.relu(x @ w).sum(-1) + (torch.cat([x, x], 1) @ w.repeat(2, 1)).amax(-1), torch.cat([x, w], 0)
    compiled = tilefuse.compile(fn, dump=tmp_path)
    torch.testing.assert_close(compiled(x, w), fn(x, w), rtol=1e-4, atol=1e-4)
    (program,) = tmp_path.glob("*/program_*.py")
    text = program.read_text()
    assert "def call(args):" in text and "_empty(" in text and "del buf" in text
    assert "for " not in text.split("def call")[1]  # straight-line: no loops over steps
    assert "torch.cat((" in text  # glue is written as torch calls
    # written at the first call, after the compile wrote the index: listed there too
    assert f"{program.parent.name}/{program.name}" in (tmp_path / "index.txt").read_text()


@pytest.mark.parametrize("n", [301, 300])
def test_a_gemm_output_with_an_unaligned_wide_row_gets_aligned_row_starts(tmp_path, n):
    """A GEMM's output row that is not a multiple of 16 bytes (an LM head's odd vocabulary) is written
    into rows starting 128 bytes apart, as the program says; it and its readers (a reshape that must
    copy, a reduction kernel, a slice) match eager. An aligned row stays packed."""
    x, w = torch.randn(2, 19, 64), torch.randn(n, 64)

    def fn(x, w):
        y = x @ w.t()
        return y, y.reshape(2 * 19 * n)[5:9] * 2, torch.tanh(y).sum(-1)

    compiled = tilefuse.compile(fn, dump=tmp_path)
    got, want = compiled(x, w), fn(x, w)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    packed = n * 4 % 16 == 0
    assert got[0].stride() == ((19 * n, n, 1) if packed else (19 * 320, 320, 1))
    (program,) = tmp_path.glob("*/program_*.py")
    assert ("rows start 128-byte aligned" in program.read_text()) is not packed


def test_a_gemm_kernel_with_padded_stores_writes_only_its_row_into_a_packed_output():
    """The kernel's stores run to the row stride it is given: into a packed output (as the tuner and
    the kernel checks allocate them) it writes exactly the output, nothing past it."""
    from tilefuse.compiler.group_selection import _launch_args

    x, w = torch.randn(19, 64), torch.randn(301, 64)
    compiled, _ = _compile_aten(lambda x, w: x @ w.t(), x, w)
    compiled(x, w)
    (plan,) = _plans(compiled)
    (kernel,) = plan.launch_at.values()
    assert "_s0)) != 0)" in kernel.launcher.path.read_text()  # the store's last dim runs to the row stride
    room = torch.full((19 * 301 + 64,), float("nan"))
    out = room[: 19 * 301].view(19, 301)
    config = kernel.config
    launch = kernel.launcher.bind(config.params, config.num_warps, config.num_stages)
    inputs = {"x0": x, "x1": w}
    launch(0, *_launch_args([*(inputs[v.name_hint] for v in kernel.lowered.inputs), out]))
    torch.testing.assert_close(out, x @ w.t(), rtol=1e-4, atol=1e-4)
    assert room[19 * 301 :].isnan().all()


def test_a_layout_the_program_was_not_written_for_runs_pytorch():
    fn = lambda x: torch.exp(x) * 2  # noqa: E731
    compiled, _ = _compile_aten(fn, torch.randn(8, 8))
    (plan,) = _plans(compiled)
    x = torch.randn(8, 8)
    torch.testing.assert_close(compiled(x), fn(x))
    assert plan.program is not None and plan.guard_misses == 0
    torch.testing.assert_close(plan(x.T)[0] if isinstance(plan(x.T), tuple) else plan(x.T), fn(x.T))
    assert plan.guard_misses == 2


def test_constants_and_parameter_only_steps_run_once(monkeypatch):
    launches = []
    real = BoundLaunch.__call__

    def count(self, stream, *args):
        launches.append(self)
        return real(self, stream, *args)

    monkeypatch.setattr(BoundLaunch, "__call__", count)
    # the exp of an iota is a constant: its kernel runs once, the GEMM on every call
    fn = lambda x: x @ (torch.arange(16).float().reshape(4, 4) / 8).exp()  # noqa: E731
    compiled, _ = _compile_aten(fn, torch.randn(3, 4))
    x = torch.randn(3, 4)
    torch.testing.assert_close(compiled(x), fn(x))
    first = len(launches)
    torch.testing.assert_close(compiled(x), fn(x))
    assert first >= 2 and len(launches) - first == 1


class _ReturnsShared(torch.nn.Module):
    """Outputs a program could hand out from memory it keeps between calls: a constant (a cache
    made by `torch.zeros` in the graph, as transformers' static cache is made lazily), an iota, a
    view of a value derived from a parameter only, beside a plain result."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 4))

    def forward(self, x):
        derived = (self.w * 2).exp()
        return torch.zeros(2, 3, 8), torch.arange(8.0), derived.t(), x @ derived


def test_outputs_are_the_callers_own_memory_as_in_eager():
    model = _ReturnsShared()
    compiled = tilefuse.compile(model)
    x = torch.randn(5, 8)
    with torch.no_grad():
        for _ in range(3):
            outs, want = compiled(x), model(x)
            for got, ref in zip(outs, want):
                torch.testing.assert_close(got, ref)
            cache = outs[0]
            assert cache.stride() == (24, 8, 1)  # dense, as torch.zeros makes it: written in place below
            cache.index_copy_(1, torch.tensor([1]), torch.ones(2, 1, 8))
            for out in outs[1:3]:
                out.add_(100.0)  # the next call must not see it


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.clone(),
        lambda x: (x.clone().view(-1), x.clone()),
        lambda x: x.t().contiguous(),
        lambda x: torch.cat([x]),
        lambda x: torch.empty_like(x).copy_(x),
        lambda x: x.float().clone() * 1,
        lambda x: x.view(-1),  # a view: PyTorch's output is the input's memory, and so is ours
        lambda x: (x.t(), x * 2),
        lambda x: (x * 2, (x * 2).clone()),  # two buffers in PyTorch
        lambda x: (x * 2).view(12).clone().view(3, 4),
        lambda x: (x.sin(), x.sin()),  # one computation twice: two tensors, not merged into one
        lambda x: (x.clone(), x.clone(), x.sin()),
        lambda x: (x.sin(), (e := torch.eye(4)).t(), e[1:3]),  # two views of one constant stay so
        lambda x: x.t().reshape(12),  # a reshape that copies: fresh memory, returned without a copy
        lambda x: (x.t().reshape(2, 6), x.reshape(12)),  # ... and one that views the input
        lambda x: x[torch.tensor([2, 0])],  # a gather of rows: fresh memory
        lambda x: x.flip(0),
    ],
)
def test_an_output_aliases_an_input_exactly_where_pytorch_s_does(fn):
    """`clone`, a copy and a concatenation of one lower to their operand: where such an output is an
    input, the program copies it, so writing into the output leaves the input as PyTorch would."""
    x = torch.randn(3, 4)
    compiled = tilefuse.compile(fn)
    for _ in range(2):
        mine, ref = x.clone(), x.clone()
        got, want = compiled(mine), fn(ref)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
            g.add_(1.0)
            w.add_(1.0)
        torch.testing.assert_close(mine, ref)  # changed through a view only where PyTorch's was


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, w: (x @ w).view(2, 3, 4, 8).transpose(1, 2).reshape(2, 4, 24),  # attention's output
        lambda x, w: (x.t().reshape(8, 12), x.sum()),  # an input's transpose flattened
        lambda x, w: torch.embedding(w.t(), torch.tensor([[3, 1], [0, 3]])),
        lambda x, w: torch.cat([x, x], 0).flip(1),
    ],
)
def test_a_returned_copy_made_by_a_glue_op_is_not_copied_again(tmp_path, fn):
    """A reshape that cannot view its operand, a gather and a flip make new memory in PyTorch and in
    the program alike: returned as they are, without a second copy (`.clone()`) for the caller."""
    x, w = torch.randn(6, 16), torch.randn(16, 32)
    compiled = tilefuse.compile(fn, dump=tmp_path)
    mine_x, mine_w = x.clone(), w.clone()
    got, want = compiled(mine_x, mine_w), fn(x, w)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    for out in got if isinstance(got, tuple) else (got,):
        out.add_(1.0)  # the caller's own memory
    torch.testing.assert_close((mine_x, mine_w), (x, w))
    programs = list(tmp_path.glob("*/program_*.py"))
    assert programs and not any(".clone()" in p.read_text() for p in programs)


@pytest.mark.parametrize("batch, seq, heads, dim", [(2, 6, 4, 8), (1, 5, 3, 16), (3, 7, 2, 8)])
def test_a_pointwise_result_of_a_transposed_operand_keeps_eagers_layout(tmp_path, batch, seq, heads, dim):
    """Eager's elementwise ops keep a transposed operand's layout: RoPE of `q_proj(x).view(b, s, h, d)
    .transpose(1, 2)` is [b, s, h, d] in memory, and SDPA's output follows its query's, so the
    attention output's `transpose(1, 2).reshape(b, s, h * d)` is a view. The kernel's output comes back
    in that layout (it came back row-major, and the reshape copied the attention output each layer of
    a training step, where SDPA runs in PyTorch for its saved log-sum-exp)."""
    width = heads * dim
    wq, wk = torch.randn(width, width) / width**0.5, torch.randn(width, width) / width**0.5

    def rope(t):
        return t * 0.5 + torch.cat([-t[..., dim // 2 :], t[..., : dim // 2]], -1) * 0.25

    def fn(x):
        q = rope((x @ wq).view(batch, seq, heads, dim).transpose(1, 2))
        k = rope((x @ wk).view(batch, seq, heads, dim).transpose(1, 2))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True)
        return q, o, o.transpose(1, 2).reshape(batch, seq, width)

    compiled = tilefuse.compile(fn, dump=tmp_path)
    x = torch.randn(batch, seq, width)
    got, want = compiled(x.clone().requires_grad_()), fn(x.clone().requires_grad_())
    for g, r in zip(got, want):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4)
        assert g.stride() == r.stride()
    assert got[2]._base is not None and want[2]._base is not None  # the rows are a view, as eager's
    sum(t.sum() for t in got).backward()  # gradients flow through the kept layout

    def plain(x):
        return torch.sin((x @ wq).view(batch, x.shape[1], heads, dim).transpose(1, 2))

    for symbolic in (False, True):  # a program of a symbolic length allocates it alike
        torch._dynamo.reset()
        compiled = tilefuse.compile(plain, dump=tmp_path / f"plain{symbolic}")
        for length in (seq, seq + 3):
            x = torch.randn(batch, length, width)
            if symbolic:
                torch._dynamo.mark_dynamic(x, 1)
            got, want = compiled(x), plain(x)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert got.stride() == want.stride()
    assert list((tmp_path / "plainTrue").glob("*/program_dynamic_*.py"))  # the symbolic program ran


@pytest.mark.parametrize(
    "fn, step",
    [
        # a training loss (saved reductions and their quotient)
        (lambda x: (x.sum(), x.amax(), x.sum() / x.amax()), "ein.map on the ein reference interpreter"),
        (lambda x: (x.sum(-1) / x.amax(-1), torch.ones_like(x[0])), "ein.constant"),
    ],
)
def test_a_glue_steps_new_memory_is_returned_without_a_second_copy(tmp_path, fn, step):
    """A map outside every kernel (run on the reference interpreter) computes new memory: returned as
    it is, not cloned per call; a constant is copied once, contiguous, not copied and then packed.
    Either is the caller's own (a write into it changes nothing the next call sees)."""
    compiled = tilefuse.compile(fn, dump=tmp_path)
    x = torch.rand(6, 5) + 0.5
    first = compiled(x)
    for out in first if isinstance(first, tuple) else (first,):
        out.add_(1.0)
    torch.testing.assert_close(compiled(x), fn(x))
    programs = [p.read_text() for p in tmp_path.glob("*/program_*.py")]
    assert programs and any(step in p for p in programs)
    assert not any(".clone()" in p or ".contiguous()" in p for p in programs)


def test_a_symbolic_programs_kernel_output_is_returned_without_a_copy(tmp_path):
    """A kernel's output is allocated contiguous (and so is a reshape of it): a symbolic-size program
    returns it as it is, with no `.contiguous()` per result and call (host time on every decode step)."""
    w, b = torch.randn(16, 24), torch.randn(24)
    fn = lambda x: (torch.relu(x @ w + b), (x @ w).sum(-1), torch.sigmoid(x @ w).reshape(-1))  # noqa: E731
    compiled = tilefuse.compile(fn, dynamic=True, dump=tmp_path)
    for rows in (5, 9, 17):
        x = torch.randn(rows, 16)
        got, want = compiled(x), fn(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert all(g.stride() == r.stride() for g, r in zip(got, want))
    programs = list(tmp_path.glob("*/program_*.py"))
    assert programs and any(".shape[0]" in p.read_text() for p in programs)  # sizes read per call
    assert not any(".contiguous()" in p.read_text() for p in programs)


def _scale_after_reading(x):
    y = x.exp()  # the value before the update below
    x.mul_(2)
    return x.t(), y


def _cache_write_after_reading(cache, new):
    old = cache.exp()
    cache[1:3] = new
    return cache.t(), old


@pytest.mark.parametrize(
    "fn, shapes", [(_scale_after_reading, [(7, 7)]), (_cache_write_after_reading, [(5, 6), (2, 6)])]
)
def test_a_read_of_an_input_stays_before_the_input_is_written(fn, shapes):
    """AOTAutograd writes an updated input back with `copy_` at the end; a partition reading the
    input's old value beside a value made before the write was placed after it (fusing orders by data
    only) and read the new value."""
    args = [torch.randn(s) for s in shapes]
    mine, ref = [a.clone() for a in args], [a.clone() for a in args]
    compiled = tilefuse.compile(fn)
    got, want = compiled(*mine), fn(*ref)
    assert [p["name"] for r in compiled.tilefuse_reports for p in r["partitions"]]
    for g, w in zip([*got, *mine], [*want, *ref]):
        torch.testing.assert_close(g, w)


class _Counter(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("count", torch.zeros(()))

    def forward(self, x):
        self.count.add_(1)
        return x * self.count


def test_a_buffer_updated_in_place_under_autograd_keeps_counting():
    """A training graph returns the updated buffer after its write-back (`copy_`): that read stays
    after the write (the write was once moved past the graph's output and the count stayed 0)."""
    model, ref = _Counter(), _Counter()
    compiled = tilefuse.compile(model)
    for step in range(3):
        x = torch.randn(8, 33, requires_grad=True)
        torch.testing.assert_close(compiled(x), ref(x))
        assert model.count.item() == ref.count.item() == step + 1


def test_without_cuda_the_graph_runs_in_pytorch_and_says_so(monkeypatch):
    monkeypatch.setenv("TILEFUSE_INTERPRET", "0")
    from tilefuse.compiler import runtime

    runtime._warn_no_cuda_once.cache_clear()
    launches = []
    monkeypatch.setattr(BoundLaunch, "__call__", lambda self, *a: launches.append(1))
    x = torch.randn(3, 5)
    compiled = tilefuse.compile(lambda x: torch.sigmoid(x) * x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.testing.assert_close(compiled(x), torch.sigmoid(x) * x)
    assert not launches
    assert [w for w in caught if "TILEFUSE_INTERPRET=1" in str(w.message)]
    (partition,) = compiled.tilefuse_reports[0]["partitions"]
    assert partition["executor"].startswith("pytorch (no CUDA device")
    assert [f["op"] for f in compiled.tilefuse_reports[0]["fallbacks"]] == ["partition"]
    assert partition["groups"][0]["kernel"]  # compiled all the same: dumps and kernels exist


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_scalar_tensor_on_another_device_is_moved_like_pytorch_would(dtype):
    # a 0-dim tensor argument is promoted by PyTorch; the program moves it to the partition's device
    fn = lambda x, s: x * s + 1  # noqa: E731
    x, s = torch.randn(4, 4, dtype=dtype), torch.tensor(3.0, dtype=dtype)
    compiled, _ = _compile_aten(fn, x, s)
    torch.testing.assert_close(compiled(x, s), fn(x, s))


@pytest.mark.parametrize(
    "ids", [[[0, 5, 2], [7, 7, 1]], [[-1, 0, 3], [2, -8, 1]]], ids=["embedding", "negative"]
)
def test_a_gather_outside_kernels_is_plain_indexing(ids, tmp_path):
    table = torch.randn(8, 5)
    index = torch.tensor(ids)
    fn = lambda t, i: t[i]  # noqa: E731
    compiled, _ = _compile_aten(fn, table, index)
    torch.testing.assert_close(compiled(table, index), fn(table, index))


@pytest.mark.parametrize("faster", ["program", "pytorch"])
def test_the_measured_faster_way_runs_the_partition(monkeypatch, faster):
    from tilefuse.compiler import runtime, selection

    monkeypatch.setattr(runtime, "selection_enabled", lambda device: True)
    launches = []
    real = BoundLaunch.__call__
    monkeypatch.setattr(BoundLaunch, "__call__", lambda self, *a: (launches.append(1), real(self, *a))[1])
    fn = lambda x: torch.softmax(x * 3, dim=-1)  # noqa: E731
    compiled, _ = _compile_aten(fn, torch.randn(4, 8))
    (plan,) = _plans(compiled)
    plan.selection.clock = lambda kind, run, device: (run(), 1.0 if kind == faster else 5.0)
    for _ in range(2 + selection.ROUNDS):
        x = torch.randn(4, 8)
        torch.testing.assert_close(compiled(x), fn(x))
    assert plan.selection.choice == faster
    per_run = lambda ms: ms / selection.BURST  # noqa: E731  (a timed round is BURST runs back to back)
    assert plan.report["selection"] == {
        "chosen": faster, "program_ms": per_run(1.0 if faster == "program" else 5.0),
        "pytorch_ms": per_run(5.0 if faster == "program" else 1.0),
    }  # fmt: skip
    before = len(launches)
    torch.testing.assert_close(compiled(x), fn(x))
    assert (len(launches) > before) == (faster == "program")


def test_a_partition_chooses_in_its_first_call_and_runs_one_way_after(monkeypatch):
    """Both ways are warmed up and timed ROUNDS times within the first call, so a user who times the
    calls after it (a benchmark harness with a short warm-up) never times a call that runs twice."""
    from tilefuse.compiler import runtime, selection

    monkeypatch.setattr(runtime, "selection_enabled", lambda device: True)
    fn = lambda x: torch.softmax(x * 3, dim=-1)  # noqa: E731
    compiled, _ = _compile_aten(fn, torch.randn(4, 8))
    (plan,) = _plans(compiled)
    runs = []
    plan.selection.clock = lambda kind, run, device: (runs.append(kind), run(), 1.0 if kind == "program" else 2.0)[1:]
    fallback = plan.fallback.forward
    monkeypatch.setattr(plan.fallback, "forward", lambda *a: (runs.append("fallback"), fallback(*a))[1])
    x = torch.randn(4, 8)
    torch.testing.assert_close(compiled(x), fn(x))
    assert plan.selection.choice == "program" and plan.report["selection"]["chosen"] == "program"
    assert runs.count("program") == runs.count("pytorch") == selection.ROUNDS
    assert plan.selection.in_one_call  # the partition writes no input
    runs.clear()
    for _ in range(3):
        x = torch.randn(4, 8)
        torch.testing.assert_close(compiled(x), fn(x))
    assert runs == []  # neither timed nor run the other way again


def test_a_selection_that_must_not_run_twice_a_call_measures_one_pair_per_call():
    from tilefuse.compiler.selection import ROUNDS, Selection

    runs = []
    chooser = Selection(torch.device("cpu"), in_one_call=False)
    chooser.clock = lambda kind, run, device: (run(), 1.0 if kind == "pytorch" else 2.0)
    calls = 0
    while chooser.choice is None:
        runs.append([])
        assert chooser.step(lambda: runs[-1].append("program") or 1, lambda: runs[-1].append("pytorch")) == 1
        calls += 1
    assert chooser.choice == "pytorch" and calls == 2 + ROUNDS
    assert max(len(r) for r in runs) == 2 and runs[0] == ["program"]  # the first call only warms up


def test_a_partition_that_writes_an_input_is_known_to():
    def update(cache, x):
        cache.index_copy_(0, torch.tensor([1]), x)
        return cache.sum()

    assert runtime_writes_inputs(make_fx(update)(torch.zeros(3, 2), torch.ones(1, 2)))
    assert not runtime_writes_inputs(make_fx(lambda x: torch.tanh(x) + 1)(torch.zeros(3)))


def runtime_writes_inputs(gm) -> bool:
    from tilefuse.compiler.runtime import _writes_inputs

    return _writes_inputs(gm)


def test_new_sizes_do_not_compile_again_and_again():
    """A second sequence length makes Dynamo's graph dynamic; that graph compiles once: its softmax as
    a kernel taking its sizes, the product in PyTorch (contractions of symbolic sizes)."""
    w = torch.randn(16, 16)
    fn = lambda x: torch.softmax(x @ w, dim=-1) * 2  # noqa: E731
    compiled = tilefuse.compile(fn)
    for batch, seq in [(2, 5), (2, 6), (2, 7), (3, 9), (4, 4), (2, 12), (5, 3)]:
        x = torch.randn(batch, seq, 16)
        torch.testing.assert_close(compiled(x), fn(x))
    reports = compiled.tilefuse_reports
    # the first shape, then one dynamic graph per newly varying dim (sequence, then batch)
    assert len(reports) <= 3, [r["name"] for r in reports]
    assert reports[0]["partitions"] and not reports[0]["fallbacks"]
    for r in reports[1:]:
        assert "aten.mm.default" in [f["op"] for f in r["fallbacks"]], r["fallbacks"]
        (partition,) = r["partitions"]
        assert partition["name"].startswith("dynamic_") and r["kernels"]["total"] == 1


def test_a_launch_out_of_shared_memory_retries_with_fewer_stages():
    from types import SimpleNamespace

    class OutOfResources(Exception):
        pass

    seen = []

    class Function:
        def __getitem__(self, grid):
            def launch(*args, num_warps, num_stages, **params):
                seen.append(num_stages)
                if num_stages > 2:
                    raise OutOfResources("out of resource: shared memory")

            return launch

    kernel = SimpleNamespace(
        name="k", params=("BLOCK",), grid=("2",), tma_tensors=(), function=Function(), shapes=((2,),),
        warp_specializable=False, row_tail_tensors=(), merged_dims=(),
        grid_for=lambda config, sizes=None: (2,),
    )  # fmt: skip
    launch = BoundLaunch(kernel, {"BLOCK": 8}, num_warps=4, num_stages=4)
    launch(0, torch.zeros(2), 1)
    launch(0, torch.zeros(2), 1)
    assert seen == [4, 3, 2, 2] and launch.num_stages == 2


@pytest.mark.parametrize("wanted", ["0", "1"])
def test_tma_is_decided_per_launch_only_where_it_is_wanted(monkeypatch, wanted):
    """A kernel that could read through TMA descriptors, not asked to, takes USE_TMA=False once, so
    its launches can go straight to the binary (found on the H200: every GEMM took the generic path)."""
    from types import SimpleNamespace

    monkeypatch.setenv("TILEFUSE_TMA", wanted)
    calls = []

    class Function:
        def __getitem__(self, grid):
            return lambda *args, num_warps, num_stages, **params: calls.append(params)

    kernel = SimpleNamespace(
        name="k", params=("BLOCK",), grid=("2",), tma_tensors=(0,), function=Function(), shapes=((4,),),
        warp_specializable=False, row_tail_tensors=(), merged_dims=(),
        grid_for=lambda config, sizes=None: (2,),
    )  # fmt: skip
    launch = BoundLaunch(kernel, {"BLOCK": 8}, num_warps=4, num_stages=2)
    assert launch.per_launch_tma == (wanted == "1")
    launch(0, torch.zeros(4), 1)
    if wanted == "0":
        assert launch.constexprs == (8, False) and calls == [{"BLOCK": 8, "USE_TMA": False}]
    else:
        assert calls == [{"BLOCK": 8, "USE_TMA": True}]  # CPU tensors: the interpreter emulates TMA


def test_each_tma_decision_keeps_its_own_binary(monkeypatch):
    """With TMA wanted, USE_TMA is decided per launch by the operands' layout; each decision, with each
    tensor's alignment (which Triton specializes a binary on), compiles once through the generic path,
    and later launches with that layout go straight to its binary (the H200's GEMMs under
    TILEFUSE_TMA=1 took the ~20 µs generic path on every launch)."""
    from types import SimpleNamespace

    from tilefuse.backends.triton import launcher

    monkeypatch.setenv("TILEFUSE_TMA", "1")
    monkeypatch.setattr(launcher, "_direct_launch_possible", lambda binary: True)
    compiles, runs = [], []

    class Binary:
        function, packed_metadata = "f", "m"

        def __init__(self, params):
            self.params = params
            self.run = lambda *a: runs.append((self.params["USE_TMA"], a[-2:]))

    class Function:
        def __getitem__(self, grid):
            return lambda *args, num_warps, num_stages, **params: compiles.append(params) or Binary(params)

    kernel = SimpleNamespace(
        name="k", params=("BLOCK",), grid=("2",), tma_tensors=(0,), function=Function(), shapes=((4, 8),),
        warp_specializable=True, grid_for=lambda config, sizes=None: (2,), row_tail_tensors=(), merged_dims=(),
    )  # fmt: skip
    launch = BoundLaunch(kernel, {"BLOCK": 8}, num_warps=4, num_stages=2)
    aligned, ragged = torch.zeros(4, 8), torch.zeros(4, 9)[:, :8]  # a 36-byte row stride: no TMA
    shifted = torch.zeros(33)[1:].view(4, 8)  # 4 bytes off: no TMA, and Triton specializes on alignment
    for x in (aligned, ragged, shifted, aligned, ragged, shifted, aligned):
        launch(0, x, *x.stride())
    assert compiles == [
        {"BLOCK": 8, "USE_TMA": True, "USE_WS": False}, {"BLOCK": 8, "USE_TMA": False, "USE_WS": False},
        {"BLOCK": 8, "USE_TMA": False, "USE_WS": False},
    ]  # fmt: skip
    assert [tma for tma, _ in runs] == [True, False, False, True]  # the binaries', no compile


def test_warp_specialization_takes_tma_a_request_and_an_accumulator_that_fits(monkeypatch):
    from tilefuse.backends.triton.launcher import warp_specialized

    wide = {"BLOCK_M": 128, "BLOCK_N": 256}
    assert not warp_specialized(wide, 8, use_tma=True), "off unless asked (TILEFUSE_WS or a tuned USE_WS)"
    assert warp_specialized(wide | {"USE_WS": 1}, 8, use_tma=True)
    monkeypatch.setenv("TILEFUSE_WS", "1")
    assert warp_specialized(wide, 8, use_tma=True)
    assert not warp_specialized(wide, 8, use_tma=False), "the producer warp issues TMA loads"
    assert not warp_specialized(wide, 4, use_tma=True), "256 accumulator registers a thread"
    assert not warp_specialized(wide | {"USE_WS": 0}, 8, use_tma=True), "a tuned choice wins"


@pytest.mark.parametrize("faster", ["program", "pytorch"])
def test_a_whole_graph_is_measured_against_the_eager_graph(monkeypatch, faster):
    from tilefuse.compiler import backend, runtime, selection

    monkeypatch.setattr(runtime, "selection_enabled", lambda device: False)  # partitions keep programs
    monkeypatch.setattr(backend, "selection_enabled", lambda device: True)
    monkeypatch.setattr(selection, "timed", lambda kind, run, device: (run(), 1.0 if kind == faster else 4.0))
    launches = []
    real = BoundLaunch.__call__
    monkeypatch.setattr(BoundLaunch, "__call__", lambda self, *a: (launches.append(1), real(self, *a))[1])
    fn = lambda x: torch.tanh(x) @ x.T  # noqa: E731
    compiled = tilefuse.compile(fn)
    x = torch.randn(5, 7)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), fn(x))  # the first call measures both ways and chooses
        before = len(launches)
        torch.testing.assert_close(compiled(x), fn(x))
    chosen = compiled.tilefuse_reports[0]["selection"]["chosen"]
    assert chosen == ("tilefuse" if faster == "program" else "pytorch (the eager graph)")
    assert (len(launches) > before) == (faster == "program")


@pytest.mark.parametrize("program_ms,chosen", [(0.99, "pytorch (the eager graph)"), (0.97, "tilefuse")])
def test_a_whole_graph_must_beat_the_eager_graph_by_a_margin(monkeypatch, program_ms, chosen):
    """Within 2% the medians are noise, and a tie goes to what the user had: the eager graph."""
    from tilefuse.compiler import backend, runtime, selection

    monkeypatch.setattr(runtime, "selection_enabled", lambda device: False)
    monkeypatch.setattr(backend, "selection_enabled", lambda device: True)
    times = {"program": program_ms, "pytorch": 1.0}
    monkeypatch.setattr(selection, "timed", lambda kind, run, device: (run(), times[kind]))
    fn = lambda x: torch.tanh(x) @ x.T  # noqa: E731
    compiled = tilefuse.compile(fn)
    x = torch.randn(5, 7)
    with torch.no_grad():
        for _ in range(2 * (2 + selection.ROUNDS)):
            torch.testing.assert_close(compiled(x), fn(x))
    assert compiled.tilefuse_reports[0]["selection"]["chosen"] == chosen


@pytest.mark.parametrize("opt_in", [False, True], ids=["TILEFUSE_TRAINING=pytorch", "TILEFUSE_TRAINING=1"])
def test_a_training_graph_runs_its_steps_as_the_setting_says_once_its_backward_ran(monkeypatch, opt_in):
    """TILEFUSE_TRAINING=pytorch: once a graph's backward runs, calls with gradients take Dynamo's
    graph in PyTorch; =1 keeps the compiled forward (PyTorch runs the decomposed backward);
    gradients stay right either way."""
    from tilefuse.compiler import backend, runtime

    monkeypatch.setattr(runtime, "selection_enabled", lambda device: False)
    monkeypatch.setattr(backend, "selection_enabled", lambda device: True)
    monkeypatch.setenv("TILEFUSE_TRAINING", "1" if opt_in else "pytorch")
    launches = []
    real = BoundLaunch.__call__
    monkeypatch.setattr(BoundLaunch, "__call__", lambda self, *a: (launches.append(1), real(self, *a))[1])
    torch.manual_seed(0)
    layer = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.GELU())
    compiled = tilefuse.compile(layer)
    x = torch.randn(5, 7)
    for step in range(3):
        step_matches_eager(compiled, layer, x)
        if step == 0:
            after_first = len(launches)
    assert after_first > 0  # the first step ran the compiled forward
    assert (len(launches) > after_first) == opt_in
    (report,) = compiled.tilefuse_reports
    assert (
        "backward ran" in report["training"] and ("keep the compiled forward" in report["training"]) == opt_in
    )


@pytest.mark.parametrize("faster", ["tilefuse", "pytorch"])
def test_training_steps_are_measured_both_ways_and_the_faster_is_kept(monkeypatch, faster):
    """By default (on a GPU: faked here), a training graph's backward is compiled too; once its
    partitions have settled (unmeasured compiled steps), its steps
    alternate between the compiled forward and backward and Dynamo's graph in PyTorch until each
    way has TrainingSelection.ROUNDS intervals between calls (a fake clock: the faster way's step takes 1, the other
    2); the faster is kept. Gradients are eager's at every step, whichever way ran."""
    from tilefuse.compiler import backend, runtime, selection

    monkeypatch.delenv("TILEFUSE_TRAINING", raising=False)
    monkeypatch.setattr(runtime, "selection_enabled", lambda device: False)
    monkeypatch.setattr(backend, "selection_enabled", lambda device: True)
    monkeypatch.setattr(selection, "selection_enabled", lambda device: True)  # compiles the backward
    ticks = {"calls": 0, "t": 0.0}

    def now(device):  # call 0 warms PyTorch up, then TrainingSelection.WAYS alternate
        t = ticks["t"]
        calls = ticks["calls"]
        way = "pytorch" if calls == 0 else selection.TrainingSelection.WAYS[(calls - 1) % 2]
        ticks["t"] += 1.0 if way == faster else 2.0
        ticks["calls"] += 1
        return t

    monkeypatch.setattr(selection, "_synchronized_now", now)
    launches = []
    real = BoundLaunch.__call__
    monkeypatch.setattr(BoundLaunch, "__call__", lambda self, *a: (launches.append(1), real(self, *a))[1])
    layer = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.GELU())
    compiled = tilefuse.compile(layer)
    x = torch.randn(5, 7)
    settle, rounds = selection.TrainingSelection.SETTLE, selection.TrainingSelection.ROUNDS
    # the first step; compiled steps while the partitions settle; PyTorch's warm-up; measured; chosen
    steps = 1 + settle + 1 + 2 * rounds + 2
    assert steps - 1 == 8  # chosen at the eighth step (the docstring's promise), the last two run it
    for step in range(steps):
        if step < 1 + settle:
            assert ticks["calls"] == 0  # no step is timed while the compiled graphs settle
        step_matches_eager(compiled, layer, x)
        if step == steps - 3:
            before_last = len(launches)
    reports = {r.get("kind", "forward"): r for r in compiled.tilefuse_reports}
    assert set(reports) == {"forward", "backward"}  # the backward was compiled, for the measurement
    assert (
        f"{'the compiled forward and backward' if faster == 'tilefuse' else 'PyTorch'} chosen"
        in (reports["forward"]["training"])
    )
    assert (len(launches) > before_last) == (faster == "tilefuse")


def test_compiled_backward_gives_eagers_gradients(monkeypatch):
    """TILEFUSE_TRAINING=compile: the backward graph is compiled too (its own report, kind
    'backward', with kernels), training steps keep the compiled graphs, and every parameter's
    gradient matches eager's. A tiny Llama (RoPE, RMSNorm, SwiGLU, GQA) with its LM loss."""
    from tilefuse.compiler import backend, runtime

    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    monkeypatch.setattr(runtime, "selection_enabled", lambda device: False)
    monkeypatch.setattr(
        backend, "selection_enabled", lambda device: True
    )  # the graph-level policy, as on a GPU
    model, ids = _tiny_training_llama(transformers)
    compiled = tilefuse.compile(model)
    for _ in range(2):
        _step_gives_eagers_gradients(compiled, model, ids)
    kinds = {r["kind"]: r for r in compiled.tilefuse_reports}
    assert set(kinds) == {"forward", "backward"}
    assert any(g["kernel"] for p in kinds["backward"]["partitions"] for g in p["groups"])
    assert "backward graph is compiled too" in kinds["forward"]["training"]


def _tiny_training_llama(transformers) -> tuple[torch.nn.Module, torch.Tensor]:
    """A tiny Llama (RoPE, RMSNorm, SwiGLU, GQA) in train mode and a batch of token ids."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).train(), torch.randint(0, 96, (2, 11))


def _step_gives_eagers_gradients(compiled, model: torch.nn.Module, ids: torch.Tensor) -> None:
    """One LM-loss step through `compiled`: every parameter's gradient equals eager's."""
    compiled(input_ids=ids, labels=ids).loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    for g, expected in zip(got, (p.grad for p in model.parameters())):
        torch.testing.assert_close(g, expected, rtol=1e-4, atol=1e-5)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("update", ["optimizer", "data"])
def test_a_training_loop_matches_eager_step_for_step(update):
    """Training steps of a weight-normalized MLP (`parametrizations.weight_norm`: its weight is
    g * v / |v|, computed from parameters alone), each followed by a parameter update, compiled and
    eager in lockstep: the losses and the updated parameters agree at every step. "optimizer":
    torch.optim.SGD (in-place updates, which move the version counters); "data": the hand-written
    `p.data.add_(p.grad, alpha=-lr)`, which leaves them as they were, so what the compiled forward
    derives from parameters must be recomputed once the graph trains (program.Trained): reused,
    the compiled loss stayed at the first step's."""
    import copy

    torch.manual_seed(0)
    eager = torch.nn.Sequential(
        torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(16, 24)), torch.nn.ReLU(), torch.nn.Linear(24, 8)
    )
    model = copy.deepcopy(eager)
    compiled = tilefuse.compile(model)
    optimizers = {m: torch.optim.SGD(m.parameters(), lr=0.1) for m in (eager, model)}
    x, target = torch.randn(10, 16), torch.randn(10, 8)
    for step in range(3):
        losses = []
        for module, call in ((eager, eager), (model, compiled)):
            optimizer = optimizers[module] if update == "optimizer" else None
            losses.append(train_update(module, F.mse_loss(call(x), target), optimizer, lr=0.1))
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6, msg=f"step {step}")
        for p, expected in zip(model.parameters(), eager.parameters()):
            torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    (forward,) = [r for r in compiled.tilefuse_reports if r.get("kind", "forward") == "forward"]
    assert any("on parameters only" in p["executor"] for p in forward["partitions"]), [
        p["executor"] for p in forward["partitions"]
    ]


def test_the_min_cut_partition_saves_less_than_the_default_one(monkeypatch):
    """TILEFUSE_PARTITIONER: the min-cut partition (the default) saves fewer bytes for the backward
    than AOTAutograd's default partition, recomputing elementwise work; both give eager's gradients."""
    from tilefuse.compiler import backend

    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    model, ids = _tiny_training_llama(transformers)
    saved = {}
    compile_graph = backend.compile_aten_graph

    def recording(aten, name, *args, **kwargs):
        if name.endswith("_backward"):
            values = [n.meta["val"] for n in aten.graph.nodes if n.op == "placeholder"]
            saved[partition] = sum(v.numel() * v.element_size() for v in values if isinstance(v, torch.Tensor))
        return compile_graph(aten, name, *args, **kwargs)

    monkeypatch.setattr(backend, "compile_aten_graph", recording)
    for partition in ("default", "min_cut"):
        monkeypatch.setenv(backend.PARTITIONER_ENV, partition)
        torch._dynamo.reset()
        _step_gives_eagers_gradients(tilefuse.compile(model), model, ids)
    assert saved["min_cut"] < saved["default"], saved


def test_an_unknown_partitioner_is_refused_with_the_choices_named(monkeypatch):
    from tilefuse.compiler import backend

    monkeypatch.setenv(backend.PARTITIONER_ENV, "greedy")
    with pytest.raises(ValueError, match="'min_cut' or 'default'"):
        backend.partitioner()


def test_a_partition_holding_cuda_values_is_a_cuda_partition_even_if_an_output_is_not():
    gm = make_fx(lambda: (torch.zeros((), device="meta"), torch.arange(4, device="meta")))()
    for node in gm.graph.nodes:  # pretend: the first output is a CPU scalar, the rest lives on CUDA
        if isinstance(node.meta.get("val"), torch.Tensor) and node.meta["val"].dim() == 0:
            node.meta["val"] = torch.empty((), device="cpu")
        elif isinstance(node.meta.get("val"), torch.Tensor):
            node.meta["val"] = torch.empty(node.meta["val"].shape, device="meta").to("meta")
            node.meta["val"] = _FakeCuda(node.meta["val"])
    assert graph_device(gm, gm, interpret=True).type == "cuda"


class _FakeCuda(torch.Tensor):
    """A meta tensor that says it lives on CUDA (the machine has none)."""

    @staticmethod
    def __new__(cls, t):
        return torch.Tensor._make_subclass(cls, t)

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_a_failing_measurement_keeps_the_compiled_graph(monkeypatch):
    from tilefuse.compiler import backend, runtime, selection

    monkeypatch.setattr(runtime, "selection_enabled", lambda device: False)
    monkeypatch.setattr(backend, "selection_enabled", lambda device: True)
    monkeypatch.setattr(selection, "timed", lambda kind, run, device: (run(), 1.0))

    def broken(*args):
        raise RuntimeError("simulated: the eager graph cannot run")

    made = selection.GraphSelection.__init__

    def with_a_broken_eager_graph(self, compiled, eager, device, slot):
        made(self, compiled, broken, device, slot)

    monkeypatch.setattr(selection.GraphSelection, "__init__", with_a_broken_eager_graph)
    fn = lambda x: torch.sigmoid(x) * 3  # noqa: E731
    compiled = tilefuse.compile(fn)
    x = torch.randn(4, 4)
    with torch.no_grad():
        for _ in range(3):
            torch.testing.assert_close(compiled(x), fn(x))
    assert "simulated" in compiled.tilefuse_reports[0]["selection"]["not_measured"]


def _graph_selection_on_cpu(monkeypatch, program_ms: float, pytorch_ms: float):
    """Graph-level selection on this CPU, partitions' off, timed by a fake clock."""
    from tilefuse.compiler import backend, runtime, selection

    monkeypatch.setattr(runtime, "selection_enabled", lambda device: False)
    monkeypatch.setattr(backend, "selection_enabled", lambda device: True)
    monkeypatch.setattr(
        selection, "timed", lambda kind, run, device: (run(), program_ms if kind == "program" else pytorch_ms)
    )


def test_calls_under_grad_mode_with_nothing_requiring_grad_are_measured(monkeypatch):
    """A parameter-free op called without `torch.no_grad()` (autograd records nothing) is measured
    at its first call, as under `no_grad`: slower compiled, it runs in PyTorch."""
    _graph_selection_on_cpu(monkeypatch, program_ms=2.0, pytorch_ms=1.0)
    fn = lambda x: torch.tanh(x) * 3  # noqa: E731
    compiled = tilefuse.compile(fn)
    x = torch.randn(4, 8)
    torch.testing.assert_close(compiled(x), fn(x))
    selected = compiled.tilefuse_reports[0]["selection"]
    assert selected["chosen"] == "pytorch (the eager graph)"
    assert selected["tilefuse_ms"] == 2 * selected["pytorch_ms"]  # the fake clock's times, a run each


def test_forward_only_calls_of_a_module_with_parameters_are_measured_from_the_second(monkeypatch):
    """Inference without `torch.no_grad()` on a module (its parameters require gradients): the first
    call runs compiled unmeasured (a backward may follow it), the second measures, as a call
    without gradients does; the result keeps its autograd graph either way."""
    _graph_selection_on_cpu(monkeypatch, program_ms=2.0, pytorch_ms=1.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    compiled = tilefuse.compile(model)
    x = torch.randn(4, 8)
    torch.testing.assert_close(compiled(x), model(x))
    assert "selection" not in compiled.tilefuse_reports[0]
    out = compiled(x)
    torch.testing.assert_close(out, model(x))
    assert compiled.tilefuse_reports[0]["selection"]["chosen"] == "pytorch (the eager graph)"
    out.sum().backward()  # a graph PyTorch ran: its gradients are eager's
    got = model[0].weight.grad.clone()
    model.zero_grad()
    model(x).sum().backward()
    torch.testing.assert_close(got, model[0].weight.grad)


def test_a_training_loop_never_measures_its_forward_alone(monkeypatch):
    """Each forward with gradients is followed by its backward: the forward-only measurement never
    runs (it would run the forward 15 more times each way); the steps are measured as steps."""
    from tilefuse.compiler import selection

    _graph_selection_on_cpu(monkeypatch, program_ms=1.0, pytorch_ms=2.0)
    measured = []
    step = selection.Selection.step
    monkeypatch.setattr(selection.Selection, "step", lambda self, *a: measured.append(1) or step(self, *a))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU())
    compiled = tilefuse.compile(model)
    x = torch.randn(4, 8)
    for _ in range(4):
        compiled(x).square().mean().backward()
    assert not measured
    assert "its backward ran" in compiled.tilefuse_reports[0]["training"]


def test_the_dynamic_graph_is_in_the_dump_index(tmp_path):
    fn = lambda x: torch.relu(x) * 2  # noqa: E731
    compiled = tilefuse.compile(fn, dump=tmp_path)
    for n in (5, 6):
        x = torch.randn(n, 3)
        torch.testing.assert_close(compiled(x), fn(x))
    index = (tmp_path / "index.txt").read_text()
    assert "dynamic_0" in index and len(compiled.tilefuse_reports) == 2, index


def test_cuda_graph_replay_refuses_cpu_inputs_at_the_first_call():
    from tilefuse.compiler.cudagraphs import CudaGraphReplay

    report: dict = {"name": "g"}
    replay = CudaGraphReplay(lambda x, w: x * 2 + w, [False, True], report)
    x, w = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(replay(x, w), x * 2 + w)
    assert report["cudagraphs"] == "refused: input 0 is on cpu, not a CUDA device"
    torch.testing.assert_close(replay(x + 1, w), (x + 1) * 2 + w)  # and keeps running without one


@pytest.mark.parametrize(
    "mode", [None, "default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"]
)
def test_torch_compile_modes_and_dynamic_are_accepted(mode):
    """Code written for torch.compile runs unchanged: its mode names and `dynamic` are taken."""
    fn = lambda x: torch.softmax(x * 2, -1)  # noqa: E731
    compiled = tilefuse.compile(fn, mode=mode)
    x = torch.randn(4, 8)
    torch.testing.assert_close(compiled(x), fn(x))
    if mode in ("max-autotune", "reduce-overhead"):  # CUDA graphs, refused here: no CUDA device
        assert compiled.tilefuse_reports[0]["cudagraphs"].startswith("refused")
    else:
        assert "cudagraphs" not in compiled.tilefuse_reports[0]


def test_dynamic_true_compiles_symbolic_sizes_from_the_first_call_and_bad_options_are_refused():
    fn = lambda x: torch.softmax(x * 2, -1)  # noqa: E731
    compiled = tilefuse.compile(fn, dynamic=True)
    for n in (4, 6):
        x = torch.randn(n, 8)
        torch.testing.assert_close(compiled(x), fn(x))
    (report,) = compiled.tilefuse_reports
    assert not report["fallbacks"] and [p["name"] for p in report["partitions"]] == ["dynamic_0"]
    with torch.enable_grad():  # a training graph of symbolic sizes too
        compiled = tilefuse.compile(fn, dynamic=True)
        x = torch.randn(5, 8, requires_grad=True)
        torch.testing.assert_close(compiled(x), fn(x))
    (report,) = compiled.tilefuse_reports
    assert not report["fallbacks"] and [p["name"] for p in report["partitions"]] == ["dynamic_0"]
    with pytest.MonkeyPatch.context() as patch:  # and none with TILEFUSE_SYMBOLIC_KERNELS=0
        patch.setenv("TILEFUSE_SYMBOLIC_KERNELS", "0")
        compiled = tilefuse.compile(fn, dynamic=True)
        torch.testing.assert_close(compiled(x), fn(x))
    assert [f["op"] for r in compiled.tilefuse_reports for f in r["fallbacks"]] == ["dynamic shapes"]
    with pytest.raises(ValueError, match="mode must be one of"):
        tilefuse.compile(fn, mode="fastest")
    with pytest.raises(ValueError, match="dynamic must be"):
        tilefuse.compile(fn, dynamic="yes")


def test_a_dynamic_graph_compiles_its_static_islands():
    """Decoding: one new token's projections have static shapes while the KV cache grows. Once the
    cache's length is dynamic, the projections still run as kernels and the concatenation and the
    attention over the cache run in PyTorch beside them; no new length compiles again."""
    wq, wo = torch.randn(16, 16), torch.randn(16, 16)

    def decode(h, cache):
        q = torch.relu(h @ wq)  # [B, 1, 16]: static
        keys = torch.cat([cache, q], dim=1)  # [B, S + 1, 16]: dynamic
        attn = torch.softmax(q @ keys.transpose(1, 2), dim=-1) @ keys  # [B, 1, 16]: static again
        return torch.sigmoid(attn @ wo) + h, keys

    compiled = tilefuse.compile(decode)
    h = torch.randn(2, 1, 16)
    for length in (5, 6, 7, 11, 13):  # ragged: none is a tile multiple
        cache = torch.randn(2, length, 16)
        for got, want in zip(compiled(h, cache), decode(h, cache)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    reports = compiled.tilefuse_reports
    assert len(reports) == 2, [r["name"] for r in reports]  # the first length, then one dynamic graph
    dynamic = reports[1]
    kinds = [g["kind"] for p in dynamic["partitions"] for g in p["groups"] if g["kernel"]]
    assert kinds.count("gemm") >= 2, dynamic["partitions"]  # both projections are kernels
    reasons = [f["reason"] for f in dynamic["fallbacks"]]
    assert any("dynamic shape" in r for r in reasons), reasons
    assert not any(f["op"] == "dynamic shapes" for f in dynamic["fallbacks"])


def _faked_cuda_graphs(monkeypatch, real):
    """`step`, a function that runs `real` and, while a faked CUDA graph captures, records its call
    (placeholder outputs); a replay of the fake runs the recorded call again on the captured tensors."""
    import contextlib

    from tilefuse.compiler import cudagraphs

    state: dict = {"capturing": None}

    def step(*args):
        if (graph := state["capturing"]) is not None:  # a capture runs nothing: it records
            graph.recorded = args
            graph.out = torch.empty_like(real(*(a.clone() for a in args)))  # a placeholder output
            return graph.out
        return real(*args)

    class FakeGraph:
        def replay(self):
            self.out.copy_(real(*self.recorded))

    @contextlib.contextmanager
    def capture(graph):
        state["capturing"] = graph
        try:
            yield
        finally:
            state["capturing"] = None

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(cudagraphs, "_unsafe_inputs", lambda args: None)
    monkeypatch.setattr(cudagraphs, "_unsafe", lambda args: None)
    return step


def test_cuda_graph_replay_updates_the_inputs_the_graph_writes_once_a_call(monkeypatch):
    """The replay's bookkeeping for written inputs, with the CUDA graph faked (a capture records, a
    replay runs the recorded call on the captured tensors): a cache passed as the same tensor every call
    is captured in place; when a new generate brings a new cache and counter, both are captured again in
    place, in one capture; a counter that comes as a new tensor on consecutive calls is captured once
    more on a private buffer, then copied in before each replay and its update copied back, with no
    more captures. Each call updates each input once."""
    from tilefuse.compiler.cudagraphs import WARMUP_CALLS, CudaGraphReplay

    def real(cache, pos, new, counter):
        cache.index_copy_(0, pos, new)
        counter.add_(1)
        return cache.sum(0, keepdim=True) + counter

    step = _faked_cuda_graphs(monkeypatch, real)
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(step, [False] * 4, report, mutated=[True, False, False, True])
    cache, counter = torch.zeros(16, 3), torch.zeros((), dtype=torch.int64)
    ref_cache, ref_counter = cache.clone(), counter.clone()
    for i in range(WARMUP_CALLS + 11):
        if i == WARMUP_CALLS + 3:  # a new generate: a new cache and a new counter
            cache, ref_cache = cache.clone(), ref_cache.clone()
        if i == WARMUP_CALLS + 3 or i >= WARMUP_CALLS + 6:  # then a new counter every call
            counter, ref_counter = counter.clone(), ref_counter.clone()
        pos, new = torch.tensor([i]), torch.randn(1, 3)
        torch.testing.assert_close(replay(cache, pos, new, counter), real(ref_cache, pos, new, ref_counter))
        assert torch.equal(cache, ref_cache) and counter.item() == ref_counter.item() == i + 1
    assert report["cudagraphs"] == "captured (4 capture(s))"
    assert report["captured_because"] == [
        "first capture",
        "input(s) 0, 3, written by the graph, came as other tensors",
        "input(s) 3, written by the graph, came as other tensors",
        "input(s) 3, written by the graph, came as other tensors; held in private buffers from now on",
    ]


def test_caches_that_alternate_are_captured_once_each(monkeypatch):
    """transformers allocates each `generate`'s static cache while the last one is alive, so caches
    come back at two addresses in turn: each gets one capture, kept (the captures beside the one in use
    up to KEPT_CAPTURES), and a later call that brings it again replays it without a capture. A third
    and fourth cache push the oldest out; a parameter updated in place (a folded weight's source)
    drops the kept captures. Every call matches eager and updates its cache once."""
    from tilefuse.compiler.cudagraphs import KEPT_CAPTURES, WARMUP_CALLS, CudaGraphReplay

    def real(cache, pos, new, weight):
        cache.index_copy_(0, pos, new * weight)
        return cache.sum(0, keepdim=True)

    step = _faked_cuda_graphs(monkeypatch, real)
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(step, [False, False, False, True], report, mutated=[True, False, False, False])
    caches = [torch.zeros(64, 3) for _ in range(KEPT_CAPTURES + 2)]
    refs = [c.clone() for c in caches]
    weight = torch.randn(3)
    # (a cache stays for 3 calls: one that changes on consecutive calls goes to a private buffer)
    order = [0] * WARMUP_CALLS + [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    order += [n for n in (2, 3, 0, 3, 1) for _ in range(3)] + [2]
    for i, which in enumerate(order):
        if i == len(order) - 1:
            with torch.no_grad():
                weight.mul_(2)  # in place: a new version
        pos, new = torch.tensor([i]), torch.randn(1, 3)
        out = replay(caches[which], pos, new, weight)
        torch.testing.assert_close(out, real(refs[which], pos, new, weight))
        assert all(torch.equal(c, r) for c, r in zip(caches, refs))
    # captures: caches 0 and 1 (then three switches between them), 2 and 3 (1 dropped: the oldest kept),
    # 0 and 3 reused, 1 again (2 dropped), and the weight's update (on cache 2; the kept ones dropped)
    reasons = report["captured_because"]
    assert reasons[0] == "first capture" and reasons[-1] == "parameter input 3 was updated in place"
    assert report["cudagraphs"] == "captured (6 capture(s))", reasons
    assert report["captures_reused"] == 5
    assert not any("private" in why for why in reasons)
    assert replay.kept == {}


def test_a_parameter_replaced_in_the_old_ones_memory_is_captured_again(monkeypatch):
    """A parameter input replaced by a new tensor at the old one's address and version (two parameters
    over one numpy buffer) is another tensor: what the capture derived from the old one is stale, so
    the graph is captured again (`program.tensor_token` tells the objects apart)."""
    import numpy as np

    from tilefuse.compiler.cudagraphs import WARMUP_CALLS, CudaGraphReplay

    def real(x, w):
        return x * w

    step = _faked_cuda_graphs(monkeypatch, real)
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(step, [False, True], report)
    buffer = np.ones(3, dtype=np.float32)
    weight = torch.nn.Parameter(torch.from_numpy(buffer))
    for i in range(WARMUP_CALLS + 4):
        if i == WARMUP_CALLS + 2:
            buffer[:] = 2.0
            weight = torch.nn.Parameter(torch.from_numpy(buffer))  # same memory, version 0
        x = torch.randn(4, 3)
        torch.testing.assert_close(replay(x, weight), real(x, weight))
    assert report["captured_because"] == ["first capture", "parameter input 1 was replaced"]


def test_a_privately_held_input_that_stays_put_is_captured_in_place_again(monkeypatch):
    """Short generates (a new cache every call) put the cache in a private buffer; a long generate
    after them (the same cache call after call) takes it back in place after SHARED_AFTER calls, with
    no copy from then on and no settling run for a capture of written inputs alone (each call still
    updates the cache once, as eager does)."""
    from tilefuse.compiler.cudagraphs import SHARED_AFTER, WARMUP_CALLS, CudaGraphReplay

    calls = []

    def real(cache, pos, new):
        cache.index_copy_(0, pos, new)
        return cache.sum(0, keepdim=True)

    faked = _faked_cuda_graphs(monkeypatch, real)

    def step(*args):  # after the warm-up: one call per capture, and one per settling run
        calls.append(args)
        return faked(*args)

    copies = []
    real_foreach = torch._foreach_copy_
    monkeypatch.setattr(torch, "_foreach_copy_", lambda dst, src: (copies.append(len(dst)), real_foreach(dst, src)))
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(step, [False] * 3, report, mutated=[True, False, False])
    cache = torch.zeros(32, 3)
    ref = cache.clone()
    short = WARMUP_CALLS + 4  # a new cache on each of these calls
    for i in range(short + SHARED_AFTER + 4):
        if WARMUP_CALLS <= i < short:
            cache, ref = torch.zeros(32, 3), torch.zeros(32, 3)
        if i == short + SHARED_AFTER:
            copies.clear()
        pos, new = torch.tensor([i]), torch.randn(1, 3)
        torch.testing.assert_close(replay(cache, pos, new), real(ref, pos, new))
        assert torch.equal(cache, ref)
    reasons = report["captured_because"]
    assert reasons[-1] == f"input(s) 0, held in private buffers, came as the same tensor {SHARED_AFTER} calls in a row"
    assert "held in private buffers from now on" in reasons[-2]
    assert not replay.private[0] and replay.addresses[0] == cache.data_ptr()
    assert replay.static_inputs[0] is None  # not kept alive: a freed cache's memory can come back
    assert copies == [2] * 4  # only pos and new are copied in; nothing is copied back
    assert len(calls) == WARMUP_CALLS + len(reasons) + 1  # the first capture alone settled first


def test_an_output_that_is_a_written_input_is_the_callers_tensor(monkeypatch):
    """A graph that returns the cache it writes returns, on a replay, the tensor the call passed (another
    tensor object at the captured address: a new cache in the freed one's memory), with no capture."""
    from tilefuse.compiler.cudagraphs import WARMUP_CALLS, CudaGraphReplay

    def real(cache, pos, new):
        cache.index_copy_(0, pos, new)
        return cache, cache.sum(0)

    step = _faked_cuda_graphs(monkeypatch, lambda *a: real(*a)[1])
    # the fake records one output: the graph's tuple is the written input and the sum
    graph = lambda cache, pos, new: (cache, step(cache, pos, new))  # noqa: E731
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(graph, [False] * 3, report, mutated=[True, False, False])
    storage = torch.zeros(16, 3)
    for i in range(WARMUP_CALLS + 3):
        cache = storage.view(16, 3)  # a new tensor object each call, at the same address
        pos, new = torch.tensor([i]), torch.randn(1, 3)
        out, total = replay(cache, pos, new)
        assert out is cache
        torch.testing.assert_close(total, storage.sum(0))
    assert report["cudagraphs"] == "captured (1 capture(s))"


def test_replayed_outputs_survive_the_next_replay_and_cost_nothing_when_dropped(monkeypatch):
    """A replay's outputs are lent over the graph's memory: outputs (or views of them) the caller
    still holds get a copy of their own before the graph writes that memory again, and keep their
    values; outputs dropped before the next call are never copied. Two outputs over one memory stay
    one; the replay's end copies what is still lent."""
    from tilefuse.compiler import cudagraphs
    from tilefuse.compiler.cudagraphs import WARMUP_CALLS, CudaGraphReplay

    if not cudagraphs.CAN_LEND:  # torch 2.13 (CI) has both storage calls; 2.11 (the GPU image) lacks one
        pytest.skip(f"torch {torch.__version__} has no UntypedStorage._swap_data_ptr_ (tested without lending)")
    real = lambda x, w: x * 2 + w  # noqa: E731
    step = _faked_cuda_graphs(monkeypatch, real)
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(lambda x, w: (lambda out: (out, out[1:]))(step(x, w)), [False, True], report)
    w = torch.randn(5)
    kept, expected, calls = [], [], WARMUP_CALLS + 7
    for i in range(calls):
        x = torch.randn(5)
        out, tail = replay(x, w)
        torch.testing.assert_close(out, real(x, w))
        assert tail.data_ptr() == out.data_ptr() + out.element_size()
        if i % 2:  # every other call's results are kept: the view alone, or both
            kept.append(tail if i % 4 == 1 else (out, tail))
            expected.append(real(x, w)[1:])
        del out, tail
    for held, want in zip(kept, expected):
        torch.testing.assert_close(held if isinstance(held, torch.Tensor) else held[1], want)
        if not isinstance(held, torch.Tensor):  # the base and its view still share their copy
            assert held[1].data_ptr() == held[0].data_ptr() + held[0].element_size()
    # lent from the first capture on; copied: the kept ones a later replay followed
    copied = [i for i in range(WARMUP_CALLS, calls - 1) if i % 2]
    assert report["outputs_copied"] == len(copied) > 0
    replay.__del__()  # the graph's end: the last call's outputs, still held, get their own memory
    assert report["outputs_copied"] == len(copied) + (calls - 1) % 2
    torch.testing.assert_close(kept[-1] if isinstance(kept[-1], torch.Tensor) else kept[-1][1], expected[-1])


def test_without_lending_a_held_output_is_never_overwritten(monkeypatch):
    """torch 2.11 has no storage exchange: outputs are handed out over the graph's memory, and the graph
    is not replayed while the caller holds any of them: a second graph takes those calls, its outputs
    cloned. `out = f(x)` in a loop (the last result held while the next call runs) copies every other
    call; results kept for good, every call (as every replay did before); dropped results, none. Without
    device memory for the second graph the call runs the program. Every result keeps its value."""
    import contextlib

    from tilefuse.compiler import cudagraphs
    from tilefuse.compiler.cudagraphs import WARMUP_CALLS, CudaGraphReplay

    monkeypatch.setattr(cudagraphs, "CAN_LEND", False)
    capturing: list = []  # the graph being captured

    class FakeGraph:  # a capture records the call; a replay runs it again into the recorded outputs
        def replay(self):
            self.out.copy_(real(*self.args))

    @contextlib.contextmanager
    def capture(graph):
        capturing.append(graph)
        try:
            yield
        finally:
            capturing.clear()

    def step(x, w):
        if capturing:
            capturing[0].args, capturing[0].out = (x, w), torch.empty(5)
            return capturing[0].out
        return real(x, w)

    real = lambda x, w: x * 2 + w  # noqa: E731
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda *a: 0)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (80 << 30, 80 << 30))
    monkeypatch.setattr(cudagraphs, "_unsafe_inputs", lambda args: None)
    monkeypatch.setattr(cudagraphs, "_unsafe", lambda args: None)
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(step, [False, True], report)
    w = torch.randn(5)
    for _ in range(WARMUP_CALLS + 1):  # warm-up calls, then the first capture
        replay(torch.randn(5), w)
    graph_memory = replay.static_outputs.data_ptr()
    lent, kept = [], []
    x = torch.randn(5)
    out = replay(x, w)
    for _ in range(6):  # the last result held while the next call runs
        last, want = out, real(x, w)
        x = torch.randn(5)
        out = replay(x, w)
        torch.testing.assert_close(out, real(x, w))
        torch.testing.assert_close(last, want)  # not overwritten by this call
        lent.append(out.data_ptr() == graph_memory)
    assert lent == [False, True] * 3  # every other call lent the first graph's memory, the others copied
    assert report["outputs_copied"] == 3
    assert report["second_graph"].startswith("captured") and "calls_not_replayed" not in report
    del out, last
    for _ in range(3):  # every result kept: the first call lends, the others copy the second graph's
        x = torch.randn(5)
        kept.append((replay(x, w), real(x, w)))
    assert [got.data_ptr() == graph_memory for got, _ in kept] == [True, False, False]
    for got, want in kept:
        torch.testing.assert_close(got, want)
    del kept, got
    for _ in range(3):  # results dropped at once: the first graph serves every call
        assert replay(torch.randn(5), w).data_ptr() == graph_memory
    other = CudaGraphReplay(step, [False, True], {"name": "h"})
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (1 << 20, 80 << 30))  # no room for a second
    for _ in range(WARMUP_CALLS + 1):
        held = other(torch.randn(5), w)
    x = torch.randn(5)
    torch.testing.assert_close(other(x, w), real(x, w))  # run without a graph: `held` is not overwritten
    assert other.report["calls_not_replayed"] == 1 and "MiB free" in other.report["second_graph"]
    del held


def test_cuda_graph_replay_captures_again_when_a_parameter_is_updated_in_place(monkeypatch):
    """A parameter input updated in place between calls (an optimizer step) is captured again, and the
    report says why each capture happened; the replays match eager."""
    from tilefuse.compiler.cudagraphs import WARMUP_CALLS, CudaGraphReplay

    real = lambda x, w: x * 2 + w  # noqa: E731
    step = _faked_cuda_graphs(monkeypatch, real)
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(step, [False, True], report)
    w = torch.randn(3)
    for i in range(WARMUP_CALLS + 4):
        if i == WARMUP_CALLS + 2:
            w.add_(1.0)
        x = torch.randn(3)
        torch.testing.assert_close(replay(x, w), real(x, w))
    assert report["cudagraphs"] == "captured (2 capture(s))"
    assert report["captured_because"] == ["first capture", "parameter input 1 was updated in place"]


@pytest.mark.parametrize("change", ["in_place", "data", "optimizer", "replaced", "inference", "to_inference"])
def test_a_steady_replay_checks_its_parameters_without_rebuilding_their_state(monkeypatch, change):
    """Every replay checks the parameters the graph reads (objects, marks, addresses, versions, the
    unversioned changes) by a few list comparisons; the per-parameter state (`_parameter_state`) is
    built only when one of them moved, and then says why. Each kind of change is still caught: an
    in-place update, a write through `.data`, an optimizer step, a new parameter in the old one's
    memory; an inference tensor (no version) is watched by its object and address, and one may take a
    parameter's place."""
    from tilefuse.compiler import cudagraphs
    from tilefuse.compiler.cudagraphs import CudaGraphReplay
    from tilefuse.compiler.program import watch_parameter_data

    watch_parameter_data()  # as a program with parameter-derived values does
    real = lambda x, w, v: x * 2 + w * v  # noqa: E731
    step = _faked_cuda_graphs(monkeypatch, real)
    built = []
    state = cudagraphs.CudaGraphReplay._parameter_state
    monkeypatch.setattr(CudaGraphReplay, "_parameter_state", lambda self, args: (built.append(1), state(self, args))[1])
    report: dict = {"name": "g"}
    replay = CudaGraphReplay(step, [False, True, True], report)
    params = [torch.nn.Parameter(torch.randn(3)) for _ in range(2)]
    if change == "inference":
        with torch.inference_mode():
            params[1] = torch.randn(3)
    torch.set_grad_enabled(False)  # an evaluation (inference tensors may not meet parameters under grad)
    try:
        _steady_replays_then(change, replay, real, params, built, report)
    finally:
        torch.set_grad_enabled(True)


def _steady_replays_then(change, replay, real, params, built, report):
    from tilefuse.compiler.cudagraphs import WARMUP_CALLS

    for _ in range(WARMUP_CALLS + 2):
        replay(torch.randn(3), *params)
    steady = len(built)
    for _ in range(5):
        x = torch.randn(3)
        torch.testing.assert_close(replay(x, *params), real(x, *params))
    assert len(built) == steady  # no per-parameter state while nothing moved
    if change == "in_place":
        params[0].mul_(2)
    elif change == "data":
        params[0].data.mul_(2)
    elif change == "optimizer":
        params[0].grad = torch.ones(3)
        torch.optim.SGD([params[0]], lr=0.5).step()
    elif change == "replaced":
        params[0] = torch.nn.Parameter(torch.randn(3))
    elif change == "to_inference":  # a parameter replaced by an inference tensor (it keeps no version)
        with torch.inference_mode():
            params[0] = torch.randn(3)
    else:  # another inference tensor
        with torch.inference_mode():
            params[1] = torch.randn(3)
    x = torch.randn(3)
    torch.testing.assert_close(replay(x, *params), real(x, *params))
    assert report["cudagraphs"] == "captured (2 capture(s))", report["captured_because"]


def test_a_timed_round_runs_each_way_back_to_back():
    """Each timed round runs a way BURST times between two synchronizations and records the mean, so
    a way is timed by what limits it when calls are queued (host or GPU time), not their sum; code
    that writes its inputs runs once a round."""
    from tilefuse.compiler import selection

    runs = {"program": 0, "pytorch": 0}

    def way(name):
        def run():
            runs[name] += 1
            return name
        return run

    clock = lambda kind, run, device: (run(), 8.0 if kind == "program" else 4.0)  # noqa: E731
    sel = selection.Selection(torch.device("cpu"), clock=clock)
    assert sel.step(way("program"), way("pytorch")) == "program"
    each = selection.WARMUP + selection.ROUNDS * selection.BURST
    assert runs == {"program": each, "pytorch": each}
    assert sel.summary() == {"chosen": "pytorch", "program_ms": 8.0 / selection.BURST, "pytorch_ms": 4.0 / selection.BURST}
    assert selection.Selection(torch.device("cpu"), in_one_call=False).burst == 1


def _counting_mode(name):
    """A Python dispatch mode class named `name` that counts the aten ops it sees."""
    from torch.utils._python_dispatch import TorchDispatchMode

    def dispatch(self, func, types, args=(), kwargs=None):
        type(self).ops += 1
        return func(*args, **(kwargs or {}))

    return type(name, (TorchDispatchMode,), {"ops": 0, "__torch_dispatch__": dispatch})


def test_a_selection_measures_outside_aotautograds_analysis_mode():
    """A compiled graph's first call runs under AOTAutograd's analysis mode, which made every aten op
    several times slower (this CPU: the captured code 141 µs a run under it, 21 after), and that call is
    where a partition measures its two ways: both run outside it. Under any other mode (a tracer, fake
    tensors) nothing is measured: that call runs the program, and a later call measures."""
    from tilefuse.compiler import selection

    x = torch.randn(8)
    seen = []

    def way(name):
        def run():
            seen.append(torch._C._len_torch_dispatch_stack())
            return torch.tanh(x) if name == "program" else torch.tanh(x) + 0
        return run

    clock = lambda kind, run, device: (run(), 1.0 if kind == "program" else 2.0)  # noqa: E731
    analysis = _counting_mode("_AnalyzeCustomOpInputOutputMode")
    sel = selection.Selection(torch.device("cpu"), clock=clock)
    with analysis():
        out = sel.step(way("program"), way("pytorch"))
    torch.testing.assert_close(out, torch.tanh(x))
    assert sel.choice == "program" and analysis.ops == 0 and set(seen) == {0}

    tracer = _counting_mode("SomeTracer")
    later = selection.Selection(torch.device("cpu"), clock=clock)
    seen.clear()
    with tracer():
        later.step(way("program"), way("pytorch"))
    assert later.choice is None and later.calls == 0 and len(seen) == 1 and tracer.ops == 1
    later.step(way("program"), way("pytorch"))
    assert later.choice == "program"


def test_a_compiled_call_goes_through_no_module_call_wrapper(monkeypatch):
    """A compiled call runs generated forwards directly: the partitioned graph handed to AOTAutograd,
    the partition runners, the captured code a partition falls back on. A lazily recompiled
    GraphModule's `forward` is a stub that calls the module through nn.Module's `__call__` every time
    (~4 µs of this CPU's ~30 a call); none may be left in the call path."""
    monkeypatch.setenv("TILEFUSE_INTERPRET", "1")
    x = torch.randn(5, 7)
    fn = lambda x: torch.tanh(x) * 2  # noqa: E731
    compiled = tilefuse.compile(fn)
    torch.testing.assert_close(compiled(x), fn(x))
    wrapped = []
    call = torch.nn.Module.__call__

    def counting(self, *args, **kwargs):
        wrapped.append(type(self).__name__)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__call__", counting)
    torch.testing.assert_close(compiled(x), fn(x))
    assert wrapped == []
    monkeypatch.setenv("TILEFUSE_INTERPRET", "0")  # the captured code (no CUDA here): no wrapper either
    fallback = tilefuse.compile(lambda x: torch.sigmoid(x) + 1)
    fallback(x)
    wrapped.clear()
    torch.testing.assert_close(fallback(x), torch.sigmoid(x) + 1)
    assert wrapped == []


@pytest.mark.parametrize("n", [301, 304])
def test_a_row_kernel_output_with_an_unaligned_wide_row_is_padded_for_its_gemm_reader(tmp_path, n):
    """A row kernel's output row that is not a multiple of 16 bytes (the log-softmax gradient over an
    odd vocabulary, which the LM head's backward GEMM reads along K) gets rows starting 128 bytes apart;
    its stores stay in the row (the padding is never read): the GEMM over K = n and a reduction of it
    match eager. An aligned row stays packed."""
    x, w = torch.randn(2, 19, n), torch.randn(n, 40)

    def fn(x, w):
        p = torch.softmax(x * 2, -1)
        return p @ w, p.sum(-1)

    compiled = tilefuse.compile(fn, dump=tmp_path)
    got, want = compiled(x, w), fn(x, w)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
    (program,) = tmp_path.glob("*/program_*.py")
    text = program.read_text()
    packed = n * 4 % 16 == 0
    assert ("rows start 128-byte aligned" in text) is not packed
    assert "(row)" in text and "(gemm)" in text


def test_a_contraction_reads_merged_leading_dims_as_a_two_dim_operand(tmp_path):
    """A reshape merging [batch, tokens] of a tensor in memory, read by a contraction (an LM head's
    weight gradient over a log-softmax gradient with padded rows, a linear layer's activations), is
    the kernel's input: the program makes it as a torch view and the GEMM reads 2-d operands. An
    input whose strides do not nest (a transposed one) is reshaped by a copy: still eager's result."""
    x, w, b, g = torch.randn(4, 64, 32), torch.randn(48, 32), torch.randn(48), torch.randn(4, 64, 301)

    def fn(x, w, b, g):
        p = torch.softmax(g * 2, -1)
        return p.reshape(256, 301).t() @ x.reshape(256, 32), F.linear(x, w, b)

    compiled = tilefuse.compile(fn, dump=tmp_path)
    for args in [(x, w, b, g), (x.transpose(0, 1).contiguous().transpose(0, 1), w, b, g)]:
        got, want = compiled(*args), fn(*args)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4)
    # the first graph's (the second, for the transposed input, is a batched matmul in aten)
    first = min((d for d in tmp_path.iterdir() if d.is_dir()), key=lambda d: d.name)
    gemms = [p for p in first.glob("kernels/*.py") if "(gemm)" in p.read_text()]
    shapes = {next(line for line in p.read_text().splitlines() if line.startswith("TENSOR_SHAPES")) for p in gemms}
    assert shapes == {
        "TENSOR_SHAPES = ((256, 301), (256, 32), (301, 32))",
        "TENSOR_SHAPES = ((256, 32), (48, 32), (48,), (256, 48))",
    }, shapes
    (program,) = first.glob("program_*.py")
    assert ".reshape((256, 301))" in program.read_text() and ".reshape((256, 32))" in program.read_text()


def test_the_program_allocator_is_inductors_only_on_the_current_cuda_device(monkeypatch):
    """A program's buffers come from `_empty_strided_cuda` (no argument parsing) only while its device
    is the current one; on another device, and on the CPU, from `torch.empty_strided` on its device."""
    from tilefuse.compiler.program import allocator

    cpu = allocator(torch.device("cpu"))()
    t = cpu((3, 5), (8, 1), torch.bfloat16)
    assert t.shape == (3, 5) and t.stride() == (8, 1) and t.dtype == torch.bfloat16 and t.device.type == "cpu"
    fast = getattr(torch._C._dynamo.guards, "_empty_strided_cuda", None)
    if fast is None:
        return
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 1, raising=False)
    assert allocator(torch.device("cuda:1"))() is fast
    assert allocator(torch.device("cuda:0"))() is not fast


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.randn(4 * 320)[: 3 * 320 + 301].as_strided((4, 301), (320, 1)),  # padded, short storage
        lambda: torch.randn(2, 3, 320)[..., :301],  # padded rows of a 3-d tensor
        lambda: torch.randn(5, 7),  # packed
        lambda: torch.randn(7, 5).t(),  # transposed
        lambda: torch.randn(1, 6).expand(4, 6),  # overlapping rows
        lambda: torch.randn(0, 300)[:, :5],  # empty
    ],
)
def test_a_replays_outputs_are_copied_with_their_layout(make):
    """What a CUDA graph replay hands out (`cudagraphs.copy_out`): eager's values in fresh memory; a
    tensor with padded rows keeps its strides (one span copied), others are cloned."""
    from tilefuse.compiler.cudagraphs import copy_out

    t = make()
    out = copy_out(t)
    assert torch.equal(out, t) and out.shape == t.shape
    if t.numel():
        assert out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()
    if not t.is_contiguous() and t.dim() >= 2 and t.stride(-1) == 1 and t.stride(-2) > t.shape[-1]:
        assert out.stride() == t.stride()
        assert out.untyped_storage().nbytes() >= t.shape[0] * t.stride(0) * t.element_size()


def test_a_captured_input_with_padded_rows_keeps_its_layout(monkeypatch):
    """A CUDA graph's copy of an input with padded rows (the logits a backward graph reads) keeps the
    rows 128 bytes apart, so the program captured on it reads the tails as it would outside the graph;
    the replays give eager's results (the graph faked: a replay runs the recorded call)."""
    from tilefuse.compiler.cudagraphs import WARMUP_CALLS, CudaGraphReplay

    seen = []

    def real(x):
        seen.append(x.stride())
        return torch.log_softmax(x, -1)

    step = _faked_cuda_graphs(monkeypatch, real)
    replay = CudaGraphReplay(step, [False], {"name": "g"}, mutated=[False])
    storage = torch.zeros(4 * 320)
    for _ in range(WARMUP_CALLS + 3):
        x = storage.as_strided((4, 301), (320, 1))
        x.copy_(torch.randn(4, 301))
        torch.testing.assert_close(replay(x), torch.log_softmax(x, -1))
    # the fake capture runs `real` once on packed clones of its own, to shape its placeholder output
    assert seen[-1] == (320, 1) and seen.count((301, 1)) <= 1


_IDX = torch.tensor([2, 0, 1])


@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize(
    "fn",
    [
        lambda x: ((y := x.flip(0)), y.clone().t()),
        lambda x: ((y := x[_IDX]), y.clone()[:, 1:]),
        lambda x: ((y := x.index_select(1, _IDX)), y.clone().t()),
        lambda x: ((y := x.t().reshape(-1)), y.clone()[2:]),
        lambda x: ((y := torch.cat([x, x])), y.clone().t()),
        lambda x: ((y := x * 2), y.clone().t()),
    ],
    ids=["flip", "gather", "index_select", "copying_reshape", "cat", "kernel"],
)
def test_a_view_of_a_clone_of_another_result_is_memory_of_its_own(fn, dynamic):
    """`y` and `y.clone().t()` are two tensors in PyTorch; the clone lowers to its operand, so the
    program's second result is a view of the first one's memory, and is copied at return (told apart
    by the memory a result is a view of, not by its name)."""
    compiled = tilefuse.compile(fn, dynamic=dynamic)
    for rows in (3, 4, 3):
        x = torch.randn(rows, 4)
        (a, b), (ea, eb) = compiled(x), fn(x)
        torch.testing.assert_close((a, b), (ea, eb))
        before = b.clone()
        a.add_(1.0)
        torch.testing.assert_close(b, before)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.flip(0)[:, None].expand(4, 2, 10).clone().transpose(0, 2),
        lambda x: x[torch.tensor([3, 1])][:, None].expand(2, 3, 10).clone()[:, :, :5],
        lambda x: x.t().reshape(40)[:, None].expand(40, 2).clone().t(),
        lambda x: torch.cat([x, x])[:, None].expand(8, 2, 10).clone().transpose(0, 2),
    ],
    ids=["flip", "gather", "copying_reshape", "cat"],
)
def test_a_clone_of_an_expanded_view_is_returned_without_overlap(fn):
    """A `clone` of an expanded view lowers to its operand, whose elements share memory; PyTorch's
    clone keeps them apart (its result may be transposed or sliced, not contiguous): the program
    copies it, so the caller can write into it."""
    x = torch.randn(4, 10)
    got, want = tilefuse.compile(fn)(x), fn(x)
    torch.testing.assert_close(got, want)
    got.add_(1.0)  # raises on a tensor whose elements overlap
    torch.testing.assert_close(got, want + 1.0)


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_concatenation_folded_into_a_slice_of_a_gemm_output_is_returned_contiguous(dynamic):
    """A fused q/k/v product's k slice concatenated to an empty cache (a first decode step): the
    program's result is the slice, a view of the whole product (rows 24 wide, not a padded GEMM output),
    where PyTorch's is fresh contiguous memory."""

    def fn(x, w):
        qkv = x @ w
        k = qkv[:, 8:16]
        return qkv, torch.cat([k.new_empty(0, 8), k], 0)

    x, w = torch.randn(6, 16), torch.randn(16, 24)
    compiled = tilefuse.compile(fn, dynamic=dynamic)
    (qkv, k), (_, want) = compiled(x, w), fn(x, w)
    torch.testing.assert_close(k, want, rtol=1e-4, atol=1e-4)
    assert k.is_contiguous() and k.stride() == want.stride()
    before = k.clone()
    qkv.zero_()
    torch.testing.assert_close(k, before)


class _ProductOfParameters(torch.nn.Module):
    """`returns(w, x)` of `w = a @ b`, a product of parameters (computed once, reused while they stand)."""

    def __init__(self, width: int, returns):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(8, 16))
        self.b = torch.nn.Parameter(torch.randn(16, width))
        self.returns = returns

    def forward(self, x):
        return self.returns(self.a @ self.b, x)


def test_a_returned_parameter_derived_product_with_padded_rows_keeps_its_layout_for_later_kernels():
    """`w = a @ b` of parameters (computed once, reused while they stand) whose 257-wide rows are
    padded, returned and read by a later GEMM: the caller's copy keeps the padded layout the later
    launch passes as literal strides (a plain `clone` packed it: wrong products)."""

    model = _ProductOfParameters(257, lambda w, x: (w.t(), x @ w)).requires_grad_(False)
    compiled = torch.compile(model, backend="tilefuse")
    x = torch.randn(4, 8)
    for _ in range(2):
        got, want = compiled(x), model(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)


def test_an_output_that_views_an_input_through_pytorchs_bindings_is_not_copied():
    """`runtime.output_owners` reads a node's alias annotation from the ATen overload it was captured
    as, also after `direct_ops.bind_direct` retargeted it to PyTorch's binding (`torch.permute` has no
    schema): a transposed input returned stays a view of the input, as in PyTorch."""
    from torch.fx.experimental.proxy_tensor import make_fx

    from tilefuse.compiler.direct_ops import bind_direct
    from tilefuse.compiler.runtime import output_owners

    gm = make_fx(lambda x, w: (x @ w, w.t()))(torch.randn(3, 5), torch.randn(5, 4))
    want = output_owners(gm)
    assert bind_direct(gm) > 0
    assert output_owners(gm) == want == [0, -1]


def test_a_flipped_parameter_derived_value_or_constant_is_returned_without_a_copy_before_the_flip(tmp_path):
    """A flip copies: a cached parameter-derived product or a constant that a result is a flip of is
    not the result's memory, so it is not copied before the flip each call; the caller's writes into
    the results leave the cached values as they were."""

    returns = lambda w, x: (w.flip(0), x @ w, torch.arange(6.0).flip(0))  # noqa: E731
    model = _ProductOfParameters(12, returns).requires_grad_(False)
    compiled = tilefuse.compile(model, dump=tmp_path)
    x = torch.randn(4, 8)
    for _ in range(3):
        got, want = compiled(x), model(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
        for out in got:
            out.add_(100.0)
    programs = list(tmp_path.glob("*/program_*.py"))
    assert programs and not any("clone" in p.read_text() or "_copy_as" in p.read_text() for p in programs)
