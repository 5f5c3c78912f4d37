"""``fastgen bench``: offline and online measurements of our engine, the floor, and transformers.

    fastgen bench --preset phi-2 --num-requests 128 --prompt-mean 1200 --gen-mean 60 128 \\
                  --online 1,2,4,8,16,32 --peer static,continuous --output results.jsonl --plot phi2.png

Every measurement is appended as one JSON line to ``--output``, by default a new file per run under
``--results-dir`` ($FASTGEN_CACHE/bench, i.e. ~/.cache/fastgen/bench); the terminal shows a progress bar
and, at the end, a summary table and the file's path. Python: ``fastgen_core.bench.run_bench(preset="tiny-llama", device="cpu", ...) -> list[dict]``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

WARM_ONLINE_GEN = 32       # tokens per request of the untimed online run before the timed ones


def append_jsonl(path: str | Path, records: list[dict]) -> None:
    """Append ``records`` to ``path`` as JSON lines (its folder made if missing): how the bench and the tools
    in tools/ keep their measurements."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))


def _int_list(s: str) -> list[int]:
    try:
        xs = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {s!r}") from None
    if any(x < 1 for x in xs):
        raise argparse.ArgumentTypeError(f"values must be >= 1, got {s!r}")
    return xs


def _peer_modes(s: str) -> list[str]:
    modes = [x for x in s.split(",") if x and x != "none"]
    bad = [m for m in modes if m not in ("static", "continuous")]
    if bad:
        raise argparse.ArgumentTypeError(f"--peer takes none or a list of static,continuous; got {bad}")
    return modes


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..config import KERNELS_HELP, EngineConfig        # the engine options' defaults: one home
    defaults = EngineConfig
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="HF model directory or Hugging Face Hub id (org/name)")
    from ..presets import preset_names
    src.add_argument("--preset", choices=preset_names(),
                     help="a full-size architecture from a family plugin's config (dummy weights)")
    p.add_argument("--num-layers", type=int, default=None, help="override the preset's layer count")
    p.add_argument("--load-format", default=defaults.load_format, help="auto | safetensors | pt | dummy (presets: dummy)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--num-requests", type=int, default=128, help="requests per offline scenario")
    p.add_argument("--prompt-mean", type=int, nargs="+", default=[1200],
                   help="mean prompt length; several values: one scenario per (prompt, gen) pair (default: 1200)")
    p.add_argument("--gen-mean", type=int, nargs="+", default=[60], help="mean output length; one scenario per value")
    p.add_argument("--seed", type=int, default=0, help="of the workload and the dummy weights")
    p.add_argument("--max-ragged-batch-size", type=int, default=defaults.max_ragged_batch_size,
                   help="tokens per forward pass")
    p.add_argument("--max-ragged-sequence-count", type=int, default=defaults.max_ragged_sequence_count,
                   help="sequences per forward pass")
    p.add_argument("--kv-block-size", type=int, default=None, help="tokens per KV block (default: the engine's)")
    p.add_argument("--num-kv-blocks", type=int, default=None, help="KV cache blocks (default: what the memory allows)")
    p.add_argument("--gpu-memory-fraction", type=float, default=defaults.gpu_memory_fraction,
                   help="share of the GPU the engine may use")
    p.add_argument("--shared-prefix", type=int, default=0,
                   help="tokens every prompt starts with (a system prompt); lengths are unchanged")
    p.add_argument("--enable-prefix-caching", action="store_true",
                   help="our engine reuses cached prefix blocks (the floor still counts every prompt token)")
    p.add_argument("--warm-passes", type=int, default=1,
                   help="untimed passes over the first scenario before timing (their wall times are recorded); "
                        "with --online, also one untimed online run at the most clients")
    p.add_argument("--tensor-parallel-size", type=int, default=defaults.tensor_parallel_size,
                   help="shard the model over this many GPUs; the floor then uses this many cards' ceilings")
    p.add_argument("--kernels", default=None, help=KERNELS_HELP)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="run the step loop one step ahead of the GPU (default: the engine's choice, on for CUDA "
                        "without tensor parallelism)")
    p.add_argument("--no-offline", dest="offline", action="store_false",
                   help="skip the timed offline runs (the online runs and the warm-up pass still happen; default: "
                        "they run)")
    p.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false",
                   help="run decode steps eagerly (default: CUDA graphs on CUDA)")
    p.add_argument("--online", type=_int_list, default=[],
                   help="client counts for the closed-loop run, e.g. 1,2,4,8,16,32 (default: no online run)")
    p.add_argument("--online-requests", type=int, default=None, help="requests per client count (default max(8, 2C))")
    p.add_argument("--peer", type=_peer_modes, default=["static", "continuous"],
                   help="transformers' modes to compare with: none | static,continuous (default: static,continuous)")
    p.add_argument("--peer-batch-size", type=_int_list, default=[64],
                   help="batch sizes of the static peer, e.g. 16,64 (default: 64)")
    p.add_argument("--results-dir", default=None,
                   help="where each run writes its records, as <run>-<model>.jsonl (default: $FASTGEN_CACHE/bench, "
                        "i.e. ~/.cache/fastgen/bench)")
    p.add_argument("--output", default=None, help="append the records (JSON lines) to this file instead")
    p.add_argument("--plot", default=None, help="PNG path for throughput vs latency (needs matplotlib: pip install "
                                                "'fastgen-core[bench]')")
    p.add_argument("--tag", default="", help="free text stored with every record (default: none)")


