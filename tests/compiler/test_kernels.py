"""Generated Triton kernels (run by Triton's interpreter on CPU) against eager PyTorch.

Every kernel class: GEMM with fused epilogues (ragged, batched, transposed,
broadcast bias, residual, SwiGLU's two accumulators), pointwise chains and
row reductions. Each test also checks that the work really ran as kernels.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from helpers import compile_and_compare, fusion_groups
from tilefuse.autotune.heuristics import CONFIG_ENV, default_config
from tilefuse.ir import einsum as ein
from tilefuse.ir.module import parse_module
from tilefuse.passes.fusion_groups import epilogue_weight, math_functions


def assert_all_kernels(reports, kinds: set[str]) -> None:
    groups = fusion_groups(reports)
    missing = [g for g in groups if g["kernel"] is None]
    assert not missing, f"groups left to the interpreter: {missing}"
    assert {g["kind"] for g in groups} == kinds


def run(fn, *args, kinds, rtol=1e-4, atol=1e-4, **compile_kw):
    reports = compile_and_compare(fn, *args, rtol=rtol, atol=atol, **compile_kw)
    assert_all_kernels(reports, kinds)
    return reports


def test_ragged_linear_bias_gelu():
    x, w, b = torch.randn(33, 17), torch.randn(65, 17), torch.randn(65)
    reports = run(lambda x, w, b: F.gelu(F.linear(x, w, b)), x, w, b, kinds={"gemm"})
    (group,) = fusion_groups(reports)
    assert group["ops"] == ["ein.contract", "ein.map"]


def test_the_exact_gelu_without_erf_is_as_accurate_as_eager():
    """The exact GELU is computed as 0.5 x erfc(-x / sqrt 2) with a branch-free erfc (no libdevice erf
    in a GEMM epilogue): against float64 over [-14, 14] (a ragged count) it is within a few f32 ulps
    where eager is, and better than eager where eager's 1 + erf cancels (x < -1); NaN and -inf give
    NaN as eager's do, +inf gives +inf."""
    x = torch.cat([torch.linspace(-14.0, 14.0, 100_003), torch.randn(4099) * 3])
    special = torch.tensor([float("nan"), float("-inf"), float("inf"), 0.0, -0.0])
    compiled = tilefuse.compile(F.gelu)
    out = compiled(torch.cat([x, special]))
    assert all(g["kernel"] for g in fusion_groups(compiled.tilefuse_reports))
    ref, eager = F.gelu(x.double()), F.gelu(x).double()
    ours = out[: x.numel()].double()
    mask = ref.abs() > 1e-30

    def worst(values, where):
        return ((values - ref).abs() / ref.abs())[where & mask].max().item()

    assert (ours - ref).abs().max() < 1e-6
    assert worst(ours, x >= -1) < 1e-6 and worst(eager, x >= -1) < 1e-6
    assert worst(ours, (x < -1) & (x >= -6)) < 1e-5 < worst(eager, (x < -1) & (x >= -6))
    tail = out[x.numel() :]
    assert tail[:2].isnan().all() and tail[2] == float("inf") and (tail[3:] == 0).all()


def test_the_exact_gelu_weighs_one_math_function_in_an_epilogue(tmp_path):
    """The exact GELU's epilogue weight (what decides whether it joins a GEMM) is one math function's,
    as when it called erf: its erfc form's exp counts, its abs does not. Same as a sigmoid's; and as
    one math function it is still inlined into the maps that read it (canonicalize's InlineCheapMap:
    with its abs counted, a GELU read by two maps stayed a kernel of its own)."""
    weights, functions = {}, {}
    for name, fn in (("gelu", F.gelu), ("sigmoid", torch.sigmoid)):
        compiled = tilefuse.compile(fn, dump=tmp_path / name)
        compiled(torch.randn(8, 16).bfloat16())
        (report,) = compiled.tilefuse_reports
        module = parse_module((tmp_path / name / report["dir"] / "ein.mlir").read_text())
        (op,) = [op for op in module.walk() if isinstance(op, ein.MapOp)]
        weights[name], functions[name] = epilogue_weight(op), math_functions(op)
    assert weights["gelu"] == weights["sigmoid"] == 4 + 2  # the exp, the bf16 input's and result's casts
    assert functions == {"gelu": 1, "sigmoid": 1}

    def gelu_read_twice(x, y):
        g = F.gelu(x)
        return g * y, g - y

    compiled = tilefuse.compile(gelu_read_twice, dump=tmp_path / "twice")
    compiled(torch.randn(8, 16).bfloat16(), torch.randn(8, 16).bfloat16())
    (report,) = compiled.tilefuse_reports
    module = parse_module((tmp_path / "twice" / report["dir"] / "ein.canonicalize.mlir").read_text())
    assert sum(isinstance(op, ein.MapOp) for op in module.walk()) == 2  # the GELU inlined into both


