"""Every op of the capture list: imported into `ein`, run by the reference
interpreter, compared with eager PyTorch on random inputs of several shapes
(odd sizes and broadcasting included), with no fallback allowed."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from helpers import compile_and_compare, compiled_aten_ops, fusion_groups

SHAPES = [(5,), (3, 7), (2, 3, 33)]


def positive(*shape):
    return torch.rand(*shape) + 0.1


UNARY = {
    "neg": torch.neg,
    "exp": torch.exp,
    "abs": torch.abs,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "relu": torch.relu,
    "gelu_erf": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "hardtanh": lambda x: F.hardtanh(x, -0.5, 0.75),
    "elu": lambda x: F.elu(x, 0.7),
    "selu": F.selu,
    "clamp": lambda x: torch.clamp(x, -0.3, 0.4),
    "clamp_min": lambda x: torch.clamp(x, min=-0.1),
    "mish": F.mish,
    "softplus": F.softplus,
    "softplus_beta": lambda x: F.softplus(x, beta=2.0, threshold=1.0),
    "hardswish": F.hardswish,
    "pow2": lambda x: x**2,
    "pow3": lambda x: torch.pow(x, 3),
    "erf": torch.erf,
    "isnan": lambda x: torch.isnan(torch.sqrt(x)),
    "reciprocal": lambda x: 1.0 / (x.abs() + 1),
    "sign": lambda x: torch.sign(x) * x.abs().sqrt(),
    "round": lambda x: torch.round(x * 2),  # x * 2 of values on a 0.25 grid: many exact ties (below)
    "trunc": torch.trunc,
}
POSITIVE_UNARY = {
    "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt,
    "log": torch.log,
    "pow_frac": lambda x: x**1.7,
    "pow_half": lambda x: x**0.5,
}
BINARY = {
    "add": torch.add,
    "add_alpha": lambda a, b: torch.add(a, b, alpha=0.5),
    "sub": torch.sub,
    "sub_alpha": lambda a, b: torch.sub(a, b, alpha=2),
    "mul": torch.mul,
    "div": lambda a, b: a / (b.abs() + 0.5),
    "maximum": torch.maximum,
    "minimum": torch.minimum,
    "where": lambda a, b: torch.where(a > b, a, b * 2),
    "where_scalar": lambda a, b: torch.where(a > 0, a, 0.0),
    "pow_tensor": lambda a, b: torch.pow(a.abs() + 0.5, b),
    "scalar_ops": lambda a, b: (a * 3 - 1) / 2 + b,
    "compare_chain": lambda a, b: ((a > b) & (a < 1)) | (b == 0),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name, shape):
    compile_and_compare(UNARY[name], torch.randn(*shape) * 3)


def test_round_ties_to_even_and_sign_of_zeros_and_nans():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 2.4999, 3.5001, 0.0, -0.0, float("nan"), 1e30, -7.0])
    compile_and_compare(lambda x: torch.round(x), x)
    compile_and_compare(lambda x: torch.sign(x), x)
    compile_and_compare(lambda x: torch.trunc(x), x)
    grid = torch.randint(-40, 40, (33, 7)) / 4  # halves and quarters: ties everywhere
    compile_and_compare(lambda x: torch.round(x) + torch.sign(x - 1), grid)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", sorted(POSITIVE_UNARY))
def test_unary_positive_domain(name, shape):
    compile_and_compare(POSITIVE_UNARY[name], positive(*shape) * 3)


@pytest.mark.parametrize(
    "shapes", [((3, 7), (3, 7)), ((3, 1, 7), (5, 7)), ((2, 3, 33), (33,)), ((4, 1), (1, 6))], ids=str
)
@pytest.mark.parametrize("name", sorted(BINARY))
def test_binary_broadcasting(name, shapes):
    a, b = (torch.randn(*s) for s in shapes)
    compile_and_compare(BINARY[name], a, b)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.to(torch.bfloat16).to(torch.float32) * 2,
        lambda x: x.half() * 2,
        lambda x: (x * 10).to(torch.int32) + 1,
        lambda x: (x > 0).float() + x,
        lambda x: x.to(torch.int64).to(torch.float32) * 0.5,  # float64 runs in PyTorch (test_fallback)
        lambda x: x.to(torch.bool).to(torch.int32) * 3,
    ],
    ids=["bf16", "half", "int32", "bool_to_float", "int64_f32", "bool_int"],
)
def test_dtype_casts(fn):
    compile_and_compare(fn, torch.randn(4, 9))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_elementwise_matches_eager(dtype):
    x = torch.randn(6, 17).to(dtype)
    compile_and_compare(lambda x: F.gelu(x) * torch.sigmoid(x) + 1, x, rtol=1e-2, atol=1e-2)


# --- contractions -------------------------------------------------------------------------------

MATMULS = {
    "mm": (torch.mm, [(7, 13), (13, 5)]),
    "bmm": (torch.bmm, [(3, 7, 13), (3, 13, 5)]),
    "addmm_row_bias": (lambda b, x, w: torch.addmm(b, x, w), [(5,), (7, 13), (13, 5)]),
    "addmm_full_bias": (
        lambda b, x, w: torch.addmm(b, x, w, beta=0.5, alpha=2.0),
        [(7, 5), (7, 13), (13, 5)],
    ),
    "linear": (F.linear, [(2, 7, 13), (5, 13), (5,)]),
    "linear_no_bias": (F.linear, [(7, 13), (5, 13)]),
    "matmul_3d_2d": (torch.matmul, [(2, 7, 13), (13, 5)]),
    "matmul_broadcast": (torch.matmul, [(2, 1, 7, 13), (3, 13, 5)]),
    "matmul_vec": (torch.matmul, [(7, 13), (13,)]),
    "einsum_heads": (lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k), [(2, 3, 7, 8), (2, 3, 9, 8)]),
    "einsum_transposed": (lambda a, b: torch.einsum("ji,kj->ik", a, b), [(13, 7), (5, 13)]),
    "einsum_batch_mat": (lambda a, b: torch.einsum("bij,jk->bik", a, b), [(3, 7, 13), (13, 5)]),
    "baddbmm": (lambda c, a, b: torch.baddbmm(c, a, b, alpha=0.5), [(3, 7, 5), (3, 7, 13), (3, 13, 5)]),
}


@pytest.mark.parametrize("name", sorted(MATMULS))
def test_contractions(name):
    fn, shapes = MATMULS[name]
    reports = compile_and_compare(fn, *(torch.randn(*s) for s in shapes), rtol=1e-4, atol=1e-4)
    # a matrix-vector product decomposes to mul + sum; every other case keeps its contraction
    expected = {"aten.sum"} if name == "matmul_vec" else {"aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm"}
    assert compiled_aten_ops(reports) & expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_linear(dtype):
    x, w, b = torch.randn(9, 24), torch.randn(10, 24), torch.randn(10)
    compile_and_compare(F.linear, x.to(dtype), w.to(dtype), b.to(dtype), rtol=2e-2, atol=2e-2)


# --- reductions, softmax, norms -----------------------------------------------------------------

REDUCTIONS = {
    "sum_all": lambda x: x.sum(),
    "sum_dim": lambda x: x.sum(-1),
    "sum_keepdim": lambda x: x.sum(0, keepdim=True),
    "mean": lambda x: x.mean(dim=(0, -1)),
    "amax": lambda x: x.amax(-1),
    "amin": lambda x: x.amin(0, keepdim=True),
    "var": lambda x: x.var(-1),
    "var_biased": lambda x: x.var(0, correction=0),
    "var_keepdim": lambda x: torch.var(x, dim=-1, keepdim=True, correction=2),
    "softmax": lambda x: torch.softmax(x, -1),
    "softmax_dim0": lambda x: F.softmax(x, 0),
    "log_softmax": lambda x: F.log_softmax(x, -1),
    "logsumexp": lambda x: torch.logsumexp(x, -1),
    "max_of_sum": lambda x: x.sum(-1).amax(),
    "norm_l2": lambda x: torch.linalg.vector_norm(x, dim=-1),
    "norm_l1_keepdim": lambda x: torch.linalg.vector_norm(x, 1, dim=0, keepdim=True),
    "norm_inf": lambda x: torch.linalg.vector_norm(x, float("inf"), dim=-1),
    "normalize": lambda x: F.normalize(x, dim=-1),
}


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 33)], ids=str)
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_reductions(name, shape):
    compile_and_compare(REDUCTIONS[name], torch.randn(*shape) * 2, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("source, dtype", [(torch.bfloat16, torch.float32), (torch.float32, torch.float32)])
def test_a_vector_norm_with_dtype_casts_its_input_first(source, dtype):
    """`linalg.vector_norm(..., dtype=)` (a weight norm's f32 norm of a bf16 weight): the input cast to
    `dtype` before the norm, as PyTorch does; a kernel, not PyTorch."""
    x = (torch.randn(6, 5, 33) * 3).to(source)
    fn = lambda x: torch.linalg.vector_norm(x, 2, dim=(1, 2), keepdim=True, dtype=dtype) * 2  # noqa: E731
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    reports = compile_and_compare(fn, x, rtol=tol, atol=tol)
    assert all(g["kernel"] for r in reports for p in r["partitions"] for g in p["groups"])


BOOLEAN_REDUCTIONS = {
    "any": lambda x: (x > 2).any(-1),
    "all_keepdim": lambda x: (x > -2).all(0, keepdim=True),
    "safe_softmax_row_has_a_key": lambda x: (x.masked_fill(x < 0, float("-inf")) != float("-inf")).any(
        -1, True
    ),
    "any_of_a_bool_input": lambda x: (x > 1).logical_not().any(-1),
}


@pytest.mark.parametrize("shape", [(5, 7), (2, 3, 33)], ids=str)
@pytest.mark.parametrize("name", sorted(BOOLEAN_REDUCTIONS))
def test_any_and_all_are_kernels(name, shape):
    """any/all (max/min over booleans) once ran op by op ("reductions over i1"): Falcon's
    attention, a safe softmax asking whether each row has a key, did so in every layer."""
    reports = compile_and_compare(BOOLEAN_REDUCTIONS[name], torch.randn(*shape) * 2)
    groups = fusion_groups(reports)
    assert groups and all(g["kernel"] is not None for g in groups), [
        g["not_a_kernel_because"] for g in groups
    ]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(4, 48), (2, 5, 33)], ids=str)
def test_layer_norm(shape, affine):
    d = shape[-1]
    w, b = (torch.randn(d), torch.randn(d)) if affine else (None, None)
    compile_and_compare(lambda x: F.layer_norm(x, (d,), w, b, eps=1e-5), torch.randn(*shape) * 3 + 1)


@pytest.mark.parametrize("shape", [(4, 48), (2, 5, 33)], ids=str)
def test_rms_norm(shape):
    d = shape[-1]
    w = torch.randn(d)
    compile_and_compare(lambda x: F.rms_norm(x, (d,), w, eps=1e-6), torch.randn(*shape) * 3)


def test_half_precision_norms():
    x = torch.randn(3, 40).to(torch.bfloat16)
    w = torch.randn(40).to(torch.bfloat16)
    compile_and_compare(
        lambda x: F.layer_norm(x, (40,), w) + F.rms_norm(x, (40,), w), x, rtol=2e-2, atol=2e-2
    )
    compile_and_compare(lambda x: torch.softmax(x, -1), x, rtol=2e-2, atol=2e-2)


# --- views --------------------------------------------------------------------------------------

VIEWS = {
    "view": (lambda x: x.view(6, -1) * 2, "aten.view"),
    "reshape_transposed": (lambda x: x.transpose(0, 1).reshape(-1) * 2, "aten.permute"),
    "permute": (lambda x: x.permute(2, 0, 1) + 1, "aten.permute"),
    "transpose": (lambda x: x.transpose(-1, -2) * 2, "aten.permute"),
    "expand": (lambda x: x[:, :1].expand(2, 3, 11) + x, "aten.expand"),
    "unsqueeze": (lambda x: x.unsqueeze(1) * x.unsqueeze(0)[:, :, :1], "aten.unsqueeze"),
    "squeeze": (lambda x: x[:, :1].squeeze(1) + 1, "aten.squeeze"),
    "slice": (lambda x: x[:, 1:3, 2:9:3] * 2, "aten.slice"),
    "slice_negative": (lambda x: x[..., -4:] * 2, "aten.slice"),
    "select": (lambda x: x[1] + x[:, 0].sum(), "aten.select"),
    "cat": (lambda x: torch.cat([x, x * 2], dim=1) + 1, "aten.cat"),
    "split": (lambda x: sum(t.sum(-1) for t in x.split([4, 4, 3], dim=-1)), "aten.split_with_sizes"),
}


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_views(name):
    fn, op = VIEWS[name]
    reports = compile_and_compare(fn, torch.randn(2, 3, 11))
    assert op in compiled_aten_ops(reports)


# --- attention ----------------------------------------------------------------------------------

ATTENTION_CASES = {
    "plain": dict(),
    "causal": dict(is_causal=True),
    "scale": dict(scale=0.3),
    "bool_mask": dict(mask="bool"),
    "float_mask": dict(mask="float"),
    "gqa_causal": dict(is_causal=True, kv_heads=2),
}


@pytest.mark.parametrize("seq", [7, 33])
@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_scaled_dot_product_attention(case, seq):
    opts = dict(ATTENTION_CASES[case])
    kv_heads = opts.pop("kv_heads", 4)
    mask_kind = opts.pop("mask", None)
    q = torch.randn(2, 4, seq, 16)
    k, v = torch.randn(2, kv_heads, seq, 16), torch.randn(2, kv_heads, seq, 16)
    args = [q, k, v]
    if mask_kind == "bool":
        mask = torch.rand(seq, seq) > 0.3
        mask.fill_diagonal_(True)
        args.append(mask)
    elif mask_kind == "float":
        args.append(torch.randn(2, 1, seq, seq))

    def attention(q, k, v, mask=None):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=kv_heads != 4, **opts)

    compile_and_compare(attention, *args, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "shape, repeats",
    [((3, 5), (2, 1)), ((3, 5), (1, 3)), ((4,), (2, 3)), ((2, 3, 5), (2, 2, 1)), ((7, 1), (1, 9))],
)
def test_repeat_is_indexed_through_in_the_kernel_that_reads_it(shape, repeats):
    """GPT-J's rotary tables and Whisper's positions use `repeat`: compiled, not left to PyTorch."""
    x = torch.randn(*shape)
    reports = compile_and_compare(lambda t: torch.sigmoid(t.repeat(*repeats)) * 2, x)
    assert "aten.repeat" in compiled_aten_ops(reports)


NORM_MODULES = {
    "batch_norm_eval": lambda: torch.nn.Sequential(torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval(),
    "batch_norm_train": lambda: torch.nn.BatchNorm2d(8).train(),
    "batch_norm_1d_train": lambda: torch.nn.BatchNorm1d(8).train(),
    "instance_norm": lambda: torch.nn.InstanceNorm2d(8, affine=True),
    "group_norm": lambda: torch.nn.GroupNorm(2, 8),
}


@pytest.mark.parametrize("name", sorted(NORM_MODULES))
def test_batch_instance_and_group_norms_match_eager_with_their_running_statistics(name):
    """The batch, instance and group norms decompose (as in Inductor's table) into statistics and
    affine maps that compile like LayerNorm's, beside the convolution a network runs in PyTorch.
    Training-mode batch norm updates its running statistics as eager does. Before, each of them
    was one op tilefuse had no lowering for."""
    import copy

    torch.manual_seed(0)
    module = NORM_MODULES[name]()
    reference = copy.deepcopy(module)
    compiled = tilefuse.compile(module)
    shape = (16, 8) if "1d" in name else (4, 8, 6, 5)
    for step in range(2):
        x = torch.randn(*shape) * 2 + step
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), reference(x), rtol=1e-4, atol=1e-4)
    for (buffer, got), (_, want) in zip(module.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=buffer)
    groups = [g for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]]
    aten = [op for r in compiled.tilefuse_reports for p in r["partitions"] for op in p["aten_ops"]]
    assert groups and not any("batch_norm" in op or "group_norm" in op for op in aten)
    kernels = [g for g in groups if g["kernel"] is not None]
    # everything is a kernel but training's 0-d batch counter (one PyTorch op)
    assert kernels and all(g["kernel"] or g["ops"] == ["ein.map"] for g in groups), groups
    fallbacks = [f["op"] for r in compiled.tilefuse_reports for f in r["fallbacks"]]
    assert not [op for op in fallbacks if "as_strided" in op or "norm" in op], fallbacks


def test_as_strided_that_is_a_reshape_compiles_and_any_other_runs_in_pytorch():
    """Group norm's decomposition views its statistics with `as_strided` (row-major strides over
    the whole tensor): a reshape, compiled. Overlapping windows depend on the storage: PyTorch."""
    x = torch.randn(3, 4, 5)
    reports = compile_and_compare(lambda x: torch.as_strided(x * 2, (6, 10), (10, 1)) + 1, x)
    assert all(g["kernel"] is not None for g in fusion_groups(reports))
    windows = lambda x: torch.as_strided(x * 2, (4, 3), (1, 1)).exp()  # noqa: E731
    reports = compile_and_compare(windows, torch.randn(12), allow_fallbacks=True)
    reasons = [f["reason"] for r in reports for f in r["fallbacks"] if f["op"] == "aten.as_strided.default"]
    assert reasons == ["an as_strided view that is not a reshape (other strides, or a part) runs in PyTorch"]


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_a_one_hot_scatter_is_a_map_and_other_scatters_run_in_pytorch(dim):
    """scatter of one position per row along `dim` (a cross-entropy backward's -1 at each target), of
    a value or of a source shaped like the index, fuses as a map; a scatter of several positions per
    row runs in PyTorch with its reason; against eager, ragged shapes."""
    base = torch.randn(5, 7)
    size = base.shape[dim]
    index_shape = [5, 7]
    index_shape[dim] = 1
    index = torch.randint(0, size, index_shape)
    src = torch.randn(index_shape)

    def fn(base, index, src):
        return torch.scatter(base * 2, dim, index, -1.0).exp() + torch.scatter(base, dim, index, src.tanh())

    reports = compile_and_compare(fn, base, index, src)
    assert not [f for r in reports for f in r["fallbacks"] if "scatter" in f["op"]]
    several = torch.randint(0, size, (2, 7) if dim == 0 else (5, 2))
    reports = compile_and_compare(
        lambda b, i: torch.scatter(b.tanh(), dim, i, 1.0) * 3, base, several, allow_fallbacks=True
    )
    (fallback,) = [f for r in reports for f in r["fallbacks"] if "scatter" in f["op"]]
    assert "one-hot" in fallback["reason"]


@pytest.mark.parametrize("src_shape, src_dtype", [((3, 7), torch.float32), ((7,), torch.float32), ((3, 7), torch.bfloat16)])
def test_a_copy_into_a_tensor_the_graph_made_is_its_source_broadcast_and_cast(monkeypatch, src_shape, src_dtype):
    """`state.copy_(new)` into a tensor the graph made (Mamba's cache state) is AOTAutograd's functional
    `aten.copy`: its result is the source, broadcast to the destination's shape in its dtype."""
    monkeypatch.setenv("TILEFUSE_INTERPRET", "1")

    def fn(x, y):
        state = torch.zeros(3, 7)
        state.copy_(torch.tanh(y) * 2)
        return state + x

    x, y = torch.randn(3, 7), torch.randn(*src_shape).to(src_dtype)
    reports = compile_and_compare(fn, x, y)
    assert "aten.copy" in compiled_aten_ops(reports)


@pytest.mark.parametrize("fn", [torch.expm1, lambda x: torch.log1p(x.abs()), lambda x: F.gelu(x, approximate="tanh")])
def test_math_formulas_divide_by_no_zero_in_the_interpreter(fn):
    """Without libdevice (Triton's interpreter) expm1, log1p and tanh are formulas whose near-zero
    branch divides; lanes that take another branch must not divide 0 by 0 (numpy warned on every
    GELU epilogue under TILEFUSE_INTERPRET=1)."""
    x = torch.cat([torch.randn(300) * 3, torch.tensor([0.0, 1e-8, -1e-8, 0.5, -0.5])])
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="invalid value encountered", category=RuntimeWarning)
        reports = compile_and_compare(fn, x, rtol=1e-4, atol=1e-5)
    # a warning raised inside the kernel is a run-time failure: the partition would have run as PyTorch
    assert not [p["runtime_error"] for r in reports for p in r["partitions"] if p.get("runtime_error")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tanh_gelu_as_a_sigmoid_matches_eager_at_the_extremes(dtype):
    """The tanh GELU is written x / (1 + exp(-2u)) (no tanh): eager's values over the whole range,
    its NaN at -inf (-inf * 0) and at NaN, +inf at +inf, zeros far left (exp overflows to inf)."""
    special = torch.tensor([float("-inf"), float("inf"), float("nan"), -1e4, 1e4, -30.0, -9.0, 0.0, -0.0, 1e-8])
    x = torch.cat([torch.linspace(-12, 12, 397), special]).to(dtype)
    reports = compile_and_compare(lambda t: F.gelu(t, approximate="tanh"), x, rtol=1e-5, atol=1e-6)
    assert "aten.gelu" in compiled_aten_ops(reports)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fn", [torch.erf, F.gelu], ids=["erf", "gelu"])
def test_erf_matches_eager_to_the_last_bits(dtype, fn):
    """erf (Triton's, libdevice's erff on a GPU): eager's values within two f32 ulps over the whole
    range (both sides of erff's 0.9277 switch, the tails where erf is +-1, tiny and subnormal inputs),
    and its infinities, signed zeros and NaN; the exact GELU through it likewise. In bf16 the oracle
    is eager's f32 result rounded once, as CUDA computes it (eager's bf16 erf on the CPU is several
    bf16 ulps off near zero: 1.1563e-5 for erf(1.0014e-5) = 1.1300e-5)."""
    special = [float("-inf"), float("inf"), float("nan"), -1e4, 1e4, -4.0, 4.0, 0.0, -0.0, 1e-8]
    if dtype == torch.float32:  # a subnormal (Triton's interpreter reads a bf16 one as zero)
        special.append(1e-40)
    switch = 0.927734375
    near = [switch * (1 + e) * sign for e in (-1e-7, 0.0, 1e-7) for sign in (1, -1)]
    x = torch.cat([torch.linspace(-6, 6, 4001), torch.logspace(-30, 1, 301), torch.tensor(special + near)])
    x = x.to(dtype)
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        got, want = compiled(x), fn(x.float()).to(dtype)
        # eager's vectorized CPU GELU (AVX512) gives NaN at +inf; its scalar float64 path gives inf, as CUDA
        infinite = x.isinf()
        want[infinite] = fn(x[infinite].double()).to(dtype)
    if fn is torch.erf:
        rtol, atol = (3e-7 if dtype == torch.float32 else 0.0), 1e-45
    else:  # 1 + erf cancels for x < 0: erf's last bit is an absolute error there (as for any erf)
        rtol, atol = (1e-6 if dtype == torch.float32 else 2**-7), 1e-6  # bf16: one ulp
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    assert set(compiled_aten_ops(compiled.tilefuse_reports)) & {"aten.erf", "aten.gelu"}


def test_the_interpreter_runs_a_large_pointwise_kernel_as_few_wide_programs():
    """Under Triton's interpreter (programs run one after another) a flat pointwise kernel's block
    is widened to INTERPRETER_BLOCK: a ragged 50001 elements in 4 programs, the tail masked, eager's
    values; GPU configs are untouched (`default_config` keeps 1024)."""
    from tilefuse.autotune.heuristics import INTERPRETER_BLOCK, default_config

    x, y = torch.randn(50001), torch.randn(50001)
    reports = compile_and_compare(lambda a, b: torch.sigmoid(a) * b + 1.0, x, y)
    (group,) = fusion_groups(reports)
    assert group["kind"] == "pointwise" and f"BLOCK={INTERPRETER_BLOCK}," in group["config"]
    assert default_config("pointwise", {"N": 50001}).params["BLOCK"] == 1024


def test_bool_arithmetic_is_logical_as_in_pytorch():
    """A sum or maximum of bools is their or, a product or minimum their and, False < True: as 1-bit
    integers True + True wrapped to False and True compared as -1."""
    torch.manual_seed(0)
    m, n, x = torch.rand(33, 47) > 0.5, torch.rand(33, 47) > 0.5, torch.randn(33, 47)

    def fn(m, n, x):
        both = (x > 0) + m
        return (m + n, m * n, torch.maximum(m, n), torch.minimum(m, n), m < n, m >= n, m + True,
                both, both.float().sum())  # fmt: skip

    compile_and_compare(fn, m, n, x)


@pytest.mark.parametrize("op", ["addmm", "baddbmm"])
def test_beta_zero_ignores_nan_and_inf_in_the_added_input(op):
    """PyTorch's addmm/baddbmm with beta=0 ignore their input: NaN and inf there do not propagate."""
    torch.manual_seed(0)
    if op == "addmm":
        c, a, b = torch.randn(33, 20), torch.randn(33, 47), torch.randn(47, 20)
        fn = lambda c, a, b: torch.addmm(c, a, b, beta=0.0, alpha=1.5)  # noqa: E731
    else:
        c, a, b = torch.randn(3, 33, 20), torch.randn(3, 33, 47), torch.randn(3, 47, 20)
        fn = lambda c, a, b: torch.baddbmm(c, a, b, beta=0.0, alpha=1.5)  # noqa: E731
    c.view(-1)[:2] = torch.tensor([float("nan"), float("inf")])
    compile_and_compare(fn, c, a, b, rtol=1e-4, atol=1e-4)


def test_uint8_arithmetic_compiles_and_wraps_as_pytorch_does():
    """uint8 (image pixels, masks) computes in i32 and truncates back: constants of `arith` are
    signless (a `u * 3` made the whole partition fail verification), and values above 127 must
    compare, divide and convert as unsigned."""
    torch.manual_seed(0)
    u = torch.randint(0, 256, (33, 47), dtype=torch.uint8)

    def fn(u):
        v = u.flip(0)
        return (u * 3, u // 3, u - 1, 255 - u, (u > 200).sum(), torch.where(u > 128, u, u * 2),
                torch.maximum(u, v), u < v, u.to(torch.int8) + 1, u.float() / 255,
                u.to(torch.bfloat16) * 0.5)  # fmt: skip

    compile_and_compare(fn, u)


def test_tensors_without_elements_match_eager():
    """Ops whose result has no elements run in PyTorch (a concatenation of empty tensors raised
    IndexError in the lowering and sent its whole partition to PyTorch); reductions and GEMMs over an
    empty dim (sums of nothing: zeros) compile; an empty operand of a concatenation is dropped."""
    x, y, z = torch.randn(0, 47), torch.randn(33, 0), torch.randn(5, 47)

    def fn(x, y, z):
        return (x.sum(dim=0), x * 2, y.sum(), y.mean(dim=1), y.amax(dim=0), torch.cat([x, x]),
                torch.cat([y, y], 1) + 1, torch.cat([x, z]) * 2, x.T @ x, y @ y.T)  # fmt: skip

    reports = compile_and_compare(fn, x, y, z, allow_fallbacks=True)
    reasons = {f["node"]: f["reason"] for r in reports for f in r["fallbacks"]}
    assert "no elements" in reasons["cat"] and "sum_1" not in reasons and "cat_2" not in reasons
    assert any(r["partitions"] for r in reports)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_isinf_compiles_as_t5s_float16_clamp_uses_it(dtype):
    """T5 under float16 clamps every layer's hidden states by `isinf(h).any()`: left to PyTorch, the
    test cut each layer's partition in two."""
    x = torch.randn(33, 47).to(dtype)
    x.view(-1)[:4] = torch.tensor([float("inf"), -float("inf"), float("nan"), 1e4])
    n = torch.randint(0, 5, (7,))

    def fn(x, n):
        h = x * 3
        bound = torch.where(torch.isinf(h).any(), torch.tensor(1000.0), torch.tensor(60000.0))
        return torch.clamp(h, -bound, bound), torch.isinf(h), torch.isinf(n)

    compile_and_compare(fn, x, n)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_integer_remainder_and_fmod_follow_the_divisors_and_the_dividends_sign(dtype):
    """`%` (remainder: the divisor's sign, as Python's) and `fmod` (the dividend's, as C's) on
    integers of both signs; float remainder stays in PyTorch (no fmod in `ein`)."""
    torch.manual_seed(0)
    a = torch.randint(-50, 50, (33, 47), dtype=dtype)
    b = (torch.randint(1, 9, (33, 47)) * torch.where(torch.rand(33, 47) > 0.5, 1, -1)).to(dtype)

    def fn(a, b):
        return a % b, torch.fmod(a, b), a % 7, torch.remainder(a, -3), torch.fmod(a, -5), (a * 2) % b

    compile_and_compare(fn, a, b)
    reports = compile_and_compare(lambda x: x % 0.3 + 1, torch.randn(5, 7), allow_fallbacks=True)
    assert [f["op"] for r in reports for f in r["fallbacks"]] == ["aten.remainder.Scalar"]
