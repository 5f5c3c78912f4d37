// Fused element-wise kernels shared by every family (loaded by fastgen_core/kernels.py through CuPy).
// Each has a pure-torch reference with the same meaning in fastgen_core/kernels.py; tests/gpu compares them.
//
// Rounding follows the reference op by op: the reference computes in float32 and rounds to the model's
// dtype where PyTorch would (after the residual add, after normalising, after the weight; after silu,
// after the product), so in bf16/fp16 the kernels differ from it only through the order of the float32
// sum of squares.
#include "fastgen.cuh"

// Block-wide sum of one float per thread (blockDim.x a multiple of 32, at most 1024).
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? warp_sums[lane] : 0.0f;
    if (warp == 0) {
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
        if (lane == 0) warp_sums[0] = v;
    }
    __syncthreads();
    return warp_sums[0];
}

// One block per row of [rows, hidden]. residual == nullptr: out = w * rmsnorm(x).
// Otherwise h = x + residual (rounded to T), residual <- h, out = w * rmsnorm(h): the pre-norm block's
// "add the sub-block's output to the stream, then normalise it for the next sub-block" in one pass.
template <typename T>
__device__ void rms_norm(T* __restrict__ out, const T* __restrict__ x, T* __restrict__ residual,
                         const T* __restrict__ w, float eps, int hidden) {
    const long row = blockIdx.x;
    const T* xr = x + row * hidden;
    T* rr = residual ? residual + row * hidden : nullptr;
    T* orow = out + row * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        float h = to_f(xr[i]);
        if (rr) {
            h = to_f(from_f<T>(h + to_f(rr[i])));
            rr[i] = from_f<T>(h);
        }
        ss += h * h;
    }
    const float inv = rsqrtf(block_sum(ss) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float h = rr ? to_f(rr[i]) : to_f(xr[i]);
        orow[i] = from_f<T>(to_f(w[i]) * to_f(from_f<T>(h * inv)));
    }
}

// out[t, i] = silu(gate[t, i]) * up[t, i] with gate_up[t] = [gate (I) | up (I)] (GatedMLP's fused GEMM).
template <typename T>
__device__ void silu_and_mul(T* __restrict__ out, const T* __restrict__ gate_up, long total, int inter) {
    for (long idx = blockIdx.x * (long)blockDim.x + threadIdx.x; idx < total; idx += (long)gridDim.x * blockDim.x) {
        const long t = idx / inter, i = idx - t * inter;
        const float g = to_f(gate_up[t * 2 * inter + i]);
        const float u = to_f(gate_up[t * 2 * inter + inter + i]);
        out[idx] = from_f<T>(to_f(from_f<T>(g / (1.0f + __expf(-g)))) * u);
    }
}

// One block per row of [rows, hidden], for the parallel-residual layers (Phi, Falcon, GPT-NeoX): the layer's
// output s = (attn + mlp) + x, rounded to T after each add as torch's two adds round, is written to ``sum``
// (the next layer's residual input) and out = LayerNorm(s) * w + b (b may be null) for the next layer:
// float32 mean and variance (two passes over s), one rounding at the end, as torch's layer_norm kernel.
template <typename T>
__device__ void add3_layer_norm(T* __restrict__ sum, T* __restrict__ out, const T* __restrict__ a,
                                const T* __restrict__ m, const T* __restrict__ x, const T* __restrict__ w,
                                const T* __restrict__ b, float eps, int hidden) {
    const long off = (long)blockIdx.x * hidden;
    float acc = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float s = to_f(from_f<T>(to_f(from_f<T>(to_f(a[off + i]) + to_f(m[off + i]))) + to_f(x[off + i])));
        sum[off + i] = from_f<T>(s);
        acc += s;
    }
    const float mean = block_sum(acc) / hidden;
    __syncthreads();                    // block_sum's shared slots are reused below
    float var = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float d = to_f(sum[off + i]) - mean;
        var += d * d;
    }
    const float rstd = rsqrtf(block_sum(var) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float y = (to_f(sum[off + i]) - mean) * rstd * to_f(w[i]) + (b ? to_f(b[i]) : 0.0f);
        out[off + i] = from_f<T>(y);
    }
}

#define FASTGEN_INSTANTIATE(T, suffix)                                                                     \
    extern "C" __global__ void rms_norm_##suffix(T* out, const T* x, T* residual, const T* w, float eps,  \
                                                 int hidden) {                                            \
        rms_norm<T>(out, x, residual, w, eps, hidden);                                                    \
    }                                                                                                     \
    extern "C" __global__ void silu_and_mul_##suffix(T* out, const T* gate_up, long total, int inter) {   \
        silu_and_mul<T>(out, gate_up, total, inter);                                                      \
    }                                                                                                     \
    extern "C" __global__ void add3_layer_norm_##suffix(T* sum, T* out, const T* a, const T* m, const T* x, \
                                                        const T* w, const T* b, float eps, int hidden) {  \
        add3_layer_norm<T>(sum, out, a, m, x, w, b, eps, hidden);                                          \
    }

FASTGEN_INSTANTIATE(float, f32)
FASTGEN_INSTANTIATE(__nv_bfloat16, bf16)
FASTGEN_INSTANTIATE(__half, f16)
