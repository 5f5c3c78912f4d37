"""Throughput vs latency per engine, from bench records (matplotlib is optional)."""
from __future__ import annotations

from pathlib import Path

INSTALL_HINT = "pip install 'fastgen-core[bench]' (in a checkout of the repository: pip install -e '.[bench]')"


def available() -> bool:
    """matplotlib can be imported (the bench extra is installed)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(records: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Write a PNG: generated tok/s (x) vs latency (y) for each engine; None if matplotlib is missing.

    Ours online: one point per client count (P50 end-to-end latency). Offline runs (ours and the peer's):
    one point each at (tok/s, mean end-to-end latency, or the wall time when per-request times are unknown).
    """
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    scenarios = sorted({(r["mean_prompt"], r["mean_gen"]) for r in records if r.get("kind") == "online"})
    for scen in scenarios:          # one curve per (prompt, generation) scenario, a point per client count
        online = sorted((r for r in records if r.get("kind") == "online" and (r["mean_prompt"], r["mean_gen"]) == scen),
                        key=lambda r: r["clients"])
        ax.plot([r["gen_tok_s"] for r in online], [r["e2e_s_p50"] for r in online], "o-",
                label=f"fastgen online {scen[0]}/{scen[1]} (P50 e2e)")
        for r in online:
            ax.annotate(str(r["clients"]), (r["gen_tok_s"], r["e2e_s_p50"]), fontsize=7)
    for r in records:
        if r.get("kind") != "offline" or "gen_tok_s" not in r:
            continue
        y = r.get("mean_e2e_s", r["wall_s"])
        ax.scatter([r["gen_tok_s"]], [y], marker="s" if r["engine"] == "fastgen" else "^",
                   label=f"{r['engine']} offline {r.get('mean_prompt', '?')}/{r.get('mean_gen', '?')}"
                   + (f" bs{r['batch_size']}" if r.get("batch_size") else ""))
    ax.set_xlabel("generated tokens / s")
    ax.set_ylabel("latency (s)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m fastgen_core.bench.plot RECORDS.jsonl OUT.png [--model M] [--tag T]``: plot the records a
    bench run wrote (for instance on a machine without matplotlib), optionally only one model's or tag's."""
    import argparse
    import json
    ap = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    ap.add_argument("records")
    ap.add_argument("out")
    ap.add_argument("--model", default=None, help="only records whose model is this")
    ap.add_argument("--tag", default=None, help="only records with this tag")
    ap.add_argument("--title", default="")
    a = ap.parse_args(argv)
    recs = [json.loads(line) for line in Path(a.records).read_text().splitlines() if line.strip()]
    recs = [r for r in recs
            if (a.model is None or r.get("model") == a.model) and (a.tag is None or r.get("tag") == a.tag)]
    if not recs:
        raise SystemExit(f"no records in {a.records} match model={a.model!r} tag={a.tag!r}")
    out = plot(recs, a.out, a.title)
    if out is None:
        raise SystemExit(f"plotting needs matplotlib, which is not installed: {INSTALL_HINT}")
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