def run(args) -> int:
    run_bench_args(args)
    return 0


def results_dir(args) -> Path:
    if args.results_dir:
        return Path(args.results_dir)
    from ..config import cache_dir
    return cache_dir() / "bench"


def run_bench(**options) -> list[dict]:
    """Python entry point: the same options as the CLI (underscored), returns the records written."""
    p = argparse.ArgumentParser()
    add_arguments(p)
    argv = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if k in ("cuda_graphs", "offline"):
            argv += [] if v else ["--no-" + k.replace("_", "-")]
        elif k == "async_scheduling" and v is not None:
            argv += [flag if v else "--no-" + k.replace("_", "-")]
        elif isinstance(v, bool):
            argv += [flag] if v else []
        elif isinstance(v, (list, tuple)) and k in ("gen_mean", "prompt_mean"):
            argv += [flag] + [str(x) for x in v]
        elif isinstance(v, (list, tuple)):
            argv += [flag, ",".join(str(x) for x in v) or "none"]
        elif v is not None:
            argv += [flag, str(v)]
    return run_bench_args(p.parse_args(argv))


def _env(device) -> dict:
    import torch
    import transformers
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu")
    return {"card": card, "torch": torch.__version__, "transformers": transformers.__version__,
            "date": datetime.date.today().isoformat()}


