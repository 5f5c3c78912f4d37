// The weight-streaming GEMV of few-row linear layers (kernels/gemv.cu instantiates it; a plugin's source can
// include it to fuse an epilogue, as fastgen-phi's gelu_new.cu does for fc1 + gelu_new).
//
// At one token per forward a linear layer is bound by reading its weight once. Each warp streams R rows
// of W [N, K] (row-major, as nn.Linear holds it) with 16-byte loads, U loads per row in flight before any
// is used, and dots them with the M rows of x (small: they stay in L1); a shuffle reduction ends each
// row. The sums are float32; the bias is added to the float32 sum and the result rounded once, as cuBLAS'
// bias epilogue does. K must be a multiple of 8 and every row 16-byte aligned (the wrapper checks).
#pragma once
#include "fastgen.cuh"

__device__ __forceinline__ float2 pair_to_f2(unsigned v, const __nv_bfloat16*) {
    return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&v));
}
__device__ __forceinline__ float2 pair_to_f2(unsigned v, const __half*) {
    return __half22float2(*reinterpret_cast<const __half2*>(&v));
}
// The plain epilogue: the float32 sum (bias included) rounded once to T.
struct NoAct {
    template <typename T> __device__ __forceinline__ static T apply(float v) { return from_f<T>(v); }
};

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

// y [M, N] = Act::apply<T>(x @ W^T + bias), x [M, K], W [N, K], bias [N] or null. Each group of KS warps
// takes R consecutive rows of W; the group's warps take interleaved chunks of K (32 x U loads each) and sum
// their partial dots through shared memory in a fixed order (KS = 1: one warp per R rows, no shared memory).
// KS > 1 gives more, shorter work items: more blocks per SM, less of a tail when N / R is small or K long.
// Act is an epilogue on each output's float32 sum (NoAct: rounded to T). blockDim.x = 32 x warps, warps a
// multiple of KS and at most 32.
template <typename T, int M, int R, int U, typename Act = NoAct, int KS = 1>
__device__ void gemv(T* __restrict__ y, const T* __restrict__ x, const T* __restrict__ W,
                     const T* __restrict__ bias, int N, int K) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int part = warp % KS;
    const long n0 = ((long)blockIdx.x * ((blockDim.x >> 5) / KS) + warp / KS) * R;
    if (KS == 1 && n0 >= N) return;          // (with KS > 1 every warp must reach the barrier)
    const bool active = n0 < N;
    const int K8 = K >> 3;
    const uint4* x4 = reinterpret_cast<const uint4*>(x);
    const uint4* w4 = reinterpret_cast<const uint4*>(W) + (active ? n0 * K8 : 0);
    float acc[R][M];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
        for (int m = 0; m < M; ++m) acc[r][m] = 0.0f;
    for (int k = part * 32 * U + lane; active && k < K8; k += 32 * U * KS) {
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
    if (KS > 1) {
        __shared__ float partial[32][R * M];
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < R * M; ++i) partial[warp][i] = acc[i / M][i % M];
        }
        __syncthreads();
        if (part != 0 || !active) return;
        if (lane == 0) {
#pragma unroll
            for (int i = 0; i < R * M; ++i) {
                float v = partial[warp][i];
#pragma unroll
                for (int p = 1; p < KS; ++p) v += partial[warp + p][i];
                acc[i / M][i % M] = v;
            }
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (n0 + r < N) {
                const float b = bias ? to_f(bias[n0 + r]) : 0.0f;
#pragma unroll
                for (int m = 0; m < M; ++m) y[(long)m * N + n0 + r] = Act::template apply<T>(acc[r][m] + b);
            }
        }
    }
}

// extern "C" kernel prefix_<suffix>_m<M>_r<R>_u<U>[_s<KS>](y, x, W, bias, N, K): gemv with the epilogue Act
#define FASTGEN_GEMV_KERNEL(prefix, Act, T, suffix, M, R, U)                                              \
    extern "C" __global__ void prefix##_##suffix##_m##M##_r##R##_u##U(T* y, const T* x, const T* W,       \
                                                                     const T* bias, int N, int K) {      \
        gemv<T, M, R, U, Act>(y, x, W, bias, N, K);                                                        \
    }
#define FASTGEN_GEMV_KERNEL_KS(prefix, Act, T, suffix, M, R, U, KS)                                       \
    extern "C" __global__ void prefix##_##suffix##_m##M##_r##R##_u##U##_s##KS(T* y, const T* x, const T* W, \
                                                                             const T* bias, int N, int K) { \
        gemv<T, M, R, U, Act, KS>(y, x, W, bias, N, K);                                                    \
    }
#define FASTGEN_GEMV_RU(prefix, Act, T, suffix, M, R, U) FASTGEN_GEMV_KERNEL(prefix, Act, T, suffix, M, R, U) \
    FASTGEN_GEMV_KERNEL_KS(prefix, Act, T, suffix, M, R, U, 2) FASTGEN_GEMV_KERNEL_KS(prefix, Act, T, suffix, M, R, U, 4)
// Every (R, U, KS) fastgen_core.layers.linear.CONFIGS names for M rows: the (R, U) pairs that won somewhere
// in a sweep (tools/gemv_bench.py), each with 1, 2 and 4 warps per row group.
#define FASTGEN_GEMV_CONFIGS(prefix, Act, T, suffix, M)                                                   \
    FASTGEN_GEMV_RU(prefix, Act, T, suffix, M, 1, 4) FASTGEN_GEMV_RU(prefix, Act, T, suffix, M, 2, 2)      \
    FASTGEN_GEMV_RU(prefix, Act, T, suffix, M, 4, 2)
