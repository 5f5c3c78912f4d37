// y = x @ W^T (+ bias) for a few rows of x: the linear layers of a decode step at small batch
// (loaded by fastgen_core/layers/linear.py through CuPy; the reference is torch.nn.functional.linear).
//
// At one token per forward a linear layer is bound by reading its weight once. Each warp streams R rows
// of W [N, K] (row-major, as nn.Linear holds it) with 16-byte loads, U loads per row in flight before any
// is used, and dots them with the M rows of x (small: they stay in L1); a shuffle reduction ends each
// row. The sums are float32; the bias is added to the float32 sum and the result rounded once, as cuBLAS'
// bias epilogue does. K must be a multiple of 8 and every row 16-byte aligned (the wrapper checks).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float2 pair_to_f2(unsigned v, const __nv_bfloat16*) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
}
__device__ __forceinline__ float2 pair_to_f2(unsigned v, const __half*) {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
}
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }

// acc + the dot product of 8 packed values of a with 8 of b
template <typename T>
__device__ __forceinline__ float dot8(uint4 a, uint4 b, float acc) {
    const T* tag = nullptr;
    float2 p = pair_to_f2(a.x, tag), q = pair_to_f2(b.x, tag);
    acc = fmaf(p.x, q.x, acc); acc = fmaf(p.y, q.y, acc);
    p = pair_to_f2(a.y, tag); q = pair_to_f2(b.y, tag);
    acc = fmaf(p.x, q.x, acc); acc = fmaf(p.y, q.y, acc);
    p = pair_to_f2(a.z, tag); q = pair_to_f2(b.z, tag);
    acc = fmaf(p.x, q.x, acc); acc = fmaf(p.y, q.y, acc);
    p = pair_to_f2(a.w, tag); q = pair_to_f2(b.w, tag);
    acc = fmaf(p.x, q.x, acc); acc = fmaf(p.y, q.y, acc);
    return acc;
}

// y [M, N], x [M, K], W [N, K], bias [N] or null. One warp per R consecutive rows of W.
template <typename T, int M, int R, int U>
__device__ void gemv(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ W,
                     const T* __restrict__ bias, int N, int K) {
    const int lane = threadIdx.x & 31;
    const long n0 = ((long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * R;
    if (n0 >= N) return;
    const int K8 = K >> 3;
    const uint4* x4 = reinterpret_cast<const uint4*>(x);
    const uint4* w4 = reinterpret_cast<const uint4*>(W) + n0 * K8;
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
    for (int k = lane; k < K8; k += 32 * U) {
        uint4 w[U][R];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const int kk = k + u * 32;
                w[u][r] = (kk < K8 && n0 + r < N) ? __ldcs(w4 + r * (long)K8 + kk) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int kk = k + u * 32;
            if (kk < K8) {
#pragma unroll
                for (int m = 0; m < M; ++m) {
                    const uint4 xv = __ldg(x4 + m * (long)K8 + kk);
#pragma unroll
                    for (int r = 0; r < R; ++r) acc[r][m] = dot8<T>(w[u][r], xv, acc[r][m]);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[r][m] += __shfl_xor_sync(0xffffffff, acc[r][m], o);
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (n0 + r < N) {
                const float b = bias ? to_float(bias[n0 + r]) : 0.0f;
#pragma unroll
                for (int m = 0; m < M; ++m) store(y + (long)m * N + n0 + r, acc[r][m] + b);
            }
        }
    }
}

// The experts of a mixture-of-experts layer at decode: one (token, slot) pair per blockIdx.y, P pairs.
// y [P, N] row p = x[p / x_div] @ W[ids[p]]^T, W [E, N, K] stacked experts, ids [P] int64. Each pair reads
// only its own expert's weight (x_div = top_k for the first projection: a token's row for each of its
// slots; 1 for the second: each pair's own row).
template <typename T, int R, int U>
__device__ void expert_gemv(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ W,
                            const long long* __restrict__ ids, int x_div, int N, int K) {
    const int p = blockIdx.y;
    const long long e = ids[p];
    gemv<T, 1, R, U>(y + (long)p * N, x + (long)(p / x_div) * K, W + e * (long long)N * K, nullptr, N, K);
}

#define FASTGEN_EXPERT_GEMV(T, suffix, R, U)                                                                \
    extern "C" __global__ void expert_gemv_##suffix##_r##R##_u##U(T* y, const T* x, const T* W,              \
                                                                 const long long* ids, int x_div, int N,   \
                                                                 int K) {                                  \
        expert_gemv<T, R, U>(y, x, W, ids, x_div, N, K);                                                   \
    }

#define FASTGEN_GEMV(T, suffix, M, R, U)                                                                   \
    extern "C" __global__ void gemv_##suffix##_m##M##_r##R##_u##U(T* y, const T* x, const T* W,           \
                                                                 const T* bias, int N, int K) {          \
        gemv<T, M, R, U>(y, x, W, bias, N, K);                                                             \
    }
// (R, U) pairs: the ones that won somewhere in a sweep on an H200 (tools/gemv_bench.py); M = 1 is what
// the engine uses (at 2-4 rows cuBLAS was as fast or faster), M = 2 stays for the bench.
#define FASTGEN_GEMV_RU(T, suffix, M)                                                                      \
    FASTGEN_GEMV(T, suffix, M, 1, 4) FASTGEN_GEMV(T, suffix, M, 2, 2) FASTGEN_GEMV(T, suffix, M, 4, 2)
#define FASTGEN_GEMV_ALL(T, suffix) FASTGEN_GEMV_RU(T, suffix, 1) FASTGEN_GEMV_RU(T, suffix, 2)

FASTGEN_GEMV_ALL(__nv_bfloat16, bf16)
FASTGEN_GEMV_ALL(__half, f16)
FASTGEN_EXPERT_GEMV(__nv_bfloat16, bf16, 2, 2) FASTGEN_EXPERT_GEMV(__nv_bfloat16, bf16, 4, 2)
FASTGEN_EXPERT_GEMV(__half, f16, 2, 2) FASTGEN_EXPERT_GEMV(__half, f16, 4, 2)
