"""Time one step's prompt-chunk attention on a GPU: the Triton paged-prefill kernel (over a few tile
configurations) against the SDPA path it replaces, on the ragged mixes a SplitFuse step of 2048 tokens holds.

    python3 tools/attention_bench.py            # prints a table; --json FILE appends the numbers
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from attention_cases import random_case  # noqa: E402
from fastgen_core.bench.cli import append_jsonl  # noqa: E402

from fastgen_core.layers import attention as A  # noqa: E402
from fastgen_core.layers import mha_decode as MD  # noqa: E402
from fastgen_core.layers import paged_decode as PD  # noqa: E402
from fastgen_core.layers import paged_prefill as P  # noqa: E402

SHAPES = {"phi-2": (32, 32, 80), "llama-2-7b": (32, 32, 128), "mixtral/llama3 gqa": (32, 8, 128),
          "falcon-7b mqa": (71, 1, 64)}
MIXES = {  # (start, length) of each prompt chunk in a 2048-token step
    "two fresh prompts": [(0, 1200), (0, 848)],
    "fresh + continuation": [(0, 1200), (1200, 848)],
    "continuations at 3k-6k": [(3000, 1024), (6000, 1024)],
}
CONFIGS = [(64, 64, 4, 2), (128, 64, 4, 2), (128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 32, 4, 3)]
DECODES = {  # name: (hq, hk, d, sequences, context)
    "phi-2 128 x 1200": (32, 32, 80, 128, 1200), "llama-2-7b 64 x 1200": (32, 32, 128, 64, 1200),
    "gqa 64 x 1200": (32, 8, 128, 64, 1200), "falcon-7b mqa 64 x 1200": (71, 1, 64, 64, 1200),
    "phi-2 1 x 1200": (32, 32, 80, 1, 1200), "phi-2 8 x 1200": (32, 32, 80, 8, 1200), "phi-2 32 x 1200": (32, 32, 80, 32, 1200),
    "llama-2-7b 16 x 1200": (32, 32, 128, 16, 1200), "phi-2 128 x 2400": (32, 32, 80, 128, 2400),
    "opt-1.3b (head_dim 64) 64 x 1200": (32, 32, 64, 64, 1200),
    "phi-3-mini (head_dim 96) 64 x 1200": (32, 32, 96, 64, 1200),
    "llama-2-7b 8 x 4000": (32, 32, 128, 8, 4000),
    # the same kernel over a head-major cache ([blocks, heads, 16|32 tokens, head_dim]: one head's keys of a block
    # in one run) instead of the engine's token-major one (a slot holds every head's row, so Phi-2's 160-byte rows
    # lie 5 KB apart): each (sequence, head) runs as a one-head sequence whose table points at its head's blocks
    "phi-2 128 x 1200 head-major": (32, 32, 80, 128, 1200), "llama-2-7b 64 x 1200 head-major": (32, 32, 128, 64, 1200)}
DECODE_CONFIGS = [None, (32, 4, 3), (64, 4, 2), (64, 4, 3), (64, 4, 4), (128, 4, 2), (128, 8, 2), (64, 2, 3),
                  (32, 2, 4), (128, 4, 3)]


def decode_bench(rows, mha_only: bool = False):
    """Decode attention: the share of the copy bandwidth its K/V reads reach (one step, one layer). With
    ``mha_only``: the shapes without GQA, the Triton kernel (its tiles for the step) against mha_decode's forms."""
    for name, (hq, hk, d, n, ctx) in DECODES.items():
        if mha_only and (hq != hk or name.endswith("head-major") or n * hk < MD.MIN_PROGRAMS):
            continue
        g = torch.Generator().manual_seed(0)
        nb = -(-ctx // 32)                        # every sequence its own blocks: nothing shared through L2
        tables = torch.randperm(n * nb + 3, generator=g)[:n * nb].view(n, nb)
        gb = n * ctx * hk * d * 2 * 2 / 1e9
        if name.endswith("head-major"):           # row h * n + s: sequence s's head h, over blocks b * hk + h
            q, _, _, kc, vc, meta = random_case(n * hk, [], 1, 1, d, 32, "cuda", torch.bfloat16, max_ctx=ctx + 1)
            kc = torch.randn((n * nb + 3) * hk, 32, 1, d, device="cuda", dtype=torch.bfloat16)
            tables = (tables.unsqueeze(0) * hk + torch.arange(hk).view(hk, 1, 1)).reshape(hk * n, nb)
            n = n * hk
        else:
            q, _, _, kc, vc, meta = random_case(n, [], hq, hk, d, 32, "cuda", torch.bfloat16, max_ctx=ctx + 1)
            kc = torch.randn(n * nb + 3, 32, hk, d, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        meta.context_lens.fill_(ctx)              # every sequence at the full context
        meta.context_lens_host = [ctx] * n
        meta.block_tables = tables.cuda()
        meta.max_decode_context = ctx
        out = torch.empty_like(q)
        res = {"decode": name, "GB": round(gb, 3)}
        if mha_only:
            mha_rows(res, q, kc, vc, meta, d, gb)
            rows.append(res)
            print(json.dumps(res), flush=True)
            continue
        best = None
        for cfg in DECODE_CONFIGS:
            try:
                ms = triton.testing.do_bench(lambda: PD.paged_decode(q, kc, vc, meta, d ** -0.5, None, out, cfg),
                                             warmup=25, rep=100, return_mode="median")
            except Exception as e:
                res[str(cfg)] = f"error {type(e).__name__}"
                continue
            res[str(cfg)] = [round(ms, 4), round(gb / ms, 2)]           # ms, TB/s
            best = min(best or (ms, str(cfg)), (ms, str(cfg)))
        res["best"] = [round(best[0], 4), best[1], round(gb / best[0], 2)]
        for splits in (1, 2, 4, 8, 16):                # flash-decoding splits at the default tiles
            ms = triton.testing.do_bench(lambda: PD.paged_decode(q, kc, vc, meta, d ** -0.5, None, out, None, splits),
                                         warmup=25, rep=100, return_mode="median")
            res[f"splits={splits}"] = [round(ms, 4), round(gb / ms, 2)]
        rows.append(res)
        print(json.dumps(res), flush=True)


def mha_rows(res, q, kc, vc, meta, d, gb):
    """One decode shape: the Triton kernel at the tiles it takes for the step, then each mha_decode form."""
    out = torch.empty_like(q)
    cfg = PD.tile_config(meta.decode_rows.numel() * kc.shape[-2], q.dtype)
    fns = {}
    for first, tag in ((False, ""), (True, " heads first")):
        fns["triton" + tag] = lambda first=first: PD.paged_decode(q, kc, vc, meta, d ** -0.5, None, out, cfg,
                                                                  heads_first_grid=first)
        for form in MD.FORMS:
            fns[f"mha{form}{tag}"] = lambda form=form, first=first: MD.mha_decode(
                q, kc, vc, meta, d ** -0.5, None, out, form, heads_first_grid=first)
    for key, fn in fns.items():
        ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        res[key] = [round(ms, 4), round(gb / ms, 2)]            # ms, TB/s
    ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, None)
    MD.mha_decode(q, kc, vc, meta, d ** -0.5, None, out)
    res["mha_err"] = float((out.double() - ref).norm() / ref.norm())


SMALL_DECODES = {  # few sequences: what split-K is for; name: (hq, hk, d, sequences, context)
    "phi-2 1 x 1200": (32, 32, 80, 1, 1200), "phi-2 4 x 1200": (32, 32, 80, 4, 1200),
    "llama-2-7b 1 x 1200": (32, 32, 128, 1, 1200), "llama-2-7b 1 x 4000": (32, 32, 128, 1, 4000),
    "mixtral 1 x 1200": (32, 8, 128, 1, 1200), "falcon-7b mqa 64 x 1200": (71, 1, 64, 64, 1200),
    "falcon-7b mqa 1 x 1200": (71, 1, 64, 1, 1200)}


def small_decode_sweep(rows, tiles: bool = True):
    """Decode attention with few sequences, timed inside a CUDA graph (as the engine replays it: a launch
    from the host takes longer than these kernels run): tiles x context splits (``tiles``), against the
    default; then the unfused layer path against the fused kernel."""
    for name, (hq, hk, d, n, ctx) in SMALL_DECODES.items():
        g = torch.Generator().manual_seed(0)
        q, _, _, kc, vc, meta = random_case(n, [], hq, hk, d, 32, "cuda", torch.bfloat16, max_ctx=ctx + 1)
        meta.context_lens.fill_(ctx)
        meta.context_lens_host = [ctx] * n
        nb = -(-ctx // 32)                        # the engine's block size
        kc = torch.randn(n * nb + 3, 32, hk, d, device="cuda", dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        meta.block_tables = torch.randperm(kc.shape[0], generator=g)[:n * nb].view(n, nb).cuda()
        meta.max_decode_context = ctx
        gb = n * ctx * hk * d * 2 * 2 / 1e9
        out = torch.empty_like(q)

        def us(cfg, splits):
            return 1e3 * triton.testing.do_bench_cudagraph(
                lambda: PD.paged_decode(q, kc, vc, meta, d ** -0.5, None, out, cfg, splits), rep=50)
        res = {"small_decode": name, "GB": round(gb, 4), "default_us": round(us(None, None), 2),
               "default": [PD.tile_config(n * hk, torch.bfloat16), PD.num_splits(n * hk)]}
        best = None
        for block_n in (16, 32, 64, 128) if tiles else ():
            for splits in (1, 4, 8, 16, 32, 64):
                try:
                    t = us((block_n, 4, 3), splits)
                except Exception as e:
                    res[f"n{block_n}s{splits}"] = f"error {type(e).__name__}"
                    continue
                res[f"n{block_n}s{splits}"] = round(t, 2)
                best = min(best or (t, block_n, splits), (t, block_n, splits))
        if best:
            res["best"] = [round(best[0], 2), best[1], best[2], round(gb / best[0] * 1e3, 2)]
        print(f"{name:26} default {res['default_us']:7.2f} us {res['default']}" + (
            f"  best {res['best'][0]:7.2f} us BLOCK_N {best[1]} splits {best[2]} ({res['best'][3]} TB/s)"
            if best else ""), flush=True)
        fused_vs_unfused(res, q, kc, vc, meta, hk, d)
        rows.append(res)


def fused_vs_unfused(res, q, kc, vc, meta, hk, d):
    """One layer's decode attention with what surrounds it, in a CUDA graph: the unfused path (rotary_kv_write,
    then the default split decode and its merge) against the fused kernel (decode_attention.cu) by splits."""
    from fastgen_core.layers import decode_attention as DA
    from fastgen_core.layers.rotary import RotaryEmbedding, rotary_kv_write
    n = q.shape[0]
    if not DA.fits(q.shape[1], hk, d):
        return
    rotary = RotaryEmbedding(d, 32 if d == 80 else d).cuda()
    k = torch.randn(n, hk, d, device="cuda", dtype=q.dtype)
    v = torch.randn_like(k)
    pos = meta.context_lens - 1
    out = torch.empty_like(q)

    class Owner:
        pass
    owner = Owner()

    def unfused():
        qr = rotary_kv_write(q, k, v, pos, rotary, kc, vc, meta.slot_mapping)
        PD.paged_decode(qr, kc, vc, meta, d ** -0.5, None, out)

    def us(fn):
        fn()
        return round(1e3 * triton.testing.do_bench_cudagraph(fn, rep=50), 2)
    res["unfused_us"] = us(unfused)
    res["fused_default_splits"] = DA.num_splits(n * hk)
    for splits in (4, 8, 16, 32):
        res[f"fused_s{splits}_us"] = us(lambda: DA.fused_decode_attention(
            q, k, v, pos, rotary, kc, vc, meta, d ** -0.5, None, owner, splits=splits))
    print(f"  rotary + KV write + attention: unfused {res['unfused_us']} us, fused "
          + ", ".join(f"{s} splits {res[f'fused_s{s}_us']} us" for s in (4, 8, 16, 32)), flush=True)


def flops(meta, hq, d):
    keys = sum(sum(range(ctx - n + 1, ctx + 1)) for s in meta.prefill_seqs
               for n, ctx in [(meta.query_lens[s], meta.context_lens_host[s])])
    return 4 * hq * d * keys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--small-decode-only", action="store_true", help="only the few-sequence decode sweep")
    ap.add_argument("--no-tiles", action="store_true", help="the few-sequence sweep without its tile sweep")
    ap.add_argument("--decode-only", action="store_true",
                    help="only the many-sequence decode sweep (tiles, splits)")
    ap.add_argument("--mha", action="store_true",
                    help="only the many-sequence decode shapes without GQA: Triton against mha_decode's forms")
    a = ap.parse_args()
    rows = []
    if a.decode_only or a.mha:
        decode_bench(rows, mha_only=a.mha)
        if a.json:
            append_jsonl(a.json, rows)
        return
    small_decode_sweep(rows, tiles=not a.no_tiles)
    if a.small_decode_only:
        if a.json:
            append_jsonl(a.json, rows)
        return
    decode_bench(rows)
    for sname, (hq, hk, d) in SHAPES.items():
        for mname, chunks in MIXES.items():
            q, kn, vn, kc, vc, meta = random_case(0, chunks, hq, hk, d, 32, "cuda", torch.bfloat16, seed=1,
                                                  max_ctx=2)
            f = flops(meta, hq, d)
            out = torch.empty_like(q)
            res = {"shape": sname, "mix": mname, "tflop": round(f / 1e12, 3)}
            fresh = all(meta.context_lens_host[s] == meta.query_lens[s] for s in meta.prefill_seqs)
            with torch.nn.attention.sdpa_kernel(A._SDPA_BACKENDS):
                ms = triton.testing.do_bench(lambda: A._prefill_cuda(q, kn if fresh else None, vn if fresh else None,
                                                                     kc, vc, meta, out, d ** -0.5, None),
                                             warmup=25, rep=100, return_mode="median")
            res["sdpa_ms"] = round(ms, 3)
            best = None
            for cfg in CONFIGS:
                try:
                    ms = triton.testing.do_bench(lambda: P.paged_prefill(q, kc, vc, meta, d ** -0.5, None, out, cfg),
                                                 warmup=25, rep=100, return_mode="median")
                except Exception as e:   # out of shared memory / registers for this tile
                    res[str(cfg)] = f"error {type(e).__name__}"
                    continue
                res[str(cfg)] = round(ms, 3)
                best = min(best or (ms, cfg), (ms, cfg))
            ms = triton.testing.do_bench(lambda: P.paged_prefill(q, kc, vc, meta, d ** -0.5, None, out),
                                         warmup=25, rep=100, return_mode="median")
            res["kernel_default_ms"] = round(ms, 3)
            res["kernel_default_TFLOPs"] = round(f / ms / 1e9, 1)
            res["best"] = [round(best[0], 3), best[1]] if best else None
            rows.append(res)
            print(json.dumps(res), flush=True)
    print(f"\n{'shape':<20}{'mix':<24}{'TFLOP':>7}{'sdpa ms':>9}{'kernel ms':>10}{'TFLOP/s':>9}  best (ms, cfg)")
    for r in rows:
        if "decode" in r:
            continue
        print(f"{r['shape']:<20}{r['mix']:<24}{r['tflop']:>7}{r['sdpa_ms']:>9}{r['kernel_default_ms']:>10}"
              f"{r['kernel_default_TFLOPs']:>9}  {r['best']}")
    print(f"\n{'decode':<26}{'GB':>7}{'default ms':>11}{'TB/s':>6}  best (ms, cfg, TB/s)   ms by splits 1/2/4/8/16")
    for r in rows:
        if "decode" in r:
            print(f"{r['decode']:<26}{r['GB']:>7}{r['None'][0]:>11}{r['None'][1]:>6}  {r['best']}   "
                  + " / ".join(str(r[f"splits={n}"][0]) for n in (1, 2, 4, 8, 16)))
    if a.json:
        append_jsonl(a.json, rows)


if __name__ == "__main__":
    main()
