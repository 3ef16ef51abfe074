"""Kernels that take their sizes as arguments (issue 14): a dynamic graph's pointwise and row work
of symbolic sizes compiles once into kernels whose symbolic sizes are runtime arguments
(`tile.size`, the kernel's `SIZE_SYMBOLS`), and each size it is called at gets its own program
(allocations, grids, size arguments literal). Oracles: eager PyTorch and torch on the kernels'
own inputs, at ragged sizes no tile divides."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from xdsl.dialects.builtin import ModuleOp

import tilefuse
from helpers import TinyBlock
from tilefuse.backends.triton import load
from tilefuse.backends.triton.emit import TritonOptions, emit
from tilefuse.backends.triton.launcher import LaunchError
from tilefuse.compiler import codegen, runtime
from tilefuse.compiler.partition import SYMBOLIC_KERNELS_ENV
from tilefuse.compiler.specialize import SPECIALIZE_ENV
from tilefuse.ir import tile
from tilefuse.ir.module import make_context, parse_module, print_module, verify
from tilefuse.passes import PASSES
from tilefuse.passes.fusion_groups import functions
from tilefuse.passes.lower_to_tile import NOMINAL_SIZE, lower_function

S3 = 'tensor<?x?x64xf32, ["s0", "s1"]>'
ROW_SOFTMAX = f"""
func.func @f(%x: {S3}, %y: tensor<64xf32>) -> {S3} {{
  %0 = ein.map(%x, %y) : ({S3}, tensor<64xf32>) -> {S3} {{
  ^bb0(%a: f32, %b: f32):
    %c = arith.addf %a, %b : f32
    ein.yield %c : f32
  }}
  %1 = ein.reduce max [2] keepdim %0 : {S3} -> tensor<?x?x1xf32, ["s0", "s1"]>
  %2 = ein.map(%0, %1) : ({S3}, tensor<?x?x1xf32, ["s0", "s1"]>) -> {S3} {{
  ^bb0(%a: f32, %b: f32):
    %c = arith.subf %a, %b : f32
    %d = math.exp %c : f32
    ein.yield %d : f32
  }}
  func.return %2 : {S3}
}}
"""
MERGED = 'tensor<?x64xf32, ["s0*s1"]>'
POINTWISE_RESHAPE = f"""
func.func @g(%x: {MERGED}, %r: {S3}) -> {S3} {{
  %0 = ein.view reshape %x : {MERGED} -> {S3}
  %1 = ein.map(%0, %r) : ({S3}, {S3}) -> {S3} {{
  ^bb0(%a: f32, %b: f32):
    %c = arith.mulf %a, %b : f32
    %d = math.exp %c : f32
    ein.yield %d : f32
  }}
  func.return %1 : {S3}
}}
"""


def _kernels(text: str) -> list:
    module = parse_module(text, "test")
    for name in ("canonicalize", "form-fusion-groups"):
        PASSES[name]().apply(make_context(), module)
    lowered = [g for fn in functions(module) for g in lower_function(fn, hints={"s0": 4})]
    assert all(g.kernel is not None for g in lowered), [g.error for g in lowered]
    return lowered


def test_a_row_kernel_of_symbolic_rows_takes_its_sizes_as_arguments():
    (g,) = _kernels(ROW_SOFTMAX)
    kernel = g.kernel
    verify(kernel, "row kernel")
    assert g.group.kind == "row" and kernel.grid_exprs == ("cdiv(s0*s1, BLOCK_R)",)
    assert tile.size_symbol_names(kernel) == ("s0", "s1")
    assert any(isinstance(op, tile.SizeOp) for op in kernel.walk())
    # configs are chosen for sizes of at least NOMINAL_SIZE (s0's hint of 4 too; s1 has none)
    assert g.problem["C"] == 64 and g.problem["R"] == NOMINAL_SIZE * NOMINAL_SIZE
    # the tile IR prints and parses back with its sizes
    text = print_module(parse_module(print_module(ModuleOp([kernel.clone()])), "tile"))
    assert 'tile.size "s1"' in text and '["s0", "s1"]' in text
    source = emit(kernel, TritonOptions())
    assert "SIZE_SYMBOLS = ('s0', 's1')" in source and "    s0, s1,\n" in source


@settings(max_examples=12, deadline=None)
@given(s0=st.integers(1, 5), s1=st.integers(1, 37))
def test_one_row_kernel_runs_every_size(s0, s1):
    (g,) = _kernels(ROW_SOFTMAX)
    kernel = load(emit(g.kernel, TritonOptions()), g.kernel.sym_name.data)
    x, y, out = torch.randn(s0, s1, 64), torch.randn(64), torch.full((s0, s1, 64), float("nan"))
    kernel([x, y, out], {"BLOCK_R": 4, "BLOCK_C": 64})
    h = x + y
    torch.testing.assert_close(out, (h - h.amax(-1, keepdim=True)).exp())


@settings(max_examples=10, deadline=None)
@given(s0=st.integers(1, 4), s1=st.integers(1, 23), block=st.sampled_from([16, 128]))
def test_a_pointwise_kernel_reads_through_a_reshape_of_symbolic_sizes(s0, s1, block):
    """[s0*s1, 64] viewed as [s0, s1, 64]: the reshape's dims group by symbolic products, and the
    flat index's bound (64*s0*s1) is a size argument: a ragged tail is masked."""
    (g,) = _kernels(POINTWISE_RESHAPE)
    kernel = load(emit(g.kernel, TritonOptions()), g.kernel.sym_name.data)
    x, r = torch.randn(s0 * s1, 64), torch.randn(s0, s1, 64)
    out = torch.full((s0, s1, 64), float("nan"))
    kernel([x, r, out], {"BLOCK": block})
    torch.testing.assert_close(out, torch.exp(x.view(s0, s1, 64) * r))


