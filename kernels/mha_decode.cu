// Decode attention of many sequences without GQA (one query head per KV head: Phi-2, Llama-2-7B, OPT) on the
// CUDA cores. Loaded through CuPy by fastgen_core/layers/mha_decode.py; its reference is paged_attention_ref
// and tests/gpu/test_attention_gpu.py compares the two.
//
// Why: at 128 sequences x 1,200 tokens a decode step's attention reads ~50 GB of K/V and should run at the copy
// bandwidth. The Triton kernel multiplies on the tensor cores, whose smallest tile pads one query row to 16
// and (Phi-2) head_dim 80 to 128: for every key it scores 16 x 128 products where 80 are needed, and it reads
// the cache slower at head_dim 80 than at 128. Here each key costs head_dim products; with the heads first on
// the grid it reads Phi-2's cache faster than the Triton kernel (docs/performance.md has the A/B).
//
// Grid (decode rows, heads) or (heads, rows), 128 threads; LPK lanes take a key (4: a warp takes 8 adjacent
// keys, one block-table entry). Key group k takes keys k, k + 32, k + 64, ... of the context; of a key's row,
// lane j of the group holds 8-byte chunks j, j + 4, j + 8, ..., so each load instruction of a warp reads
// whole 32-byte sectors. A group keeps its own online softmax (running max, sum, D / LPK float32 sums a
// lane), in base 2 (q is scaled by scale * log2(e)) with one exp2 a key; the groups' states are merged at the
// end by log-sum-exp, within each warp by shuffles and across the 4 warps through shared memory. U keys a
// group are loaded before any is used (memory-level parallelism; more at few blocks, fewer registers at many).
//
// Limits (the caller checks them): bf16/fp16, head_dim 64/80/96/128 (a row of an even number of 16-byte
// vectors), the cache's rows 16-byte aligned. The launch depends on the batch shape only (contexts come from
// the device), so a CUDA graph captured for a batch size serves every context length.
#include "fastgen.cuh"

#define MD_THREADS 128
#define MD_WARPS (MD_THREADS / 32)
#define MD_NEG_INF (-__int_as_float(0x7f800000))   // NVRTC has no math.h: no INFINITY
#define MD_LOG2E 1.4426950408889634f
#define MD_FULL 0xffffffffu

