"""Real text end to end: string prompts through the model directory's tokenizer, and the engine's text
equals the tokenizer's decoding of transformers' greedy tokens.

The reference tokenizer is the one transformers loads back from the model directory, as the engine does:
for a config.json with model_type "qwen2", transformers 5's AutoTokenizer picks Qwen2Tokenizer, whose
byte-level pre-tokenizer and decoder replace the character-level ones make_tiny_tokenizer built. A
99-token vocabulary (4 specials + printable ASCII) keeps every generated token decodable text either way.
"""
from transformers import AutoTokenizer, Qwen2Config as HFQwen2Config

from fastgen_core import pipeline
from fastgen_core.testing import hf_greedy, make_tiny_tokenizer, save_tiny_model

PROMPTS = ["Hello, world", "The quick brown fox jumps over", "q", "fastgen serves Qwen2 from a plugin: 1 2 3 4 5"]


def test_string_prompts_give_transformers_text(tmp_path):
    tok = make_tiny_tokenizer(99)
    cfg = HFQwen2Config(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                        num_hidden_layers=2, vocab_size=len(tok), max_position_embeddings=256,
                        tie_word_embeddings=True, eos_token_id=tok.eos_token_id)
    ref = save_tiny_model(cfg, tmp_path, tokenizer=tok, init_std=0.1)
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    pipe = pipeline(str(tmp_path), device="cpu", dtype="float32", kv_block_size=8, max_ragged_batch_size=16)
    outs = pipe(PROMPTS, max_new_tokens=12, ignore_eos=True)
    assert all(out.prompt_length == len(tok(p).input_ids) for p, out in zip(PROMPTS, outs))
    for prompt, out in zip(PROMPTS, outs):
        want_ids = hf_greedy(ref, tok(prompt).input_ids, 12)
        assert out.token_ids == want_ids
        assert out.generated_text == tok.decode(want_ids, skip_special_tokens=True)
    assert all(len(o.generated_text) >= 6 for o in outs), "continuations decoded to (almost) nothing: a vacuous check"
