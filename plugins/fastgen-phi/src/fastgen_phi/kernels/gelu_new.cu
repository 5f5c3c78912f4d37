// Phi's MLP activation, "gelu_new" (the tanh approximation of GELU), as one pass over fc1's [T, I] output
// instead of the eight element-wise launches of its torch formula (fastgen_phi.model.gelu_new_ref, which is
// transformers' NewGELUActivation):
//     0.5 * x * (1.0 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3)))
// It rounds to the model dtype after every operation where the torch formula does (pow, each product and
// sum, tanh), so in bf16/fp16 it gives the reference's bits up to a last-place difference of tanhf; that
// keeps our tokens as close to transformers' bf16 run as the unfused activation was. fc1's bias stays in
// the GEMM's epilogue (rounded once there, as the reference's nn.Linear does).
// __fmul_rn/__fadd_rn keep float32 (where rounding is the identity) from being contracted into FMAs.
// Each thread handles 16 bytes (8 bf16/fp16 or 4 float32 values) with one vector load and store.
//
// At one decode row, fc1 and the activation are one kernel instead: the core's weight-streaming GEMV
// (gemv.cuh, from fastgen-core's kernel folder) with gelu_new as its epilogue, applied to fc1's output
// rounded to the model dtype, so its bits are those of fc1's GEMV followed by gelu_new below.
#include "fastgen.cuh"
#include "gemv.cuh"

template <typename T>
__device__ __forceinline__ T gelu_new_one(T xv) {
    const float x = to_f(xv);
    // torch.pow(x, 3.0) is base * base * base in the tensor's own type: rounded after each product
    const float cube = rnd<T>(__fmul_rn(rnd<T>(__fmul_rn(x, x)), x));
    const float inner = rnd<T>(__fadd_rn(x, rnd<T>(__fmul_rn(0.044715f, cube))));
    const float t = rnd<T>(tanhf(rnd<T>(__fmul_rn(0.7978845608028654f, inner))));
    return from_f<T>(__fmul_rn(rnd<T>(__fmul_rn(0.5f, x)), rnd<T>(__fadd_rn(1.0f, t))));
}

// Two bf16/fp16 values at once. The products and sums of two values of the type are exact in float32, so
// rounding their float32 result (what the scalar form does) is rounding the exact result once, which is what
// the type's own paired instructions (__hmul2, __hadd2) do: the same bits with far fewer float32 <-> 16-bit
// conversions, which bound the scalar form (one float32 -> bf16 conversion per op).
// The products with the two constants (not representable in the type) and tanh stay in float32, rounded
// where the scalar form rounds them.
// bf16 exception: the paired bf16 multiply rounds subnormal results differently (on Hopper, 0.5 * the
// smallest subnormal gave that subnormal where rounding the float32 product gives 0), so a pair holding a
// value below 2^-32 in magnitude (where x^3 or the product can come near the subnormal range) goes one value
// at a time. Such activations are rare; the GPU test checks every bf16 pattern against the scalar form.
template <typename T2> struct Pair;
template <> struct Pair<__nv_bfloat162> {
    static __device__ __forceinline__ float2 f(__nv_bfloat162 v) { return __bfloat1622float2(v); }
    static __device__ __forceinline__ __nv_bfloat162 t(float a, float b) { return __floats2bfloat162_rn(a, b); }
    static __device__ __forceinline__ bool tiny(__nv_bfloat162 v) {
        const unsigned bits = *reinterpret_cast<const unsigned*>(&v);
        return ((bits >> 7) & 0xFF) < 127 - 32 || ((bits >> 23) & 0xFF) < 127 - 32;
    }
};
template <> struct Pair<__half2> {      // fp16's paired multiply keeps subnormals (checked the same way)
    static __device__ __forceinline__ float2 f(__half2 v) { return __half22float2(v); }
    static __device__ __forceinline__ __half2 t(float a, float b) { return __floats2half2_rn(a, b); }
    static __device__ __forceinline__ bool tiny(__half2) { return false; }
};