@pytest.mark.parametrize("rows", [(1, 37), (3, 37), (37,), (2, 3, 5)], ids=str)
def test_an_activation_after_a_biased_linear_joins_the_gemm(rows):
    """A 3-d input to nn.Linear with a bias is captured as a 2-d addmm reshaped back to 3-d before
    the activation (Phi's and GPT-2's MLPs); the activation (GPT-2's GELU reads its input three
    times) still lands in the GEMM's epilogue, with ragged row counts."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)

    def fn(x):
        h = linear(x)
        return 0.5 * h * (1.0 + torch.tanh(0.79788456 * (h + 0.044715 * torch.pow(h, 3.0))))

    reports = compile_and_compare(fn, torch.randn(*rows, 24), rtol=1e-4, atol=1e-5)
    assert [g["kind"] for g in fusion_groups(reports)] == ["gemm"]


def _gelu_tanh(h):
    return 0.5 * h * (1.0 + torch.tanh(0.79788456 * (h + 0.044715 * torch.pow(h, 3.0))))


@pytest.mark.parametrize(
    "activation, dtype, kinds",
    [
        (_gelu_tanh, torch.float32, ["gemm"]),
        (F.gelu, torch.bfloat16, ["gemm"]),
        (_gelu_tanh, torch.bfloat16, ["gemm", "pointwise"]),  # eager's 16 roundings: too heavy an epilogue
    ],
    ids=["tanh GELU f32", "erf GELU bf16", "tanh GELU bf16"],
)
def test_a_heavy_epilogue_runs_as_its_own_kernel(activation, dtype, kinds):
    """An epilogue runs after the GEMM's last K step on a whole accumulator tile; past a weight
    (conversions and math functions, see MAX_EPILOGUE_WEIGHT) it is cheaper as a pointwise kernel."""
    x, w, b = (t.to(dtype) for t in (torch.randn(37, 48), torch.randn(40, 48), torch.randn(40)))
    tol = 1e-4 if dtype == torch.float32 else 0.15
    reports = compile_and_compare(lambda x, w, b: activation(F.linear(x, w, b)), x, w, b, rtol=tol, atol=tol)
    assert [g["kind"] for g in fusion_groups(reports)] == kinds


def test_per_column_work_weighs_nothing_in_an_epilogue():
    """An eval BatchNorm after a bf16 linear, then the erf GELU: its running statistics' square
    root and every parameter's upcast are a column's work, done once a tile column; only the
    element-wise conversions and the erf weigh, so the epilogue stays in the GEMM."""
    from tilefuse.benchmarks.kernelbench import LinearBatchNormGelu

    module = LinearBatchNormGelu(48, 40).eval().to(torch.bfloat16)
    reports = compile_and_compare(module, torch.randn(37, 48, dtype=torch.bfloat16), rtol=0.05, atol=0.05)
    assert [g["kind"] for g in fusion_groups(reports)] == ["gemm"]


def test_swiglu_in_bf16_keeps_its_two_accumulators():
    """The map joining two products always joins the GEMM, whatever its weight."""
    x, w1, w3 = (
        t.to(torch.bfloat16) for t in (torch.randn(37, 48), torch.randn(40, 48), torch.randn(40, 48))
    )
    reports = compile_and_compare(
        lambda x, w1, w3: F.silu(x @ w1.T) * (x @ w3.T), x, w1, w3, rtol=0.1, atol=0.1
    )
    (group,) = fusion_groups(reports)
    assert group["kind"] == "gemm" and group["ops"].count("ein.contract") == 2


def test_a_bias_varying_over_part_of_the_rows_keeps_its_own_kernel():
    """x @ W + b, reshaped to B x S x N, times a tensor varying over B only (or plus a residual):
    not moved over the GEMM's flattened rows, so that map stays apart; the answer is right."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(24, 40)
    scale = torch.randn(3, 1, 40)
    fn = lambda x, s, r: torch.relu(linear(x)) * s + r  # noqa: E731
    x, r = torch.randn(3, 7, 24), torch.randn(3, 7, 40)
    reports = compile_and_compare(fn, x, scale, r, rtol=1e-4, atol=1e-5)
    assert sorted(g["kind"] for g in fusion_groups(reports)) == ["gemm", "pointwise"]


