"""Emitted CUDA C++ run on the CPU: a stand-in GPU for tests on machines without one.

The kernel source is compiled by the host C++ compiler (g++, C++20) against
`EMULATION_HEADER`, a small header that plays the part of CUDA: every
thread of a block is an OS thread, `__syncthreads()` is a barrier of the
block, `__shfl_xor_sync` an exchange through a per-warp buffer between two
barriers of the warp, `__shared__` a static variable (blocks run one after
another), and `__half`/`__nv_bfloat16` their bits with round-to-nearest-even
conversions. The generated launcher `launch_<kernel>` is kept; only its
`<<<grid, threads>>>` launch is rewritten into a call that runs the blocks.
`build_on_cpu` returns the library (ctypes), `launch_on_cpu` calls a
launcher on CPU tensors, passing pointers and strides as a GPU runtime would.

What this checks is what the emitter decides: the thread layout, indexing,
masks, reductions across lanes and warps, rounding of 16-bit values, the
launcher's arguments and grid. It says nothing about nvcc, timing, the GPU's
memory model or its math library's last bit (`expf` here is glibc's).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

import torch

EMULATION_HEADER = r"""
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>
#include <algorithm>
#include <stdlib.h>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x = 1, unsigned y = 1, unsigned z = 1) : x(x), y(y), z(z) {}
};
typedef void* cudaStream_t;
inline int cudaGetLastError() { return 0; }
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __shared__ static

namespace emulation {
inline thread_local dim3 thread_index, block_index;

struct Block {
  explicit Block(unsigned threads) : all(threads), exchange(threads) {
    for (unsigned first = 0; first < threads; first += 32)
      warps.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - first)));
  }
  std::barrier<> all;
  std::vector<std::unique_ptr<std::barrier<>>> warps;
  std::vector<uint64_t> exchange;  // one word per thread for shuffles
};
inline Block* block = nullptr;

// runs the blocks one after another, each with one OS thread per CUDA thread
template <class Kernel> void launch(dim3 grid, unsigned threads, Kernel kernel) {
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) {
        Block current(threads);
        block = &current;
        std::vector<std::thread> pool;
        for (unsigned t = 0; t < threads; ++t)
          pool.emplace_back([&, t] {
            thread_index = dim3(t, 0, 0);
            block_index = dim3(x, y, z);
            kernel();
          });
        for (auto& thread : pool) thread.join();
      }
}

template <class T> T shuffle_xor(T value, int lane_mask) {
  const unsigned t = thread_index.x, lane = t % 32;
  std::barrier<>& warp = *block->warps[t / 32];
  std::memcpy(&block->exchange[t], &value, sizeof value);
  warp.arrive_and_wait();
  T other;
  std::memcpy(&other, &block->exchange[t - lane + (lane ^ lane_mask)], sizeof other);
  warp.arrive_and_wait();
  return other;
}
}  // namespace emulation

#define threadIdx (emulation::thread_index)
#define blockIdx (emulation::block_index)
#define __syncthreads() (emulation::block->all.arrive_and_wait())
template <class T> T __shfl_xor_sync(unsigned, T value, int lane_mask) {
  return emulation::shuffle_xor(value, lane_mask);
}

using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }

struct __half { uint16_t bits; };
struct __nv_bfloat16 { uint16_t bits; };

inline float __half2float(__half h) { _Float16 v; std::memcpy(&v, &h.bits, 2); return static_cast<float>(v); }
inline __half __double2half(double d) {
  const _Float16 v = static_cast<_Float16>(d);
  __half h;
  std::memcpy(&h.bits, &v, 2);
  return h;
}
inline __half __float2half_rn(float f) { return __double2half(f); }
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t bits = static_cast<uint32_t>(b.bits) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  if (f != f) return {0x7fc0};
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return {static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16)};
}
// double -> float rounding to odd keeps the information that a second rounding to bf16 needs
inline __nv_bfloat16 __double2bfloat16(double d) {
  float f = static_cast<float>(d);
  if (f == f && static_cast<double>(f) != d) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (std::fabs(static_cast<double>(f)) > std::fabs(d)) bits -= 1;
    bits |= 1;
    std::memcpy(&f, &bits, 4);
  }
  return __float2bfloat16_rn(f);
}
inline __half __int2half_rn(int i) { return __double2half(i); }
inline __half __uint2half_rn(unsigned i) { return __double2half(i); }
inline __half __ll2half_rn(long long i) { return __double2half(static_cast<double>(i)); }
inline __half __ull2half_rn(unsigned long long i) { return __double2half(static_cast<double>(i)); }
inline __nv_bfloat16 __int2bfloat16_rn(int i) { return __double2bfloat16(i); }
inline __nv_bfloat16 __uint2bfloat16_rn(unsigned i) { return __double2bfloat16(i); }
inline __nv_bfloat16 __ll2bfloat16_rn(long long i) { return __double2bfloat16(static_cast<double>(i)); }
inline __nv_bfloat16 __ull2bfloat16_rn(unsigned long long i) {
  return __double2bfloat16(static_cast<double>(i));
}
"""

_LAUNCH = re.compile(r"(\w+)<<<(dim3\([^)]*\)), (\d+), 0, .*?>>>\((.*)\);")


def host_compiler() -> str | None:
    """The C++ compiler the emulation needs (g++ with C++20's std::barrier), if present."""
    return shutil.which("g++")


def emulated_source(source: str) -> str:
    """`source` (one or more emitted kernels) with each CUDA launch made an emulated one."""
    return _LAUNCH.sub(r"emulation::launch(\2, \3, [&] { \1(\4); });", source)


def _write_atomically(path: Path, text: str) -> None:
    """`path` holds `text`, never half of it: builds on several threads share the headers."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    temporary.write_text(text)
    os.replace(temporary, path)


def build_on_cpu(sources: Sequence[str], workdir: Path) -> ctypes.CDLL:
    """Compile emitted kernels (one translation unit) into a shared library for the CPU and load it."""
    compiler = host_compiler()
    if compiler is None:
        raise RuntimeError("no g++: the CUDA emulation needs a host C++20 compiler")
    include = workdir / "include"
    include.mkdir(parents=True, exist_ok=True)
    _write_atomically(include / "cuda_runtime.h", EMULATION_HEADER)
    for header in ("cuda_fp16.h", "cuda_bf16.h"):
        _write_atomically(include / header, '#include "cuda_runtime.h"\n')
    text = "\n".join(emulated_source(s) for s in sources)
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    cpp, library = workdir / f"kernels_{digest}.cpp", workdir / f"kernels_{digest}.so"
    _write_atomically(cpp, text)
    command = [compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", f"-I{include}", str(cpp), "-o",
               str(library)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"g++ failed on the emulated kernels:\n{result.stderr[-4000:]}")
    return ctypes.CDLL(str(library))


def launch_on_cpu(library: ctypes.CDLL, kernel: str, tensors: Sequence[torch.Tensor]) -> int:
    """Call `launch_<kernel>` on CPU tensors (per tensor: its pointer, then its strides); its return code."""
    args: list[object] = [ctypes.c_void_p(0)]  # the stream
    for t in tensors:
        args.append(ctypes.c_void_p(t.data_ptr()))
        args.extend(ctypes.c_int64(s) for s in t.stride())
    launcher = getattr(library, f"launch_{kernel}")
    launcher.restype = ctypes.c_int
    return launcher(*args)
