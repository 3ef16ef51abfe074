"""A `tile` GEMM kernel read as a CUTLASS problem (backends/cuda/gemm.py): operands, layouts, leaves, epilogue.

The kernels come from the real pipeline (compiled on the CPU and read back from the dump) and from
the hand-written fixture beside this test; what CUTLASS cannot take is refused with a reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.backends.cuda import CudaEmitError
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


def test_a_linear_layer_with_bias_gelu_and_residual(tmp_path):
    x, w, b, r = torch.randn(48, 64), torch.randn(96, 64), torch.randn(96), torch.randn(48, 96)
    (kernel,) = _kernels(lambda x, w, b, r: F.gelu(F.linear(x, w, b)) + r, x, w, b, r, tmp_path=tmp_path)
    problem = match_gemm(kernel)
    assert (problem.m, problem.n, problem.k) == (48, 96, 64)
    assert problem.a_row_major and problem.b_column_major  # x [M, K], the weight [N, K]
    assert sorted(leaf.kind for leaf in problem.leaves) == ["full", "row"]  # the residual and the bias
    body = "\n".join(problem.body)
    assert "erff(" in body and "leaf0" in body and "leaf1" in body and problem.result in body


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
