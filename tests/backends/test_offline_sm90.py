"""Generated kernels compiled for Hopper (sm_90) on a machine without a GPU (`backends/triton/offline`):
at the tile the heuristics give a model-sized problem (2048 tokens), a bf16 GEMM with a GELU or
residual epilogue and the 3xTF32 f32 GEMM use warp-group MMA (`wgmma`) and spill no register to local
memory (the 3xTF32 GEMM no more than the 16 bytes it spills today); nor do LayerNorm's row kernels. A spill or a lost `wgmma` is a slowdown the CPU suite can see
before a GPU does. The kernels come from small problems (the interpreter runs them); a kernel's code
does not depend on its sizes beyond the masks, which these sizes keep as at aligned model sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import gpu_sources, kernel_function, offline_usage
from tilefuse.autotune.heuristics import KernelConfig, default_config
from tilefuse.backends.triton.offline import OfflineCompileUnavailable, kernel_block, usage

PROJECTION = {"M": 2048, "N": 8192, "K": 2048, "elem_bytes": 2}  # an MLP's first GEMM at 4 x 512 tokens
EPILOGUES = {
    "gelu_tanh": (lambda x, w, b, r: F.gelu(F.linear(x, w, b), approximate="tanh"), 1),
    # the exact GELU's branch-free erfc: written from -x / sqrt 2 and its sign it spilled 632 bytes
    "gelu_erf": (lambda x, w, b, r: F.gelu(F.linear(x, w, b)), 1),
    "residual": (lambda x, w, b, r: F.linear(x, w, b) + r, 0),
}


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
def test_bf16_gemm_with_its_epilogue_uses_wgmma_and_spills_nothing(tmp_path, epilogue):
    fn, math_ops = EPILOGUES[epilogue]
    torch.manual_seed(0)
    x, w, b, r = (t.bfloat16() for t in (torch.randn(128, 128), torch.randn(256, 128), torch.randn(256),
                                         torch.randn(128, 256)))  # fmt: skip
    ((kind, source),) = gpu_sources(fn, (x, w, b, r), tmp_path)
    config = default_config("gemm", dict(PROJECTION, epilogue_math=math_ops))
    assert kind == "gemm" and config.params["BLOCK_M"] * config.params["BLOCK_N"] == 128 * 256
    used = offline_usage(source, config)
    assert used.wgmma, used
    assert used.stack_bytes == 0 and used.registers <= 255, (config.key(), used)


# SASS instructions an activation may add to each element of a bf16 GEMM's tile over the bias alone
# (BERT's FC1 tile, 128 x 256 at 8 warps: 128 elements a thread). On an H100 the epilogue of a
# 4096 x 1024 x 4096 GEMM cost ~0.7 us an instruction an element: the exact GELU from libdevice's erf
# (34) took 83.9 us, its erfc with Triton's exp and division (31) 80.3, the tanh form (17) 71.6, the
# GEMM alone 59.2. Measured with exp2 and the approximate reciprocal: exact GELU 20.6, tanh GELU 10.1,
# SiLU 7.1 (benchmarks/NOTES.md).
EPILOGUE_INSTRUCTIONS = {
    "gelu_erf": (lambda y: F.gelu(y), 22),
    "gelu_tanh": (lambda y: F.gelu(y, approximate="tanh"), 11),
    "silu": (F.silu, 8),
}
FC1_TILE = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8, "PROGRAMS": 65536}


@pytest.mark.parametrize("activation", list(EPILOGUE_INSTRUCTIONS))
def test_activation_epilogues_cost_few_instructions_an_element(tmp_path, activation):
    fn, most = EPILOGUE_INSTRUCTIONS[activation]
    torch.manual_seed(0)
    x, w, b = (t.bfloat16() for t in (torch.randn(128, 128), torch.randn(256, 128), torch.randn(256)))
    costs = []
    for i, f in enumerate((lambda x, w, b: F.linear(x, w, b), lambda x, w, b: fn(F.linear(x, w, b)))):
        ((kind, source),) = gpu_sources(f, (x, w, b), tmp_path / str(i))
        assert kind == "gemm"
        costs.append(offline_usage(source, KernelConfig(FC1_TILE, 8, 3)))
    bare, with_activation = costs
    per_element = (with_activation.instructions - bare.instructions) / (128 * 256 / (8 * 32))
    assert with_activation.stack_bytes == 0 and per_element <= most, (per_element, bare, with_activation)


@pytest.mark.parametrize("programs", [65536, 132])
def test_a_gemm_k_loop_of_sixteen_steps_stays_rolled_when_asked(tmp_path, monkeypatch, programs):
    """K = 1024 at BLOCK_K = 64: ptxas unrolls the 16-step loop (2.8 s of ptxas for BERT's FC1 against
    0.3 s rolled; ptx_loops). With TILEFUSE_PTX_NOUNROLL=1 the PTX of a kernel tilefuse loads tells
    it not to (the offline compile registers the kernel as a GPU's `load` does). With as many programs
    as SMs (a tuned persistent config) the K loop is nested in the loop over tiles: it is the K loop
    that gets the pragma."""
    monkeypatch.setenv("TILEFUSE_PTX_NOUNROLL", "1")
    torch.manual_seed(0)
    x, w, b = (t.bfloat16() for t in (torch.randn(2048, 1024), torch.randn(256, 1024), torch.randn(256)))
    ((kind, source),) = gpu_sources(lambda x, w, b: F.gelu(F.linear(x, w, b)), (x, w, b), tmp_path)
    used = offline_usage(source, KernelConfig(dict(FC1_TILE, PROGRAMS=programs), 8, 3))
    assert kind == "gemm" and used.wgmma and used.rolled_loops == 1, used


def test_f32_gemm_at_highest_precision_uses_wgmma_and_spills_nothing(tmp_path):
    torch.manual_seed(0)
    ((kind, source),) = gpu_sources(lambda x, w: torch.relu(x @ w), (torch.randn(128, 64), torch.randn(64, 128)),
                                     tmp_path)  # fmt: skip
    assert kind == "gemm" and "tf32x3" in source
    config = default_config("gemm", {"M": 2048, "N": 2048, "K": 2048, "elem_bytes": 4})
    used = offline_usage(source, config)
    # 16 bytes a thread at its 128x64x32, 4-warp tile today (three dots a K step and the operands'
    # split halves: 255 registers); the H200 sweep measured that tile the fastest of ten
    # (benchmarks/NOTES.md): more than that is a new spill
    assert used.wgmma and used.stack_bytes <= 16, (config.key(), used)


@pytest.mark.parametrize("width", [1024, 8192])
def test_layer_norm_row_kernel_spills_nothing(tmp_path, width):
    torch.manual_seed(0)
    x, g, b = torch.randn(4, width).bfloat16(), torch.randn(width).bfloat16(), torch.randn(width).bfloat16()
    ((kind, source),) = gpu_sources(lambda x, g, b: F.layer_norm(x, (width,), g, b), (x, g, b), tmp_path)
    config = default_config("row", {"R": 2048, "C": width})
    assert kind == "row"
    used = offline_usage(source, config)
    assert used.stack_bytes == 0, (config.key(), used)


def test_a_kernel_that_does_not_compile_says_why():
    broken = (
        "import triton\nimport triton.language as tl\nTENSOR_SHAPES = ((4,),)\nTENSOR_DTYPES = ('float32',)\n"
        "@triton.jit\ndef k(x_ptr, x_s0, BLOCK: tl.constexpr):\n    tl.store(x_ptr + tl.arange(0, BLOCK), undefined)\n"
    )
    with pytest.raises((RuntimeError, OfflineCompileUnavailable)) as e:
        usage(broken, "k", {"BLOCK": 4}, 4, 1)
    assert "undefined" in str(e.value) or isinstance(e.value, OfflineCompileUnavailable), e.value


def test_a_config_missing_a_parameter_is_named():
    """Every name of the kernel's PARAMS must be given (a GEMM's PROGRAMS too): the one missing is named,
    before anything compiles (it was a bare StopIteration from the launch's specialization)."""
    source = (
        "import triton\nimport triton.language as tl\nPARAMS = ('BLOCK', 'PROGRAMS')\nTENSOR_SHAPES = ((4,),)\n"
        "TENSOR_DTYPES = ('float32',)\n@triton.jit\ndef k(x_ptr, x_s0, BLOCK: tl.constexpr, PROGRAMS: tl.constexpr):\n"
        "    pass\n"
    )
    with pytest.raises(ValueError, match=r"params lacks \['PROGRAMS'\]"):
        usage(source, "k", {"BLOCK": 4}, 4, 1)


def test_the_kernel_named_is_compiled_from_a_listing_of_several(tmp_path):
    """`tilefuse opt --emit triton` prints every kernel of a dump; `usage` takes the named one's block
    (each kernel's TENSOR_SHAPES are module-level: compiled together, the last would win)."""
    torch.manual_seed(0)
    x, g, b = torch.randn(4, 96).bfloat16(), torch.randn(96).bfloat16(), torch.randn(96).bfloat16()
    kernels = gpu_sources(lambda x, g, b: torch.relu(F.layer_norm(x, (96,), g, b)) @ x.T, (x, g, b), tmp_path)
    assert len(kernels) >= 2, [k for k, _ in kernels]
    listing = "\n\n".join(source for _, source in kernels)
    first = kernels[0][1]
    assert kernel_block(listing, kernel_function(first)).strip() == first.strip()
    config = default_config(kernels[0][0], {"R": 4, "C": 96} if kernels[0][0] == "row" else {"M": 4, "N": 4, "K": 96})
    assert offline_usage(listing, config) == offline_usage(first, config)
    with pytest.raises(ValueError, match="no kernel"):
        kernel_block(listing, "not_a_kernel")


@pytest.mark.parametrize("tails", [False, True])
def test_kernels_reading_row_tails_compile_for_hopper(tmp_path, tails):
    """An LM head's kernels over an odd vocabulary (a GEMM reading its gradient's rows along M, the
    loss's row kernels reading the padded logits) compile for sm_90 with their ROW_TAILS switches off
    and on; the GEMM keeps its warp-group MMA and spills nothing either way."""
    torch.manual_seed(0)
    h, w = torch.randn(16, 64).bfloat16(), torch.randn(301, 64).bfloat16()
    g = torch.randn(16, 301).bfloat16()

    def fn(h, w, g):
        logits = h @ w.t()
        return torch.log_softmax(logits.float(), -1), g.t() @ h

    sources = gpu_sources(fn, (h, w, g), tmp_path)
    tailed = [(kind, source) for kind, source in sources if "ROW_TAILS_" in source]
    assert {kind for kind, _ in tailed} >= {"gemm", "row"}, [kind for kind, _ in sources]
    for kind, source in tailed:
        problem = {"M": 2048, "N": 1024, "K": 2048, "elem_bytes": 2} if kind == "gemm" else {"R": 2048, "C": 50257}
        config = default_config(kind, problem)
        flags = {f"ROW_TAILS_{i}": tails for i in range(8) if f"ROW_TAILS_{i}:" in source}
        used = offline_usage(source, KernelConfig({**config.params, **flags}, config.num_warps, config.num_stages))
        assert used.stack_bytes == 0, (kind, config.key(), used)
        if kind == "gemm":
            assert used.wgmma