def run_bench_args(args) -> list[dict]:
    import torch
    from tqdm.auto import tqdm

    from ..config import EngineConfig
    from ..engine.engine import LLMEngine
    from ..errors import FastgenError
    from . import offline, online, peer, plot, roofline
    from .workload import Workload, make_workload, write_preset

    if args.plot and not plot.available():      # said now, not after the whole run
        raise FastgenError(f"--plot needs matplotlib, which is not installed: {plot.INSTALL_HINT}; or drop --plot "
                           "and plot the records later with python -m fastgen_core.bench.plot RECORDS.jsonl OUT.png")
    tmp = None
    if args.preset:
        tmp = tempfile.TemporaryDirectory(prefix=f"fastgen-bench-{args.preset}-")
        model_dir = write_preset(args.preset, tmp.name, args.num_layers)
        load_format, name = "dummy", args.preset + (f"-{args.num_layers}L" if args.num_layers else "")
    else:
        from ..hub import resolve_model
        model_dir, load_format, name = Path(resolve_model(args.model)), args.load_format, Path(args.model).name
    cfg = EngineConfig(str(model_dir), device=args.device, dtype=args.dtype, load_format=load_format,
                       max_ragged_batch_size=args.max_ragged_batch_size, kv_block_size=args.kv_block_size,
                       max_ragged_sequence_count=args.max_ragged_sequence_count, num_kv_blocks=args.num_kv_blocks,
                       gpu_memory_fraction=args.gpu_memory_fraction, seed=args.seed,
                       cuda_graphs=args.cuda_graphs, enable_prefix_caching=args.enable_prefix_caching,
                       tensor_parallel_size=args.tensor_parallel_size,
                       async_scheduling=args.async_scheduling, **({"kernels": args.kernels} if args.kernels else {}))
    device = cfg.torch_device()
    if cfg.dtype is None:
        cfg.dtype = "bfloat16" if device.type == "cuda" else "float32"
    run_id = time.strftime("%Y%m%dT%H%M%S")
    base = {"run": run_id, "model": name, "tag": args.tag, **_env(device), "dtype": str(cfg.dtype),
            "max_ragged_batch_size": args.max_ragged_batch_size,
            "cuda_graphs": bool(args.cuda_graphs and device.type == "cuda"), "shared_prefix": args.shared_prefix,
            "prefix_caching": args.enable_prefix_caching, "tensor_parallel_size": args.tensor_parallel_size,
            "async_scheduling": cfg.resolve_async_scheduling(args.tensor_parallel_size)}
    records: list[dict] = []
    out_path = Path(args.output) if args.output else results_dir(args) / f"{run_id}-{name}.jsonl"
    # one tick per stage: ceilings, load, warm-up, our scenarios, online client counts, the peer's scenarios
    n_scen = len(args.prompt_mean) * len(args.gen_mean)
    stages = 3 + n_scen * (bool(args.offline) + bool(args.peer) + len(args.online))
    bar = tqdm(total=stages, desc=f"bench {name}", unit="stage", dynamic_ncols=True)

    def emit(**rec):
        rec = {**base, **rec}
        records.append(rec)
        append_jsonl(out_path, [rec])

    def stage(done: str) -> None:
        bar.set_postfix_str(done, refresh=False)
        bar.update()

    ceilings = roofline.measure_ceilings(device, torch.bfloat16)
    emit(kind="ceilings", **ceilings)
    stage("ceilings")
    # N cards: N times one card's GEMM rate and bandwidth (measured on the first; replicated weights such as
    # the embeddings are read by every card, which this floor leaves out, so it errs low)
    tp = args.tensor_parallel_size
    floor_ceilings = {**ceilings, "gemm_TFLOPs": ceilings["gemm_TFLOPs"] * tp, "copy_TBps": ceilings["copy_TBps"] * tp}
    t = time.perf_counter()
    engine = LLMEngine(cfg)
    mc = engine.model_config
    counts = roofline.count_params(engine.model, mc)
    geometry = roofline.attention_geometry(mc, engine.dtype)
    plan = engine.kernel_plan
    emit(kind="model", load_s=round(time.perf_counter() - t, 2), kv_blocks=engine.allocator.num_blocks,
         kv_block_size=engine.allocator.block_size, **counts,
         kernel_plan=plan.as_record() if plan is not None else None)
    stage("model loaded")
    scenarios = []
    for pm in args.prompt_mean:
        for g in args.gen_mean:
            w = make_workload(args.num_requests, pm, g, args.seed, mc.vocab_size, engine.max_context,
                              args.shared_prefix)
            floor = roofline.floors(counts["active_params"], counts["weight_bytes"], geometry,
                                    [len(p) for p in w.prompts], w.gen_lens, floor_ceilings)
            scen = {"num_requests": args.num_requests, "mean_prompt": pm, "mean_gen": g}
            scenarios.append((scen, w, floor))
    offline.warm_up(engine, scenarios[0][1])
    # untimed full passes of the first scenario: a first pass meets kernel variants (Triton
    # specialisations, cuBLAS kernels loaded lazily) that a steady-state server has long loaded
    warm_walls = [offline.run_offline(engine, scenarios[0][1])["wall_s"] for _ in range(args.warm_passes)]
    stage("warm-up")
    ours = {}
    for scen, w, floor in scenarios if args.offline else []:
        r = offline.run_offline(engine, w)
        ours[(scen["mean_prompt"], scen["mean_gen"])] = r
        emit(kind="offline", engine="fastgen", **scen, **_vs_floor(r["wall_s"], floor), **r,
             warm_pass_wall_s=warm_walls)
        stage(f"fastgen {scen['mean_prompt']}/{scen['mean_gen']}")
    sizes = [args.online_requests or max(8, 2 * c) for c in args.online]
    for i, (scen, w, _) in enumerate(scenarios):
        if sizes and max(sizes) > len(w.prompts):   # the online runs draw more requests than the offline ones
            w = make_workload(max(sizes), scen["mean_prompt"], scen["mean_gen"], args.seed, mc.vocab_size,
                              engine.max_context, args.shared_prefix)
        if i == 0 and sizes and args.warm_passes:
            # mixed steps at many decode counts meet kernel variants the offline pass did not (on a fresh
            # machine the first timed run would pay for their compilation);
            # generations cut to WARM_ONLINE_GEN tokens: the step shapes are what matters, not the length
            c = max(args.online)
            short = Workload(w.prompts, [min(g, WARM_ONLINE_GEN) for g in w.gen_lens], w.mean_prompt, w.mean_gen,
                             w.seed)
            r = online.run_online(engine, short, c, max(sizes))
            emit(kind="online_warm", engine="fastgen", **scen, clients=r["clients"], wall_s=r["wall_s"])
        for c, n in zip(args.online, sizes):
            emit(kind="online", engine="fastgen", **scen, **online.run_online(engine, w, c, n),
                 **_weight_reads(counts, floor_ceilings))
            stage(f"online {scen['mean_prompt']}/{scen['mean_gen']} C={c}")
    engine.close()              # graphs and KV cache: the peer needs the memory
    del engine
    if device.type == "cuda":
        torch.cuda.empty_cache()
    theirs: dict = {}
    if args.peer:
        m = peer.load_peer(model_dir, device, cfg.torch_dtype(None), dummy=load_format == "dummy", seed=args.seed)
        peer.warm_peer(m, scenarios[0][1])
        for scen, w, floor in scenarios:
            for r in peer.run_peer(m, w, args.peer, args.peer_batch_size):
                extra = _floor_fields(floor)
                if "wall_s" in r:
                    extra = _vs_floor(r["wall_s"], floor)
                    mine = ours.get((scen["mean_prompt"], scen["mean_gen"]))
                    if mine is not None:
                        extra["ours_over_theirs"] = round(mine["gen_tok_s"] / r["gen_tok_s"], 3)
                    theirs[(scen["mean_prompt"], scen["mean_gen"], r["engine"], r.get("batch_size"))] = r
                emit(kind="offline", **scen, **r, **extra)
            stage(f"transformers {scen['mean_prompt']}/{scen['mean_gen']}")
        del m
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bar.close()
    if args.plot:
        png = plot.plot(records, args.plot, f"{name} on {base['card']}, {base['date']}")
        print(f"plot: {png}" if png else f"plot skipped: matplotlib is not installed ({plot.INSTALL_HINT})",
              file=sys.stderr)
    print("\n" + summary_table(records))
    print(f"\nrecords ({len(records)} JSON lines): {out_path}")
    if tmp is not None:
        tmp.cleanup()
    return records


