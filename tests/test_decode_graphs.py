"""The CUDA-graph decode path's host side: buckets, the scratch block, config checks, and the padded
static-buffer forward (run without capture on CPU; tests/gpu captures it). Every family's check_family
also serves half of its runs through this path."""
import pytest
import torch

from fastgen_core import SamplingParams, pipeline
from fastgen_core.config import EngineConfig
from fastgen_core.engine.graphs import bucket_sizes
from fastgen_core.errors import ConfigError
from fastgen_core.testing import hf_greedy, random_prompts


@pytest.mark.parametrize("max_batch", [1, 3, 8, 50, 64, 100, 256])
def test_buckets_cover_every_batch_size(max_batch):
    sizes = bucket_sizes(max_batch)
    assert sizes == sorted(set(sizes)) and sizes[0] == 1 and sizes[-1] == max_batch
    assert all(8 <= b <= 64 and b % 8 == 0 or b in (1, 2, 4) or b % 32 == 0 or b == max_batch for b in sizes)
    # padding never more than doubles a batch, and past 64 costs at most 31 rows
    for n in range(1, max_batch + 1):
        b = min(s for s in sizes if s >= n)
        assert b < 2 * n or n <= 4 or b - n < 8, (n, b)
        assert b - n < 32


@pytest.mark.parametrize("kw,match", [(dict(cuda_graphs="yes"), "cuda_graphs must be true or false"),
                                      (dict(cuda_graph_max_batch=0), "cuda_graph_max_batch must be a positive"),
                                      (dict(cuda_graph_max_batch=2.5), "cuda_graph_max_batch must be a positive")])
def test_bad_graph_options_are_named(tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        EngineConfig(str(tmp_path), **kw)


def test_scratch_block_is_outside_the_allocator(tiny_model_dir):
    p = pipeline(str(tiny_model_dir[0]), device="cpu", num_kv_blocks=10, kv_block_size=8)
    e = p.engine
    assert e.allocator.num_blocks == 10 == e.runner.scratch_block
    assert all(k.shape[0] == 11 and v.shape[0] == 11 for k, v in e.runner.kv_caches)
    assert e.runner.graphs is None            # CPU: no CUDA graphs unless asked for
    p.destroy()


def test_padded_decode_path_matches_transformers_and_leaves_other_rows_alone(tiny_model_dir):
    """Batches of 1..9 decodes through buckets of up to 8 (pad rows write only the scratch block), with
    preemption: tokens equal transformers', and steps past the largest bucket run eagerly."""
    path, ref = tiny_model_dir
    prompts = random_prompts(9, 128, 1, 60, seed=3)
    want = [hf_greedy(ref, q, 10) for q in prompts]
    p = pipeline(str(path), device="cpu", max_ragged_batch_size=40, kv_block_size=4, num_kv_blocks=40)
    graphs = p.engine.runner.enable_decode_graphs(8, p.engine.max_context, capture=False)
    outs = p(prompts, max_new_tokens=10, ignore_eos=True)
    assert [o.token_ids for o in outs] == want
    stats = p.engine.stats()
    assert stats["graph_steps"] == graphs.replays > 0 and stats["preemptions"] > 0
    assert stats["steps"] > stats["graph_steps"] and stats["kv_blocks_used"] == 0
    p.destroy()


def _plan_from_scratch(graphs, batch):
    """The graph step's packed inputs built from nothing (what DecodeGraphs.plan keeps up to date in place)."""
    n = len(batch.chunks)
    b, bs = graphs.bucket(n), graphs.block_size
    ids, pos, slots, ctx, tables = [], [], [], [], []
    for c in batch.chunks:
        seq, p = c.seq, c.start
        ids.append(seq.token_at(p))
        pos.append(p)
        slots.append(seq.block_table[p // bs] * bs + p % bs)
        ctx.append(p + 1)
        tables.append(seq.block_table[:p // bs + 1])
    pad = b - n
    ids, pos, slots, ctx = ids + [0] * pad, pos + [0] * pad, slots + [graphs.scratch * bs] * pad, ctx + [1] * pad
    tables += [[graphs.scratch]] * pad
    width = max(map(len, tables))
    flat = [x for t in tables for x in t + [0] * (width - len(t))]
    return n, b, width, max(ctx), ids + pos + slots + ctx + flat


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_graph_inputs_kept_in_place_equal_inputs_built_from_scratch(tiny_model_dir, async_scheduling):
    """The host block tables are updated row by row from step to step; through batches that grow and shrink,
    sequences that finish, and preemptions (new block tables), every step's inputs equal a fresh build."""
    p = pipeline(str(tiny_model_dir[0]), device="cpu", max_ragged_batch_size=64, kv_block_size=4, num_kv_blocks=48,
                 async_scheduling=async_scheduling)
    graphs = p.engine.runner.enable_decode_graphs(16, p.engine.max_context, capture=False)
    plan, checked = graphs.plan, []

    def checked_plan(batch):
        got = plan(batch)
        want = _plan_from_scratch(graphs, batch)
        assert got[:4] == want[:4] and list(got[4]) == want[4]
        checked.append(got[0])
        return got

    graphs.plan = checked_plan
    eng = p.engine
    for i, q in enumerate(random_prompts(20, 128, 1, 30, seed=5)):     # lengths that end at other steps
        eng.add_request(q, SamplingParams(max_new_tokens=5 + 3 * (i % 7), ignore_eos=True))
    while eng.has_unfinished():
        eng.step()
    assert len(set(checked)) > 4 and eng.stats()["preemptions"] > 0
    p.destroy()


def test_every_part_of_a_steps_packed_buffer_starts_16_byte_aligned():
    """Triton specialises on 16-byte-aligned pointers: parts at odd offsets made it compile new variants
    in the middle of serving. Odd-length parts (3 rows, 1 decode) must still come out aligned and intact."""
    from fastgen_core.engine.batch import BatchPlan, plan_to_device
    plan = BatchPlan(ids=[5, 6, 7], positions=[0, 1, 9], slots=[0, 1, 41], query_start=[0, 2], query_lens=[2, 1],
                     context_lens=[2, 10], flat_tables=[0, 0, 0, 1], width=2, logits_rows=[1, 2], sampled=[0, 1],
                     decode_rows=[2], decode_seqs=[1], prefill_seqs=[0], max_decode_ctx=10)
    pb = plan_to_device(plan, 32, [], torch.device("cpu"))
    meta = pb.ctx.attn
    parts = [pb.input_ids, pb.ctx.positions, meta.slot_mapping, meta.context_lens, meta.decode_rows,
             meta.decode_seqs, meta.block_tables]
    assert all(t.data_ptr() % 16 == 0 for t in parts), [t.data_ptr() % 16 for t in parts]
    assert pb.input_ids.tolist() == [5, 6, 7] and pb.ctx.positions.tolist() == [0, 1, 9]
    assert meta.slot_mapping.tolist() == [0, 1, 41] and meta.context_lens.tolist() == [2, 10]
    assert meta.decode_rows.tolist() == [2] and meta.decode_seqs.tolist() == [1]
    assert meta.block_tables.tolist() == [[0, 0], [0, 1]]
