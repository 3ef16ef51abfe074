"""Generated kernels compiled by Triton for the GPU, against eager PyTorch (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.benchmarks.models import LlamaBlock
from tilefuse.passes.split_reduction import split_k_factor

pytestmark = pytest.mark.gpu

CUDA = "cuda"


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def _check(fn, *args, tol):
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        out, ref = compiled(*args), fn(*(a.double() for a in args))
    groups = [g for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]]
    assert groups and all(g["kernel"] for g in groups), groups
    assert rel_error(out, ref) < tol


@pytest.mark.parametrize("shape", [(33, 65, 17), (256, 512, 384), (1000, 1000, 1000)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_bias_gelu(shape, dtype):
    m, n, k = shape
    x, w, b = (torch.randn(*s, device=CUDA, dtype=dtype) for s in ((m, k), (n, k), (n,)))
    _check(lambda x, w, b: F.gelu(F.linear(x, w, b)), x, w, b, tol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_exact_gelu_without_erf_matches_float64_on_the_gpu(dtype, monkeypatch):
    """The branch-free erfc GELU with the GPU's exp (ex2.approx) and division: within a few f32 ulps of
    float64 where eager is, better where eager's 1 + erf cancels; as a GEMM epilogue (ragged shape)
    within the dtype's rounding. The kernels run: the selection would give a lone GELU to ATen."""
    monkeypatch.setenv("TILEFUSE_SELECT", "0")
    x = torch.cat([torch.linspace(-14.0, 14.0, 100_003), torch.randn(4099) * 3]).to(CUDA)
    out = tilefuse.compile(F.gelu)(x).double()
    ref = F.gelu(x.double())
    mask = ref.abs() > 1e-30
    rel = (out - ref).abs() / ref.abs()
    assert (out - ref).abs().max() < 1e-6
    assert rel[mask & (x >= -1)].max() < 2e-6 and rel[mask & (x < -1) & (x >= -6)].max() < 2e-5
    a, w, b = (torch.randn(*s, device=CUDA, dtype=dtype) for s in ((1000, 1024), (3000, 1024), (3000,)))
    fn = lambda a, w, b: F.gelu(F.linear(a, w, b))  # noqa: E731
    with torch.no_grad():
        ours, eager = tilefuse.compile(fn)(a, w, b), fn(a, w, b)
        exact = fn(a.double(), w.double(), b.double())
    # bf16: the product is rounded before the bias is added (the captured addmm's two ops), one rounding
    # more than cuBLAS's bias epilogue: 2.4e-3 against eager's 1.7e-3 on an H100
    assert rel_error(ours, exact) < (4e-3 if dtype == torch.bfloat16 else 1e-5)
    assert rel_error(eager, exact) < (4e-3 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("name", ["sigmoid", "silu", "gelu_tanh"])
def test_formulas_with_the_approximate_reciprocal_match_float64(name, monkeypatch):
    """sigmoid, SiLU and the tanh GELU divide by 1 + exp(.) with PTX's rcp.approx (1 ulp) and exp2: in
    f32 within a few ulps of float64 wherever eager is, over the whole range (NaN and infinities as
    eager); as a ragged bf16 GEMM epilogue within bf16's rounding."""
    monkeypatch.setenv("TILEFUSE_SELECT", "0")
    tanh_gelu = lambda x: F.gelu(x, approximate="tanh")  # noqa: E731
    fn = {"sigmoid": torch.sigmoid, "silu": F.silu, "gelu_tanh": tanh_gelu}[name]
    special = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 88.0, -88.0, -104.0])
    x = torch.cat([torch.linspace(-30.0, 30.0, 100_003), torch.randn(4099) * 3, special]).to(CUDA)
    out, eager, ref = tilefuse.compile(fn)(x).double(), fn(x).double(), fn(x.double())
    torch.testing.assert_close(out[-8:], eager[-8:], rtol=2e-6, atol=1e-30, equal_nan=True)
    finite = ref.isfinite() & (ref.abs() > 1e-30)
    rel, rel_eager = ((v - ref).abs()[finite] / ref.abs()[finite] for v in (out, eager))
    assert rel.max() < max(4 * rel_eager.max().item(), 2e-6), (rel.max(), rel_eager.max())
    shapes = ((1000, 1024), (3000, 1024), (3000,))
    a, w, b = (torch.randn(*s, device=CUDA, dtype=torch.bfloat16) for s in shapes)
    with torch.no_grad():
        ours = tilefuse.compile(lambda a, w, b: fn(F.linear(a, w, b)))(a, w, b)
        exact = fn(F.linear(a.double(), w.double(), b.double()))
    assert rel_error(ours, exact) < 4e-3


