// Decode attention of a few sequences as ONE kernel: rotary on q and on this step's k, this step's K/V
// written into the cache, split-K (flash-decoding) attention over the blocked cache, and the merge of the
// splits. Loaded through CuPy by fastgen_core/layers/decode_attention.py; its reference is rotary_kv_write_ref
// followed by paged_attention_ref, and tests/gpu/test_decode_attention_gpu.py compares the two.
//
// Why: with one to a few sequences a decode layer's attention reads little (Phi-2 at 1,200 tokens: 12.9 MB)
// and is bound by latency, not bandwidth. The unfused path pays three launches a layer (rotary + KV write,
// the split attention, the merge of the splits), each a chain of dependent memory round trips.
//
// Grid (splits, KV heads, decode rows), 128 threads. A block takes one run of the context of one
// (sequence, KV head) and the G = Hq / Hk query heads that share it:
//   1. q of those heads, rotated (rounded as the reference rounds: rotary.cuh), into shared memory as float;
//   2. per tile of up to 128 keys: K and V rows copied into shared memory with 16-byte loads, all issued
//      before any is used; the step's own token (the last of the context) is taken from the QKV output
//      instead, rotated, and written into the cache by the block whose run holds it (no other block reads
//      that slot);
//   3. scores, an online softmax per query head, and P.V with the tile's keys spread over thread groups;
//   4. the normalised partial output and its log-sum-exp go to a float32 scratch; the block that finishes
//      last for its (sequence, KV head) -- an atomic counter, reset by that block for the next launch --
//      merges the splits and writes the output. With one split the block writes the output itself.
// The number of splits depends on the batch shape only (the caller's choice), so a CUDA graph captured for a
// batch size serves every context length: contexts come from the device.
//
// Limits (the caller checks them and otherwise takes the unfused path): head_dim a multiple of 8 and <= 256,
// G <= 8, G * head_dim <= 1024, splits <= 128.
#include "rotary.cuh"

#define DA_THREADS 128
#define DA_MAXG 8
#define DA_MAXD 256
#define DA_TILE_BYTES 16384
#define DA_MAXT 128
#define DA_NEG_INF (-__int_as_float(0x7f800000))   // NVRTC has no math.h: no INFINITY

template <typename T>
struct __align__(16) Vec8 {
    T x[8];
};

