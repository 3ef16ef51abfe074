"""GEMM kernels as CUTLASS GEMMs: the `tile` kernel read as a problem (backends/cuda/gemm.py: operands,
layouts, leaves, epilogue) and written as a CUTLASS SM90 translation unit (backends/cuda/cutlass.py).

The kernels come from the real pipeline (compiled on the CPU and read back from the dump) and from
the hand-written fixture beside this test; what CUTLASS cannot take is refused with a reason. The
emitted source is compared with a golden file and built by nvcc (compile-only: no GPU here); GPU
parity tests are in tests/gpu/test_cuda_backend_gpu.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.backends.cuda import CudaEmitError, build_shared_object, emit_cuda
from tilefuse.backends.cuda.cutlass import SCHEDULE_ENV, Schedule, cutlass_include, schedule_for
from tilefuse.backends.cuda.gemm import match_gemm
from tilefuse.ir import parse_module

HERE = Path(__file__).parent


def _kernels(fn, *args, tmp_path) -> list:
    torch._dynamo.reset()
    tilefuse.compile(fn, dump=tmp_path)(*args)
    kernels = []
    for path in sorted(tmp_path.glob("*/tile.mlir")):
        kernels += list(parse_module(path.read_text()).body.block.ops)
    return kernels


def _config(tmp_path, kernel) -> dict[str, int]:
    """The tile parameters the pipeline chose for `kernel` (from the dump's summary)."""
    (summary,) = tmp_path.glob("*/summary.json")
    groups = [g for p in json.loads(summary.read_text())["partitions"] for g in p["groups"]]
    key = next(g["config"] for g in groups if g["kernel"] == kernel.sym_name.data)
    return {k: int(v) for k, v in (item.split("=") for item in key.split(",")) if k not in ("w", "s")}


def _linear_gelu_residual(tmp_path):
    """A bf16 linear layer with bias, erf GELU and a residual, 16-byte aligned rows: a CUTLASS problem."""
    x, w, b, r = (t.bfloat16() for t in (torch.randn(48, 64), torch.randn(96, 64), torch.randn(96),
                                         torch.randn(48, 96)))  # fmt: skip
    (kernel,) = _kernels(lambda x, w, b, r: F.gelu(F.linear(x, w, b)) + r, x, w, b, r, tmp_path=tmp_path)
    return kernel, _config(tmp_path, kernel)


def test_a_linear_layer_with_bias_gelu_and_residual(tmp_path):
    x, w, b, r = torch.randn(48, 64), torch.randn(96, 64), torch.randn(96), torch.randn(48, 96)
    (kernel,) = _kernels(lambda x, w, b, r: F.gelu(F.linear(x, w, b)) + r, x, w, b, r, tmp_path=tmp_path)
    problem = match_gemm(kernel)
    assert (problem.m, problem.n, problem.k) == (48, 96, 64)
    assert problem.a_row_major and problem.b_column_major  # x [M, K], the weight [N, K]
    assert sorted(leaf.kind for leaf in problem.leaves) == ["full", "row"]  # the residual and the bias
    body = "\n".join(problem.body)
    assert "exp2_approx(" in body and "rcp_approx(" in body  # the GELU's erfc
    assert "leaf0" in body and "leaf1" in body and problem.result in body


def test_the_fixture_reads_its_weight_as_k_by_n(tmp_path):
    (kernel,) = parse_module((HERE / "gemm_bias_gelu.mlir").read_text()).body.block.ops
    problem = match_gemm(kernel)
    assert (problem.m, problem.n, problem.k) == (33, 65, 17)
    assert problem.a_row_major and not problem.b_column_major and [leaf.kind for leaf in problem.leaves] == ["row"]
    assert "tanhf(" in "\n".join(problem.body)


@pytest.mark.parametrize(
    "case",
    ["batched", "attention", "pointwise"],
)
def test_what_cutlass_does_not_take_is_refused_with_a_reason(tmp_path, case):
    if case == "batched":
        fn, args = (lambda a, b: torch.relu(a @ b)), (torch.randn(3, 16, 32), torch.randn(3, 32, 24))
    elif case == "attention":
        q = torch.randn(1, 2, 32, 16)
        fn, args = (lambda q, k, v: F.scaled_dot_product_attention(q, k, v)), (q, q.clone(), q.clone())
    else:
        fn, args = (lambda x: torch.sigmoid(x) * 2.0), (torch.randn(64),)
    kernels = _kernels(fn, *args, tmp_path=tmp_path)
    assert kernels
    for kernel in kernels:
        with pytest.raises(CudaEmitError) as error:
            match_gemm(kernel)
        assert str(error.value)


GOLDEN = HERE / "gemm_cutlass.cu"


def test_the_emitted_cutlass_gemm_matches_its_golden_file(tmp_path):
    """The CUTLASS translation unit of a linear layer + bias + GELU + residual, compared with the golden
    file beside this test. After an intended change, regenerate it with
    `TILEFUSE_REGENERATE_GOLDEN=1 python -m pytest tests/backends/test_cuda_gemm.py -k golden` and review
    the diff."""
    kernel, config = _linear_gelu_residual(tmp_path)
    source = emit_cuda(kernel, config, 8)
    assert "fus::Sm90EVT<Node, fus::Sm90AccFetch, Leaf0, Leaf1>" in source and "exp_approx(" in source
    assert f'extern "C" int launch_{kernel.sym_name.data}(void* stream, const void* t0, int64_t t0_s0' in source
    if os.environ.get("TILEFUSE_REGENERATE_GOLDEN") == "1":
        GOLDEN.write_text(source)
    assert source == GOLDEN.read_text()


def test_an_unaligned_or_f32_gemm_is_not_given_to_cutlass(tmp_path):
    ragged = _kernels(lambda x, w: F.linear(x, w), torch.randn(8, 17).bfloat16(), torch.randn(24, 17).bfloat16(),
                      tmp_path=tmp_path / "ragged")  # fmt: skip
    with pytest.raises(CudaEmitError, match="multiples of 8"):
        emit_cuda(ragged[0], {"BLOCK_N": 128}, 4)
    f32 = _kernels(lambda x, w: F.linear(x, w), torch.randn(8, 16), torch.randn(24, 16), tmp_path=tmp_path / "f32")
    with pytest.raises(CudaEmitError, match="f16 and bf16"):
        emit_cuda(f32[0], {"BLOCK_N": 128}, 4)


def test_a_gemm_schedule_follows_its_shape_and_the_experiment_switch(tmp_path, monkeypatch):
    """Large problems take a 128 x 256 tile in clusters of two along M (the H200's fastest of seven
    schedules); a narrow N keeps the config's tile, a single row of tiles no cluster. `TILEFUSE_CUTLASS`
    overrides fields, and the emitted GEMM is written with them; a field that does not exist is refused."""
    monkeypatch.delenv(SCHEDULE_ENV, raising=False)
    assert schedule_for({"BLOCK_N": 128}, 4096, 4096) == Schedule(tile_n=256, cluster_m=2)
    assert schedule_for({"BLOCK_N": 64}, 77, 136) == Schedule(tile_n=64, cluster_m=1)
    kernel, config = _linear_gelu_residual(tmp_path)
    pingpong = '{"kernel": "pingpong", "cluster_n": 2, "swizzle": 4, "raster": "AlongM"}'
    monkeypatch.setenv(SCHEDULE_ENV, pingpong)
    source = emit_cuda(kernel, config, 8)
    assert "cutlass::gemm::KernelTmaWarpSpecializedPingpong>::CollectiveOp;" in source
    assert "using EpilogueSchedule = cutlass::epilogue::TmaWarpSpecialized;" in source
    assert "using ClusterShape = Shape<_1, _2, _1>;" in source
    assert "args.scheduler.max_swizzle_size = 4;" in source and "RasterOrderOptions::AlongM;" in source
    assert "StageCountAutoCarveout<" in source and "EpilogueTileAuto, void," in source
    assert "cutlass::gemm::PersistentScheduler>;" in source
    monkeypatch.setenv(SCHEDULE_ENV, '{"stages": 3, "epilogue_tile": "64x32", "scheduler": "streamk"}')
    source = emit_cuda(kernel, config, 8)
    assert "cutlass::gemm::collective::StageCount<3>," in source and "StageCountAutoCarveout" not in source
    assert source.count("Shape<_64, _32>") == 2 and "EpilogueTileAuto" not in source
    assert "cutlass::gemm::StreamKScheduler>;" in source
    for bad, reason in [('{"tiles": 2}', "no schedule field"), ('{"tile_m": 64}', "tile_m >= 128"),
                        ('{"cluster_m": 2, "cluster_n": 2}', "1x1, 2x1 or 1x2"), ('{"stages": 1}', "2-8"),
                        ('{"stages": 5, "tile_n": 256}', "240 KB of shared memory"),
                        ('{"epilogue_tile": "48x32"}', "or MxN"), ('{"scheduler": "streamk", "kernel": "pingpong",'
                        ' "tile_m": 64}', "no stream-K")]:  # fmt: skip
        monkeypatch.setenv(SCHEDULE_ENV, bad)
        with pytest.raises(CudaEmitError, match=reason):
            emit_cuda(kernel, config, 8)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.skipif(cutlass_include() is None, reason="the nvidia-cutlass wheel (its headers) is not installed")
def test_the_cutlass_gemm_builds_with_nvcc_for_sm90a(tmp_path, monkeypatch):
    """Compile-only: the GEMM + epilogue with the schedule large problems take (a 128 x 256 tile,
    clusters of two along M) builds into a shared object exporting its launcher (nvcc with CUTLASS's
    flags; a minute of template instantiation on two cores). The golden source differs from it in the
    schedule's constants only (compared as text above); building both took two minutes of the suite."""
    monkeypatch.setenv(SCHEDULE_ENV, '{"tile_n": 256, "cluster_m": 2}')
    kernel, config = _linear_gelu_residual(tmp_path)
    built = build_shared_object(emit_cuda(kernel, config, 8), kernel.sym_name.data, cache_dir=tmp_path / "so")
    assert built.path.exists() and not built.cached
    symbols = built.path.read_bytes()
    assert f"launch_{kernel.sym_name.data}".encode() in symbols


def test_a_linear_layer_on_batch_and_tokens_collapses_them_into_m(tmp_path):
    """[batch, tokens, features] activations (every transformer's linear layers): batch and tokens are
    one M dim for CUTLASS. F.linear's reshape of them is the program's (a torch view: the kernel reads
    a 2-d operand); a product of the 3-d tensor itself has them collapsed by the kernel, their strides
    checked to nest at launch; a norm's per-row statistic ([batch, tokens, 1], read by a scalar
    index) is a column leaf."""
    x, w, b, r = (t.bfloat16() for t in (torch.randn(2, 24, 64), torch.randn(96, 64), torch.randn(96),
                                         torch.randn(2, 24, 96)))  # fmt: skip
    kernels = _kernels(lambda x, w, b, r: F.gelu(F.linear(x, w, b)) + r, x, w, b, r, tmp_path=tmp_path)
    kernel = next(k for k in kernels if k.kind.data == "gemm")
    problem = match_gemm(kernel)
    assert (problem.m, problem.n, problem.k) == (48, 96, 64) and problem.a.axes == ((0,), (1,))
    assert "row" in [leaf.kind for leaf in problem.leaves]  # the bias
    source = emit_cuda(kernel, _config(tmp_path, kernel), 8)
    assert "args.problem_shape = {48, 96, 64, 1};" in source
    kernels = _kernels(lambda x, w, r: F.gelu(x @ w.t()) + r, x, w, r, tmp_path=tmp_path / "matmul")
    kernel = next(k for k in kernels if k.kind.data == "gemm")
    problem = match_gemm(kernel)
    assert (problem.m, problem.n, problem.k) == (48, 96, 64) and problem.a.axes == ((0, 1), (2,))
    source = emit_cuda(kernel, _config(tmp_path / "matmul", kernel), 8)
    assert "t0_s0 != t0_s1 * 24" in source and "args.problem_shape = {48, 96, 64, 1};" in source

    def rms_linear(x, w):
        return F.linear(x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype), w)

    kernels = _kernels(rms_linear, x, w, tmp_path=tmp_path / "rms")
    gemms = [k for k in kernels if k.kind.data == "gemm"]
    assert gemms
    for gemm in gemms:  # the norm folded into the GEMM reads its row statistic per row
        kinds = [leaf.kind for leaf in match_gemm(gemm).leaves]
        assert "column" in kinds or not kinds, kinds
