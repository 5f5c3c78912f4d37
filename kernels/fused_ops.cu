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

// silu(g) rounded to T, times u: torch's F.silu(gate) * up, whose silu is x / (1 + expf(-x)) in float32 (the
// accurate expf, as ATen's kernel calls it: __expf's last place differed and flipped bf16 roundings)
template <typename T>
__device__ __forceinline__ T silu_mul_one(float g, float u) {
    return from_f<T>(to_f(from_f<T>(g / (1.0f + expf(-g)))) * u);
}

// out[t, i] = silu(gate[t, i]) * up[t, i] with gate_up[t] = [gate (I) | up (I)] (GatedMLP's fused GEMM).
template <typename T>
__device__ void silu_and_mul(T* __restrict__ out, const T* __restrict__ gate_up, long total, int inter) {
    for (long idx = blockIdx.x * (long)blockDim.x + threadIdx.x; idx < total; idx += (long)gridDim.x * blockDim.x) {
        const long t = idx / inter, i = idx - t * inter;
        out[idx] = silu_mul_one<T>(to_f(gate_up[t * 2 * inter + i]), to_f(gate_up[t * 2 * inter + inter + i]));
    }
}

// The same in 16-byte vectors (I a multiple of V = 16 / sizeof(T), pointers 16-byte aligned): vecs = T * I / V.
template <typename T>
__device__ void silu_and_mul_vec(T* __restrict__ out, const T* __restrict__ gate_up, long vecs, int inter_vecs) {
    constexpr int V = 16 / sizeof(T);
    const uint4* gu = reinterpret_cast<const uint4*>(gate_up);
    for (long idx = blockIdx.x * (long)blockDim.x + threadIdx.x; idx < vecs; idx += (long)gridDim.x * blockDim.x) {
        const long t = idx / inter_vecs, i = idx - t * inter_vecs;
        const uint4 rg = gu[t * 2 * inter_vecs + i], ru = gu[t * 2 * inter_vecs + inter_vecs + i];
        const T* g = reinterpret_cast<const T*>(&rg);
        const T* u = reinterpret_cast<const T*>(&ru);
        uint4 ro;
        T* o = reinterpret_cast<T*>(&ro);
#pragma unroll
        for (int j = 0; j < V; ++j) o[j] = silu_mul_one<T>(to_f(g[j]), to_f(u[j]));
        reinterpret_cast<uint4*>(out)[idx] = ro;
    }
}

// RMSNorm (with the pre-norm residual add) in 16-byte vectors, one vector of V channels per thread held in
// registers (hidden a multiple of V, at most 1024 vectors; pointers 16-byte aligned): rms_norm's arithmetic,
// the row read and written once. The sum of squares goes in another order than rms_norm's.
template <typename T>
__device__ void rms_norm_vec(T* __restrict__ out, const T* __restrict__ x, T* __restrict__ residual,
                             const T* __restrict__ w, float eps, int hidden) {
    constexpr int V = 16 / sizeof(T);
    const long off = (long)blockIdx.x * hidden;
    const int c = threadIdx.x * V;
    const bool mine = c < hidden;
    float h[V];
    float ss = 0.0f;
    if (mine) {
        const uint4 rx = *reinterpret_cast<const uint4*>(x + off + c);
        const T* px = reinterpret_cast<const T*>(&rx);
        if (residual) {
            const uint4 rr = *reinterpret_cast<const uint4*>(residual + off + c);
            const T* pr = reinterpret_cast<const T*>(&rr);
            uint4 rs;
            T* ps = reinterpret_cast<T*>(&rs);
#pragma unroll
            for (int u = 0; u < V; ++u) {
                ps[u] = from_f<T>(to_f(px[u]) + to_f(pr[u]));
                h[u] = to_f(ps[u]);
            }
            *reinterpret_cast<uint4*>(residual + off + c) = rs;
        } else {
#pragma unroll
            for (int u = 0; u < V; ++u) h[u] = to_f(px[u]);
        }
#pragma unroll
        for (int u = 0; u < V; ++u) ss += h[u] * h[u];
    }
    const float inv = rsqrtf(block_sum(ss) / hidden + eps);
    if (mine) {
        const uint4 rw = *reinterpret_cast<const uint4*>(w + c);
        const T* pw = reinterpret_cast<const T*>(&rw);
        uint4 ro;
        T* po = reinterpret_cast<T*>(&ro);
#pragma unroll
        for (int u = 0; u < V; ++u) po[u] = from_f<T>(to_f(pw[u]) * to_f(from_f<T>(h[u] * inv)));
        *reinterpret_cast<uint4*>(out + off + c) = ro;
    }
}

