// Phi's MLP activation, "gelu_new" (the tanh approximation of GELU), with fc1's bias added first:
// out = gelu_new(x + bias), one pass over the [T, I] activations instead of two element-wise launches.
// Computed in float32 and rounded once; the torch reference (fastgen_phi.model.bias_gelu_new_ref) rounds
// after every op in bf16/fp16, so the two agree to the dtype's rounding (tests/gpu/test_kernels_gpu.py).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

template <typename T>
__device__ void bias_gelu_new(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ bias,
                              long total, int inter) {
    const float k = 0.7978845608028654f;   // sqrt(2 / pi)
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        float v = to_f(x[i]);
        if (bias) v = to_f(from_f<T>(v + to_f(bias[i % inter])));
        out[i] = from_f<T>(0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v))));
    }
}

extern "C" __global__ void bias_gelu_new_f32(float* out, const float* x, const float* b, long total, int inter) {
    bias_gelu_new<float>(out, x, b, total, inter);
}
extern "C" __global__ void bias_gelu_new_bf16(__nv_bfloat16* out, const __nv_bfloat16* x, const __nv_bfloat16* b,
                                              long total, int inter) {
    bias_gelu_new<__nv_bfloat16>(out, x, b, total, inter);
}
extern "C" __global__ void bias_gelu_new_f16(__half* out, const __half* x, const __half* b, long total, int inter) {
    bias_gelu_new<__half>(out, x, b, total, inter);
}
