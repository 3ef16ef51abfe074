"""The Triton backend on hand-written `tile` kernels: Triton's interpreter on CPU, compiled on a GPU.

Each fixture kernel (*.mlir beside this file) is emitted, loaded and launched
for several tile configurations and compared with PyTorch on random data;
the emitted source and the error paths are checked as text. With CUDA the
same tests run the compiled kernels on the GPU.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tilefuse.backends.triton import (
    EmitError,
    LaunchError,
    TritonKernel,
    TritonOptions,
    emit,
    evaluate_grid,
    load,
)
from tilefuse.ir import parse_module
from tilefuse.ir.tile import KernelOp

HERE = Path(__file__).parent
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# a GPU's options, less what Triton's interpreter lacks (libdevice, inline PTX) where the kernels run in it
GPU_OPTIONS = TritonOptions(libdevice=DEVICE == "cuda", approx_reciprocal=DEVICE == "cuda")

# the interpreter computes with numpy, which warns on inf/nan arithmetic that the special values exercise
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def fixture_text(name: str, **substitutions: str) -> str:
    text = (HERE / name).read_text()
    for key, value in substitutions.items():
        text = text.replace(f"__{key}__", value)
    return text


def parse_kernel(text: str) -> KernelOp:
    (kernel,) = parse_module(text).body.block.ops
    return kernel


def launch(kernel: TritonKernel, tensors: list[torch.Tensor], config: dict[str, int]) -> list[torch.Tensor]:
    """Run `kernel` on DEVICE copies of `tensors`; returns them all (outputs included) on the CPU."""
    on_device = [t.to(DEVICE) for t in tensors]
    kernel(on_device, config)
    return [t.cpu() for t in on_device]


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """Emit and load a kernel from MLIR text, writing sources to a private cache folder."""
    cache = tmp_path_factory.mktemp("triton_cache")

    def build(text: str, options: TritonOptions | None = None) -> TritonKernel:
        kernel = parse_kernel(text)
        return load(emit(kernel, options or GPU_OPTIONS), kernel.sym_name.data, cache_dir=cache)

    return build


GEMM_CONFIGS = [
    {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 1},
    {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2},
    {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 32, "GROUP_M": 3},
    {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8},
]


@pytest.mark.parametrize("config", GEMM_CONFIGS, ids=lambda c: "x".join(str(v) for v in c.values()))
def test_gemm_bias_gelu_matches_torch(build, config):
    kernel = build(fixture_text("gemm_bias_gelu.mlir"))
    x, w, bias = torch.randn(33, 17), torch.randn(17, 65), torch.randn(65)
    *_, out = launch(kernel, [x, w, bias, torch.full((33, 65), float("nan"))], config)
    expected = F.gelu(x @ w + bias, approximate="tanh")
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_gemm_reads_views_through_strides(build):
    kernel = build(fixture_text("gemm_bias_gelu.mlir"))
    x, w, bias = torch.randn(17, 33).t(), torch.randn(65, 17).t(), torch.randn(2, 65)[1]
    *_, out = launch(kernel, [x, w, bias, torch.empty(33, 65)], GEMM_CONFIGS[1])
    torch.testing.assert_close(out, F.gelu(x @ w + bias, approximate="tanh"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("blocks", [(16, 16, 16), (32, 32, 32), (64, 16, 16)], ids=str)
def test_half_precision_linear_relu(build, dtype, blocks):
    text = fixture_text("linear_relu_f16.mlir")
    if dtype == torch.bfloat16:  # the interpreter's bf16 dot is wrong unless upcast (DESIGN.md)
        text = text.replace("f16", "bf16")
    kernel = build(text, TritonOptions.for_interpreter() if dtype == torch.bfloat16 else GPU_OPTIONS)
    x, w, scale = torch.randn(21, 40).to(dtype), torch.randn(24, 40).to(dtype), torch.tensor([0.75])
    config = dict(zip(("BLOCK_M", "BLOCK_N", "BLOCK_K"), blocks))
    *_, out = launch(kernel, [x, w, scale, torch.empty(21, 24, dtype=dtype)], config)
    expected = torch.relu(0.75 * (x.float() @ w.float().t())).to(dtype)
    torch.testing.assert_close(out, expected, rtol=1e-2, atol=1e-2)


# without round_bf16_casts only the GPU rounds f32 -> bf16 to nearest even; the interpreter truncates
BF16_CAST_OPTIONS = [TritonOptions.for_interpreter()] + ([GPU_OPTIONS] if DEVICE == "cuda" else [])


@pytest.mark.parametrize("options", BF16_CAST_OPTIONS, ids=lambda o: o.key())
def test_bf16_conversion_rounds_to_nearest_even(build, options):
    kernel = build(fixture_text("round_to_bf16.mlir"), options)
    ties = 1 + torch.arange(8) * 2.0**-8  # halfway cases between bf16 neighbours, both parities
    special = torch.tensor([math.inf, -math.inf, math.nan, 3.4e38, -3.4e38, 1e-40, -0.0])
    x = torch.cat([ties, -ties, special, torch.randn(1000 - 2 * len(ties) - len(special)) * 100])
    _, out = launch(kernel, [x, torch.empty(1000, dtype=torch.bfloat16)], {"BLOCK": 256})
    torch.testing.assert_close(out, x.to(torch.bfloat16), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("block", [16, 64, 256])
def test_pointwise_with_broadcasting(build, block):
    kernel = build(fixture_text("pointwise_broadcast.mlir"))
    x, y, s = torch.randn(5, 37).half(), torch.randn(37), torch.randn(5, 1)
    *_, out = launch(kernel, [x, y, s, torch.empty(5, 37)], {"BLOCK": block})
    a = x.float()
    picked = torch.where(a > y, torch.tanh(a) * y, torch.log1p(torch.exp(y - a)))
    total = torch.maximum(picked, s) + a.abs() ** 1.5 + a.abs().sqrt()
    expected = -(total / torch.exp(x).float())
    torch.testing.assert_close(out, expected, rtol=1e-3, atol=1e-3)  # exp(x) is rounded to f16


@pytest.mark.parametrize("block_m", [1, 2, 8])
def test_row_statistics(build, block_m):
    kernel = build(fixture_text("row_stats.mlir"))
    x = torch.randn(7, 33) * 3
    x[3, 5] = float("nan")
    outputs = [torch.empty(7, 33), torch.empty(7), torch.empty(7), torch.empty(7, dtype=torch.float16)]
    _, copy, sums, maxes, mins = launch(kernel, [x, *outputs], {"BLOCK_M": block_m, "BLOCK_N": 64})
    torch.testing.assert_close(copy, x, equal_nan=True)
    torch.testing.assert_close(sums, x.sum(1), equal_nan=True)
    torch.testing.assert_close(maxes, x.amax(1), equal_nan=True)
    torch.testing.assert_close(mins, x.half().amin(1), equal_nan=True)


@pytest.mark.parametrize("block", [32, 128])
def test_signed_division_truncates(build, block):
    kernel = build(fixture_text("signed_division.mlir"))
    outputs = [torch.empty(100, dtype=torch.int32) for _ in range(2)]
    quotients, remainders = launch(kernel, outputs, {"BLOCK": block})
    v = torch.arange(100, dtype=torch.int32) - 50
    scalar_quotient, scalar_remainder, constant_tile = -3, -1, 1  # -7 / 2, -7 % 2 (truncating), a map of 1
    torch.testing.assert_close(quotients, torch.div(v, 7, rounding_mode="trunc") + scalar_quotient)
    torch.testing.assert_close(remainders, torch.fmod(v, -3) + scalar_remainder + constant_tile)


SPECIAL = [
    -math.inf,
    -100.0,
    -10.5,
    -2.5,
    -1.0,
    -0.5,
    -1e-6,
    0.0,
    1e-7,
    3e-4,
    0.5,
    1.5,
    2.5,
    10.5,
    88.0,
    math.inf,
    math.nan,
]
UNARY = {
    "math.tanh": torch.tanh, "math.log1p": torch.log1p, "math.expm1": torch.expm1, "math.roundeven": torch.round,
    "math.erf": torch.erf, "math.exp": torch.exp, "math.exp2": torch.exp2, "math.log": torch.log,
    "math.log2": torch.log2, "math.sqrt": torch.sqrt, "math.rsqrt": torch.rsqrt, "math.absf": torch.abs,
    "math.floor": torch.floor, "math.ceil": torch.ceil, "math.sin": torch.sin, "math.cos": torch.cos,
    "arith.negf": torch.neg,
}  # fmt: skip
BINARY = {
    "math.powf": torch.pow, "arith.maximumf": torch.maximum, "arith.minimumf": torch.minimum,
    "arith.divf": torch.div, "arith.subf": torch.sub,
}  # fmt: skip


def run_elementwise(build, op: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    kernel = build(fixture_text("elementwise_template.mlir", OP=op, N=str(x.numel())))
    *_, out = launch(kernel, [x, y, torch.empty_like(x)], {"BLOCK": 64})
    return out


@pytest.mark.parametrize("op", UNARY)
def test_unary_math_on_special_values(build, op):
    x = torch.cat([torch.tensor(SPECIAL), torch.randn(47) * 4, torch.linspace(-3, 3, 13)])
    actual = run_elementwise(build, f"{op} %a", x, x)
    torch.testing.assert_close(actual, UNARY[op](x), rtol=2e-6, atol=1e-6, equal_nan=True)


@pytest.mark.parametrize("op", BINARY)
def test_binary_math_on_special_values(build, op):
    values = torch.tensor([-math.inf, -3.0, -2.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, math.inf, math.nan])
    x, y = (t.reshape(-1) for t in torch.meshgrid(values, values, indexing="ij"))
    x, y = torch.cat([x, torch.rand(30) * 5]), torch.cat([y, torch.randn(30) * 3])
    actual = run_elementwise(build, f"{op} %a, %b", x, y)
    torch.testing.assert_close(actual, BINARY[op](x, y), rtol=1e-5, atol=1e-6, equal_nan=True)


def test_emitted_gemm_source_is_readable_python():
    source = emit(parse_kernel(fixture_text("gemm_bias_gelu.mlir")), TritonOptions())
    ast.parse(source)
    for expected in [
        '# tilefuse kernel "gemm_bias_gelu" (gemm)',
        "@triton.jit",
        "def gemm_bias_gelu(",
        "    x_ptr, x_s0, x_s1,",
        "BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,",
        "pid = tl.program_id(0)",
        "group_rows = tl.minimum(tiles_m - first_row, GROUP_M)",
        "for kt in range(0, tiles_k, 1):",
        "acc = zero",
        'acc = tl.dot(a, b, acc, input_precision="tf32x3")',  # f32 at "highest" in a GEMM: 3xTF32
        "a = tl.load(x_ptr + r2 * x_s0 + k_cols * x_s1, mask=(r2 < 33) & (k_cols < 17), other=0)",
        "tl.store(out_ptr + r2 * out_s0 + c2 * out_s1, y, mask=(r2 < 33) & (c2 < 65))",
        "GRID = ('cdiv(33, BLOCK_M) * cdiv(65, BLOCK_N)',)",
    ]:
        assert expected in source, f"{expected!r} not in\n{source}"


def test_dot_precision_follows_the_op_and_options():
    gemm = fixture_text("gemm_bias_gelu.mlir").replace(
        "tile.dot %a, %b, %partial :", 'tile.dot %a, %b, %partial {tf32 = "allowed"} :'
    )
    assert 'input_precision="tf32"' in emit(parse_kernel(gemm), TritonOptions())
    exact = parse_kernel(fixture_text("gemm_bias_gelu.mlir"))
    assert 'input_precision="tf32x3"' in emit(exact, TritonOptions())  # "auto": 3xTF32 in GEMMs
    not_gemm = parse_kernel(fixture_text("gemm_bias_gelu.mlir").replace('kind "gemm"', 'kind "attention"'))
    assert 'input_precision="ieee"' in emit(not_gemm, TritonOptions())  # exact elsewhere
    assert 'input_precision="ieee"' in emit(exact, TritonOptions(exact_f32_dots="ieee"))
    assert 'input_precision="tf32x3"' in emit(not_gemm, TritonOptions(exact_f32_dots="tf32x3"))
    assert 'input_precision="ieee"' in emit(exact, TritonOptions.for_interpreter())
    bf16 = parse_kernel(fixture_text("linear_relu_f16.mlir").replace("f16", "bf16"))
    assert "acc = tl.dot(a, b, acc)" in emit(bf16, TritonOptions())
    upcast = 'acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")'
    assert upcast in emit(bf16, TritonOptions(upcast_bf16_dots=True))


def test_options_are_hashable_and_keyed():
    variants = [TritonOptions(), TritonOptions(upcast_bf16_dots=True), TritonOptions.for_interpreter()]
    assert TritonOptions() == TritonOptions(upcast_bf16_dots=False, round_bf16_casts=False)
    assert len(set(variants)) == len({o.key() for o in variants}) == 3


def test_unsupported_op_names_the_op():
    kernel = parse_kernel(fixture_text("elementwise_template.mlir", OP="math.atan %a", N="8"))
    with pytest.raises(EmitError, match="no Triton lowering for math.atan"):
        emit(kernel, TritonOptions())


def test_kernel_name_becomes_an_identifier(build):
    text = fixture_text("elementwise_template.mlir", OP="arith.addf %a, %b", N="8")
    kernel = build(text.replace('"elementwise"', '"graph.k-0"'))
    assert kernel.name == "graph_k_0"
    x, y, out = launch(kernel, [torch.randn(8), torch.randn(8), torch.empty(8)], {"BLOCK": 16})
    torch.testing.assert_close(out, x + y)


def test_grid_expressions_are_evaluated_safely():
    params = {"BLOCK_M": 16, "BLOCK_N": 32}
    assert evaluate_grid("cdiv(33, BLOCK_M) * cdiv(65, BLOCK_N)", params) == 9
    assert evaluate_grid("max(1, min(BLOCK_M, 4) - 2 // 2)", params) == 3
    for bad in ["__import__('os').getcwd()", "BLOCK_M.bit_length()", "UNKNOWN", "1 +", "'a' * 3"]:
        with pytest.raises(LaunchError):
            evaluate_grid(bad, params)


def test_launch_checks_tensors_and_config(build):
    kernel = build(fixture_text("elementwise_template.mlir", OP="arith.addf %a, %b", N="8"))
    x = torch.randn(8, device=DEVICE)
    with pytest.raises(LaunchError, match="config"):
        kernel([x, x, x], {"BLOCK": 16, "BLOCK_K": 16})
    with pytest.raises(LaunchError, match="tensor 2"):
        kernel([x, x, torch.empty(9, device=DEVICE)], {"BLOCK": 16})
    with pytest.raises(LaunchError, match="takes 3 tensors"):
        kernel([x, x], {"BLOCK": 16})


def test_a_division_marked_afn_is_the_approximate_reciprocal_on_a_gpu_and_a_division_elsewhere(build):
    """`fastmath<afn>` (ScalarBuilder.approx_reciprocal, tilefuse's own 1 / (1 + ...)) becomes PTX's
    rcp.approx for a GPU; a division without the flag (the user's) stays Triton's `/`; the interpreter
    divides. The interpreted kernel computes a / b."""
    afn = "arith.divf %a, %b fastmath<afn>"
    approx = parse_kernel(fixture_text("elementwise_template.mlir", OP=afn, N="8"))
    plain = parse_kernel(fixture_text("elementwise_template.mlir", OP="arith.divf %a, %b", N="8"))
    gpu, interpreted = emit(approx, TritonOptions()), emit(approx, TritonOptions.for_interpreter())
    assert '"rcp.approx.ftz.f32 $0, $1;"' in gpu and " * tl.inline_asm_elementwise(" in gpu
    assert "inline_asm" not in interpreted and "inline_asm" not in emit(plain, TritonOptions())
    ast.parse(gpu)
    kernel = build(fixture_text("elementwise_template.mlir", OP=afn, N="37"))
    x, y = torch.randn(37, device=DEVICE), torch.rand(37, device=DEVICE) + 1.0
    out = torch.empty(37, device=DEVICE)
    kernel([x, y, out], {"BLOCK": 16})
    torch.testing.assert_close(out, x / y, rtol=2.4e-7, atol=0)  # within 2 ulp of IEEE division


def test_tanh_comes_from_libdevice_on_a_gpu_and_from_a_formula_in_the_interpreter():
    kernel = parse_kernel(fixture_text("elementwise_template.mlir", OP="math.tanh %a", N="8"))
    gpu, interpreted = emit(kernel, TritonOptions()), emit(kernel, TritonOptions.for_interpreter())
    assert "from triton.language.extra import libdevice" in gpu and "libdevice.tanh(" in gpu
    assert "libdevice" not in interpreted and "tl.exp(" in interpreted
    ast.parse(gpu)