def _floor_fields(floor: dict) -> dict:
    return {k: float(f"{v:.4g}") for k, v in floor.items()}


def _weight_reads(counts: dict, ceilings: dict) -> dict:
    """Seconds to read every weight once (``weight_read_s``) and what one token's forward reads at batch 1
    (``token_weight_read_s``: the active parameters' share, top-k experts for MoE; the per-token latency
    printed is over this one)."""
    bw = ceilings["copy_TBps"] * 1e12
    token_bytes = counts["weight_bytes"] * counts["active_params"] / max(counts["params"], 1)
    return {"weight_read_s": float(f"{counts['weight_bytes'] / bw:.4g}"),
            "token_weight_read_s": float(f"{token_bytes / bw:.4g}")}


def _vs_floor(wall_s: float, floor: dict) -> dict:
    """The floors (roofline.floors) and the share of each achieved: ``floor_fraction`` = floor_s / measured
    time against the full floor (attention and K/V reads counted), ``floor_linear_fraction`` against the
    linear layers' floor (1.0 = at the floor; docs/performance.md gives both as percentages).
    ``wall_over_floor`` is the inverse of ``floor_fraction``."""
    return {**_floor_fields(floor), "floor_fraction": float(f"{floor['floor_s'] / wall_s:.4g}"),
            "floor_linear_fraction": float(f"{floor['floor_linear_s'] / wall_s:.4g}"),
            "wall_over_floor": float(f"{wall_s / floor['floor_s']:.4g}")}