def test_the_launcher_refuses_sizes_it_cannot_bind():
    (g,) = _kernels(ROW_SOFTMAX)
    kernel = load(emit(g.kernel, TritonOptions()), g.kernel.sym_name.data)
    with pytest.raises(LaunchError, match="takes sizes"):
        kernel.bind({"BLOCK_R": 4, "BLOCK_C": 64})  # a fixed grid: symbolic kernels launch through sized()
    x, y, out = torch.randn(2, 3, 64), torch.randn(64), torch.empty(2, 4, 64)  # out disagrees on s1
    with pytest.raises(LaunchError, match="tensor 2"):
        kernel([x, y, out], {"BLOCK_R": 4, "BLOCK_C": 64})


def _dynamic_reports(compiled) -> list[dict]:
    return [
        r for r in compiled.tilefuse_reports if any(p["name"].startswith("dynamic_") for p in r["partitions"])
    ]


def test_a_dynamic_block_compiles_once_and_runs_every_size_through_its_kernels(monkeypatch):
    """5 sequence lengths x 3 batch sizes (ragged): at most two compiles (the first size's static
    graph, then the dynamic one), no kernel compiled after the dynamic graph's, every call equal to
    eager; the dynamic graph's norms, GELU and residuals run as kernels taking their sizes."""
    monkeypatch.setenv(SPECIALIZE_ENV, "0")  # no static compile per size: every size runs the dynamic graph
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = TinyBlock().eval()
    compiled = tilefuse.compile(block)
    # the second call changes both dims: Dynamo makes both dynamic at once
    sizes = [(2, 3), (3, 7)] + [
        (b, s) for b in (2, 3, 5) for s in (3, 7, 12, 17, 30) if (b, s) not in ((2, 3), (3, 7))
    ]
    loaded = None
    with torch.no_grad():
        for i, (b, s) in enumerate(sizes):
            x = torch.randn(b, s, 16)
            torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)
            if i == 1:
                loaded = len(codegen._launchers)  # the dynamic graph compiled at the second size
    assert len(codegen._launchers) == loaded  # later sizes compiled no kernel
    assert len(compiled.tilefuse_reports) <= 2
    (report,) = _dynamic_reports(compiled)
    dynamic = [p for p in report["partitions"] if p["name"].startswith("dynamic_")]
    kinds = sorted(g["kind"] for p in dynamic for g in p["groups"] if g["kernel"])
    assert kinds.count("row") >= 2, kinds  # the two layer norms (and the GELU's producers)
    assert all(p["executor"].startswith(tuple("0123456789")) for p in dynamic), [
        p["executor"] for p in dynamic
    ]
    assert all("runtime_error" not in p for p in dynamic)


