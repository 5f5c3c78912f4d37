"""What ``fastgen bench`` prints for --plot without matplotlib: the extra to install, before anything is measured."""
import re
import sys

import pytest

from fastgen_core.cli import main


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