def test_fp32_respects_matmul_precision():
    x, w = torch.randn(128, 256, device=CUDA), torch.randn(256, 64, device=CUDA)
    _check(lambda x, w: torch.relu(x @ w), x, w, tol=1e-5)  # "highest": no TF32


def test_swiglu_and_residual():
    x = torch.randn(4, 128, 256, device=CUDA, dtype=torch.bfloat16)
    w1, w3 = (torch.randn(512, 256, device=CUDA, dtype=torch.bfloat16) / 16 for _ in range(2))
    r = torch.randn(4, 128, 512, device=CUDA, dtype=torch.bfloat16)
    _check(lambda x, a, b, r: F.silu(F.linear(x, a)) * F.linear(x, b) + r, x, w1, w3, r, tol=1e-2)


def test_softmax_and_layer_norm_rows():
    x = torch.randn(64, 1000, device=CUDA, dtype=torch.bfloat16)
    _check(lambda x: torch.softmax(x, -1), x, tol=1e-2)
    _check(lambda x: F.layer_norm(x, (1000,)), x, tol=1e-2)


@pytest.mark.parametrize("experts", [1, 2, 3])
def test_short_middle_rows_summed_as_a_mixture_of_experts_combines_them(experts):
    """Each token's experts' rows scaled and summed (a reduce over a middle dim of 1-3, tiles as narrow
    as the row), then added to the residual, against float64."""
    y = torch.randn(2048 * experts, 1000, device=CUDA, dtype=torch.bfloat16)
    w = torch.rand(2048 * experts, 1, device=CUDA, dtype=torch.bfloat16)
    r = torch.randn(2048, 1000, device=CUDA, dtype=torch.bfloat16)
    _check(lambda y, w, r: (y * w).reshape(-1, experts, 1000).sum(1) + r, y, w, r, tol=1e-2)


def test_llama_block_matches_eager():
    model = LlamaBlock(dim=256, heads=8, kv_heads=4, hidden=688).to(CUDA, torch.bfloat16)
    x = torch.randn(2, 64, 256, device=CUDA, dtype=torch.bfloat16)
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        out = compiled(x)
        ref = model.double()(x.double())
    assert rel_error(out, ref) < 2e-2


def _groups(compiled) -> list[dict]:
    return [g for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]]


@pytest.mark.parametrize("cols", [1000, 4096, 8192])
def test_row_kernels_one_pass(cols):
    x = torch.randn(300, cols, device=CUDA, dtype=torch.bfloat16)
    w, b = (
        torch.randn(cols, device=CUDA, dtype=torch.bfloat16),
        torch.randn(cols, device=CUDA, dtype=torch.bfloat16),
    )
    for fn, args in (
        (lambda x: torch.softmax(x, -1), (x,)),
        (lambda x, w, b: F.layer_norm(x, (cols,), w, b), (x, w, b)),
        (lambda x, w: F.rms_norm(x, (cols,), w, eps=1e-6), (x, w)),
    ):
        compiled = tilefuse.compile(fn)
        with torch.no_grad():
            out, ref = compiled(*args), fn(*(a.double() for a in args))
        assert [g["kind"] for g in _groups(compiled)] == ["row"]
        assert rel_error(out, ref) < 1e-2


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, 1000, 64), (1, 4, 777, 128)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_flash_attention(causal, shape, dtype):
    q, k, v = (torch.randn(*shape, device=CUDA, dtype=dtype) for _ in range(3))
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)  # noqa: E731
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        out, ref = compiled(q, k, v), fn(q.double(), k.double(), v.double())
    assert [g["kind"] for g in _groups(compiled)] == ["attention"]
    assert rel_error(out, ref) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 12, 64, 4096), (1, 3, 40, 1500)], ids=str)
