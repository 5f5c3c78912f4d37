"""Host (Python) time of one engine step while N sequences all decode, measured on the CPU.

    python tools/host_step_time.py [--sequences 128] [--steps 200] [--async-scheduling] [--eager]

On a GPU the forward of a decode step is a replayed CUDA graph; everything else in ``LLMEngine.step()``
(scheduling, batch building, sampling's launches, reading tokens back, detokenizing, stop checks, outputs)
is serial host time the GPU waits for. This tool builds a tiny random Llama (one layer, a character-level
tokenizer, so detokenization runs), adds N requests with short prompts (``ignore_eos``, long enough
``max_new_tokens``), steps until all N decode together, then times ``--steps`` decode steps:

    host ms per decode step = (wall time of step()) - (time inside the model's forward and lm_head)

The forward is timed by wrapping the model's ``forward`` and ``compute_logits``. The host time is split
by phase too: scheduling, the runner outside the model (batch building, copies), the scheduler's
postprocess, the sampler's rows, the sampler (on a GPU its argmax is a few launches; here it runs on the CPU,
over a 128-token vocabulary) and resolving the sampled tokens into outputs (detokenize, stop checks). By default decode steps take the decode-graph path without capture (``capture=False``: the
padded static buffers a GPU replays); ``--eager`` runs them as the CPU engine does by default (plan_batch).
A second pass runs the same number of steps under cProfile and prints the top functions. A digest of every
generated token is printed, so two versions of the engine can be checked for identical output.
"""
from __future__ import annotations

import argparse
import cProfile
import ctypes
import hashlib
import io
import pstats
import random
import statistics
import tempfile
import time

import torch

from fastgen_core.config import EngineConfig
from fastgen_core.engine.engine import LLMEngine
from fastgen_core.sampling import SamplingParams
from fastgen_core.testing import make_tiny_tokenizer, save_tiny_model

VOCAB = 128


def tiny_model(path: str, layers: int, context: int) -> str:
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
                      num_hidden_layers=layers, vocab_size=VOCAB, max_position_embeddings=context, bos_token_id=1,
                      eos_token_id=2, pad_token_id=3)
    save_tiny_model(cfg, path, tokenizer=make_tiny_tokenizer(VOCAB), init_std=0.1)
    return path


def timed(fn, add):
    """``fn``, passing the seconds each call took to ``add``."""
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            add(time.perf_counter() - t)
    return wrapper


class ForwardTimer:
    """Accumulates the time spent inside the model's forward and lm_head (instance attributes shadow the
    class's methods, so nn.Module.__call__ and every caller of compute_logits go through these)."""

    def __init__(self, model):
        self.seconds = 0.0
        self.calls = 0
        model.forward = timed(model.forward, self._add_forward)
        model.compute_logits = timed(model.compute_logits, self._add)

    def _add(self, seconds):
        self.seconds += seconds

    def _add_forward(self, seconds):
        self.seconds += seconds
        self.calls += 1


class PhaseTimer:
    """Accumulates the time spent in named methods of the engine's parts (instance attributes shadow them)."""

    PHASES = (("schedule", "scheduler", "schedule"), ("runner.forward", "runner", "forward"),
              ("postprocess", "scheduler", "postprocess"), ("sampling_rows", "processor", "sampling_rows"),
              ("sampler", None, "sampler"), ("resolve", None, "_resolve"))

    def __init__(self, engine):
        self.seconds = {name: 0.0 for name, _, _ in self.PHASES}
        for name, part, attr in self.PHASES:
            owner = engine if part is None else getattr(engine, part)
            setattr(owner, attr, self._wrap(name, getattr(owner, attr)))

    def _wrap(self, name, fn):
        def add(seconds):
            self.seconds[name] += seconds
        return timed(fn, add)


