"""Run the Triton attention kernels under Triton's interpreter on the CPU and print their relative errors
against the float64 reference as one JSON object (see test_attention_kernels_interpreted.py, which runs
this in a fresh process: TRITON_INTERPRET must be set before Triton is first imported)."""
import json
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from attention_cases import random_case  # noqa: E402

CASES = {  # name: (hq, hk, d, block_size, sliding_window, chunks (start, length))
    "phi-mha-d80-mid-block": (4, 4, 80, 16, None, [(0, 37), (70, 21), (5, 40)]),
    "gqa-block-edge": (8, 2, 64, 16, None, [(0, 70), (32, 17)]),
    "mqa-odd-heads": (6, 1, 32, 32, None, [(0, 5), (100, 64)]),
    "d96-gqa": (6, 2, 96, 16, None, [(0, 50), (33, 40)]),
    "window-smaller-than-chunk": (4, 2, 64, 16, 21, [(0, 60), (40, 30)]),
    "window-edge-mid-tile": (4, 2, 64, 32, 40, [(90, 3), (0, 41)]),
}


def _index_scalars_compat():
    """Triton's interpreter holds a loaded scalar as a 1-element array and takes ``int()`` of it as a loop
    bound; numpy >= 2.4 refuses that conversion. Index such arrays by their one element."""
    from triton.runtime import interpreter
    orig = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
    interpreter._patch_lang_tensor = patched


def _err(out, ref):
    if out.isnan().any():
        return "unwritten rows (nan)"
    return ((out.double() - ref).norm() / ref.norm()).item()


def main() -> dict:
    _index_scalars_compat()
    from fastgen_core import kernels
    from fastgen_core.layers import attention as A
    from fastgen_core.layers import paged_decode, paged_prefill
    assert paged_decode.available() and paged_prefill.available(), "the kernels did not load"
    res = {}
    for name, (hq, hk, d, bs, win, chunks) in CASES.items():
        for dtype in (torch.float32, torch.float16):
            q, _, _, kc, vc, meta = random_case(0, chunks, hq, hk, d, bs, "cpu", dtype, seed=len(name))
            ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
            out = torch.full_like(q, float("nan"))
            paged_prefill.paged_prefill(q, kc, vc, meta, d ** -0.5, win, out)
            res[f"prefill/{name}/{str(dtype)[6:]}"] = _err(out, ref)
        # a mixed batch through paged_attention_cuda's dispatch: decode rows and prompt chunks
        q, _, _, kc, vc, meta = random_case(5, chunks, hq, hk, d, bs, "cpu", torch.float32, seed=7, max_ctx=90)
        ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
        out = A.paged_attention_cuda(q, kc, vc, meta, d ** -0.5, win)
        res[f"mixed/{name}/float32"] = _err(out, ref)
        res[f"mixed-decode-rows/{name}/float32"] = _err(out[meta.decode_rows], ref[meta.decode_rows])
        # the same batch where the plan keeps exact_sdpa (Mixtral's does), with this step's K/V: whole prompts that
        # no window cuts through SDPA, the other chunks through the Triton kernel, each taking only its own
        q, kn, vn, kc, vc, meta = random_case(5, chunks, hq, hk, d, bs, "cpu", torch.float32, seed=7, max_ctx=90)
        whole = [5 + i for i, (st, n) in enumerate(chunks) if st == 0 and not (win and n > win)]  # after 5 decodes
        taken, real_sdpa, real_triton = [], A._prefill_cuda, paged_prefill.paged_prefill

        def sdpa(*a):
            taken.append(("sdpa", a[-1]))
            return real_sdpa(*a)

        def triton(*a, seqs=None):
            taken.append(("triton", seqs))
            return real_triton(*a, seqs=seqs)
        A._prefill_cuda, paged_prefill.paged_prefill = sdpa, triton
        # with this step's K/V, and without them (the fused rotary kernel wrote them into the cache: read back)
        for tag, new in (("", (kn, vn)), ("-read-back", ())):
            taken.clear()
            with kernels.plan_scope(kernels.default_plan((), ("exact_sdpa",))):
                out = A.paged_attention_cuda(q, kc, vc, meta, d ** -0.5, win, *new)
            rest = [s for s in meta.prefill_seqs if s not in whole]
            routed = taken == ([("sdpa", whole), ("triton", rest)] if whole else [("triton", None)])
            res[f"exact-step{tag}/{name}/float32"] = (_err(out, ref) if routed
                                                      else f"routed {taken}, whole prompts {whole}")
        A._prefill_cuda, paged_prefill.paged_prefill = real_sdpa, real_triton
    # decode rows whole (1) or split over the context (flash-decoding) and merged, windowed or not
    for name, (hq, hk, d, bs, win) in {"split-mha-d80": (4, 4, 80, 16, None), "split-gqa-window": (8, 2, 64, 16, 37),
                                        "split-mqa": (6, 1, 32, 32, None),
                                        "split-mha-window": (4, 4, 64, 16, 29)}.items():
        q, _, _, kc, vc, meta = random_case(6, [], hq, hk, d, bs, "cpu", torch.float32, seed=3, max_ctx=200)
        ref = A.paged_attention_ref(q.double(), kc.double(), vc.double(), meta, d ** -0.5, win)
        for splits in (1, 2, 8):
            out = torch.full_like(q, float("nan"))
            paged_decode.paged_decode(q, kc, vc, meta, d ** -0.5, win, out, splits=splits)
            res[f"decode/{name}-{splits}/float32"] = _err(out, ref)
    # q as the QKV projection's view (rows further apart than the heads), as the fused rotary path passes it
    q, _, _, kc, vc, meta = random_case(0, [(3, 20), (0, 9)], 4, 2, 32, 16, "cpu", torch.float32, seed=5)
    qkv = torch.randn(q.shape[0], (4 + 2 * 2) * 32)
    qkv[:, :4 * 32] = q.reshape(q.shape[0], -1)
    out = torch.full_like(q, float("nan"))
    paged_prefill.paged_prefill(qkv[:, :4 * 32].view(-1, 4, 32), kc, vc, meta, 0.2, None, out)
    res["prefill/strided-q/float32"] = _err(out, A.paged_attention_ref(q.double(), kc.double(), vc.double(),
                                                                        meta, 0.2, None))
    return res


if __name__ == "__main__":
    print(json.dumps(main()))
