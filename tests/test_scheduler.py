"""Property tests of the SplitFuse scheduler and the KV allocator over random schedules (no torch, no model)."""
from hypothesis import given, settings
from hypothesis import strategies as st

from fastgen_core.engine.kv_cache import BlockAllocator, blocks_for
from fastgen_core.engine.scheduler import Scheduler
from fastgen_core.engine.sequence import Sequence, SequenceStatus


def fake_token(seq: Sequence) -> int:
    # deterministic in (request, position): a recomputed sequence must continue exactly where it was
    return (hash(seq.request_id) + len(seq.output_token_ids)) % 1000


def run_schedule(requests, block_size, num_blocks, budget, cap, max_steps=20000, prefix_caching=False):
    alloc = BlockAllocator(num_blocks, block_size, prefix_caching)
    sched = Scheduler(alloc, budget, cap)
    seqs = []
    pending = sorted(requests, key=lambda r: r[0])
    step = 0
    # simulated K/V: a slot holds a hash of the whole prefix up to its token, so reading a slot that was
    # never written, or written for another prefix, is caught whatever the model
    slots: dict[tuple[int, int], int] = {}
    prefix_hashes: dict[int, list[int]] = {}

    def kv(seq, pos):
        hs = prefix_hashes.setdefault(seq.seq_id, [])
        while len(hs) <= pos:
            hs.append(hash((hs[-1] if hs else None, seq.token_at(len(hs)))))
        return hs[pos]
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
            for pos in range(c.start):           # the context this chunk attends to
                b = s.block_table[pos // block_size]
                assert slots.get((b, pos % block_size)) == kv(s, pos), f"{s.request_id} reads a wrong slot at {pos}"
        for c in batch.chunks:                   # the forward writes this step's K/V
            for pos in range(c.start, c.start + c.length):
                slots[(c.seq.block_table[pos // block_size], pos % block_size)] = kv(c.seq, pos)
        for p in batch.preempted:
            if p.seq_id in ids:       # with prefix caching, re-admitted at once onto its cached blocks
                assert prefix_caching and p.status is SequenceStatus.RUNNING
            else:
                assert p.status is SequenceStatus.WAITING and not p.block_table and p.num_computed_tokens == 0
        sched.postprocess(batch)
        for c in batch.chunks:
            if c.sample:
                c.seq.output_token_ids.append(fake_token(c.seq))
                if len(c.seq.output_token_ids) >= c.seq.max_new_tokens:
                    sched.finish(c.seq, "length")
        held = [b for s in sched.running for b in s.block_table]
        if prefix_caching:        # shared prefix blocks: one reference per holder, nothing else
            assert all(alloc.refcount(b) == held.count(b) for b in set(held)), "reference counts drifted"
            for s in sched.running:
                # a shared block is always a full block of the same tokens in every holder
                for i, b in enumerate(s.block_table[:len(s.block_keys)]):
                    if held.count(b) > 1:
                        assert i < s.num_computed_tokens // block_size
        else:
            assert len(held) == len(set(held)), "a KV block is held twice"
        assert len(set(held)) == alloc.num_used, "blocks leaked or lost"
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


@settings(max_examples=300, deadline=None)
@given(requests=request_lists, block_size=st.integers(1, 16), budget=st.integers(1, 96), cap=st.integers(1, 12),
       slack=st.integers(0, 40))
def test_random_schedules_with_prefix_caching(requests, block_size, budget, cap, slack):
    """Every prompt is 0..n-1, so prompts share their leading blocks: the same guarantees hold (progress,
    budget, no leak, same tokens) with blocks shared, evicted and revived, under preemption too."""
    need = max(blocks_for(p + m - 1, block_size) for _, p, m in requests)
    run_schedule(requests, block_size, need + slack, budget, cap, prefix_caching=True)


def test_prefix_cache_hit_skips_the_cached_blocks_and_keeps_one_token():
    alloc = BlockAllocator(20, 4, prefix_caching=True)
    sched = Scheduler(alloc, 64, 8)
    a = Sequence(0, "a", list(range(10)), 3)
    sched.add(a)
    sched.postprocess(sched.schedule())           # 10 tokens: blocks 0-1 full and registered
    assert alloc.num_cached == 2
    b = Sequence(1, "b", list(range(8)) + [99, 98, 97], 3)     # same first 8 tokens
    c = Sequence(2, "c", list(range(8)), 3)                    # exactly two blocks: the last must be computed
    sched.add(b)
    sched.add(c)
    batch = sched.schedule()
    chunks = {ch.seq.request_id: (ch.start, ch.length) for ch in batch.chunks}
    assert chunks["b"] == (8, 3) and b.block_table[:2] == a.block_table[:2]
    assert chunks["c"] == (4, 4) and c.block_table[:1] == a.block_table[:1]
    assert sched.num_cached_tokens == 12
    assert alloc.refcount(a.block_table[0]) == 3 and alloc.refcount(a.block_table[1]) == 2


def test_released_cached_blocks_are_evicted_least_recent_first_and_revived():
    alloc = BlockAllocator(4, 2, prefix_caching=True)
    t1, t2 = alloc.allocate(2), alloc.allocate(2)
    keys1, keys2 = [], []
    from fastgen_core.engine.kv_cache import extend_block_keys
    extend_block_keys(keys1, [1, 2, 3, 4], 2, 2)
    extend_block_keys(keys2, [5, 6, 7, 8], 2, 2)
    for b, k in zip(t1 + t2, keys1 + keys2):
        alloc.register(b, k)
    alloc.free(t1)
    alloc.free(t2)
    assert alloc.num_free == 4 and alloc.num_used == 0 and alloc.num_cached == 4
    assert alloc.match(keys1) == t1
    other = []                                    # the same tokens (7, 8) after another prefix: no match
    extend_block_keys(other, [9, 9, 7, 8], 2, 2)
    assert alloc.match(other) == [] and other[1][1] == keys2[1][1]
    alloc.acquire(alloc.match(keys2))                                     # revived: no longer evictable
    assert alloc.num_free == 2
    new = alloc.allocate(2)                                               # evicts t1 (released first)
    assert sorted(new) == sorted(t1) and alloc.match(keys1) == [] and alloc.match(keys2) == t2


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