def test_batched_einsum_and_transposed_operands():
    q, k = torch.randn(2, 3, 19, 8), torch.randn(2, 3, 21, 8)
    # the decomposed einsum (a bmm between reshapes and permutes) is one contract again: the scale
    # is its epilogue
    reports = run(lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.5, q, k, kinds={"gemm"})
    (group,) = fusion_groups(reports)
    assert group["ops"] == ["ein.contract", "ein.map"]
    a, b = torch.randn(13, 7), torch.randn(5, 13)
    run(lambda a, b: torch.einsum("ji,kj->ik", a, b).relu(), a, b, kinds={"gemm"})


@pytest.mark.parametrize("blocks,rows,keys,dim", [(5, 8, 24, 16), (3, 7, 13, 5)], ids=str)
def test_block_attention_products_take_their_masks_as_epilogues(blocks, rows, keys, dim):
    """Block-sparse attention as BigBird writes it: a `bmm` over (heads x blocks) reshaped back, and an
    einsum of every block's queries against one key block (a bmm over [heads, blocks * rows], permuted
    back). Each product is one contract in its readers' shape, its scale and mask in its epilogue; the
    band's softmax and its product with the values are the row kernel and GEMM after."""
    torch.manual_seed(0)
    heads = 3
    q = torch.randn(1, heads, blocks, rows, dim)
    band = torch.randn(1, heads, blocks, keys, dim)
    first = torch.randn(1, heads, rows, dim)
    mask = torch.randn(1, 1, blocks, rows, keys)

    def fn(q, band, first, mask):
        flat = torch.bmm(q.reshape(-1, rows, dim), band.reshape(-1, keys, dim).transpose(1, 2))
        inner = flat.reshape(1, heads, blocks, rows, keys) * 0.25 + mask
        outer = torch.einsum("bhlqd,bhkd->bhlqk", q, first) * 0.25 - 1.0
        return torch.softmax(torch.cat([outer, inner], -1), -1)

    reports = run(fn, q, band, first, mask, kinds={"gemm", "row"})
    gemms = [g for g in fusion_groups(reports) if g["kind"] == "gemm"]
    assert len(gemms) == 2 and all(g["ops"] == ["ein.contract", "ein.map"] for g in gemms)


def test_column_and_row_broadcast_bias_with_residual():
    x, w = torch.randn(2, 9, 24), torch.randn(24, 40)
    col, row, res = torch.randn(40), torch.randn(9, 1), torch.randn(2, 9, 40)
    run(lambda x, w, c, r, s: torch.sigmoid(x @ w + c) * r + s, x, w, col, row, res, kinds={"gemm"})


def test_swiglu_runs_as_one_kernel_with_two_accumulators():
    x, w1, w3 = torch.randn(21, 32), torch.randn(48, 32), torch.randn(48, 32)
    reports = run(lambda x, a, b: F.silu(F.linear(x, a)) * F.linear(x, b), x, w1, w3, kinds={"gemm"})
    (group,) = fusion_groups(reports)
    assert group["ops"].count("ein.contract") == 2