template <typename T>
__device__ void decode_attention(const T* __restrict__ q, long q_stride, const T* __restrict__ k, long k_stride,
                                 const T* __restrict__ v, long v_stride, T* __restrict__ k_cache,
                                 T* __restrict__ v_cache, const long* __restrict__ tables, long table_stride,
                                 const long* __restrict__ seqs, const long* __restrict__ rows,
                                 const long* __restrict__ ctx_lens, const long* __restrict__ positions,
                                 const long* __restrict__ slots, const float* __restrict__ inv_freq,
                                 T* __restrict__ out, long out_stride, float* __restrict__ part_o,
                                 float* __restrict__ part_lse, int* __restrict__ counters, float scale, long window,
                                 int hq, int hk, int d, int rot, int block_size, int splits) {
    __shared__ float q_s[DA_MAXG * DA_MAXD];
    __shared__ float cs_s[DA_MAXD / 2], sn_s[DA_MAXD / 2];
    __shared__ __align__(16) unsigned char k_raw[DA_TILE_BYTES];
    __shared__ __align__(16) unsigned char v_raw[DA_TILE_BYTES];
    __shared__ float s_s[DA_MAXG * DA_MAXT];
    __shared__ float m_s[DA_MAXG], l_s[DA_MAXG], a_s[DA_MAXG];
    __shared__ int last_s;

    const int sp = blockIdx.x, h = blockIdx.y, i = blockIdx.z;
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int G = hq / hk, dv = d >> 3, half = rot >> 1;
    const long seq = seqs[i], row = rows[i];
    const long ctx = ctx_lens[seq];
    T* k_t = reinterpret_cast<T*>(k_raw);
    T* v_t = reinterpret_cast<T*>(v_raw);
    const int nt = min(DA_MAXT, (DA_TILE_BYTES / (d * (int)sizeof(T))) & ~7);   // keys per tile

    if (half > 0) {
        const float pos = (float)positions[row];
        for (int j = tid; j < half; j += nthreads) {
            float sn, cs;
            sincosf(__fmul_rn(pos, inv_freq[j]), &sn, &cs);
            cs_s[j] = rnd<T>(cs);
            sn_s[j] = rnd<T>(sn);
        }
    }
    if (tid < G) {
        m_s[tid] = DA_NEG_INF;
        l_s[tid] = 0.f;
    }
    __syncthreads();
    const T* qr = q + row * q_stride + (long)h * G * d;
    for (int e = tid; e < G * d; e += nthreads) {
        const int g = e / d, j = e - g * d;
        q_s[e] = rotated<T>(qr + g * d, j, half, cs_s, sn_s);
    }

    // this block's run of keys: the window's keys split into `splits` runs of a multiple of 8
    const long lo0 = ctx > window ? ctx - window : 0;
    long per = (ctx - lo0 + splits - 1) / splits;
    per = (per + 7) & ~7L;
    const long lo = lo0 + (long)sp * per;
    const long hi = min(lo + per, ctx);
    const long new_tok = ctx - 1;
    const long kv_stride = (long)hk * d;                // elements per cache slot

    // P.V: thread = (token group, query head, 8 channels)
    const int ntask = G * dv;
    const int ngroups = nthreads / ntask;
    const int tg = tid / ntask, task = tid - tg * ntask;
    const int pg = task / dv, pv = task - pg * dv;
    const bool pv_on = tg < ngroups;
    float acc[8];
#pragma unroll
    for (int u = 0; u < 8; ++u) acc[u] = 0.f;
    const int warp = tid >> 5, lane = tid & 31, warps = nthreads >> 5;

    for (long t0 = lo; t0 < hi; t0 += nt) {
        const int n = (int)min((long)nt, hi - t0);
        for (int e = tid; e < n * dv; e += nthreads) {
            const int tt = e / dv, c = e - tt * dv;
            const long tok = t0 + tt;
            if (tok == new_tok) continue;
            const long slot = tables[seq * table_stride + tok / block_size] * block_size + tok % block_size;
            const long off = slot * kv_stride + (long)h * d + c * 8;
            *reinterpret_cast<Vec8<T>*>(k_t + tt * d + c * 8) = *reinterpret_cast<const Vec8<T>*>(k_cache + off);
            *reinterpret_cast<Vec8<T>*>(v_t + tt * d + c * 8) = *reinterpret_cast<const Vec8<T>*>(v_cache + off);
        }
        if (new_tok >= t0 && new_tok < t0 + n) {        // this step's token: rotate k, write K and V to the cache
            const int tt = (int)(new_tok - t0);
            const T* kr = k + row * k_stride + (long)h * d;
            const T* vr = v + row * v_stride + (long)h * d;
            const long off = slots[row] * kv_stride + (long)h * d;
            for (int j = tid; j < d; j += nthreads) {
                const T kj = from_f<T>(rotated<T>(kr, j, half, cs_s, sn_s));
                const T vj = vr[j];
                k_t[tt * d + j] = kj;
                v_t[tt * d + j] = vj;
                k_cache[off + j] = kj;
                v_cache[off + j] = vj;
            }
        }
        __syncthreads();
        for (int e = tid; e < G * n; e += nthreads) {   // scores
            const int g = e / n, tt = e - g * n;
            const float* qg = q_s + g * d;
            const T* kt = k_t + tt * d;
            float s = 0.f;
            for (int c = 0; c < dv; ++c) {
                const Vec8<T> kv = *reinterpret_cast<const Vec8<T>*>(kt + c * 8);
#pragma unroll
                for (int u = 0; u < 8; ++u) s = fmaf(qg[c * 8 + u], to_f(kv.x[u]), s);
            }
            s_s[g * DA_MAXT + tt] = s * scale;
        }
        __syncthreads();
        for (int g = warp; g < G; g += warps) {         // online softmax, one warp per query head
            float* sg = s_s + g * DA_MAXT;
            float mx = DA_NEG_INF;
            for (int tt = lane; tt < n; tt += 32) mx = fmaxf(mx, sg[tt]);
            for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float m_old = m_s[g];
            const float m_new = fmaxf(m_old, mx);
            float sum = 0.f;
            for (int tt = lane; tt < n; tt += 32) {
                const float p = expf(sg[tt] - m_new);
                sg[tt] = p;
                sum += p;
            }
            for (int o = 16; o; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
            if (lane == 0) {
                const float a = expf(m_old - m_new);
                a_s[g] = a;
                l_s[g] = l_s[g] * a + sum;
                m_s[g] = m_new;
            }
        }
        __syncthreads();
        if (pv_on) {
            const float a = a_s[pg];
#pragma unroll
            for (int u = 0; u < 8; ++u) acc[u] *= a;
            const float* pp = s_s + pg * DA_MAXT;
            for (int tt = tg; tt < n; tt += ngroups) {
                const float p = pp[tt];
                const Vec8<T> vv = *reinterpret_cast<const Vec8<T>*>(v_t + tt * d + pv * 8);
#pragma unroll
                for (int u = 0; u < 8; ++u) acc[u] = fmaf(p, to_f(vv.x[u]), acc[u]);
            }
        }
        __syncthreads();
    }

    // the block's output: its thread groups' sums added, normalised
    float* red = reinterpret_cast<float*>(k_raw);       // [ngroups][ntask][8]
    if (pv_on) {
#pragma unroll
        for (int u = 0; u < 8; ++u) red[(tg * ntask + task) * 8 + u] = acc[u];
    }
    __syncthreads();
    const int hq0 = h * G;
    for (int e = tid; e < G * d; e += nthreads) {
        const int g = e / d, j = e - g * d;
        const int t = g * dv + (j >> 3), u = j & 7;
        float o = 0.f;
        for (int r = 0; r < ngroups; ++r) o += red[(r * ntask + t) * 8 + u];
        const float l = l_s[g];
        if (splits == 1) {
            out[row * out_stride + (long)(hq0 + g) * d + j] = from_f<T>(o / l);
        } else {
            const long base = ((long)i * hq + hq0 + g) * splits + sp;
            part_o[base * d + j] = l > 0.f ? o / l : 0.f;
            if (j == 0) part_lse[base] = l > 0.f ? m_s[g] + logf(l) : DA_NEG_INF;
        }
    }
    if (splits == 1) return;

    // the last block of this (sequence, KV head) to finish merges every split's output
    __threadfence();
    __syncthreads();
    if (tid == 0) last_s = atomicAdd(counters + (long)i * hk + h, 1) == splits - 1;
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    float* w_s = s_s;                                    // [G][splits] log-sum-exps
    for (int e = tid; e < G * splits; e += nthreads) {
        const int g = e / splits, r = e - g * splits;
        w_s[e] = __ldcg(part_lse + ((long)i * hq + hq0 + g) * splits + r);
    }
    __syncthreads();
    for (int e = tid; e < G * d; e += nthreads) {
        const int g = e / d, j = e - g * d;
        const float* wg = w_s + g * splits;
        float big = DA_NEG_INF;
        for (int r = 0; r < splits; ++r) big = fmaxf(big, wg[r]);
        const float* po = part_o + ((long)i * hq + hq0 + g) * splits * d + j;
        float num = 0.f, den = 0.f;
        for (int r = 0; r < splits; ++r) {
            const float w = expf(wg[r] - big);           // empty runs: exp(-inf) = 0
            den += w;
            num = fmaf(w, __ldcg(po + (long)r * d), num);
        }
        out[row * out_stride + (long)(hq0 + g) * d + j] = from_f<T>(num / den);
    }
    if (tid == 0) counters[(long)i * hk + h] = 0;
}

#define FASTGEN_DECODE_ATTENTION(T, suffix)                                                                     \
    extern "C" __global__ void __launch_bounds__(DA_THREADS) decode_attention_##suffix(                          \
        const T* q, long q_stride, const T* k, long k_stride, const T* v, long v_stride, T* k_cache, T* v_cache, \
        const long* tables, long table_stride, const long* seqs, const long* rows, const long* ctx_lens,         \
        const long* positions, const long* slots, const float* inv_freq, T* out, long out_stride, float* part_o, \
        float* part_lse, int* counters, float scale, long window, int hq, int hk, int d, int rot,                \
        int block_size, int splits) {                                                                            \
        decode_attention<T>(q, q_stride, k, k_stride, v, v_stride, k_cache, v_cache, tables, table_stride, seqs, \
                            rows, ctx_lens, positions, slots, inv_freq, out, out_stride, part_o, part_lse,      \
                            counters, scale, window, hq, hk, d, rot, block_size, splits);                       \
    }

FASTGEN_DECODE_ATTENTION(float, f32)
FASTGEN_DECODE_ATTENTION(__nv_bfloat16, bf16)
FASTGEN_DECODE_ATTENTION(__half, f16)
