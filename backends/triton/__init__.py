"""The Triton backend: `emit` writes a `tile` kernel as Triton source, `load` makes it launchable.

`emit(kernel, TritonOptions())` is pure text work (no GPU, safe in worker
processes); `load(source, kernel.sym_name.data)` imports the source (under
Triton's interpreter without CUDA) and returns a `TritonKernel`, launched as
`kernel(tensors, {"BLOCK_M": 64, ...}, num_warps=4, num_stages=3)`.
"""

from .emit import EMITTER_VERSION, EmitError, TritonOptions, emit
from .launcher import LaunchError, TritonKernel, evaluate_grid, load

__all__ = [
    "EMITTER_VERSION",
    "EmitError",
    "LaunchError",
    "TritonKernel",
    "TritonOptions",
    "emit",
    "evaluate_grid",
    "load",
]
