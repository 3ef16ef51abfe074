"""The device helpers at the top of every emitted kernel file, and the names they (and the writer) take.

The helpers sit behind an include guard, so that several kernel files can
be concatenated into one translation unit (one nvcc run compiles many).
"""

PRELUDE = """\
#include <cstdint>
#include <cuda_runtime.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>

#ifndef TILEFUSE_CUDA_HELPERS
#define TILEFUSE_CUDA_HELPERS
inline constexpr unsigned ALL_LANES = 0xffffffffu;  // every lane of a warp takes part in a shuffle

// the bounds check of every load and store: 0 <= i < n
__device__ __forceinline__ bool in_range(int i, int n) { return 0 <= i && i < n; }

// maximum and minimum that return NaN when either operand is NaN (torch.amax, arith.maximumf);
// fmax alone would drop it. A float's is one instruction on sm_80 and later (max.NaN).
template <class T> __device__ __forceinline__ T nan_max(T a, T b) {
  return a != a || b != b ? a + b : fmax(a, b);
}
template <class T> __device__ __forceinline__ T nan_min(T a, T b) {
  return a != a || b != b ? a + b : fmin(a, b);
}
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
template <> __device__ __forceinline__ float nan_max(float a, float b) {
  float r;
  asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
template <> __device__ __forceinline__ float nan_min(float a, float b) {
  float r;
  asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
#endif

// float division and exp as the Triton backend computes them: div.full.f32 (within 2 ulp, a few
// instructions; IEEE division takes a dozen and a slow path) and 2^(x log2 e) on the special function
// unit (ex2.approx). A bf16 row kernel is bound by its instructions otherwise (softmax: 74% of copy
// bandwidth with IEEE division and expf, H200). Doubles keep IEEE division and exp.
__device__ __forceinline__ float div_full(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("div.full.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a / b;
#endif
}
__device__ __forceinline__ double div_full(double a, double b) { return a / b; }
__device__ __forceinline__ float exp_approx(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.f32 %0, %1;" : "=f"(r) : "f"(x * 1.4426950408889634f));
  return r;
#else
  return expf(x);
#endif
}
// 2^x as Triton's tl.exp2 makes it on f32 (ex2.approx.ftz: a result under 2^-126 flushes to zero),
// so that both backends give every math.exp2 (tilefuse's formulas', torch.exp2's) the same values
__device__ __forceinline__ float exp2_approx(float x) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
  return r;
#else
  return exp2f(x);
#endif
}
// 1 / b for b >= 1, from tilefuse's own formulas (arith.divf fastmath<afn>): within 1 ulp
__device__ __forceinline__ float rcp_approx(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(b));
  return a * r;
#else
  return a / b;
#endif
}
__device__ __forceinline__ double rcp_approx(double a, double b) { return a / b; }

// 16-bit floats are computed in float and rounded (to nearest even) after every op that makes one
__device__ __forceinline__ float round_to_f16(float x) { return __half2float(__float2half_rn(x)); }
__device__ __forceinline__ float round_to_bf16(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
__device__ __forceinline__ float round_to_f16(double x) { return __half2float(__double2half(x)); }
__device__ __forceinline__ float round_to_bf16(double x) { return __bfloat162float(__double2bfloat16(x)); }

// N elements in one memory access (ld/st.global.v4 for 16 bytes) where the address is aligned to it
template <class T, int N> struct alignas(sizeof(T) * N) Vector { T v[N]; };
template <class V, class T> __device__ __forceinline__ bool is_aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(V) == 0;
}
#endif  // TILEFUSE_CUDA_HELPERS
"""

# C++ keywords, CUDA built-ins, the helpers above and the fixed local names the writer uses
# (reduction accumulators, loop variables): no kernel, tensor or value is named after one
RESERVED = {
    "alignas", "alignof", "and", "asm", "auto", "bool", "break", "case", "catch", "char", "class", "const",
    "constexpr", "continue", "default", "delete", "do", "double", "else", "enum", "explicit", "extern",
    "false", "float", "for", "friend", "goto", "if", "inline", "int", "long", "mutable", "namespace", "new",
    "not", "operator", "or", "private", "protected", "public", "register", "return", "short", "signed",
    "sizeof", "static", "struct", "switch", "template", "this", "throw", "true", "try", "typedef",
    "typename", "union", "unsigned", "using", "virtual", "void", "volatile", "while", "xor",
    "threadIdx", "blockIdx", "blockDim", "gridDim", "warpSize", "max", "min", "abs", "NAN", "INFINITY",
    "in_range", "nan_max", "nan_min", "div_full", "exp_approx", "exp2_approx", "rcp_approx", "round_to_f16",
    "round_to_bf16",
    "ALL_LANES", "Vector", "is_aligned",
    "grid", "stream", "acc", "first", "lanes", "warp", "run", "run_start", "j",
}  # fmt: skip
