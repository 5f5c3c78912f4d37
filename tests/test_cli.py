"""The command line as a newcomer meets it: sampling flags mean sampling, --version, --help with defaults, bench
output in a results directory with a quiet terminal, snapshots written 0644 and refused with a hint when loaded
as a checkpoint. (SIGINT and the server extras: tests/server/test_server_cli.py.)"""
import argparse
import json
import os
import re
import stat
import warnings

import pytest

from fastgen_core import sampling
from fastgen_core.cli import build_parser, main

GEN = ["--device", "cpu", "--max-new-tokens", "16", "--ignore-eos"]


def generate(capsys, model, *flags, prompt="Hello"):
    rc = main(["generate", "--model", str(model), *GEN, *flags, prompt])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("flags,options", [
    (["--top-p", "0.9", "--seed", "1"], dict(top_p=0.9, seed=1)),
    (["--top-p", "0.9", "--seed", "2"], dict(top_p=0.9, seed=2)),
    (["--seed", "3"], dict(seed=3)),
    (["--top-k", "5", "--seed", "4"], dict(top_k=5, seed=4)),
    (["--temperature", "0.7", "--seed", "5"], dict(temperature=0.7, seed=5)),
    ([], dict(do_sample=False)),
    (["--temperature", "0"], dict(do_sample=False)),
])
def test_any_sampling_flag_means_sampling(tiny_model_dir, pipe, capsys, flags, options):
    rc, out, _ = generate(capsys, tiny_model_dir[0], *flags)
    assert rc == 0
    want = pipe("Hello", max_new_tokens=16, ignore_eos=True, **{"do_sample": True, **options})[0].generated_text
    assert out == want + "\n"


def test_different_seeds_sample_different_text(tiny_model_dir, capsys):
    texts = {generate(capsys, tiny_model_dir[0], "--top-p", "0.9", "--seed", str(s))[1] for s in (1, 2)}
    assert len(texts) == 2, texts


def test_temperature_0_with_sampling_flags_is_an_error(tiny_model_dir, capsys):
    rc, out, err = generate(capsys, tiny_model_dir[0], "--temperature", "0", "--top-p", "0.9", "--seed", "1")
    assert rc == 2 and out == ""
    assert "--temperature 0 means greedy decoding, but --top-p, --seed only act when sampling" in err


def test_the_python_api_warns_once_when_sampling_options_lack_do_sample(pipe, monkeypatch):
    monkeypatch.setattr(sampling, "_warned_unused", set())        # as in a fresh process
    greedy = pipe("Hi", max_new_tokens=6, ignore_eos=True)[0].token_ids
    with pytest.warns(UserWarning, match=r"temperature=0\.7, top_p=0\.9 only act when sampling, but do_sample is "
                                         r"False.*pass do_sample=True"):
        got = pipe("Hi", max_new_tokens=6, ignore_eos=True, temperature=0.7, top_p=0.9)[0].token_ids
    assert got == greedy                     # what the warning says: greedy, the options ignored
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # once: a second call says nothing, nor does do_sample=True
        pipe("Hi", max_new_tokens=2, temperature=0.7, top_p=0.9)
        pipe("Hi", max_new_tokens=2, do_sample=True, temperature=0.7, seed=1)


def test_version(capsys):
    from fastgen_core import __version__
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"fastgen {__version__} (fastgen-core)\n"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"fastgen": parser, **sub.choices}


@pytest.mark.parametrize("name", ["fastgen", "generate", "plugins", "snapshot", "serve", "bench"])
def test_help_shows_every_default(name):
    """Each option has help, and an option with a default shows it (as "(default: ...)", or in its own words)."""
    parser = subcommands()[name]
    text = parser.format_help()
    blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "version"):
            continue
        assert action.help, f"fastgen {name} {action.option_strings[0]} has no help"
        block = next(b for b in blocks if b.startswith(action.option_strings[0]))
        if action.default is not None and action.default is not False:
            assert "default" in block, f"fastgen {name} --help does not show the default of {block!r}"


def test_bench_writes_to_a_results_dir_and_keeps_the_terminal_quiet(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FASTGEN_CACHE", str(tmp_path / "cache"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(["bench", "--preset", "tiny-llama", "--device", "cpu", "--num-requests", "3", "--prompt-mean", "12",
                 "--gen-mean", "4", "--online", "1", "--peer", "none"]) == 0
    out, err = capsys.readouterr()
    files = list((tmp_path / "cache" / "bench").glob("*-tiny-llama.jsonl"))
    assert len(files) == 1 and list(cwd.iterdir()) == []
    records = [json.loads(line) for line in files[0].read_text().splitlines()]
    assert [r["kind"] for r in records] == ["ceilings", "model", "offline", "online_warm", "online"]
    assert not any(line.lstrip().startswith("{") for line in out.splitlines())     # JSON goes to the file only
    assert "fastgen" in out and "online 12/4 C=1" in out and f"records (5 JSON lines): {files[0]}" in out
    assert "bench tiny-llama" in err and "100%" in err and "5/5" in err         # the progress bar
    assert "$FASTGEN_CACHE/bench" in subcommands()["bench"].format_help()


def test_a_snapshot_is_written_0644_and_refused_as_a_checkpoint_with_a_hint(tiny_model_dir, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        assert main(["snapshot", "--model", str(tiny_model_dir[0]), str(tmp_path / "snap")]) == 0
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "snap").iterdir()}
    assert set(modes.values()) == {0o644}, modes
    capsys.readouterr()
    rc, out, err = generate(capsys, tmp_path / "snap", "--load-format", "safetensors")
    assert rc == 2 and "is a fastgen snapshot (it has fastgen_snapshot.json)" in err
    assert "--load-format snapshot" in err and "unexpected tensor" not in err
    rc, out, _ = generate(capsys, tmp_path / "snap", "--load-format", "snapshot")
    assert rc == 0 and out.strip()
