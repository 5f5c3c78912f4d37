// Conversions every fastgen kernel uses: to_f (bf16/fp16/float32 -> float32), from_f<T> (float32 -> T,
// round to nearest even) and rnd<T> (round a float32 through T, where torch would store the value in T).
// Core sources include it as "fastgen.cuh"; fastgen_core.kernels.load puts the core's kernel folder on
// NVRTC's include path, so a plugin's sources can include it (and gemv.cuh) too.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }
template <typename T> __device__ __forceinline__ float rnd(float x) { return to_f(from_f<T>(x)); }
