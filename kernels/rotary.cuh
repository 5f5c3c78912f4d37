// Rotate-half rotary (GPT-NeoX layout, full or partial), rounded where the torch reference rounds: each
// product x * cos and rotate_half(x) * sin is rounded to T, then their sum (cos and sin already rounded to T
// by the caller). __fmul_rn/__fadd_rn keep float32 (where rounding is the identity) from being contracted
// into FMAs the reference does not do. Used by rotary_kv.cu and decode_attention.cu.
#pragma once
#include "fastgen.cuh"

// (a, b) = (x[j], x[j + rot/2]): the rotated x[j] and x[j + rot/2], as float32 values exact in T
template <typename T>
__device__ __forceinline__ float rot_first(float a, float b, float c, float s) {
    return rnd<T>(__fadd_rn(rnd<T>(__fmul_rn(a, c)), rnd<T>(__fmul_rn(-b, s))));
}
template <typename T>
__device__ __forceinline__ float rot_second(float a, float b, float c, float s) {
    return rnd<T>(__fadd_rn(rnd<T>(__fmul_rn(b, c)), rnd<T>(__fmul_rn(a, s))));
}

// channel j of the head row x after rotary over its first 2 * half channels (cos/sin per pair in cs/sn);
// channels past them pass through
template <typename T>
__device__ __forceinline__ float rotated(const T* x, int j, int half, const float* cs, const float* sn) {
    if (j >= 2 * half) return to_f(x[j]);
    const int p = j < half ? j : j - half;
    const float a = to_f(x[p]), b = to_f(x[p + half]);
    return j < half ? rot_first<T>(a, b, cs[p], sn[p]) : rot_second<T>(a, b, cs[p], sn[p]);
}
