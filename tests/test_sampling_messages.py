"""Messages about sampling options agree in number: one option "only acts when sampling", several "only act"."""
import pytest

from fastgen_core import sampling
from fastgen_core.cli import main


def test_one_sampling_option_without_do_sample_only_acts_when_sampling(pipe, monkeypatch):
    monkeypatch.setattr(sampling, "_warned_unused", set())        # as in a fresh process
    with pytest.warns(UserWarning, match=r"^top_p=0\.9 only acts when sampling, but do_sample is False, so decoding "
                                         r"is greedy and it is ignored"):
        pipe("Hi", max_new_tokens=2, top_p=0.9)


def test_temperature_0_with_one_sampling_flag_says_it_only_acts_when_sampling(tiny_model_dir, capsys):
    rc = main(["generate", "--model", str(tiny_model_dir[0]), "--device", "cpu", "--temperature", "0", "--seed", "1",
               "Hello"])
    assert rc == 2
    assert ("error: --temperature 0 means greedy decoding, but --seed only acts when sampling: drop it, or give a "
            "temperature > 0") in capsys.readouterr().err
