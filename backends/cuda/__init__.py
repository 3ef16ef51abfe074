"""The CUDA C++ backend: `emit_cuda` writes a `tile` kernel as one `.cu` translation unit.

`emit_cuda(kernel, {"BLOCK_R": 16, "BLOCK_C": 128}, num_warps=8)` is pure
text work (no GPU, no nvcc). It covers pointwise, reduction and row kernels,
and GEMM kernels as CUTLASS SM90 GEMMs with their epilogue as an EVT
(`cutlass.py`, over `gemm.match_gemm`'s reading of the kernel); attention
kernels, and GEMMs CUTLASS cannot take, raise `CudaEmitError` and stay on Triton.
`build_shared_object` compiles a source with nvcc into a cached shared
object (`build_many` builds a batch on threads) and `load_cuda_kernel`
loads it with ctypes behind Triton's launcher interface (`kernel.bind(...)`
returns `launch(stream, *args)`); `testing.build_on_cpu` runs emitted
kernels on CPU threads, for tests on machines without a GPU.
"""

from .build import BuildResult, CudaBuildError, build_many, build_shared_object
from .emit import EMITTER_VERSION, SUPPORTED_KINDS, emit_cuda, emit_cuda_or_reason
from .launcher import CudaKernel, CudaLaunchError, load_cuda_kernel
from .scalar import CudaEmitError

__all__ = [
    "EMITTER_VERSION", "SUPPORTED_KINDS", "BuildResult", "CudaBuildError", "CudaEmitError", "CudaKernel",
    "CudaLaunchError", "build_many", "build_shared_object", "emit_cuda", "emit_cuda_or_reason",
    "load_cuda_kernel",
]  # fmt: skip