def test_pointwise_chain_with_broadcasting():
    a, b = torch.randn(3, 1, 37), torch.randn(5, 37)
    run(lambda a, b: torch.where(a > b, torch.tanh(a) * b, F.softplus(b - a)), a, b, kinds={"pointwise"})


@pytest.mark.parametrize("shape", [(7, 33), (3, 4, 130)], ids=str)
def test_row_reductions(shape):
    x = torch.randn(*shape) * 3
    run(lambda x: torch.softmax(x, -1), x, kinds={"row"})
    run(lambda x: x.mean(-1) * x.amax(-1) + x.amin(-1), x, kinds={"row"})
    run(lambda x: x.exp().sum(-1) + 1.0, x, kinds={"row"})  # a reduction with a prologue and an epilogue


def test_full_reduction_is_one_row_kernel():
    """A reduction to one element with few elements: viewed as one row, one kernel (prologue fused)."""
    (report,) = compile_and_compare(lambda x: x.exp().sum(), torch.randn(5, 7))
    (group,) = fusion_groups([report])
    assert group["kernel"] is not None and group["kind"] == "reduction"


def test_layer_norm_and_rms_norm():
    x, w = torch.randn(6, 5, 48), torch.randn(48)
    run(lambda x: F.layer_norm(x, (48,), w) + F.rms_norm(x, (48,), w), x, kinds={"row"})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gemm_epilogue(dtype):
    x, w, b = (t.to(dtype) for t in (torch.randn(33, 40), torch.randn(24, 40), torch.randn(24)))
    run(lambda x, w, b: F.relu(F.linear(x, w, b)), x, w, b, kinds={"gemm"}, rtol=2e-2, atol=2e-2)


def test_dump_has_tile_ir_and_kernel_sources(tmp_path):
    compiled = tilefuse.compile(lambda x, w: torch.relu(x @ w), dump=tmp_path)
    compiled(torch.randn(9, 16), torch.randn(16, 12))
    (report,) = compiled.tilefuse_reports
    folder = tmp_path / report["dir"]
    assert "tile.kernel" in (folder / "tile.mlir").read_text()
    (source,) = list((folder / "kernels").glob("*.py"))
    assert "@triton.jit" in source.read_text() and "tl.dot" in source.read_text()
    assert 'ein.group = "k0"' in (folder / "ein.groups.mlir").read_text()


def test_default_gemm_config_fits_the_hardware():
    from tilefuse.autotune.heuristics import SHARED_MEMORY_BUDGET, default_config

    for rhs in (1, 2):
        for elem in (2, 4):
            config = default_config(
                "gemm", {"M": 8192, "N": 11008, "K": 4096, "elem_bytes": elem, "rhs_operands": rhs}
            )
            p = config.params
            assert (
                config.num_stages * (p["BLOCK_M"] + rhs * p["BLOCK_N"]) * p["BLOCK_K"] * elem
                <= SHARED_MEMORY_BUDGET
            )
            assert rhs * p["BLOCK_M"] * p["BLOCK_N"] <= 128 * 256


@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("elem", [2, 4])
def test_default_attention_config_fits_the_hardware(head_dim, elem):
    """Found on the H200: f32 attention at head dim 128 asked for 295 KB of shared memory."""
    from tilefuse.autotune.heuristics import SHARED_MEMORY_BUDGET, default_config
    from tilefuse.autotune.records import TuningTask
    from tilefuse.autotune.space import shared_memory_bytes

    problem = {"M": 4096, "N": 4096, "D": head_dim, "DV": head_dim, "B": 64, "elem_bytes": elem}
    config = default_config("attention", problem)
    task = TuningTask("key", "attention", "attention", problem, "", "attention", ())
    assert shared_memory_bytes(task, config) <= SHARED_MEMORY_BUDGET
    assert config.params["BLOCK_D"] == head_dim and config.num_stages >= 2