def test_symbolic_kernels_can_be_switched_off(monkeypatch):
    monkeypatch.setenv(SPECIALIZE_ENV, "0")
    monkeypatch.setenv(SYMBOLIC_KERNELS_ENV, "0")
    torch._dynamo.reset()
    block = TinyBlock().eval()
    compiled = tilefuse.compile(block)
    with torch.no_grad():
        for s in (5, 9, 11):
            x = torch.randn(2, s, 16)
            torch.testing.assert_close(compiled(x), block(x), rtol=1e-4, atol=1e-4)
    assert not _dynamic_reports(compiled)


def test_one_program_runs_every_size(monkeypatch, tmp_path):
    """The partition's program is written once, at its first call: sizes are read from the
    arguments, buffers and grids are expressions of them (`symbolic_program`)."""
    monkeypatch.setenv(SPECIALIZE_ENV, "0")
    written = []
    real = runtime.write_symbolic_program
    monkeypatch.setattr(
        runtime, "write_symbolic_program", lambda spec: written.append(spec.name) or real(spec)
    )
    torch._dynamo.reset()
    fn = lambda x, w: torch.softmax(x * w, -1) + x  # noqa: E731
    compiled = tilefuse.compile(fn, dynamic=True, dump=str(tmp_path))
    w = torch.randn(24)
    for n in (5, 6, 7, 5, 9, 33):
        x = torch.randn(n, 24)
        torch.testing.assert_close(compiled(x, w), fn(x, w))
    (report,) = _dynamic_reports(compiled)
    (partition,) = [p for p in report["partitions"] if p["name"].startswith("dynamic_")]
    assert written == [partition["name"]]
    (program,) = tmp_path.glob(f"*/program_{partition['name']}.py")
    text = program.read_text()
    assert "for every size" in text and ".shape[0]" in text and "cdiv(" in text, text


