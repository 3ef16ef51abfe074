// tilefuse kernel "softmax_row" (row), by tilefuse.backends.cuda v1
// x: tensor<37x100xf32>, out: tensor<37x100xf32>
// config BLOCK_R=16, BLOCK_C=128; 8 warps; grid (3, 1, 1)
// layout: BLOCK_R = 16: 8 threads x 2 slots; BLOCK_C = 128: 32 threads x 4 slots (4 contiguous)
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

__global__ void __launch_bounds__(256) softmax_row(
    const float* x, int64_t x_s0, int64_t x_s1,
    float* out, int64_t out_s0, int64_t out_s1) {
  constexpr int BLOCK_R = 16;
  // this thread's place along each axis of the tile
  const int t0 = threadIdx.x / 32 % 8;  // along BLOCK_R
  const int t1 = threadIdx.x % 32;  // along BLOCK_C
  const int v0 = blockIdx.x;
  const int v1 = v0 * BLOCK_R;
  int v2[2];  // [BLOCK_R] i32: tile.arange
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    v2[i0] = i0 * 8 + t0;
  }
  int v3[2];  // [BLOCK_R] i32: tile.map
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    v3[i0] = v2[i0] + v1;
  }
  int v4[4];  // [BLOCK_C] i32: tile.arange
  #pragma unroll
  for (int i1 = 0; i1 < 4; ++i1) {
    v4[i1] = t1 * 4 + i1;
  }
  bool v5[4];  // [1, BLOCK_C] i1: tile.map
  #pragma unroll
  for (int i1 = 0; i1 < 4; ++i1) {
    v5[i1] = v4[i1] < 100;
  }
  float v6[8];  // [BLOCK_R, BLOCK_C] f32: tile.load x, 0.0f out of bounds
  // runs of 4 elements in one access where contiguous and aligned
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    const float* run_start = &x[v3[i0] * x_s0 + v4[0] * x_s1];
    if (x_s1 == 1 && in_range(v3[i0], 37) && in_range(v4[0], 100) && in_range(v4[0] + 3, 100) && is_aligned<Vector<float, 4>>(run_start)) {
      const Vector<float, 4> run = *reinterpret_cast<const Vector<float, 4>*>(run_start);
      #pragma unroll
      for (int j = 0; j < 4; ++j) v6[i0 * 4 + j] = run.v[j];
    } else {
      #pragma unroll
      for (int j = 0; j < 4; ++j) v6[i0 * 4 + j] = in_range(v3[i0], 37) && in_range(v4[j], 100) ? x[v3[i0] * x_s0 + v4[j] * x_s1] : 0.0f;
    }
  }
  float v7[8];  // [BLOCK_R, BLOCK_C] f32: tile.map
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    #pragma unroll
    for (int i1 = 0; i1 < 4; ++i1) {
      v7[i0 * 4 + i1] = v5[i1] ? v6[i0 * 4 + i1] : (-INFINITY);
    }
  }
  float v8[2];  // [BLOCK_R] f32: tile.reduce max over BLOCK_C
  // combine 4 slots per thread then 32 lanes (shuffles)
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    float acc = v7[i0 * 4];
    #pragma unroll
    for (int i1 = 1; i1 < 4; ++i1) {
      acc = nan_max(acc, v7[i0 * 4 + i1]);
    }
    #pragma unroll
    for (int lanes = 16; lanes >= 1; lanes /= 2) acc = nan_max(acc, __shfl_xor_sync(ALL_LANES, acc, lanes));
    v8[i0] = acc;
  }
  float v9[8];  // [BLOCK_R, BLOCK_C] f32: tile.map
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    #pragma unroll
    for (int i1 = 0; i1 < 4; ++i1) {
      const float v10 = v6[i0 * 4 + i1] - v8[i0];
      v9[i0 * 4 + i1] = exp_approx(v10);
    }
  }
  float v11[8];  // [BLOCK_R, BLOCK_C] f32: tile.map
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    #pragma unroll
    for (int i1 = 0; i1 < 4; ++i1) {
      v11[i0 * 4 + i1] = v5[i1] ? v9[i0 * 4 + i1] : 0.0f;
    }
  }
  float v12[2];  // [BLOCK_R] f32: tile.reduce sum over BLOCK_C
  // combine 4 slots per thread then 32 lanes (shuffles)
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    float acc = v11[i0 * 4];
    #pragma unroll
    for (int i1 = 1; i1 < 4; ++i1) {
      acc = acc + v11[i0 * 4 + i1];
    }
    #pragma unroll
    for (int lanes = 16; lanes >= 1; lanes /= 2) acc = acc + __shfl_xor_sync(ALL_LANES, acc, lanes);
    v12[i0] = acc;
  }
  // the rest run by run: 4 contiguous elements of BLOCK_C at a time
  #pragma unroll
  for (int i0 = 0; i0 < 2; ++i0) {
    #pragma unroll
    for (int i1 = 0; i1 < 4; i1 += 4) {
      float v13[4];  // [BLOCK_R, BLOCK_C] f32: tile.map
      #pragma unroll
      for (int j = 0; j < 4; ++j) {
        v13[j] = div_full(v9[i0 * 4 + i1 + j], v12[i0]);
      }
      // tile.store into out
      // runs of 4 elements in one access where contiguous and aligned
      {
        float* run_start = &out[v3[i0] * out_s0 + v4[0] * out_s1];
        if (out_s1 == 1 && in_range(v3[i0], 37) && in_range(v4[0], 100) && in_range(v4[0] + 3, 100) && is_aligned<Vector<float, 4>>(run_start)) {
          Vector<float, 4> run;
          #pragma unroll
          for (int j = 0; j < 4; ++j) run.v[j] = v13[j];
          *reinterpret_cast<Vector<float, 4>*>(run_start) = run;
        } else {
          #pragma unroll
          for (int j = 0; j < 4; ++j) if (in_range(v3[i0], 37) && in_range(v4[j], 100)) out[v3[i0] * out_s0 + v4[j] * out_s1] = v13[j];
        }
      }
    }
  }
}

extern "C" int launch_softmax_row(void* stream, const float* x, int64_t x_s0, int64_t x_s1, float* out, int64_t out_s0, int64_t out_s1) {
  softmax_row<<<dim3(3, 1, 1), 256, 0, static_cast<cudaStream_t>(stream)>>>(x, x_s0, x_s1, out, out_s0, out_s1);
  return static_cast<int>(cudaGetLastError());
}