# what the online rows' derived columns mean, printed under them
ONLINE_NOTES = (
    "x weight read: TPOT p50 over the time to read the weights one token uses, once, at the measured bandwidth "
    "(1.0x: at that floor)",
    "eff rps@2/4/6: requests/s whose first token came within prompt length / 512 s, the rest at >= 2, 4 or 6 tok/s",
)


def summary_table(records: list[dict]) -> str:
    """The summary printed at the end of a run. Each kind of figure has one precision wherever it appears:
    seconds to the millisecond, milliseconds to 0.01, tok/s to 0.1, ratios (x) and requests/s to 0.01, floor
    shares to 0.01% (at one decimal 69.97% printed as 70.0%, beside a 70% bar)."""
    lines = [f"{'engine':<26}{'prompt':>7}{'gen':>5}{'wall s':>9}{'gen tok/s':>11}{'floor s':>9}{'%floor':>8}"
             f"{'linear s':>10}{'%linear':>9}{'ours/theirs':>12}"]
    for r in records:
        if r.get("kind") != "offline":
            continue
        name = r["engine"] + (f" bs{r['batch_size']}" if r.get("batch_size") else "")
        if "error" in r:
            lines.append(f"{name:<26}{r['mean_prompt']:>7}{r['mean_gen']:>5}  {r['error'][:60]}")
            continue
        ratio = f"{r['ours_over_theirs']:.2f}x" if "ours_over_theirs" in r else ""
        lines.append(f"{name:<26}{r['mean_prompt']:>7}{r['mean_gen']:>5}{r['wall_s']:>9.3f}{r['gen_tok_s']:>11.1f}"
                     f"{r['floor_s']:>9.3f}{100 * r['floor_fraction']:>7.2f}%{r['floor_linear_s']:>10.3f}"
                     f"{100 * r['floor_linear_fraction']:>8.2f}%{ratio:>12}")
    online = [r for r in records if r.get("kind") == "online"]
    if online:
        lines += ["", f"{'online':<22}{'gen tok/s':>11}{'TTFT p50 s':>12}{'TPOT p50 ms':>13}{'x weight read':>15}"
                      f"{'e2e p95 s':>11}  eff rps@2/4/6"]
    for r in online:
        read = r['tpot_s_p50'] / r.get('token_weight_read_s', r['weight_read_s'])
        rps = "/".join(f"{r[f'effective_rps_sla{s}']:.2f}" for s in (2, 4, 6))
        lines.append(f"{'online %d/%d C=%d' % (r['mean_prompt'], r['mean_gen'], r['clients']):<22}"
                     f"{r['gen_tok_s']:>11.1f}{r['ttft_s_p50']:>12.3f}{r['tpot_s_p50'] * 1e3:>13.2f}{read:>14.2f}x"
                     f"{r['e2e_s_p95']:>11.3f}  {rps}"
                     + (f"  allocator retries {r['allocator']['num_alloc_retries']}" if r.get("allocator") else ""))
    if online:
        lines += [""] + list(ONLINE_NOTES)
    return "\n".join(line.rstrip() for line in lines)