def test_a_sized_launch_keeps_a_binary_per_specialization_and_takes_each_calls_grid(monkeypatch):
    """Triton specializes a binary on its integers (== 1, divisible by 16) and its pointers'
    alignment: each such key compiles once through the generic path; later launches with the key
    call the binary's C launch function directly, with the call's grid."""
    from types import SimpleNamespace

    from tilefuse.backends.triton import launcher

    compiles, raw = [], []
    monkeypatch.setattr(launcher, "_direct_launch_possible", lambda binary: True)
    monkeypatch.setattr(
        launcher,
        "_raw_launch",
        lambda binary, grid, constexprs: lambda stream, args: raw.append((grid, args[1:])),
    )

    class Function:
        def __getitem__(self, grid):
            return lambda *args, num_warps, num_stages, **params: (
                compiles.append((grid, args[1:])) or object()
            )

    kernel = SimpleNamespace(
        name="k", params=("BLOCK",), function=Function(), tma_tensors=(), warp_specializable=False
    )
    launch = launcher.SizedLaunch(kernel, {"BLOCK": 8}, num_warps=4, num_stages=1)
    x = torch.zeros(64)
    for size in (17, 33, 32, 48, 1, 17):
        launch(0, ((size + 7) // 8,), x, 1, size)
    launch(0, (0,), x, 1, 0)  # an empty grid launches nothing
    # 17 and 33 share a key (neither 1 nor divisible by 16), as do 32 and 48; 1 is its own
    assert compiles == [((3,), (1, 17)), ((4,), (1, 32)), ((1,), (1, 1))]
    assert raw == [((5, 1, 1), (1, 33)), ((6, 1, 1), (1, 48)), ((3, 1, 1), (1, 17))]


def _runtime_errors(compiled) -> list[str]:
    return [
        p["runtime_error"] for r in compiled.tilefuse_reports for p in r["partitions"] if "runtime_error" in p
    ]


def test_shapes_a_sweep_found_failing(monkeypatch):
    """A static operand broadcast along a symbolic dim, whose dims the kernel could merge (a launch
    switch the program of every size does not set); a partition that only makes an `arange` of a
    symbolic length (its only input a size: position ids, a decode step's key positions); an
    `arange` of a symbolic length among other work (the passes read its sizes); zeros of a symbolic
    size that PyTorch writes into (they were a partition of their own, returned as a broadcast
    constant: wrong values); sizes with a Max or a floor division (a whole graph ran in PyTorch)."""
    monkeypatch.setenv(SPECIALIZE_ENV, "0")
    cases = [
        (lambda x, m: x + m, lambda s: (torch.randn(2, s, 4, 4), torch.randn(2, 1, 4, 4))),
        (
            lambda x, p: (torch.arange(p + 1) + 0)[None, None, None, :] <= x,
            lambda s: (torch.randint(0, 20, (2, 1, 1, 1)), s),
        ),
        (lambda x: torch.arange(x.shape[1]) + 0, lambda s: (torch.randn(2, s),)),
        (
            lambda x: x * 2 + torch.arange(x.shape[1], dtype=x.dtype)[None, :, None],
            lambda s: (torch.randn(2, s, 3),),
        ),
        # zeros of a symbolic size written in place by PyTorch (AOTAutograd's index_put_ into them)
        (
            lambda v, i: torch.index_put(
                torch.zeros(v.shape[0], v.shape[1], 4), (torch.arange(3), i), v[:, 0], True
            ),
            lambda s: (torch.randn(3, s, 4), torch.randint(0, s, (3,))),
        ),
        # sizes sympy writes with Max (MPT's alibi slice) and with a floor division
        (lambda x: torch.softmax(x[:, max(0, x.shape[1] - 4) :], -1) * 2, lambda s: (torch.randn(2, s, 8),)),
        (
            lambda x: torch.layer_norm(x.view(x.shape[0] // 2, 2, 16), (16,)) + 1,
            lambda s: (torch.randn(2 * s, 16),),
        ),
    ]
    for fn, inputs in cases:
        torch._dynamo.reset()
        compiled = tilefuse.compile(fn)
        with torch.no_grad():
            for s in (3, 5, 7, 5):
                args = inputs(s)
                torch.testing.assert_close(compiled(*args), fn(*args))
        assert not _runtime_errors(compiled)
        whole = [f for r in compiled.tilefuse_reports for f in r["fallbacks"] if f["op"] == "pipeline"]
        assert not whole, whole  # (a graph whose pipeline failed runs in PyTorch whole)


def test_a_training_step_at_every_size_matches_eager(monkeypatch):
    """Variable-length batches in training: the dynamic graph's forward and backward (compiled here
    with TILEFUSE_TRAINING=compile, as on a GPU) run kernels of symbolic sizes; losses and gradients
    equal eager's at every size."""
    monkeypatch.setenv(SPECIALIZE_ENV, "0")
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch._dynamo.reset()
    torch.manual_seed(0)
    eager, block = TinyBlock(), TinyBlock()
    block.load_state_dict(eager.state_dict())
    compiled = tilefuse.compile(block)
    for b, s in [(2, 5), (3, 7), (2, 12), (4, 9), (3, 7)]:
        x = torch.randn(b, s, 16)
        want, got = eager(x).square().mean(), compiled(x).square().mean()
        want.backward()
        got.backward()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for p, q in zip(eager.parameters(), block.parameters()):
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5)
            p.grad = q.grad = None
    assert not _runtime_errors(compiled)
    backward = [r for r in compiled.tilefuse_reports if r["name"].endswith("_backward")]
    assert any(p["name"].startswith("dynamic_") for r in backward for p in r["partitions"])


def test_size_bindings_solve_linear_sizes_and_leave_products_of_unknowns():
    from tilefuse.backends.triton.launcher import evaluate_grid
    from tilefuse.compiler.symbolic_program import size_bindings
    from tilefuse.ir.dtypes import size_symbol

    s0, s1 = size_symbol("s0"), size_symbol("s1")
    assert size_bindings([("x", 2 * s0), ("y", 64 * s0 * s1), ("z", s1)]) == {s1: "z", s0: "x // (2)"}
    assert size_bindings([("n", s0 + 1), ("m", s0)]) == {s0: "m"}  # a bare dim first
    assert size_bindings([("n", s0 + 1)]) == {s0: "(n - (1))"}
    assert size_bindings([("n", s0 * s1)]) == {}  # two unknowns in one size: neither is bound
    for s0_value, s1_value in [(3, 5), (1, 7)]:  # the expressions evaluate to the sizes
        scope = {"x": 2 * s0_value, "y": 64 * s0_value * s1_value, "z": s1_value}
        bound = size_bindings([("x", 2 * s0), ("y", 64 * s0 * s1), ("z", s1)])
        assert evaluate_grid(bound[s0], scope) == s0_value  # (integer arithmetic over names)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, m: torch.softmax(x * 0.5 + m, -1),  # attention scores over keys of a symbolic length
        lambda x, m: x - x.mean(-1, keepdim=True) + m,
        lambda x, m: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * m,
        lambda x, m: torch.log_softmax(x, -1).exp().sum(-1, keepdim=True) + m,
    ],
)
def test_rows_of_a_symbolic_length_are_walked_in_chunks(monkeypatch, fn):
    """A row whose length is symbolic (a softmax over a growing key length): one row kernel, its
    chunks' count, the lanes' mask and a mean's divisor from the size argument."""
    monkeypatch.setenv(SPECIALIZE_ENV, "0")
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn, dynamic=True)
    with torch.no_grad():
        for s in (2, 5, 9, 33, 5):
            x, m = torch.randn(2, 3, s, s), torch.randn(2, 1, 1, s)
            torch.testing.assert_close(compiled(x, m), fn(x, m), rtol=1e-4, atol=1e-5)
    for report in compiled.tilefuse_reports:  # (a second graph where Dynamo's duck sizing made 2 == 2)
        groups = [g for p in report["partitions"] for g in p["groups"]]
        assert all(g["kernel"] for g in groups) and groups[0]["kind"] == "row", groups
    assert not _runtime_errors(compiled)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.mean(1),  # pooling over a symbolic sequence: the kept index is the contiguous one
        lambda x: x.amax(-1),
        lambda x: (x * x).sum((0, 1)),  # over both symbolic dims
        lambda x: x.exp().sum(-1),
    ],
)
def test_reductions_over_symbolic_dims(monkeypatch, fn):
    monkeypatch.setenv(SPECIALIZE_ENV, "0")
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn, dynamic=True)
    with torch.no_grad():
        for b, s in ((2, 3), (3, 7), (4, 33), (3, 7)):
            x = torch.randn(b, s, 24)
            torch.testing.assert_close(compiled(x), fn(x), rtol=1e-4, atol=1e-5)
    groups = [g for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]]
    assert groups and all(g["kernel"] for g in groups), groups
    assert not _runtime_errors(compiled)


def test_iotas_and_constants_of_symbolic_shape_run_without_the_interpreter(monkeypatch, tmp_path):
    """An arange or a fill sized by the call (a decode step's cache positions) is made by the
    program's own torch calls, not by the reference interpreter, and equals eager's at every size."""
    monkeypatch.setenv(SPECIALIZE_ENV, "0")
    torch._dynamo.reset()

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = x.shape[0]
        positions = torch.arange(n, device=x.device) + 3
        return x * 2, positions, torch.arange(n, device=x.device, dtype=torch.float32), torch.ones(n, 5)

    compiled = tilefuse.compile(fn, dynamic=True, dump=str(tmp_path))
    for n in (5, 7, 33, 6):
        x = torch.randn(n, 24)
        got, want = compiled(x), fn(x)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w)
            assert g.dtype == w.dtype and g.shape == w.shape
    (report,) = _dynamic_reports(compiled)
    names = [p["name"] for p in report["partitions"] if p["name"].startswith("dynamic_")]
    texts = [p.read_text() for name in names for p in tmp_path.glob(f"*/program_{name}.py")]
    assert texts and any("ein.iota" in t or "ein.constant" in t for t in texts), texts
    assert not any("reference interpreter" in t for t in texts), texts