// The MoE block's combine: out[t] = sum_j float(ys[inv[t * k + j]]) * w[t, j], summed in float32 over the k
// slots in order and rounded once to T, where ys holds the expert outputs in expert-sorted order and inv maps a
// (token, slot) pair to its sorted row. One block per token, V channels per thread (hidden a multiple of V,
// at most 1024 vectors). The reference (moe.grouped_experts_ref) scatters float32 products into a [T * k, H]
// buffer and sums over k: four kernels and two passes over a float32 buffer.
template <typename T>
__device__ void moe_combine(T* __restrict__ out, const T* __restrict__ ys, const long* __restrict__ inv,
                            const float* __restrict__ w, int k, int hidden) {
    constexpr int V = 16 / sizeof(T);
    const long t = blockIdx.x;
    const int c = threadIdx.x * V;
    if (c >= hidden) return;
    float acc[V];
#pragma unroll
    for (int u = 0; u < V; ++u) acc[u] = 0.0f;
    for (int j = 0; j < k; ++j) {
        const float wj = w[t * k + j];
        const uint4 ry = *reinterpret_cast<const uint4*>(ys + inv[t * k + j] * hidden + c);
        const T* py = reinterpret_cast<const T*>(&ry);
#pragma unroll
        for (int u = 0; u < V; ++u) acc[u] = __fadd_rn(acc[u], __fmul_rn(to_f(py[u]), wj));
    }
    uint4 ro;
    T* po = reinterpret_cast<T*>(&ro);
#pragma unroll
    for (int u = 0; u < V; ++u) po[u] = from_f<T>(acc[u]);
    *reinterpret_cast<uint4*>(out + t * hidden + c) = ro;
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

// add3_layer_norm with 16-byte loads and stores, each thread holding one vector of V = 16 / sizeof(T) channels
// of the row in registers (hidden a multiple of V, at most 1024 vectors; every pointer 16-byte aligned): the
// row is read once and written once, so it runs at memory speed at prompt-chunk sizes, where the scalar form
// (one block per row, three passes, scalar loads) was slower than torch's kernels. Same arithmetic per
// channel; the float32 sums go in another order, so the statistics can differ in their last place.
template <typename T>
__device__ void add3_layer_norm_vec(T* __restrict__ sum, T* __restrict__ out, const T* __restrict__ a,
                                    const T* __restrict__ m, const T* __restrict__ x, const T* __restrict__ w,
                                    const T* __restrict__ b, float eps, int hidden) {
    constexpr int V = 16 / sizeof(T);
    const long off = (long)blockIdx.x * hidden;
    const int c = threadIdx.x * V;
    const bool mine = c < hidden;
    float s[V];
    float acc = 0.0f;
    if (mine) {
        const uint4 ra = *reinterpret_cast<const uint4*>(a + off + c);
        const uint4 rm = *reinterpret_cast<const uint4*>(m + off + c);
        const uint4 rx = *reinterpret_cast<const uint4*>(x + off + c);
        const T* pa = reinterpret_cast<const T*>(&ra);
        const T* pm = reinterpret_cast<const T*>(&rm);
        const T* px = reinterpret_cast<const T*>(&rx);
        uint4 rs;
        T* ps = reinterpret_cast<T*>(&rs);
#pragma unroll
        for (int u = 0; u < V; ++u) {
            s[u] = to_f(from_f<T>(to_f(from_f<T>(to_f(pa[u]) + to_f(pm[u]))) + to_f(px[u])));
            ps[u] = from_f<T>(s[u]);
            acc += s[u];
        }
        *reinterpret_cast<uint4*>(sum + off + c) = rs;
    }
    const float mean = block_sum(acc) / hidden;
    __syncthreads();                    // block_sum's shared slots are reused below
    float var = 0.0f;
    if (mine) {
#pragma unroll
        for (int u = 0; u < V; ++u) {
            const float d = s[u] - mean;
            var += d * d;
        }
    }
    const float rstd = rsqrtf(block_sum(var) / hidden + eps);
    if (mine) {
        const uint4 rw = *reinterpret_cast<const uint4*>(w + c);
        uint4 rb = make_uint4(0, 0, 0, 0);
        if (b) rb = *reinterpret_cast<const uint4*>(b + c);
        const T* pw = reinterpret_cast<const T*>(&rw);
        const T* pb = reinterpret_cast<const T*>(&rb);
        uint4 ro;
        T* po = reinterpret_cast<T*>(&ro);
#pragma unroll
        for (int u = 0; u < V; ++u) po[u] = from_f<T>((s[u] - mean) * rstd * to_f(pw[u]) + (b ? to_f(pb[u]) : 0.0f));
        *reinterpret_cast<uint4*>(out + off + c) = ro;
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
    extern "C" __global__ void silu_and_mul_vec_##suffix(T* out, const T* gate_up, long vecs,             \
                                                         int inter_vecs) {                                \
        silu_and_mul_vec<T>(out, gate_up, vecs, inter_vecs);                                              \
    }                                                                                                     \
    extern "C" __global__ void rms_norm_vec_##suffix(T* out, const T* x, T* residual, const T* w,          \
                                                     float eps, int hidden) {                             \
        rms_norm_vec<T>(out, x, residual, w, eps, hidden);                                                \
    }                                                                                                     \
    extern "C" __global__ void moe_combine_##suffix(T* out, const T* ys, const long* inv, const float* w,  \
                                                    int k, int hidden) {                                  \
        moe_combine<T>(out, ys, inv, w, k, hidden);                                                       \
    }                                                                                                     \
    extern "C" __global__ void add3_layer_norm_##suffix(T* sum, T* out, const T* a, const T* m, const T* x, \
                                                        const T* w, const T* b, float eps, int hidden) {  \
        add3_layer_norm<T>(sum, out, a, m, x, w, b, eps, hidden);                                          \
    }                                                                                                     \
    extern "C" __global__ void add3_layer_norm_vec_##suffix(T* sum, T* out, const T* a, const T* m,        \
                                                            const T* x, const T* w, const T* b, float eps, \
                                                            int hidden) {                                 \
        add3_layer_norm_vec<T>(sum, out, a, m, x, w, b, eps, hidden);                                      \
    }

FASTGEN_INSTANTIATE(float, f32)
FASTGEN_INSTANTIATE(__nv_bfloat16, bf16)
FASTGEN_INSTANTIATE(__half, f16)
