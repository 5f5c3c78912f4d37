"""The whole engine on CUDA: greedy tokens equal transformers' in float32 (also under KV pressure), and the
KV cache is sized from free GPU memory."""
import pytest
import torch

from fastgen_core import pipeline
from fastgen_core.testing import hf_greedy, random_prompts, save_tiny_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_fp32_greedy_matches_transformers_on_cuda(tmp_path):
    from transformers import LlamaConfig
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    ref = save_tiny_model(cfg, tmp_path, init_std=0.05)
    prompts = random_prompts(12, 512, 1, 150)
    want = [hf_greedy(ref, p, 12) for p in prompts]
    for budget, blocks in ((7, None), (64, None), (768, None), (64, 14)):
        pipe = pipeline(str(tmp_path), device="cuda", dtype="float32", max_ragged_batch_size=budget,
                        kv_block_size=16, num_kv_blocks=blocks)
        outs = pipe(prompts, max_new_tokens=12, ignore_eos=True)
        assert [o.token_ids for o in outs] == want, f"budget {budget}, blocks {blocks}"
        assert pipe.engine.stats()["kv_blocks_used"] == 0
        if blocks:
            assert pipe.engine.stats()["preemptions"] > 0
        pipe.destroy()


def test_kv_cache_sized_from_free_memory(tmp_path):
    from transformers import LlamaConfig
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    save_tiny_model(cfg, tmp_path)
    small = pipeline(str(tmp_path), device="cuda", dtype="bfloat16", gpu_memory_fraction=0.3,
                     max_ragged_sequence_count=100000)
    n_small = small.engine.allocator.num_blocks
    small.destroy()
    big = pipeline(str(tmp_path), device="cuda", dtype="bfloat16", gpu_memory_fraction=0.6,
                   max_ragged_sequence_count=100000)
    n_big = big.engine.allocator.num_blocks
    big.destroy()
    assert n_big > 1.5 * n_small > 0


def test_fp32_prefix_cache_matches_transformers_on_cuda(tmp_path):
    """Prompts with a shared prefix, twice: the second pass starts after cached blocks (a first chunk that
    reads the cache on the GPU path) and still gives transformers' tokens."""
    from transformers import LlamaConfig
    torch.backends.cuda.matmul.allow_tf32 = False
    cfg = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    ref = save_tiny_model(cfg, tmp_path, init_std=0.05)
    shared = random_prompts(1, 512, 100, 100, seed=3)[0]
    prompts = [shared + t for t in random_prompts(8, 512, 1, 40, seed=4)]
    want = [hf_greedy(ref, p, 10) for p in prompts]
    pipe = pipeline(str(tmp_path), device="cuda", dtype="float32", kv_block_size=16, enable_prefix_caching=True)
    for _ in range(2):
        assert [o.token_ids for o in pipe(prompts, max_new_tokens=10, ignore_eos=True)] == want
    assert pipe.engine.stats()["prefix_cache_hit_tokens"] >= 8 * 96
    pipe.destroy()