def steady_malloc() -> bool:
    """Keep freed memory in the process (glibc): the CPU forward's large temporaries would otherwise be
    unmapped after each step and faulted back in by the next, which inflates and scatters the host time
    measured around them (on a GPU they live in device memory)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_trim_threshold, 1 << 30)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))


def all_decoding(eng, n: int) -> bool:
    s = eng.scheduler
    return not s.waiting and len(s.running) == n and all(q.num_uncomputed <= 1 for q in s.running)


def build(a) -> tuple[LLMEngine, list[str]]:
    d = tiny_model(tempfile.mkdtemp(prefix="host-step-"), a.layers, a.context)
    eng = LLMEngine(EngineConfig(d, device="cpu", kv_block_size=a.block_size, max_ragged_batch_size=a.budget,
                                 max_ragged_sequence_count=max(a.sequences, 1), seed=0,
                                 async_scheduling=a.async_scheduling))
    if not a.eager:        # the path a GPU's decode steps take (graphs.py), without capture
        eng.runner.enable_decode_graphs(max(a.sequences, 1), eng.max_context, capture=False)
    rnd = random.Random(0)
    gen = a.warmup + 2 * a.steps + 64
    ids = []
    for i in range(a.sequences):
        prompt = [rnd.randrange(4, VOCAB) for _ in range(rnd.randint(a.prompt // 2, a.prompt))]
        ids.append(eng.add_request(prompt, SamplingParams(max_new_tokens=gen, ignore_eos=True), f"r{i}"))
    return eng, ids


def run(a) -> dict:
    torch.set_num_threads(a.threads)
    if a.steady_malloc:
        steady_malloc()
    eng, ids = build(a)
    fwd = ForwardTimer(eng.model)
    phases = PhaseTimer(eng)
    tokens: dict[str, list[int]] = {i: [] for i in ids}

    def step():
        for out in eng.step():
            tokens[out.request_id] += out.new_token_ids

    guard = 0
    while not all_decoding(eng, a.sequences):
        step()
        guard += 1
        if guard > 10_000:
            raise RuntimeError("the requests never all decoded together")
    for _ in range(a.warmup):
        step()
    if not all_decoding(eng, a.sequences):
        raise RuntimeError("a request finished during warm-up: raise max_new_tokens")
    walls, fwds = [], []
    per_phase = {name: [] for name in phases.seconds}
    for _ in range(a.steps):
        f0, p0 = fwd.seconds, dict(phases.seconds)
        t = time.perf_counter()
        step()
        walls.append(time.perf_counter() - t)
        fwds.append(fwd.seconds - f0)
        for name, v in phases.seconds.items():
            per_phase[name].append(v - p0[name])
    # runner.forward's share outside the model: batch building, host-to-device copies, logits' dtype
    per_phase["runner.forward"] = [r - f for r, f in zip(per_phase["runner.forward"], fwds)]
    if not all_decoding(eng, a.sequences) or eng.stats()["graph_steps"] and a.eager:
        raise RuntimeError("the timed steps were not all decode steps of every sequence")
    prof_text = ""
    if a.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(a.steps):
            step()
        prof.disable()
        buf = io.StringIO()
        st = pstats.Stats(prof, stream=buf).strip_dirs()
        st.sort_stats("cumulative").print_stats(a.top)
        st.sort_stats("tottime").print_stats(a.top)
        prof_text = buf.getvalue()
    while eng.has_unfinished():
        step()
    digest = hashlib.sha256(repr([tokens[i] for i in ids]).encode()).hexdigest()[:16]
    host = [w - f for w, f in zip(walls, fwds)]
    eng.close()
    return {"wall": walls, "forward": fwds, "phases": per_phase, "host": host, "digest": digest,
            "tokens": sum(map(len, tokens.values())), "profile": prof_text}


def ms(xs) -> str:
    return f"median {statistics.median(xs) * 1e3:7.3f}  mean {statistics.fmean(xs) * 1e3:7.3f}  " \
           f"min {min(xs) * 1e3:7.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequences", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200, help="decode steps timed (and profiled)")
    ap.add_argument("--warmup", type=int, default=20, help="decode steps run before timing")
    ap.add_argument("--prompt", type=int, default=16, help="longest prompt (tokens); shortest is half")
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--budget", type=int, default=768, help="max_ragged_batch_size")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--async-scheduling", action="store_true")
    ap.add_argument("--eager", action="store_true", help="decode steps through plan_batch, not the graph path")
    ap.add_argument("--no-steady-malloc", dest="steady_malloc", action="store_false",
                    help="leave glibc's trim and mmap thresholds alone")
    ap.add_argument("--no-profile", dest="profile", action="store_false")
    ap.add_argument("--top", type=int, default=25, help="functions listed per cProfile ordering")
    a = ap.parse_args()
    r = run(a)
    mode = "async" if a.async_scheduling else "sync"
    path = "eager (plan_batch)" if a.eager else "decode-graph path, no capture"
    print(f"{a.sequences} sequences, {a.steps} decode steps, {mode} loop, {path}, {a.layers} layer(s), "
          f"torch threads {a.threads}")
    print(f"  step() wall        {ms(r['wall'])} ms")
    print(f"  model forward      {ms(r['forward'])} ms")
    print(f"  host (wall - fwd)  {ms(r['host'])} ms, of which:")
    for name, xs in r["phases"].items():
        print(f"    {name:<16} {ms(xs)} ms")
    print(f"host ms per decode step at {a.sequences} sequences: {statistics.median(r['host']) * 1e3:.3f} "
          f"(median; {mode})")
    print(f"generated tokens {r['tokens']}, digest {r['digest']}")
    if r["profile"]:
        print(r["profile"])


if __name__ == "__main__":
    main()
