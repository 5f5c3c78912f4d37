// Rotary position embedding (rotate-half / NeoX layout, full or partial) fused with the KV-cache write.
// Loaded by fastgen_core/kernels.py through CuPy; the torch reference is kernels.rotary_kv_write_ref, and
// tests/gpu/test_kernels_gpu.py compares the two.
//
// One block per token. Query heads are rotated in place (q is a view into the QKV projection's output);
// key heads are rotated on the way into the cache, and value heads copied into it, so the K/V of this
// step go to memory once. Channels past rotary_dim pass through (Phi-2's partial rotary); rotary_dim 0
// is a plain cache write (OPT, no rotary).
//
// cos/sin are computed in float32 from the position and inv_freq (exactly the product the reference
// forms); the rotation is done in float32 and rounded once, so in bf16/fp16 the kernel differs from the
// reference (which rounds cos, sin and every product to the model dtype) by the dtype's rounding.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// x[0..rot) rotated by angle pos * inv_freq[j mod rot/2]: out[j] = x[j] cos - x[j + rot/2] sin for the first
// half, x[j] cos + x[j - rot/2] sin for the second.
template <typename T>
__device__ __forceinline__ float rotated(const T* x, int j, int rot, float pos, const float* inv_freq) {
    const int half = rot >> 1;
    const int jj = j < half ? j : j - half;
    float s, c;
    sincosf(pos * inv_freq[jj], &s, &c);
    const float a = to_f(x[j]);
    const float b = to_f(x[j < half ? j + half : j - half]);
    return j < half ? a * c - b * s : a * c + b * s;
}

template <typename T>
__device__ void rotary_kv(T* __restrict__ q, long q_stride, const T* __restrict__ k, long k_stride,
                          const T* __restrict__ v, long v_stride, T* __restrict__ k_cache, T* __restrict__ v_cache,
                          const long* __restrict__ slots, const long* __restrict__ positions,
                          const float* __restrict__ inv_freq, int hq, int hk, int d, int rot) {
    const long row = blockIdx.x;
    const float pos = (float)positions[row];
    const long slot = slots[row];
    if (rot > 0) {
        // each thread owns one (head, j < rot/2) pair and writes both halves: in place is then race-free
        const int half = rot >> 1;
        T* qr = q + row * q_stride;
        for (int i = threadIdx.x; i < hq * half; i += blockDim.x) {
            const int h = i / half, j = i - h * half;
            T* x = qr + h * d;
            float s, c;
            sincosf(pos * inv_freq[j], &s, &c);
            const float a = to_f(x[j]), b = to_f(x[j + half]);
            x[j] = from_f<T>(a * c - b * s);
            x[j + half] = from_f<T>(b * c + a * s);
        }
    }
    const T* kr = k + row * k_stride;
    const T* vr = v + row * v_stride;
    T* kc = k_cache + slot * hk * d;
    T* vc = v_cache + slot * hk * d;
    for (int i = threadIdx.x; i < hk * d; i += blockDim.x) {
        const int h = i / d, j = i - h * d;
        kc[i] = j < rot ? from_f<T>(rotated(kr + h * d, j, rot, pos, inv_freq)) : kr[h * d + j];
        vc[i] = vr[h * d + j];
    }
}

#define FASTGEN_ROTARY_KV(T, suffix)                                                                       \
    extern "C" __global__ void rotary_kv_##suffix(T* q, long q_stride, const T* k, long k_stride, const T* v, \
                                                  long v_stride, T* k_cache, T* v_cache, const long* slots,   \
                                                  const long* positions, const float* inv_freq, int hq,       \
                                                  int hk, int d, int rot) {                                   \
        rotary_kv<T>(q, q_stride, k, k_stride, v, v_stride, k_cache, v_cache, slots, positions, inv_freq, hq, \
                     hk, d, rot);                                                                            \
    }

FASTGEN_ROTARY_KV(float, f32)
FASTGEN_ROTARY_KV(__nv_bfloat16, bf16)
FASTGEN_ROTARY_KV(__half, f16)
