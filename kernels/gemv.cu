// y = x @ W^T (+ bias) for a few rows of x: the linear layers of a decode step at small batch
// (loaded by fastgen_core/layers/linear.py through CuPy; the reference is torch.nn.functional.linear).
// The kernel itself is in gemv.cuh.
#include "gemv.cuh"

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

#define FASTGEN_GEMV_ALL(T, suffix) FASTGEN_GEMV_CONFIGS(gemv, NoAct, T, suffix, 1) \
    FASTGEN_GEMV_CONFIGS(gemv, NoAct, T, suffix, 2)
FASTGEN_GEMV_ALL(__nv_bfloat16, bf16)
FASTGEN_GEMV_ALL(__half, f16)
FASTGEN_EXPERT_GEMV(__nv_bfloat16, bf16, 2, 2) FASTGEN_EXPERT_GEMV(__nv_bfloat16, bf16, 4, 2)
FASTGEN_EXPERT_GEMV(__half, f16, 2, 2) FASTGEN_EXPERT_GEMV(__half, f16, 4, 2)
