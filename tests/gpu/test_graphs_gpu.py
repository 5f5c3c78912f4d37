"""CUDA-graph decode steps: captured at start-up, replayed for decode-only batches; tokens equal to
transformers' in float32 (dense and MoE: float32 MoE captures the sync-free every-expert fallback, bf16
MoE captures grouped_mm), and equal to the eager engine's in bf16 greedy runs of a dense model."""
import pytest
import torch

from fastgen_core import pipeline
from tiny_configs import tiny_gpu_config as _cfg
from fastgen_core.testing import hf_greedy, random_prompts, save_tiny_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("name", ["llama", "mixtral"])
def test_graph_decode_fp32_matches_transformers(name, tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = save_tiny_model(_cfg(name), tmp_path, init_std=0.05)
    prompts = random_prompts(40, 512, 1, 120, seed=1)
    want = [hf_greedy(ref, p, 16) for p in prompts]
    for blocks in (None, 30):           # 30 blocks of 16: preemption while graphs serve the decodes
        pipe = pipeline(str(tmp_path), device="cuda", dtype="float32", max_ragged_batch_size=256,
                        kv_block_size=16, num_kv_blocks=blocks, cuda_graph_max_batch=24)
        g = pipe.engine.runner.graphs
        assert g is not None and g.capture and sorted(g.graphs) == g.sizes
        assert pipe.engine.async_scheduling, "the default on CUDA is the asynchronous loop"
        outs = pipe(prompts, max_new_tokens=16, ignore_eos=True)
        assert [o.token_ids for o in outs] == want, f"blocks {blocks}"
        st = pipe.engine.stats()
        assert st["graph_steps"] > 0 and st["kv_blocks_used"] == 0
        if blocks:
            assert st["preemptions"] > 0
        pipe.destroy()


@pytest.mark.parametrize("name", ["llama", "mixtral"])
def test_graph_decode_bf16_matches_eager(name, tmp_path):
    save_tiny_model(_cfg(name), tmp_path, init_std=0.05)
    prompts = random_prompts(64, 512, 1, 200, seed=2)
    runs = {}
    for graphs in (False, True):
        pipe = pipeline(str(tmp_path), device="cuda", dtype="bfloat16", max_ragged_batch_size=512,
                        kv_block_size=16, cuda_graphs=graphs)
        outs = pipe(prompts, max_new_tokens=24, ignore_eos=True)
        runs[graphs] = [o.token_ids for o in outs]
        assert (pipe.engine.stats()["graph_steps"] > 0) == graphs
        pipe.destroy()
    same = sum(a == b for a, b in zip(runs[False], runs[True]))
    # a padded bucket can pick another GEMM kernel (bf16 rounding), so a near-tie may flip late tokens;
    # a wrong cache slot or table would break nearly every sequence
    assert same >= 0.9 * len(prompts), f"{same}/{len(prompts)} sequences identical"


def test_destroy_frees_graphs_and_cache(tmp_path):
    save_tiny_model(_cfg("llama"), tmp_path)
    torch.cuda.synchronize()
    free0 = torch.cuda.mem_get_info()[0]
    pipe = pipeline(str(tmp_path), device="cuda", dtype="bfloat16", gpu_memory_fraction=0.5,
                    max_ragged_sequence_count=100000)       # no cap from sequences x context: ~half the card
    assert pipe.engine.runner.graphs is not None
    pipe(random_prompts(4, 512, 5, 50), max_new_tokens=4)
    assert torch.cuda.mem_get_info()[0] < free0 - (20 << 30)      # the KV cache took about half the card
    pipe.destroy()
    assert torch.cuda.mem_get_info()[0] > free0 - (1 << 30)


@pytest.mark.parametrize("name", ["llama", "phi", "falcon-40b"])
def test_async_scheduling_matches_the_synchronous_loop_on_cuda(name, tmp_path):
    """One step ahead of the GPU (tokens fed from the device into eager steps and into the graphs' static
    inputs, read back one step late): float32 tokens equal transformers', with graphs and under preemption."""
    torch.backends.cuda.matmul.allow_tf32 = False
    ref = save_tiny_model(_cfg(name), tmp_path, init_std=0.05)
    prompts = random_prompts(40, 512, 1, 120, seed=4)
    want = [hf_greedy(ref, p, 16) for p in prompts]
    for blocks in (None, 30):
        pipe = pipeline(str(tmp_path), device="cuda", dtype="float32", max_ragged_batch_size=256,
                        kv_block_size=16, num_kv_blocks=blocks, cuda_graph_max_batch=24, async_scheduling=True)
        assert pipe.engine.async_scheduling
        outs = pipe(prompts, max_new_tokens=16, ignore_eos=True)
        assert [o.token_ids for o in outs] == want, f"blocks {blocks}"
        st = pipe.engine.stats()
        assert st["graph_steps"] > 0 and st["kv_blocks_used"] == 0
        pipe.destroy()


@pytest.mark.parametrize("graphs", [False, True])
def test_parallel_layers_on_two_streams_give_the_tokens_of_one_stream(graphs, tmp_path, monkeypatch):
    """Phi's attention and MLP read the same input: steps of up to BRANCH_MAX_TOKENS rows run the MLP on a second
    stream (eagerly and captured into the decode graphs). Same kernels either way, so bf16 tokens are identical;
    a missing fork or join would read a half-written input or an unfinished MLP output. The model is wide enough
    (Phi-2's layers) that the two branches' kernels overlap for real."""
    import transformers as t
    from fastgen_core.layers import transformer
    cfg = t.PhiConfig(vocab_size=512, hidden_size=2560, intermediate_size=10240, num_hidden_layers=2,
                      num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                      partial_rotary_factor=0.4)        # Phi-2's layer shapes: head_dim 80, 32 rotary channels
    save_tiny_model(cfg, tmp_path, init_std=0.05)
    prompts = random_prompts(24, 512, 100, 900, seed=5)
    forks = []
    real = transformer.branch_stream
    monkeypatch.setattr(transformer, "branch_stream", lambda h: forks.append(h.shape[0]) or real(h))
    runs = {}
    for cap in (0, 256):
        monkeypatch.setattr(transformer, "BRANCH_MAX_TOKENS", cap)
        forks.clear()
        pipe = pipeline(str(tmp_path), device="cuda", dtype="bfloat16", max_ragged_batch_size=512,
                        kv_block_size=16, cuda_graphs=graphs, cuda_graph_max_batch=32)
        outs = pipe(prompts, max_new_tokens=32, ignore_eos=True)
        runs[cap] = [o.token_ids for o in outs]
        assert (pipe.engine.stats()["graph_steps"] > 0) == graphs
        pipe.destroy()
        assert forks and any(n <= cap for n in forks) == (cap > 0)    # forked where the cap allows
    assert runs[0] == runs[256]