@pytest.mark.parametrize(
    "heads, rows, keys, block_m",
    [(12, 64, 4096, 16), (12, 64, 1000, 64), (128, 512, 4096, 64), (40, 64, 2048, 32), (2, 8, 4096, 16)],
)  # fmt: skip
def test_few_heads_over_many_keys_take_smaller_query_tiles(heads, rows, keys, block_m):
    """BigBird's first query block (12 heads x 64 queries against 4096 keys) was 12 flash programs on
    132 SMs: fewer programs than half the SMs over a long key loop halve the query tile, down to 16
    rows; short key loops and full grids keep theirs."""
    from tilefuse.autotune.heuristics import default_config

    problem = {"M": rows, "N": keys, "D": 64, "DV": 64, "B": heads, "elem_bytes": 2}
    assert default_config("attention", problem).params["BLOCK_M"] == block_m


def test_a_second_compile_of_the_same_graph_hits_the_disk_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path))

    def fn(x, w, b):
        return F.silu(x @ w + b)

    x, w, b = torch.randn(10, 12), torch.randn(12, 20), torch.randn(20)
    states = []
    for shape_rows in (10, 10, 7):  # same graph and shapes twice, then a new shape
        torch._dynamo.reset()
        compiled = tilefuse.compile(fn)
        xs = x[:shape_rows]
        torch.testing.assert_close(compiled(xs, w, b), fn(xs, w, b))
        (report,) = compiled.tilefuse_reports
        states.append(report["cache"])
        assert all(g["kernel"] for g in fusion_groups([report]))
    assert states == ["miss", "hit", "miss"]


def test_an_unreadable_cache_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path))
    fn, x = (lambda x: torch.exp(x) * 2), torch.randn(6)
    tilefuse.compile(fn)(x)
    for entry in tmp_path.iterdir():
        (entry / "compiled.pickle").write_bytes(b"not a pickle")
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn)
    torch.testing.assert_close(compiled(x), fn(x))
    assert compiled.tilefuse_reports[0]["partitions"], "the graph was compiled again, not run in PyTorch"


@pytest.mark.parametrize("tma", ["1", "0"])
def test_gemm_operands_read_through_tensor_descriptors_or_pointers(tma, monkeypatch, tmp_path):
    monkeypatch.setenv("TILEFUSE_TMA", tma)  # "1": take the descriptor path where the layout allows
    x, w, b = torch.randn(45, 64), torch.randn(70, 64), torch.randn(70)
    reports = run(lambda x, w, b: F.gelu(F.linear(x, w, b)), x, w, b, kinds={"gemm"}, dump=tmp_path)
    source = next((tmp_path / reports[0]["dir"] / "kernels").glob("*.py")).read_text()
    # on a compile-cache hit (the second setting) the dump names operands arg0, arg1, ...
    assert re.search(r"tl\.make_tensor_descriptor\((x|arg0)_ptr", source) and "_desc.load(" in source


@pytest.mark.parametrize("ws", ["1", "0"])
def test_a_gemm_read_through_descriptors_may_warp_specialize_its_tile_loop(ws, monkeypatch, tmp_path):
    """The tile loop of a GEMM with descriptor loads is a `tl.range` warp-specialized by USE_WS, which the
    launcher sets with USE_TMA (TILEFUSE_WS); either way the kernel matches eager on ragged sizes."""
    monkeypatch.setenv("TILEFUSE_TMA", "1")
    monkeypatch.setenv("TILEFUSE_WS", ws)
    x, w, b, r = torch.randn(45, 64), torch.randn(70, 64), torch.randn(70), torch.randn(45, 70)
    reports = run(lambda x, w, b, r: F.silu(F.linear(x, w, b)) + r, x, w, b, r, kinds={"gemm"}, dump=tmp_path)
    source = next((tmp_path / reports[0]["dir"] / "kernels").glob("*.py")).read_text()
    assert "WARP_SPECIALIZABLE = True" in source
    assert re.search(r"for \w+ in tl\.range\(.*flatten=USE_WS, warp_specialize=USE_WS\):", source)


