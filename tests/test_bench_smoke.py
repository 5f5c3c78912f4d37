"""`fastgen bench` end to end on CPU with a tiny model (what CI can run), plus its pure helpers."""
import json

import pytest

from fastgen_core.bench import roofline
from fastgen_core.bench.online import percentile
from fastgen_core.bench.workload import make_workload, write_preset
from fastgen_core.cli import main


def test_bench_cli_writes_offline_online_floor_and_peer_records(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    rc = main(["bench", "--preset", "tiny-llama", "--device", "cpu", "--num-requests", "5", "--prompt-mean", "20",
               "--gen-mean", "5", "--online", "1,3", "--peer", "static", "--peer-batch-size", "4",
               "--max-ragged-batch-size", "32", "--output", str(out)])
    assert rc == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    kinds = [r["kind"] for r in recs]
    assert kinds.count("ceilings") == 1 and kinds.count("model") == 1
    assert [r["clients"] for r in recs if r["kind"] == "online_warm"] == [3]     # untimed, at the most clients
    ours = [r for r in recs if r["kind"] == "offline" and r["engine"] == "fastgen"]
    peer = [r for r in recs if r["kind"] == "offline" and r["engine"] == "transformers-static"]
    assert len(ours) == 1 and len(peer) == 1
    w = make_workload(5, 20, 5, 0, 512, 1024)
    assert ours[0]["gen_tokens"] == w.gen_tokens == peer[0]["gen_tokens"]
    assert ours[0]["prompt_tokens"] == w.prompt_tokens
    assert ours[0]["floor_s"] > ours[0]["floor_linear_s"] > 0 and ours[0]["floor_fraction"] == pytest.approx(
        ours[0]["floor_s"] / ours[0]["wall_s"], rel=0.01)
    assert ours[0]["floor_linear_fraction"] == pytest.approx(ours[0]["floor_linear_s"] / ours[0]["wall_s"], rel=0.01)
    assert ours[0]["wall_over_floor"] == pytest.approx(1 / ours[0]["floor_fraction"], rel=0.01)
    assert peer[0]["ours_over_theirs"] == pytest.approx(ours[0]["gen_tok_s"] / peer[0]["gen_tok_s"], rel=0.01)
    online = [r for r in recs if r["kind"] == "online"]
    assert [r["clients"] for r in online] == [1, 3]
    for r in online:        # max(8, 2C) requests each: the online workload is drawn larger than the offline one
        assert r["requests"] == 8 and r["clients_asked"] == r["clients"]
        for m in ("ttft_s", "tpot_s", "e2e_s"):
            assert 0 <= r[f"{m}_p50"] <= r[f"{m}_p90"] <= r[f"{m}_p95"]
        assert 0 <= r["served_frac_sla6"] <= r["served_frac_sla4"] <= r["served_frac_sla2"] <= 1
    assert "fastgen" in capsys.readouterr().out          # the summary table


def test_python_entry_point_returns_records(tmp_path):
    from fastgen_core.bench import run_bench
    recs = run_bench(preset="tiny-llama", device="cpu", num_requests=3, prompt_mean=12, gen_mean=[4, 6],
                     peer=[], output=str(tmp_path / "x.jsonl"))
    offline = [r for r in recs if r["kind"] == "offline"]
    assert [r["mean_gen"] for r in offline] == [4, 6]


def test_workload_is_deterministic_and_fits_the_context():
    a = make_workload(50, 1200, 60, seed=3, vocab_size=51200, max_context=2048)
    b = make_workload(50, 1200, 60, seed=3, vocab_size=51200, max_context=2048)
    assert a.prompts == b.prompts and a.gen_lens == b.gen_lens
    assert all(len(p) + g < 2048 for p, g in zip(a.prompts, a.gen_lens))
    assert all(100 <= t < 50000 for p in a.prompts for t in p)
    assert 900 < a.prompt_tokens / 50 < 1500
    with pytest.raises(ValueError, match="must be >= 1"):
        make_workload(0, 10, 10)


def test_floor_counts_only_top_k_experts_for_moe(tmp_path):
    import torch
    from fastgen_core.registry import FamilyRegistry
    d = write_preset("mixtral-small", tmp_path, num_layers=1)
    hf = json.loads((d / "config.json").read_text())
    mc = FamilyRegistry().resolve(hf).family.load_config_class().from_hf(hf)     # the family says what is active
    fake = torch.nn.Linear(1, 10_000_000_000 // 10**6, bias=False)     # count_params only needs numel
    c = roofline.count_params(fake, mc)
    expert = 3 * 4096 * 14336
    assert c["params"] - c["active_params"] == pytest.approx(1 * 8 * expert * (1 - 2 / 8), abs=1)
    ceil = {"gemm_TFLOPs": 100.0, "copy_TBps": 2.0}
    f = roofline.floor_seconds(1e9, 2e9, 1000, 100, 50, ceil)
    assert f == pytest.approx(2 * 1e9 * 1100 / 100e12 + 50 * 2e9 / 2e12)


def test_full_floor_counts_causal_prompt_attention_and_decode_kv_reads():
    """Against a brute-force count over every (query, key) pair: prompts attend causally, each decode reads
    its whole context's K/V once; a sliding window caps both."""
    geo = {"layers": 3, "q_heads": 8, "kv_heads": 2, "head_dim": 16, "window": None, "kv_bytes_per_value": 2}
    prompts, gens = [5, 40, 1], [3, 1, 6]

    def brute(window):
        keys = lambda p: min(p + 1, window) if window else p + 1      # noqa: E731  keys a query at p sees
        pk = sum(keys(i) for P in prompts for i in range(P))
        dk = sum(keys(P + j - 1) for P, g in zip(prompts, gens) for j in range(1, g))
        return pk, dk
    for window in (None, 4, 38, 1000):
        pk, dk = brute(window)
        c = roofline.attention_cost({**geo, "window": window}, prompts, gens)
        assert c["prompt_attention_flops"] == 4 * 3 * 8 * 16 * pk
        assert c["attention_flops"] == 4 * 3 * 8 * 16 * (pk + dk)
        assert c["kv_read_bytes"] == 2 * 3 * 2 * 16 * 2 * dk
    ceil = {"gemm_TFLOPs": 100.0, "copy_TBps": 2.0}
    f = roofline.floors(1e9, 2e9, geo, prompts, gens, ceil)
    c = roofline.attention_cost(geo, prompts, gens)
    assert f["floor_linear_s"] == roofline.floor_seconds(1e9, 2e9, sum(prompts), sum(gens), max(gens), ceil)
    assert f["floor_s"] == pytest.approx(f["floor_linear_s"] + c["attention_flops"] / 100e12
                                         + c["kv_read_bytes"] / 2e12)


def test_percentile():
    assert percentile([3, 1, 2, 4], 50) == 2.5
    assert percentile([5], 95) == 5
    assert percentile(list(range(101)), 90) == 90


def test_unknown_preset_and_bad_peer_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown preset"):
        write_preset("gpt-5", tmp_path)
    with pytest.raises(SystemExit):
        main(["bench", "--preset", "tiny-llama", "--peer", "vllm"])


def test_shared_prefix_workload_and_prefix_cached_bench(tmp_path):
    plain = make_workload(20, 100, 8, seed=2, vocab_size=512, max_context=1024)
    shared = make_workload(20, 100, 8, seed=2, vocab_size=512, max_context=1024, shared_prefix=64)
    assert [len(p) for p in plain.prompts] == [len(p) for p in shared.prompts]       # same lengths, same floor
    assert len({tuple(p[:64]) for p in shared.prompts if len(p) > 64}) == 1
    assert all(p[-1] == q[-1] for p, q in zip(plain.prompts, shared.prompts))
    out = tmp_path / "r.jsonl"
    assert main(["bench", "--preset", "tiny-llama", "--device", "cpu", "--num-requests", "6", "--prompt-mean", "60",
                 "--gen-mean", "4", "--peer", "none", "--shared-prefix", "48", "--enable-prefix-caching",
                 "--kv-block-size", "8", "--output", str(out)]) == 0
    ours = [json.loads(line) for line in out.read_text().splitlines()]
    ours = [r for r in ours if r["kind"] == "offline"]
    assert ours[0]["prefix_caching"] and ours[0]["shared_prefix"] == 48
    assert ours[0]["prefix_cache_hit_tokens"] >= 5 * 40             # every request after the first hits


def test_tensor_parallel_bench_counts_the_whole_model_and_both_ranks_ceilings(tmp_path):
    from fastgen_core.bench import run_bench
    common = dict(preset="tiny-llama", device="cpu", num_requests=3, prompt_mean=12, gen_mean=[4], peer=[],
                  warm_passes=0)
    one = run_bench(**common, output=str(tmp_path / "1.jsonl"))
    two = run_bench(**common, tensor_parallel_size=2, output=str(tmp_path / "2.jsonl"))
    model = [next(r for r in recs if r["kind"] == "model") for recs in (one, two)]
    assert model[0]["params"] == model[1]["params"] and model[0]["weight_bytes"] == model[1]["weight_bytes"]
    offline = [next(r for r in recs if r["kind"] == "offline") for recs in (one, two)]
    assert offline[1]["tensor_parallel_size"] == 2 and offline[1]["gen_tokens"] == offline[0]["gen_tokens"]
    ceil = [next(r for r in recs if r["kind"] == "ceilings") for recs in (one, two)]
    # the floor of two ranks uses twice the measured ceilings: recover the decode steps from the one-rank floor
    m, o = model[0], offline[0]
    flops = 2 * m["active_params"] * (o["prompt_tokens"] + o["gen_tokens"])
    steps = (o["floor_linear_s"] - flops / (ceil[0]["gemm_TFLOPs"] * 1e12)) * ceil[0]["copy_TBps"] * 1e12 / m["weight_bytes"]
    assert steps == pytest.approx(round(steps), abs=0.05) and steps >= 4
    want = flops / (2 * ceil[1]["gemm_TFLOPs"] * 1e12) + round(steps) * m["weight_bytes"] / (2 * ceil[1]["copy_TBps"] * 1e12)
    assert offline[1]["floor_linear_s"] == pytest.approx(want, rel=2e-3)
    o2 = offline[1]                     # attention's share of the floor also runs on both ranks' ceilings
    assert o2["attention_flops"] == o["attention_flops"] > 0 and o2["kv_read_bytes"] == o["kv_read_bytes"] > 0
    want_extra = (o2["attention_flops"] / (2 * ceil[1]["gemm_TFLOPs"] * 1e12)
                  + o2["kv_read_bytes"] / (2 * ceil[1]["copy_TBps"] * 1e12))
    # (both floors are stored to 4 significant digits)
    assert o2["floor_s"] - o2["floor_linear_s"] == pytest.approx(want_extra, abs=2e-3 * o2["floor_s"])


def test_pythia_1b_preset_builds_pythia_1b_through_its_plugin(tmp_path):
    """`--preset pythia-1b` is a GPT-NeoX model at Pythia-1B's size (its published parameter count), built by
    whichever installed plugin claims it."""
    import torch

    from fastgen_core.registry import FamilyRegistry
    hf = json.loads((write_preset("pythia-1b", tmp_path) / "config.json").read_text())
    family = FamilyRegistry().resolve(hf).family
    c = family.load_config_class().from_hf(hf)
    assert (family.name, c.head_dim, c.rotary_dim, c.use_parallel_residual) == ("gptneox", 256, 64, True)
    with torch.device("meta"):
        model = family.load_model_class()(c)
    assert sum(p.numel() for p in model.parameters()) == 1_011_781_632


def test_moe_token_weight_read_counts_only_the_active_experts():
    from fastgen_core.bench.cli import _weight_reads
    r = _weight_reads({"params": 46_700_000_000, "active_params": 12_900_000_000, "weight_bytes": 93_400_000_000},
                      {"copy_TBps": 4.3})
    assert abs(r["weight_read_s"] - 93.4 / 4300) < 1e-4 and abs(r["token_weight_read_s"] - 25.8 / 4300) < 1e-4


def test_online_runs_every_prompt_and_generation_scenario(tmp_path):
    """--prompt-mean and --gen-mean both take lists: one scenario per pair, offline and online, and each
    online record carries the weight-read time its per-token latency is compared with."""
    from fastgen_core.bench import run_bench
    recs = run_bench(preset="tiny-llama", device="cpu", num_requests=3, prompt_mean=[10, 20], gen_mean=[3, 5],
                     online=[1, 2], peer=[], warm_passes=0, output=str(tmp_path / "r.jsonl"), async_scheduling=False)
    online = [r for r in recs if r["kind"] == "online"]
    assert sorted({(r["mean_prompt"], r["mean_gen"]) for r in online}) == [(10, 3), (10, 5), (20, 3), (20, 5)]
    assert sorted(r["clients"] for r in online) == [1] * 4 + [2] * 4 and not any(r["async_scheduling"] for r in recs)
    assert all(r["weight_read_s"] > 0 and r["token_weight_read_s"] == r["weight_read_s"] for r in online)   # dense
    assert len([r for r in recs if r["kind"] == "offline"]) == 4
    only_online = run_bench(preset="tiny-llama", device="cpu", num_requests=3, prompt_mean=[10], gen_mean=[3],
                            online=[1], peer=[], warm_passes=0, offline=False, output=str(tmp_path / "o.jsonl"))
    assert [r["kind"] for r in only_online] == ["ceilings", "model", "online"]


def test_online_concurrency_is_what_was_reached(tmp_path):
    """Clients beyond the requests cannot run at once: the record says the concurrency reached."""
    from fastgen_core.bench.online import run_online
    from fastgen_core import pipeline
    d = write_preset("tiny-llama", tmp_path / "m")
    p = pipeline(str(d), device="cpu", load_format="dummy", max_ragged_batch_size=64)
    try:
        w = make_workload(3, 12, 4, 0, p.engine.model_config.vocab_size, p.engine.max_context)
        r = run_online(p.engine, w, 8, 10)
        assert (r["clients"], r["clients_asked"], r["requests"]) == (3, 8, 3)
    finally:
        p.destroy()


def test_plot_cli_names_what_it_could_not_use(tmp_path):
    from fastgen_core.bench import plot
    f = tmp_path / "r.jsonl"
    f.write_text(json.dumps({"kind": "online", "model": "a", "tag": "x"}) + "\n")
    with pytest.raises(SystemExit, match="no records in .* match model='b'"):
        plot.main([str(f), str(tmp_path / "o.png"), "--model", "b"])


def test_profile_steps_counts_overlapping_kernels_once():
    """tools/profile_steps.py's GPU busy time is the union of kernel intervals: a parallel layer's MLP on a second
    stream overlaps attention, and summing durations would put the busy time above the wall time."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "tools" / "profile_steps.py"
    spec = importlib.util.spec_from_file_location("profile_steps", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.busy_union_us([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert mod.busy_union_us([(3, 4), (0, 1)]) == 2
    assert mod.busy_union_us([]) == 0