def test_few_heads_over_many_keys(shape, dtype):
    """BigBird's first query block's shape: the flash kernel on 16-row query tiles (a grid that
    underfills the SMs), or the split-keys kernel where the selection measures it faster; either way
    float64's result, with an additive mask hiding the last keys."""
    b, h, rows, keys = shape
    q = torch.randn(b, h, rows, 64, device=CUDA, dtype=dtype)
    k, v = (torch.randn(b, h, keys, 64, device=CUDA, dtype=dtype) for _ in range(2))
    mask = torch.zeros(b, 1, 1, keys, device=CUDA, dtype=dtype)
    mask[..., -5:] = -1e4

    def fn(q, k, v, mask):
        return torch.softmax((q @ k.transpose(-1, -2) * 0.125 + mask).float(), -1).to(q.dtype) @ v

    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        out, ref = compiled(q, k, v, mask), fn(q.double(), k.double(), v.double(), mask.double())
    assert "attention" in [g["kind"] for g in _groups(compiled)]
    assert rel_error(out, ref) < (1e-2 if dtype == torch.bfloat16 else 1e-5)


def test_grouped_query_attention():
    q = torch.randn(2, 8, 300, 128, device=CUDA, dtype=torch.bfloat16)
    k, v = (torch.randn(2, 2, 300, 128, device=CUDA, dtype=torch.bfloat16) for _ in range(2))
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)  # noqa: E731
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        out, ref = compiled(q, k, v), fn(q.double(), k.double(), v.double())
    assert [g["kind"] for g in _groups(compiled)] == ["attention"]
    assert rel_error(out, ref) < 1e-2


