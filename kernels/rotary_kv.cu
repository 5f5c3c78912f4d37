// Rotary position embedding (rotate-half / NeoX layout, full or partial) fused with the KV-cache write.
// Loaded by fastgen_core/kernels.py through CuPy; the torch reference is kernels.rotary_kv_write_ref, and
// tests/gpu/test_kernels_gpu.py compares the two.
//
// One block per token. Query heads are rotated in place (q is a view into the QKV projection's output);
// key heads are rotated on the way into the cache, and value heads copied into it, so the K/V of this
// step go to memory once. Channels past rotary_dim pass through (Phi-2's partial rotary); rotary_dim 0
// is a plain cache write (OPT, no rotary).
//
// It rounds where the torch reference rounds (the reference is transformers' own rotary; see rotary.cuh):
// cos and sin are computed in float32 from the position and inv_freq and rounded to the model dtype. In
// bf16/fp16 the kernel therefore gives the reference's bits (up to a last-place difference of cosf/sinf from
// torch's), which keeps our tokens as close to transformers' bf16 run as the unfused layers were.
//
// cos/sin depend on (position, channel) only: they are computed once per token into shared memory and
// shared by every head.
#include "rotary.cuh"

// (a, b) = (x[j], x[j + rot/2]) -> (a cos - b sin, b cos + a sin), rounded as the reference rounds
template <typename T>
__device__ __forceinline__ void rotate_pair(float a, float b, float c, float s, T* out_a, T* out_b) {
    *out_a = from_f<T>(rot_first<T>(a, b, c, s));
    *out_b = from_f<T>(rot_second<T>(a, b, c, s));
}

// cos and sin of one token's position for the rot/2 frequencies, rounded to T, into the block's shared arrays
// (every thread of the block takes part; they are ready for all of it on return)
template <typename T>
__device__ __forceinline__ void cos_sin(float* cos_s, float* sin_s, float pos, const float* __restrict__ inv_freq,
                                        int half) {
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        float sn, cs;
        sincosf(__fmul_rn(pos, inv_freq[j]), &sn, &cs);
        cos_s[j] = rnd<T>(cs);
        sin_s[j] = rnd<T>(sn);
    }
    __syncthreads();
}