// n words of packed 16-bit values -> 2n float32
__device__ __forceinline__ void unpack_words(const unsigned* w, int n, float* f, const __nv_bfloat16*) {
#pragma unroll
    for (int e = 0; e < n; ++e) {                   // little-endian: the lower half is the earlier element
        f[2 * e] = __uint_as_float(w[e] << 16);
        f[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
    }
}

__device__ __forceinline__ void unpack_words(const unsigned* w, int n, float* f, const __half*) {
#pragma unroll
    for (int e = 0; e < n; ++e) {
        const float2 x = __half22float2(*reinterpret_cast<const __half2*>(&w[e]));
        f[2 * e] = x.x;
        f[2 * e + 1] = x.y;
    }
}

template <typename T> __device__ __forceinline__ void unpack(const uint2 r, float* f) {
    const unsigned w[2] = {r.x, r.y};
    unpack_words(w, 2, f, (const T*)nullptr);
}

template <int LPK> struct Chunk;                    // what one lane loads of a row at a time: 32 / LPK bytes
template <> struct Chunk<4> { typedef uint2 type; };   // the compiled forms' four lanes a key (form (2, 1),
                                                       // 16-byte chunks, lost its A/B and is gone)

// weight of a state whose running max is m when merged under the larger max big (empty states weigh 0)
__device__ __forceinline__ float md_weight(float m, float big) { return m == MD_NEG_INF ? 0.f : exp2f(m - big); }

template <typename T, int D, int LPK, int U>
__device__ __forceinline__ void mha_decode(const T* __restrict__ q, long q_stride, const T* __restrict__ k_cache,
                                           const T* __restrict__ v_cache, const long* __restrict__ tables,
                                           long table_stride, const long* __restrict__ seqs,
                                           const long* __restrict__ rows, const long* __restrict__ ctx_lens,
                                           T* __restrict__ out, long out_stride, float scale, long window, int hk,
                                           int block_size, int heads_first) {
    typedef typename Chunk<LPK>::type C;
    constexpr int CE = 16 / LPK;                    // values in a chunk
    constexpr int NC = D / 16;                      // chunks a lane holds (the LPK lanes' chunks c: 32 bytes)
    constexpr int NE = NC * CE;                     // values a lane holds: D / LPK
    constexpr int KEYS = MD_THREADS / LPK;          // keys the block takes at a time, U times over
    __shared__ float m_s[MD_WARPS], l_s[MD_WARPS];
    __shared__ float o_s[MD_WARPS][D];

    // grid (rows, heads), or (heads, rows) with heads_first: the blocks side by side then read one sequence's
    // adjacent rows of the same slots
    const int i = heads_first ? blockIdx.y : blockIdx.x, h = heads_first ? blockIdx.x : blockIdx.y;
    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5, key = tid / LPK, part = tid % LPK;
    const long seq = seqs[i], row = rows[i];
    const int ctx = (int)ctx_lens[seq];
    const int lo = (int)max((long)ctx - window, 0L);
    const long* tab = tables + seq * table_stride;
    const long row_elems = (long)hk * D, head = (long)h * D;

    float qf[NE], acc[NE];
    const T* qr = q + row * q_stride + head;
    const float qs = scale * MD_LOG2E;
#pragma unroll
    for (int c = 0; c < NC; ++c)
#pragma unroll
        for (int e = 0; e < CE; ++e) {
            qf[c * CE + e] = to_f(qr[(c * LPK + part) * CE + e]) * qs;
            acc[c * CE + e] = 0.f;
        }
    float m = MD_NEG_INF, l = 0.f;

    // the same trip count for every lane of the block (the key's shuffles need all its lanes; bounds by ``ok``)
    for (int base = lo; base < ctx; base += KEYS * U) {
        const int t0 = base + key;
        C kr[U][NC], vr[U][NC];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int t = t0 + u * KEYS;
            if (t < ctx) {
                const long slot = tab[t / block_size] * block_size + t % block_size;
                const C* kp = reinterpret_cast<const C*>(k_cache + slot * row_elems + head) + part;
                const C* vp = reinterpret_cast<const C*>(v_cache + slot * row_elems + head) + part;
#pragma unroll
                for (int c = 0; c < NC; ++c) kr[u][c] = kp[c * LPK];
#pragma unroll
                for (int c = 0; c < NC; ++c) vr[u][c] = vp[c * LPK];
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const bool ok = t0 + u * KEYS < ctx;            // the same for every lane of a key
            float s = 0.f;
            if (ok) {
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    float kf[CE];
                    unpack<T>(kr[u][c], kf);
#pragma unroll
                    for (int e = 0; e < CE; ++e) s = fmaf(qf[c * CE + e], kf[e], s);
                }
            }
#pragma unroll
            for (int off = 1; off < LPK; off <<= 1) s += __shfl_xor_sync(MD_FULL, s, off);
            if (ok) {
                const bool up = s > m;                      // one exp2: the new key's weight or the old max's
                const float w = exp2f(-fabsf(s - m));       // m = -inf: 0
                const float alpha = up ? w : 1.f, p = up ? 1.f : w;
                m = up ? s : m;
                l = fmaf(l, alpha, p);
#pragma unroll
                for (int c = 0; c < NC; ++c) {
                    float vf[CE];
                    unpack<T>(vr[u][c], vf);
#pragma unroll
                    for (int e = 0; e < CE; ++e) acc[c * CE + e] = fmaf(acc[c * CE + e], alpha, p * vf[e]);
                }
            }
        }
    }

    // merge the keys' states within each warp (lanes of the same part hold the same channels)
#pragma unroll
    for (int off = LPK; off < 32; off <<= 1) {
        const float mo = __shfl_xor_sync(MD_FULL, m, off), lo_ = __shfl_xor_sync(MD_FULL, l, off);
        const float big = fmaxf(m, mo);
        const float a = md_weight(m, big), b = md_weight(mo, big);
        l = l * a + lo_ * b;
#pragma unroll
        for (int e = 0; e < NE; ++e) acc[e] = acc[e] * a + __shfl_xor_sync(MD_FULL, acc[e], off) * b;
        m = big;
    }
    if (lane < LPK) {
#pragma unroll
        for (int c = 0; c < NC; ++c)
#pragma unroll
            for (int e = 0; e < CE; ++e) o_s[warp][(c * LPK + part) * CE + e] = acc[c * CE + e];
        if (lane == 0) {
            m_s[warp] = m;
            l_s[warp] = l;
        }
    }
    __syncthreads();
    // then the warps
    float big = MD_NEG_INF;
#pragma unroll
    for (int w = 0; w < MD_WARPS; ++w) big = fmaxf(big, m_s[w]);
    float den = 0.f, wt[MD_WARPS];
#pragma unroll
    for (int w = 0; w < MD_WARPS; ++w) {
        wt[w] = md_weight(m_s[w], big);
        den = fmaf(l_s[w], wt[w], den);
    }
    T* o = out + row * out_stride + head;
    for (int j = tid; j < D; j += MD_THREADS) {
        float num = 0.f;
#pragma unroll
        for (int w = 0; w < MD_WARPS; ++w) num = fmaf(o_s[w][j], wt[w], num);
        o[j] = from_f<T>(den > 0.f ? num / den : 0.f);
    }
}

#define FASTGEN_MHA_DECODE(T, suffix, D, LPK, U)                                                                 \
    extern "C" __global__ void __launch_bounds__(MD_THREADS) mha_decode_##suffix##_d##D##_l##LPK##_u##U(         \
        const T* q, long q_stride, const T* k_cache, const T* v_cache, const long* tables, long table_stride,     \
        const long* seqs, const long* rows, const long* ctx_lens, T* out, long out_stride, float scale,         \
        long window, int hk, int block_size, int heads_first) {                                                  \
        mha_decode<T, D, LPK, U>(q, q_stride, k_cache, v_cache, tables, table_stride, seqs, rows, ctx_lens, out, \
                                 out_stride, scale, window, hk, block_size, heads_first);                        \
    }
#define FASTGEN_MHA_DECODE_DIMS(T, suffix, LPK, U)                                                               \
    FASTGEN_MHA_DECODE(T, suffix, 64, LPK, U)                                                                    \
    FASTGEN_MHA_DECODE(T, suffix, 80, LPK, U)                                                                    \
    FASTGEN_MHA_DECODE(T, suffix, 96, LPK, U)                                                                    \
    FASTGEN_MHA_DECODE(T, suffix, 128, LPK, U)
#define FASTGEN_MHA_DECODE_FORMS(T, suffix)                                                                      \
    FASTGEN_MHA_DECODE_DIMS(T, suffix, 4, 1)                                                                     \
    FASTGEN_MHA_DECODE_DIMS(T, suffix, 4, 4)

FASTGEN_MHA_DECODE_FORMS(__nv_bfloat16, bf16)
FASTGEN_MHA_DECODE_FORMS(__half, f16)
