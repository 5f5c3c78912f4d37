"""What ``fastgen bench`` prints: a summary where each kind of figure has one precision and the derived columns
are explained under it, and, for --plot without matplotlib, the extra to install, before anything is measured."""
import re
import sys

import pytest

from fastgen_core.bench.cli import summary_table
from fastgen_core.cli import main


OFFLINE = {"kind": "offline", "engine": "fastgen", "mean_prompt": 1200, "mean_gen": 60, "wall_s": 12.5,
           "gen_tok_s": 1234.56789, "floor_s": 1.2, "floor_fraction": 0.69974, "floor_linear_s": 0.98765,
           "floor_linear_fraction": 0.5}
PEER = {**OFFLINE, "engine": "transformers-static", "batch_size": 64, "wall_s": 30.0, "gen_tok_s": 500.0,
        "ours_over_theirs": 2.5}
ONLINE = {"kind": "online", "mean_prompt": 1200, "mean_gen": 60, "clients": 8, "gen_tok_s": 488.9,
          "ttft_s_p50": 0.065, "tpot_s_p50": 0.0095, "e2e_s_p95": 1.69, "weight_read_s": 0.0013,
          "token_weight_read_s": 0.0013, "effective_rps_sla2": 7.8373, "effective_rps_sla4": 7.8,
          "effective_rps_sla6": 3.0}


def test_the_bench_summary_prints_each_kind_of_figure_with_one_precision():
    rows = summary_table([OFFLINE, PEER, ONLINE, {**ONLINE, "clients": 32, "effective_rps_sla2": 21.99112}])
    lines = rows.splitlines()
    ours = next(line for line in lines if line.startswith("fastgen "))
    theirs = next(line for line in lines if line.startswith("transformers-static bs64"))
    assert ours.split()[3:] == ["12.500", "1234.6", "1.200", "69.97%", "0.988", "50.00%"]
    assert theirs.split()[4:] == ["30.000", "500.0", "1.200", "69.97%", "0.988", "50.00%", "2.50x"]
    online = [line for line in lines if line.startswith("online 1200/60 C=")]
    assert online[0].split()[3:] == ["488.9", "0.065", "9.50", "7.31x", "1.690", "7.84/7.80/3.00"]
    assert online[1].split()[-1] == "21.99/7.80/3.00"


def test_the_bench_summary_explains_its_derived_columns():
    lines = summary_table([OFFLINE, ONLINE]).splitlines()
    header = next(line for line in lines if line.startswith("online "))
    assert "x weight read" in header and "eff rps@2/4/6" in header
    assert any(line.startswith("x weight read: TPOT p50 over the time to read the weights one token uses")
               for line in lines)
    assert any(line.startswith("eff rps@2/4/6: requests/s whose first token came within") for line in lines)
    assert "x weight read" not in summary_table([OFFLINE])          # no online rows, nothing to explain


def test_bench_plot_without_matplotlib_names_the_extra_before_measuring(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)            # as where the bench extra was never installed
    out = tmp_path / "r.jsonl"
    rc = main(["bench", "--preset", "tiny-llama", "--device", "cpu", "--num-requests", "2", "--prompt-mean", "8",
               "--gen-mean", "2", "--peer", "none", "--output", str(out), "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: --plot needs matplotlib, which is not installed: pip install 'fastgen-core[bench]' "
                          "(in a checkout of the repository: pip install -e '.[bench]')"), err
    assert not out.exists()                                          # refused before any measurement


def test_the_plot_command_names_the_extra(tmp_path, monkeypatch):
    from fastgen_core.bench import plot
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    f = tmp_path / "r.jsonl"
    f.write_text('{"kind": "online", "model": "a"}\n')
    with pytest.raises(SystemExit, match=re.escape("pip install 'fastgen-core[bench]'")):
        plot.main([str(f), str(tmp_path / "o.png")])
