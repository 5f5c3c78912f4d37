import torch

from fastgen_core.sampler import Sampler, SamplingRow, apply_top_k_top_p
from fastgen_core.sampling import SamplingParams


def known_logits():
    probs = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.02])
    return probs.log()


def test_top_k_masks_all_but_k():
    out = apply_top_k_top_p(known_logits().repeat(3, 1), torch.tensor([1, 3, 0]), torch.ones(3))
    kept = torch.isfinite(out)
    assert kept[0].nonzero().flatten().tolist() == [0]
    assert kept[1].nonzero().flatten().tolist() == [0, 1, 2]
    assert kept[2].all()


def test_top_p_keeps_smallest_nucleus():
    out = apply_top_k_top_p(known_logits().repeat(3, 1), torch.zeros(3, dtype=torch.long),
                            torch.tensor([0.5, 0.8, 0.01]))
    kept = torch.isfinite(out)
    assert kept[0].nonzero().flatten().tolist() == [0, 1]          # 0.40 < 0.5 -> need the 0.25 too
    assert kept[1].nonzero().flatten().tolist() == [0, 1, 2]       # 0.40 + 0.25 = 0.65 < 0.8
    assert kept[2].nonzero().flatten().tolist() == [0]             # the top token is always kept


def test_sampled_tokens_stay_inside_the_allowed_set():
    sampler = Sampler()
    n = 4000
    logits = known_logits().repeat(n, 1)
    rows = [SamplingRow(SamplingParams(do_sample=True, top_k=3), None, [])] * (n // 2) + \
           [SamplingRow(SamplingParams(do_sample=True, top_p=0.5), None, [])] * (n // 2)
    toks = sampler(logits, rows)
    assert set(toks[: n // 2].tolist()) == {0, 1, 2}
    assert set(toks[n // 2:].tolist()) == {0, 1}
    # frequencies follow the renormalised distribution (0.40/0.65 for token 0 under top_p=0.5)
    frac0 = (toks[n // 2:] == 0).float().mean().item()
    assert abs(frac0 - 0.40 / 0.65) < 0.05


def test_greedy_rows_take_argmax_and_banned_ids_are_never_sampled():
    sampler = Sampler()
    logits = known_logits().repeat(3, 1)
    rows = [SamplingRow(SamplingParams(), None, []), SamplingRow(SamplingParams(), None, [0]),
            SamplingRow(SamplingParams(do_sample=True, temperature=0.0), None, [0, 1])]
    assert sampler(logits, rows).tolist() == [0, 1, 2]


def test_seeded_rows_do_not_depend_on_their_neighbours():
    sampler = Sampler()
    logits = torch.randn(5, 50)
    p = SamplingParams(do_sample=True, temperature=1.0)
    a = sampler(logits[2:3], [SamplingRow(p, torch.Generator().manual_seed(7), [])])
    rows = [SamplingRow(p, None, [])] * 5
    rows[2] = SamplingRow(p, torch.Generator().manual_seed(7), [])
    b = sampler(logits, rows)
    assert a.item() == b[2].item()
