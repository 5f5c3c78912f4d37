"""Property tests of the SplitFuse scheduler and the KV allocator over random schedules (no torch, no model)."""
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_core.engine.kv_cache import BlockAllocator, blocks_for
from fastgen_core.engine.scheduler import Scheduler
from fastgen_core.engine.sequence import Sequence, SequenceStatus


def fake_token(seq: Sequence) -> int:
    # deterministic in (request, position): a recomputed sequence must continue exactly where it was
    return (hash(seq.request_id) + len(seq.output_token_ids)) % 1000


def run_schedule(requests, block_size, num_blocks, budget, cap, max_steps=20000):
    alloc = BlockAllocator(num_blocks, block_size)
    sched = Scheduler(alloc, budget, cap)
    seqs = []
    pending = sorted(requests, key=lambda r: r[0])
    step = 0
    while pending or sched.has_unfinished():
        assert step < max_steps, "did not finish: starvation or livelock"
        while pending and pending[0][0] <= step:
            arrival, plen, max_new = pending.pop(0)
            s = Sequence(len(seqs), f"r{len(seqs)}", list(range(plen)), max_new)
            sched.add(s)
            seqs.append(s)
        step += 1
        if not sched.has_unfinished():
            continue
        batch = sched.schedule()
        # progress: something is always scheduled while work remains (no deadlock)
        assert batch, f"nothing scheduled with {len(sched.running)} running / {len(sched.waiting)} waiting"
        assert batch.num_tokens <= budget
        assert len(batch.chunks) <= cap
        ids = [c.seq.seq_id for c in batch.chunks]
        assert len(ids) == len(set(ids))
        for c in batch.chunks:
            s = c.seq
            assert s.status is SequenceStatus.RUNNING
            assert c.start == s.num_computed_tokens and c.length >= 1
            assert c.start + c.length <= s.num_tokens
            assert len(s.block_table) * block_size >= c.start + c.length, "chunk has no KV slots"
            assert c.sample == (c.start + c.length == s.num_tokens)
        for p in batch.preempted:
            assert p.status is SequenceStatus.WAITING and not p.block_table and p.num_computed_tokens == 0
        sched.postprocess(batch)
        for c in batch.chunks:
            if c.sample:
                c.seq.output_token_ids.append(fake_token(c.seq))
                if len(c.seq.output_token_ids) >= c.seq.max_new_tokens:
                    sched.finish(c.seq, "length")
        held = [b for s in sched.running for b in s.block_table]
        assert len(held) == len(set(held)), "a KV block is held twice"
        assert len(held) == alloc.num_used, "blocks leaked or lost"
        assert all(not s.block_table for s in sched.waiting)
    assert alloc.num_used == 0 and alloc.num_free == num_blocks
    for s in seqs:
        assert s.is_finished and s.finish_reason == "length"
        assert s.output_token_ids == [(hash(s.request_id) + i) % 1000 for i in range(s.max_new_tokens)]
    return sched


request_lists = st.lists(st.tuples(st.integers(0, 30), st.integers(1, 120), st.integers(1, 40)),
                         min_size=1, max_size=25)


@settings(max_examples=300, deadline=None)
@given(requests=request_lists, block_size=st.integers(1, 16), budget=st.integers(1, 96), cap=st.integers(1, 12),
       slack=st.integers(0, 40))
def test_random_schedules_finish_without_leaks(requests, block_size, budget, cap, slack):
    need = max(blocks_for(p + m - 1, block_size) for _, p, m in requests)
    run_schedule(requests, block_size, need + slack, budget, cap)


def test_tight_cache_preempts_and_still_finishes():
    # short prompts are all admitted, then their decodes outgrow the cache
    reqs = [(0, 8, 60)] * 6
    sched = run_schedule(reqs, 4, blocks_for(67, 4) + 3, budget=64, cap=8)
    assert sched.num_preemptions > 0


def test_long_prompt_is_split_and_short_ones_packed():
    alloc = BlockAllocator(1000, 16)
    sched = Scheduler(alloc, max_ragged_batch_size=100, max_ragged_sequence_count=16)
    long = Sequence(0, "long", list(range(250)), 4)
    shorts = [Sequence(i, f"s{i}", list(range(10)), 4) for i in range(1, 4)]
    for s in [long, *shorts]:
        sched.add(s)
    b1 = sched.schedule()
    assert [(c.seq.request_id, c.length, c.sample) for c in b1.chunks] == [("long", 100, False)]
    sched.postprocess(b1)
    b2 = sched.schedule()
    assert [(c.seq.request_id, c.length) for c in b2.chunks] == [("long", 100)]
    sched.postprocess(b2)
    b3 = sched.schedule()
    # the rest of the long prompt, then the short prompts packed into the same forward
    assert [(c.seq.request_id, c.length) for c in b3.chunks] == [("long", 50), ("s1", 10), ("s2", 10), ("s3", 10)]
    assert all(c.sample for c in b3.chunks)


def test_decodes_go_first():
    alloc = BlockAllocator(1000, 16)
    sched = Scheduler(alloc, max_ragged_batch_size=8, max_ragged_sequence_count=16)
    a = Sequence(0, "a", [1, 2, 3], 10)
    sched.add(a)
    sched.postprocess(sched.schedule())
    a.output_token_ids.append(7)
    b = Sequence(1, "b", list(range(20)), 10)
    sched.add(b)
    batch = sched.schedule()
    assert [(c.seq.request_id, c.length) for c in batch.chunks] == [("a", 1), ("b", 7)]


def test_request_that_can_never_fit_is_refused():
    sched = Scheduler(BlockAllocator(4, 4), 16, 4)
    import pytest
    with pytest.raises(ValueError, match="needs 5 KV blocks but the cache has 4"):
        sched.add(Sequence(0, "big", list(range(18)), 3))