@pytest.mark.parametrize("flags", [{"USE_TMA": 1}, {"USE_TMA": 1, "USE_WS": 1}, {"USE_TMA": 0}], ids=str)
def test_a_gemm_config_override_may_set_its_launch_switches(flags, monkeypatch):
    """TILEFUSE_KERNEL_CONFIG takes a GEMM's USE_TMA and USE_WS as a tuned config carries them (over
    TILEFUSE_TMA, set here the other way); ragged sizes match eager either way. Other kinds have no
    such switch."""
    monkeypatch.setenv("TILEFUSE_TMA", "0" if flags["USE_TMA"] else "1")
    monkeypatch.setenv(CONFIG_ENV, json.dumps({"gemm": {"BLOCK_M": 32, **flags}}))
    x, w, b = torch.randn(45, 64), torch.randn(70, 64), torch.randn(70)
    reports = run(lambda x, w, b: F.gelu(F.linear(x, w, b)), x, w, b, kinds={"gemm"})
    (group,) = fusion_groups(reports)
    assert group["config_source"] == "override"
    assert all(f"{name}={value}" in group["config"] for name, value in flags.items()), group["config"]
    monkeypatch.setenv(CONFIG_ENV, json.dumps({"row": {"USE_TMA": 1}}))
    with pytest.raises(ValueError, match="row kernels have no parameter"):
        default_config("row", {"R": 8, "C": 64})


@pytest.mark.parametrize("text", ["{bad", '{"gemm": 128}', "[1]"])
def test_a_malformed_config_override_names_the_variable(text, monkeypatch):
    """A user's typo in TILEFUSE_KERNEL_CONFIG: the error says which variable (it read as a bare JSON
    error in the report of a graph that ran in PyTorch)."""
    monkeypatch.setenv(CONFIG_ENV, text)
    with pytest.raises(ValueError, match=CONFIG_ENV):
        default_config("gemm", {"M": 64, "N": 64, "K": 64})


def test_unaligned_operands_fall_back_to_pointer_loads(monkeypatch):
    from tilefuse.backends.triton.launcher import use_tensor_descriptors

    aligned, ragged = torch.randn(8, 64), torch.randn(8, 17)
    assert not use_tensor_descriptors([aligned]), "descriptors are opt-in"
    monkeypatch.setenv("TILEFUSE_TMA", "1")
    assert use_tensor_descriptors([aligned])
    assert not use_tensor_descriptors([ragged]), "a 68-byte row stride cannot be read through TMA"
    assert not use_tensor_descriptors([aligned.t()]), "the last stride must be 1"


def test_head_merged_operand_reads_contiguous_k_blocks(tmp_path):
    """An output projection over (head, head dim): K blocks stay inside one head (start + arange)."""

    def out_proj(o, w):
        b, h, s, d = o.shape
        return o.transpose(1, 2).reshape(b, s, h * d) @ w

    o, w = torch.randn(2, 3, 13, 32), torch.randn(96, 40)
    reports = run(out_proj, o, w, kinds={"gemm"}, dump=tmp_path)
    (group,) = fusion_groups(reports)
    assert group["config"].startswith("BLOCK_K=32")  # divides the head dim
    source = next((tmp_path / reports[0]["dir"] / "kernels").glob("*.py")).read_text()
    assert "32 // BLOCK_K" in source  # the K block number is split, not every lane's index


@pytest.mark.parametrize("shape, dim", [((3, 17, 5), 1), ((7, 33), -1), ((5, 4, 3), 0)], ids=str)
def test_max_and_min_over_a_dim_without_indices_are_reductions(shape, dim):
    """`torch.max(x, dim)[0]` (aten.max.dim, indices unread) is the values' reduction, a kernel;
    with its indices read, an arg reduction (tests/compiler/test_extremes_and_adaptive_pools.py)."""
    torch._dynamo.reset()
    x = torch.randn(*shape)
    for fn in (lambda x: torch.max(x, dim)[0] * 2, lambda x: torch.min(x, dim, keepdim=True).values + x):
        torch._dynamo.reset()
        reports = compile_and_compare(fn, x)
        assert fusion_groups(reports) and all(g["kernel"] for g in fusion_groups(reports))
    torch._dynamo.reset()
    reports = compile_and_compare(lambda x: torch.max(x, dim)[1], x)
    assert [g["kind"] for g in fusion_groups(reports)] == ["reduction"]
