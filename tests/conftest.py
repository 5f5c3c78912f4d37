import pytest
from transformers import LlamaConfig

from fastgen_core.testing import make_tiny_tokenizer, save_tiny_model

VOCAB = 128


def tiny_llama_config(**kw):
    base = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=256, bos_token_id=1,
                eos_token_id=2, pad_token_id=3)
    return LlamaConfig(**{**base, **kw})


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a character-level tokenizer (real text, stop strings, chat template)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    model = save_tiny_model(tiny_llama_config(), path, tokenizer=make_tiny_tokenizer(VOCAB), init_std=0.1)
    return path, model


@pytest.fixture(scope="session")
def tiny_long_model_dir(tmp_path_factory):
    """The tiny Llama's shape with a 4096-token context (requests that run for thousands of tokens)."""
    path = tmp_path_factory.mktemp("tiny-llama-4k")
    save_tiny_model(tiny_llama_config(max_position_embeddings=4096), path, tokenizer=make_tiny_tokenizer(VOCAB),
                    init_std=0.1)
    return path


@pytest.fixture(scope="session")
def pipe(tiny_model_dir):
    import fastgen_core as fg
    p = fg.pipeline(str(tiny_model_dir[0]), device="cpu", max_ragged_batch_size=32, kv_block_size=8)
    yield p
    p.destroy()