// rot <= 512 (head_dim <= 512)
template <typename T>
__device__ void rotary_kv(T* __restrict__ q, long q_stride, const T* __restrict__ k, long k_stride,
                          const T* __restrict__ v, long v_stride, T* __restrict__ k_cache, T* __restrict__ v_cache,
                          const long* __restrict__ slots, const long* __restrict__ positions,
                          const float* __restrict__ inv_freq, int hq, int hk, int d, int rot) {
    __shared__ float cos_s[256], sin_s[256];
    const long row = blockIdx.x;
    const long slot = slots[row];
    const int half = rot >> 1;
    if (half > 0) {
        cos_sin<T>(cos_s, sin_s, (float)positions[row], inv_freq, half);
        // each thread owns one (head, j < rot/2) pair and writes both halves: in place is then race-free
        T* qr = q + row * q_stride;
        for (int i = threadIdx.x; i < hq * half; i += blockDim.x) {
            const int h = i / half, j = i - h * half;
            T* x = qr + h * d;
            rotate_pair<T>(to_f(x[j]), to_f(x[j + half]), cos_s[j], sin_s[j], x + j, x + j + half);
        }
    }
    const T* kr = k + row * k_stride;
    const T* vr = v + row * v_stride;
    T* kc = k_cache + slot * hk * d;
    T* vc = v_cache + slot * hk * d;
    for (int i = threadIdx.x; i < hk * half; i += blockDim.x) {
        const int h = i / half, j = i - h * half;
        const T* x = kr + h * d;
        rotate_pair<T>(to_f(x[j]), to_f(x[j + half]), cos_s[j], sin_s[j], kc + h * d + j, kc + h * d + j + half);
    }
    const int pass = d - rot;         // channels past the rotary ones (partial rotary; all of them when rot = 0)
    for (int i = threadIdx.x; i < hk * pass; i += blockDim.x) {
        const int h = i / pass, j = rot + (i - h * pass);
        kc[h * d + j] = kr[h * d + j];
    }
    for (int i = threadIdx.x; i < hk * d; i += blockDim.x) {
        const int h = i / d, j = i - h * d;
        vc[i] = vr[h * d + j];
    }
}
// The same with 16-byte loads and stores (V = 16 / sizeof(T) channels each), for rows whose every piece is
// 16-byte aligned: d, rot / 2 and the row strides multiples of V, every pointer 16-byte aligned
// (rotary.rotary_kv_vector_ok checks). The values and the channels past rotary are plain vector copies,
// issued before cos/sin are ready; each rotation item is V pairs (x[j..j+V), x[j+half..j+half+V)) of one head
// of q or k. The arithmetic per channel is rotate_pair's, so the bits are the scalar kernel's. One block per
// token with scalar 2-byte accesses is a chain of dependent loads per thread, slow at prompt-chunk sizes; this
// form has each thread do one or two vector items.
template <typename T>
__device__ void rotary_kv_vec(T* __restrict__ q, long q_stride, const T* __restrict__ k, long k_stride,
                              const T* __restrict__ v, long v_stride, T* __restrict__ k_cache,
                              T* __restrict__ v_cache, const long* __restrict__ slots,
                              const long* __restrict__ positions, const float* __restrict__ inv_freq, int hq,
                              int hk, int d, int rot) {
    constexpr int V = 16 / sizeof(T);
    __shared__ float cos_s[256], sin_s[256];
    const long row = blockIdx.x;
    const long slot = slots[row];
    const T* kr = k + row * k_stride;
    const T* vr = v + row * v_stride;
    T* kc = k_cache + slot * hk * d;
    T* vc = v_cache + slot * hk * d;
    const int dv = d / V, pv = (d - rot) / V, rv = rot / V;
    for (int i = threadIdx.x; i < hk * dv; i += blockDim.x) {
        const int h = i / dv, c = i - h * dv;
        reinterpret_cast<uint4*>(vc + h * d)[c] = reinterpret_cast<const uint4*>(vr + h * d)[c];
    }
    for (int i = threadIdx.x; i < hk * pv; i += blockDim.x) {
        const int h = i / pv, c = rv + (i - h * pv);
        reinterpret_cast<uint4*>(kc + h * d)[c] = reinterpret_cast<const uint4*>(kr + h * d)[c];
    }
    const int half = rot >> 1;
    if (half == 0) return;
    cos_sin<T>(cos_s, sin_s, (float)positions[row], inv_freq, half);
    const int hv = half / V;
    T* qr = q + row * q_stride;
    for (int i = threadIdx.x; i < (hq + hk) * hv; i += blockDim.x) {
        const bool is_q = i < hq * hv;
        const int ii = is_q ? i : i - hq * hv;
        const int h = ii / hv, j = (ii - h * hv) * V;
        const T* src = (is_q ? (const T*)qr : kr) + h * d;
        T* dst = (is_q ? qr : kc) + h * d;
        uint4 ra = *reinterpret_cast<const uint4*>(src + j), rb = *reinterpret_cast<const uint4*>(src + j + half);
        const T* a = reinterpret_cast<const T*>(&ra);
        const T* b = reinterpret_cast<const T*>(&rb);
        uint4 oa, ob;
        T* pa = reinterpret_cast<T*>(&oa);
        T* pb = reinterpret_cast<T*>(&ob);
#pragma unroll
        for (int u = 0; u < V; ++u)
            rotate_pair<T>(to_f(a[u]), to_f(b[u]), cos_s[j + u], sin_s[j + u], pa + u, pb + u);
        *reinterpret_cast<uint4*>(dst + j) = oa;
        *reinterpret_cast<uint4*>(dst + j + half) = ob;
    }
}

#define FASTGEN_ROTARY_KV(T, suffix)                                                                       \
    extern "C" __global__ void rotary_kv_##suffix(T* q, long q_stride, const T* k, long k_stride, const T* v, \
                                                  long v_stride, T* k_cache, T* v_cache, const long* slots,   \
                                                  const long* positions, const float* inv_freq, int hq,       \
                                                  int hk, int d, int rot) {                                   \
        rotary_kv<T>(q, q_stride, k, k_stride, v, v_stride, k_cache, v_cache, slots, positions, inv_freq, hq, \
                     hk, d, rot);                                                                            \
    }                                                                                                        \
    extern "C" __global__ void rotary_kv_vec_##suffix(T* q, long q_stride, const T* k, long k_stride,        \
                                                      const T* v, long v_stride, T* k_cache, T* v_cache,      \
                                                      const long* slots, const long* positions,               \
                                                      const float* inv_freq, int hq, int hk, int d, int rot) { \
        rotary_kv_vec<T>(q, q_stride, k, k_stride, v, v_stride, k_cache, v_cache, slots, positions, inv_freq,  \
                         hq, hk, d, rot);                                                                    \
    }

FASTGEN_ROTARY_KV(float, f32)
FASTGEN_ROTARY_KV(__nv_bfloat16, bf16)
FASTGEN_ROTARY_KV(__half, f16)