@pytest.mark.parametrize("length, width", [(1000, 256), (777, 64), (512, 511)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sliding_window_attention_is_one_causal_kernel(length, width, dtype):
    """A constant sliding-window mask (Mistral's, Gemma's local layers) as one attention kernel that
    reads no mask and skips the key blocks outside the window, on the GPU's tile sizes (ragged
    lengths; additive masks as transformers builds them in half precision)."""

    fill = torch.finfo(dtype).min  # the half-precision fill, also in the float64 reference

    def fn(q, k, v):
        rows = torch.arange(q.shape[-2], device=q.device)
        seen = (rows[None, :] <= rows[:, None]) & (rows[:, None] - rows[None, :] < width)
        mask = torch.where(seen, 0.0, fill).to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    q, k, v = (torch.randn(2, 4, length, 128, device=CUDA, dtype=dtype) for _ in range(3))
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        out, ref = compiled(q, k, v), fn(q.double(), k.double(), v.double())
    assert [g["kind"] for g in _groups(compiled)] == ["attention"]
    assert rel_error(out, ref) < 1e-2


class _NormLinear(torch.nn.Module):
    def __init__(self, k: int, n: int, layer: bool):
        super().__init__()
        self.norm = torch.nn.LayerNorm(k) if layer else torch.nn.RMSNorm(k, eps=1e-6)
        self.lin = torch.nn.Linear(k, n, bias=layer)
        with torch.no_grad():
            for p in self.norm.parameters():
                p.normal_()

    def forward(self, x):
        return self.lin(self.norm(x))


@pytest.mark.parametrize("layer", [False, True], ids=["rms", "ln"])
@pytest.mark.parametrize("shape", [(128, 256, 688), (1000, 1024, 512), (77, 4096, 300)], ids=str)
def test_norm_prologue_gemm(layer, shape):
    m, k, n = shape
    model = _NormLinear(k, n, layer).to(CUDA, torch.bfloat16)
    x = torch.randn(m, k, device=CUDA, dtype=torch.bfloat16)
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        out, eager = compiled(x), model(x)
        ref = _NormLinear(k, n, layer).to(CUDA).double()
        ref.load_state_dict(model.state_dict())
        expected = ref(x.double())
    kinds = sorted(g["kind"] for g in _groups(compiled))
    # RMSNorm folded: the row sum of x² (a reduction), the weight scaled by the norm's weight once
    # (pointwise), one GEMM reading x itself; no kernel writes the normalized rows. LayerNorm is not
    # folded (its mean would cancel after the GEMM): a row kernel writes the rows the GEMM reads
    folded = ["gemm", "row"] if layer else ["gemm", "pointwise", "reduction"]
    if split_k_factor(m, n, k) > 1:  # 77 x 4096 -> 300: three tiles, K split; the partials' sum
        folded = sorted([*folded, "pointwise"])
    assert kinds == folded, kinds
    assert rel_error(out, expected) < 2 * rel_error(eager, expected) + 1e-3, (
        rel_error(out, expected),
        rel_error(eager, expected),
    )


def test_llama_block_with_and_without_norm_prologue(monkeypatch):
    model = LlamaBlock(dim=256, heads=8, kv_heads=4, hidden=688).to(CUDA, torch.bfloat16)
    x = torch.randn(2, 64, 256, device=CUDA, dtype=torch.bfloat16)
    errors = {}
    for setting in ("0", "1"):
        monkeypatch.setenv("TILEFUSE_NORM_PROLOGUE", setting)
        torch._dynamo.reset()
        compiled = tilefuse.compile(model)
        with torch.no_grad():
            errors[setting] = rel_error(compiled(x), model(x))
    assert max(errors.values()) < 1e-2, errors


@pytest.mark.parametrize("n", [100, 256])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_row_reduction_in_gemm_epilogue(n, dtype):
    x = torch.randn(3000, 512, device=CUDA, dtype=dtype)
    w = torch.randn(n, 512, device=CUDA, dtype=dtype) / 16
    for fn in (lambda x, w: torch.softmax(F.linear(x, w), -1), lambda x, w: F.layer_norm(x @ w.t(), (n,))):
        compiled = tilefuse.compile(fn)
        with torch.no_grad():
            out, expected = compiled(x, w), fn(x.double(), w.double())
        assert [g["kind"] for g in _groups(compiled)] == ["gemm"]
        assert rel_error(out, expected) < (1e-2 if dtype == torch.bfloat16 else 1e-4)


@pytest.mark.parametrize("shape", [(1000, 4096, 512), (77, 32000, 256), (2048, 320, 1024)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_split_reduction_of_wide_rows(shape, dtype):
    m, n, k = shape
    x, w = torch.randn(m, k, device=CUDA, dtype=dtype) / 8, torch.randn(n, k, device=CUDA, dtype=dtype) / 8
    fns = (
        lambda x, w: torch.logsumexp(F.linear(x, w), -1),
        lambda x, w: F.linear(x, w).pow(2).mean(-1),
        lambda x, w: F.linear(x, w).amax(-1),
    )
    for fn in fns:
        torch._dynamo.reset()
        compiled = tilefuse.compile(fn)
        with torch.no_grad():
            out, ref = compiled(x, w), fn(x.double(), w.double())
        groups = _groups(compiled)
        assert groups[0]["kind"] == "gemm" and "ein.reduce" in groups[0]["ops"], groups
        assert len(groups) == 2 and all(g["kernel"] for g in groups), groups
        assert rel_error(out, ref) < 1e-2


WIDE_ROW_STATISTICS = {
    "layer_norm_over_chw": (lambda x: F.layer_norm(x, x.shape[1:]), (8, 16, 256, 256)),
    "group_norm_one_group": (lambda x: F.group_norm(x, 1), (8, 16, 256, 256)),
    "group_norm_128_rows": (lambda x: F.group_norm(x, 8), (16, 64, 128, 128)),
    "batch_norm_batch_statistics": (lambda x: F.batch_norm(x, None, None, training=True), (16, 64, 128, 128)),
    "instance_norm_512_rows": (lambda x: F.instance_norm(x), (8, 64, 256, 256)),  # rows wider than MAX_ROW
    "var": (lambda x: x.var(dim=(1, 2, 3)), (8, 16, 256, 256)),
    "softmax": (lambda x: torch.softmax(x, -1), (16, 262144)),
    "log_softmax": (lambda x: F.log_softmax(x, -1), (16, 262144)),
}


@pytest.mark.parametrize("name", sorted(WIDE_ROW_STATISTICS))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_few_wide_rows_statistics_in_one_pass(name, dtype):
    """A variance's or a softmax's two statistics over few wide rows: one partial kernel reading each
    chunk once for both, a combine, the output's kernel (a variance's output is the combine's: two
    kernels); against float64 (an offset of 10 deviations; a masked span of -inf in the softmaxes)."""
    fn, shape = WIDE_ROW_STATISTICS[name]
    x = torch.randn(shape, device=CUDA) + (10.0 if "softmax" not in name else 0.0)
    if "softmax" in name:
        x[0, :20000] = float("-inf")
    x = x.to(dtype)
    torch._dynamo.reset()
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        out, ref = compiled(x), fn(x.double())
    groups = _groups(compiled)
    kernels = 2 if name == "var" else 3
    assert [g["kind"] for g in groups][:2] == ["row", "row"] and len(groups) == kernels, groups
    assert groups[0]["ops"].count("ein.reduce") == 2, groups
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), finite)
    assert rel_error(out[finite], ref[finite]) < (1e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("n", [1 << 12, (1 << 20) + 7, 3 * (1 << 22)], ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_full_reductions_are_kernels(n, dtype):
    """Losses to one element: partials and a combine (or one row), against float64, relative to the
    sum of the terms' magnitudes (a sum of products cancels; its 16-bit products are rounded as
    eager rounds them, and eager's own error there is ~1 in 10 of the result at n = 2^20)."""
    a, b = torch.randn(n, device=CUDA, dtype=dtype), torch.randn(n, device=CUDA, dtype=dtype)
    cases = [
        (lambda a, b: F.mse_loss(a, b), lambda a, b: F.mse_loss(a, b)),
        (lambda a, b: F.huber_loss(a, b), lambda a, b: F.huber_loss(a, b)),
        (lambda a, b: (a * b).sum(), lambda a, b: (a * b).abs().sum()),
    ]
    for fn, magnitude in cases:
        torch._dynamo.reset()
        compiled = tilefuse.compile(fn)
        with torch.no_grad():
            out, ref = compiled(a, b), fn(a.double(), b.double())
        groups = _groups(compiled)
        assert groups and all(g["kernel"] for g in groups if g["kind"] == "reduction"), groups
        error = (out.double() - ref).abs() / magnitude(a.double(), b.double())
        assert error < (1e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_convolutions_run_channels_last(dtype):
    """A convolution then ReLU and a bias: channels-last on cuDNN in bf16, the input converted by a
    tiled kernel, the conversion back fused into the kernel after it; in float32 ("highest", cuDNN's
    TF32 allowed) only where cuDNN's NHWC kernel measured as exact as eager's NCHW one
    (`nhwc_as_exact`), and then no further from float64 than eager; eager's values and strides."""
    from tilefuse.compiler.conv_layout import nhwc_as_exact

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3).to(CUDA, dtype)
    bias = torch.randn(32, 1, 1, device=CUDA, dtype=dtype)
    x = torch.randn(4, 16, 33, 29, device=CUDA, dtype=dtype)

    def fn(x):
        return torch.relu(conv(x)) + bias

    torch._dynamo.reset()
    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        out, eager = compiled(x), fn(x)
    converted = "conv_layout" in compiled.tilefuse_reports[0]
    if dtype == torch.float32:
        params = ([1, 1], [0, 0], [1, 1], False, [0, 0], 1)
        assert converted == nhwc_as_exact(x, conv.weight, params)
        with torch.no_grad():
            ref = torch.relu(F.conv2d(x.double(), conv.weight.double(), conv.bias.double())) + bias.double()
        err_out, err_eager = (((y - ref).abs().max() / ref.abs().max()).item() for y in (out, eager))
        assert err_out <= max(3 * err_eager, 2e-5), (err_out, err_eager)
    else:
        assert converted and compiled.tilefuse_reports[0]["conv_layout"].startswith("1 convolution")
    if converted:
        assert [g["kind"] for g in _groups(compiled)] == ["pointwise"] * 3  # input, weight (once), result
    assert out.stride() == eager.stride()
    torch.testing.assert_close(
        out, eager, rtol=2e-2, atol=2e-2
    )  # cuDNN picks its own algorithm (TF32 in fp32)


@pytest.mark.parametrize("n", [1000, (1 << 20) + 3], ids=str)
def test_integer_sums_and_cross_entropy_mean(n):
    """A count of labels not ignored (an i64 sum, to one element) and cross-entropy's mean, exact /
    against float64."""
    t = torch.randint(-100, 50, (n,), device=CUDA)
    torch._dynamo.reset()
    count = tilefuse.compile(lambda t: (t != -100).sum())
    with torch.no_grad():
        assert count(t).item() == (t != -100).sum().item()
    x, labels = torch.randn(4096, 1000, device=CUDA), torch.randint(0, 1000, (4096,), device=CUDA)
    labels[::5] = -100
    torch._dynamo.reset()
    loss = tilefuse.compile(lambda x, t: F.cross_entropy(x, t))
    with torch.no_grad():
        out, ref = loss(x, labels), F.cross_entropy(x.double(), labels)
    assert abs(out.item() - ref.item()) < 1e-5 * abs(ref.item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tiling_pools(dtype):
    """Max and average pooling (tiling, overlapping, padded, dilated, ceil mode): kernels, as eager."""
    x = torch.randn(4, 16, 66, 65, device=CUDA, dtype=dtype)
    pools = (
        lambda x: F.max_pool2d(x, 2),
        lambda x: F.avg_pool2d(x, (3, 5)) * 2,
        lambda x: F.max_pool2d(x, 2, stride=2, padding=1, dilation=3),
        lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        lambda x: F.max_pool2d(x, 3, stride=1, padding=1),
    )
    for fn in pools:
        torch._dynamo.reset()
        compiled = tilefuse.compile(fn)
        with torch.no_grad():
            out, eager = compiled(x), fn(x)
        assert _groups(compiled) and all(g["kernel"] for g in _groups(compiled))
        torch.testing.assert_close(out, eager, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(4096, 2048), (3, 100003), (77, 4000)], ids=str)
def test_scans(shape, dtype):
    """cumsum/cumprod/reverse/masked scans as one scan kernel, against float64: within eager's error
    (the carry is f64 for f32 rows, f32 for 16-bit ones)."""
    x = torch.randn(*shape, device=CUDA, dtype=dtype)
    m = torch.rand(*shape, device=CUDA) > 0.5
    cases = {
        "cumsum": (lambda x, m: torch.cumsum(x, 1), lambda x, m: torch.cumsum(x, 1)),
        "reverse": (lambda x, m: torch.cumsum(x.flip(1), 1).flip(1), lambda x, m: torch.cumsum(x.flip(1), 1).flip(1)),
        "masked": (lambda x, m: torch.cumsum(x * m, 1), lambda x, m: torch.cumsum(x * m, 1)),
        "cumprod": (lambda x, m: torch.cumprod(1 + x / 1000, 1), lambda x, m: torch.cumprod(1 + x / 1000, 1)),
    }
    for name, (fn, ref_fn) in cases.items():
        torch._dynamo.reset()
        compiled = tilefuse.compile(fn)
        with torch.no_grad():
            out = compiled(x, m)
        assert [g["kind"] for g in _groups(compiled)] == ["scan"], (name, _groups(compiled))
        ref = ref_fn(x.double(), m).double()
        scale = ref.abs().max()
        err = ((out.double() - ref).abs().max() / scale).item()
        eager_err = ((fn(x, m).double() - ref).abs().max() / scale).item()
        assert err <= max(2 * eager_err, 1e-6), (name, err, eager_err)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_arg_and_prod_reductions(dtype):
    """argmax/argmin (ties: few distinct values) exact against eager; products against float64."""
    x = torch.randint(0, 5, (64, 512, 300), device=CUDA).to(dtype)
    for fn in (lambda x: torch.argmax(x, 1), lambda x: torch.argmin(x, -1), lambda x: torch.argmax(x, 0)):
        torch._dynamo.reset()
        compiled = tilefuse.compile(fn)
        with torch.no_grad():
            assert torch.equal(compiled(x), fn(x))
        assert all(g["kernel"] for g in _groups(compiled))
    y = 1 + torch.randn(64, 512, 300, device=CUDA, dtype=dtype) / 64
    torch._dynamo.reset()
    compiled = tilefuse.compile(lambda y: torch.prod(y, 1))
    with torch.no_grad():
        out = compiled(y)
    ref = torch.prod(y.double(), 1)
    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    eager = ((torch.prod(y, 1).double() - ref).abs().max() / ref.abs().max()).item()
    assert err <= max(2 * eager, 1e-6), (err, eager)


@pytest.mark.parametrize("m", [1, 16, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_k_projections(m, dtype):
    """Few output tiles over a deep K (decoding, short prompts): S partial GEMMs and a pointwise sum
    with the epilogue, against float64 (and as close as eager)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8192, 2048).to(CUDA, dtype)
    x, r = torch.randn(m, 8192, device=CUDA, dtype=dtype), torch.randn(m, 2048, device=CUDA, dtype=dtype)

    def fn(x, r):
        return torch.relu(lin(x)) + r

    compiled = tilefuse.compile(fn)
    with torch.no_grad():
        out, eager = compiled(x, r), fn(x, r)
        exact = torch.relu(x.double() @ lin.weight.double().T + lin.bias.double()) + r.double()
    assert rel_error(out, exact) <= 1.5 * rel_error(eager, exact) + 1e-6


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [16, 4])
def test_attention_with_sdpa_as_a_candidate(causal, kv_heads):
    """Attention measured against SDPA (cuDNN/FlashAttention on Hopper): whichever wins, eager's result."""
    torch.manual_seed(0)
    q = torch.randn(2, 16, 512, 128, device=CUDA, dtype=torch.bfloat16)
    k, v = (torch.randn(2, kv_heads, 512, 128, device=CUDA, dtype=torch.bfloat16) for _ in range(2))

    def attend(q, k, v):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    compiled = tilefuse.compile(attend)
    with torch.no_grad():
        out, eager = compiled(q, k, v), attend(q, k, v)
        exact = attend(q.double(), k.double(), v.double())
    choices = [c for r in compiled.tilefuse_reports for p in r["partitions"] for c in p.get("group_selection", [])]
    assert any("sdpa_ms" in c for c in choices), choices  # SDPA was built and measured
    assert rel_error(out, exact) <= 1.5 * rel_error(eager, exact) + 1e-6
