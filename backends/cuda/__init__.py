"""The CUDA C++ backend: `emit_cuda` writes a `tile` kernel as one `.cu` translation unit.

`emit_cuda(kernel, {"BLOCK_R": 16, "BLOCK_C": 128}, num_warps=8)` is pure
text work (no GPU, no nvcc). It covers pointwise, reduction and row kernels;
GEMM and attention kernels raise `CudaEmitError` and stay on Triton.
Building the source into a shared object and loading it on a GPU come later
(issue 15); `testing.build_on_cpu` runs emitted kernels on CPU threads, for
tests on machines without a GPU.
"""

from .emit import EMITTER_VERSION, SUPPORTED_KINDS, emit_cuda
from .scalar import CudaEmitError

__all__ = ["EMITTER_VERSION", "SUPPORTED_KINDS", "CudaEmitError", "emit_cuda"]
