"""--help as a newcomer reads it: each default stated once, and a flag's default as on or off, never "True" (a
``--no-x`` flag defaults to True, which is x on, not the flag given)."""
import argparse
import re

import pytest

from fastgen_core.cli import HelpFormatter, main


def help_of(capsys, command) -> str:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def option_blocks(text: str) -> dict[str, str]:
    """Each option's help, joined onto one line, by its first flag."""
    blocks = re.split(r"\n  (?=-)", text.split("options:", 1)[1])
    return {b.split()[0].rstrip(","): " ".join(b.split()) for b in blocks if b.strip().startswith("-")}


@pytest.mark.parametrize("command", ["generate", "serve", "bench"])
def test_help_never_says_true_or_false_and_states_a_default_once(capsys, command):
    text = help_of(capsys, command)
    assert "(default: True)" not in text and "(default: False)" not in text
    for flag, block in option_blocks(text).items():
        assert block.count("default") <= 1, f"fastgen {command} --help: {flag} states its default twice: {block}"


def test_bench_help_says_what_its_no_flags_leave_on(capsys):
    blocks = option_blocks(help_of(capsys, "bench"))
    assert blocks["--no-offline"].endswith("; default: they run)")
    assert blocks["--no-cuda-graphs"].endswith("(default: CUDA graphs on CUDA)")
    assert "pip install 'fastgen-core[bench]'" in blocks["--plot"]


@pytest.mark.parametrize("default,said", [(True, "(default: on)"), (False, "(default: off)")])
def test_an_on_off_flag_says_its_default_once_as_on_or_off(default, said):
    """A command a plugin registers gets the same formatter: --x/--no-x says on or off, once."""
    p = argparse.ArgumentParser(prog="fastgen demo", formatter_class=HelpFormatter)
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=default, help="go fast")
    p.add_argument("--no-color", dest="color", action="store_false", help="plain text")
    blocks = option_blocks(p.format_help())
    assert blocks["--fast"] == f"--fast, --no-fast go fast {said}"
    assert blocks["--no-color"] == "--no-color plain text (default: not given)"