// halves and ones: (0.5, 0.5) and (1, 1) in T2, converted once per thread by the caller
template <typename T2>
__device__ __forceinline__ T2 gelu_new_two(T2 x, T2 halves, T2 ones) {
    using P = Pair<T2>;
    const T2 cube = __hmul2(__hmul2(x, x), x);
    const float2 c = P::f(cube);
    const T2 inner = __hadd2(x, P::t(__fmul_rn(0.044715f, c.x), __fmul_rn(0.044715f, c.y)));
    const float2 in = P::f(inner);
    const float2 s = P::f(P::t(__fmul_rn(0.7978845608028654f, in.x), __fmul_rn(0.7978845608028654f, in.y)));
    const T2 th = P::t(tanhf(s.x), tanhf(s.y));
    return __hmul2(__hmul2(halves, x), __hadd2(ones, th));
}

template <typename T> struct Paired { static constexpr bool ok = false; using T2 = T; };
template <> struct Paired<__nv_bfloat16> { static constexpr bool ok = true; using T2 = __nv_bfloat162; };
template <> struct Paired<__half> { static constexpr bool ok = true; using T2 = __half2; };

// PAIRED: bf16/fp16 through gelu_new_two (the default); else one value at a time (float32, and the A/B)
template <typename T, bool PAIRED>
__device__ void gelu_new(T* __restrict__ out, const T* __restrict__ x, long total) {
    constexpr int VEC = 16 / sizeof(T);
    const long vecs = total / VEC;
    const long stride = (long)gridDim.x * blockDim.x;
    using T2 = typename Paired<T>::T2;
    T2 halves, ones;
    if constexpr (PAIRED && Paired<T>::ok) {
        halves = Pair<T2>::t(0.5f, 0.5f);
        ones = Pair<T2>::t(1.0f, 1.0f);
    }
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < vecs; i += stride) {
        uint4 raw = reinterpret_cast<const uint4*>(x)[i];
        if constexpr (PAIRED && Paired<T>::ok) {
            T2* v = reinterpret_cast<T2*>(&raw);
#pragma unroll
            for (int j = 0; j < VEC / 2; ++j) {
                if (Pair<T2>::tiny(v[j])) {
                    T* e = reinterpret_cast<T*>(v + j);
                    e[0] = gelu_new_one<T>(e[0]);
                    e[1] = gelu_new_one<T>(e[1]);
                } else {
                    v[j] = gelu_new_two<T2>(v[j], halves, ones);
                }
            }
        } else {
            T* v = reinterpret_cast<T*>(&raw);
#pragma unroll
            for (int j = 0; j < VEC; ++j) v[j] = gelu_new_one<T>(v[j]);
        }
        reinterpret_cast<uint4*>(out)[i] = raw;
    }
    for (long i = vecs * VEC + blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += stride)
        out[i] = gelu_new_one<T>(x[i]);
}

// x and out 16-byte aligned (fresh torch allocations are)
extern "C" __global__ void gelu_new_f32(float* out, const float* x, long total) {
    gelu_new<float, false>(out, x, total);
}
extern "C" __global__ void gelu_new_bf16(__nv_bfloat16* out, const __nv_bfloat16* x, long total) {
    gelu_new<__nv_bfloat16, true>(out, x, total);
}
extern "C" __global__ void gelu_new_f16(__half* out, const __half* x, long total) {
    gelu_new<__half, true>(out, x, total);
}
// one value at a time (FASTGEN_KERNELS_OFF=gelu_new_paired, and the GPU test that the paired form has its bits)
extern "C" __global__ void gelu_new_scalar_bf16(__nv_bfloat16* out, const __nv_bfloat16* x, long total) {
    gelu_new<__nv_bfloat16, false>(out, x, total);
}
extern "C" __global__ void gelu_new_scalar_f16(__half* out, const __half* x, long total) {
    gelu_new<__half, false>(out, x, total);
}

// gemv_gelu_new_<suffix>_m1_r<R>_u<U>(y, x, W, bias, N, K): gelu_new(x @ W^T + bias), y rounded as fc1's
// output is before the activation reads it
struct GeluNew {
    template <typename T> __device__ __forceinline__ static T apply(float v) { return gelu_new_one<T>(from_f<T>(v)); }
};
FASTGEN_GEMV_CONFIGS(gemv_gelu_new, GeluNew, __nv_bfloat16, bf16, 1)
FASTGEN_GEMV_CONFIGS(gemv_gelu_new, GeluNew, __half, f16, 1)
