"""Loading a built CUDA kernel with ctypes and launching it like a Triton kernel.

The emitted source ends in `extern "C" int launch_<name>(void* stream,
<per tensor: pointer, then int64_t strides>)`, which launches over a
literal grid and returns `cudaGetLastError()`. `CudaKernel.bind` returns a
`CudaBoundLaunch` called as `launch(stream, *args)` with the arguments a
generated program passes Triton's `BoundLaunch` (each tensor, then its
strides), so the runtime does not care which backend made a kernel. The C
argument types are read from the launcher's signature once, at load; a
nonzero return becomes `CudaLaunchError` with the runtime's description.

The source is specialized to one config and warp count (they are literals
in it), so `bind` only checks that it is asked for the ones it was built for.
`CudaKernel.from_library` wraps any library exposing the launcher, such as
the CPU emulation of `testing.build_on_cpu`, so the same interface is
tested on machines without a GPU.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..triton.launcher import LaunchError, check_index_range
from .build import BuildResult, build_shared_object

_POINTER = re.compile(r"\*\s*\w+$")


class CudaLaunchError(LaunchError):
    """A CUDA kernel's launcher returned a nonzero cudaError_t (`code`)."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


@functools.cache
def _cudart() -> ctypes.CDLL | None:
    # the kernels link cudart statically and do not export it; the shared one has the same codes
    for name in (ctypes.util.find_library("cudart"), "libcudart.so", "/usr/local/cuda/lib64/libcudart.so"):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    return None


def error_string(code: int) -> str:
    """`cudaGetErrorString(code)`, or a placeholder where no libcudart can be loaded."""
    cudart = _cudart()
    if cudart is None:
        return "(libcudart not loadable: no description)"
    cudart.cudaGetErrorString.restype = ctypes.c_char_p
    cudart.cudaGetErrorString.argtypes = [ctypes.c_int]
    return cudart.cudaGetErrorString(code).decode()


def current_stream() -> int:
    """PyTorch's current CUDA stream handle, or 0 (the default stream) without CUDA."""
    return torch.cuda.current_stream().cuda_stream if torch.cuda.is_available() else 0


def launcher_argtypes(source: str, kernel_name: str) -> list[type]:
    """The ctypes types of `launch_<kernel_name>`'s parameters, read from its signature in `source`."""
    match = re.search(rf'extern "C" int launch_{re.escape(kernel_name)}\(([^)]*)\)', source)
    if match is None:
        raise LaunchError(f'no launcher `extern "C" int launch_{kernel_name}(...)` in the source')
    params = [p.strip() for p in match.group(1).split(",")]
    return [ctypes.c_void_p if _POINTER.search(p) else ctypes.c_int64 for p in params]


@dataclass
class CudaKernel:
    """A loaded kernel library and its launcher, for the config and warp count its source was built for."""

    name: str
    library: ctypes.CDLL
    config: dict[str, int]
    num_warps: int
    argtypes: list[type]
    build: BuildResult | None = None

    @classmethod
    def from_library(
        cls, library: ctypes.CDLL, source: str, kernel_name: str, config: Mapping[str, int], num_warps: int,
        build: BuildResult | None = None,
    ) -> CudaKernel:  # fmt: skip
        """Wrap `library`'s `launch_<kernel_name>`, setting its ctypes signature from `source`."""
        argtypes = launcher_argtypes(source, kernel_name)
        function = getattr(library, f"launch_{kernel_name}")
        function.argtypes, function.restype = argtypes, ctypes.c_int
        return cls(kernel_name, library, dict(config), num_warps, argtypes, build)

    def bind(self, config: Mapping[str, int], num_warps: int = 4, num_stages: int = 1) -> CudaBoundLaunch:
        """The launch callable; the config and warps must be those of the source (num_stages is unused)."""
        if dict(config) != self.config or num_warps != self.num_warps:
            raise LaunchError(
                f"{self.name}: built for {self.config} with {self.num_warps} warps, "
                f"asked for {dict(config)} with {num_warps}"
            )
        return CudaBoundLaunch(self)


class CudaBoundLaunch:
    """`launch(stream, *args)`: args are each tensor then its strides, as for Triton's BoundLaunch."""

    def __init__(self, kernel: CudaKernel):
        self.kernel = kernel
        self.function = getattr(kernel.library, f"launch_{kernel.name}")
        self.arity = len(kernel.argtypes)
        self.checked = False

    def __call__(self, stream: int | None, *args: object) -> None:
        if not self.checked:  # its indices are the tile IR's int32: as a Triton kernel of int32 offsets;
            # the program passes the same strides to every later launch
            check_index_range(self.kernel, [a for a in args if isinstance(a, torch.Tensor)])
            self.checked = True
        # with argtypes set, ctypes converts plain ints: a tensor becomes its data pointer
        values = [a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args]
        if len(values) + 1 != self.arity:
            expected = self.arity - 1
            raise LaunchError(
                f"{self.kernel.name}: takes {expected} arguments after the stream, got {len(values)}"
            )
        code = self.function(current_stream() if stream is None else stream, *values)
        if code != 0:
            raise CudaLaunchError(
                f"{self.kernel.name}: launch failed with cudaError {code}: {error_string(code)}", code
            )


def load_cuda_kernel(
    source: str, kernel_name: str, config: Mapping[str, int], num_warps: int, **build_options: object
) -> CudaKernel:
    """Build (or reuse from the cache) and load one emitted kernel; raises CudaBuildError on failure."""
    built = build_shared_object(source, kernel_name, **build_options)  # type: ignore[arg-type]
    library = ctypes.CDLL(str(built.path))
    return CudaKernel.from_library(library, source, kernel_name, config, num_warps, built)
