"""LLMEngine: the step loop. schedule -> run (forward + sample on the device) -> outputs.

With ``async_scheduling`` (the default on CUDA without tensor parallelism) the host runs one
step ahead of the GPU, as vLLM's async scheduling and SGLang's overlap scheduler do: ``step()`` schedules and launches step N+1 while the GPU still
runs step N, then reads N's sampled tokens and returns N's outputs. A token sampled at N is fed to N+1
straight from the device (the host holds a placeholder until it reads it back), so the host's scheduling,
batch building, detokenization and stop checks overlap the GPU's work instead of following it. A sequence
that N ended (end of sequence, stop string) still runs in N+1; that token is dropped. Before a step whose
sampling reads a sequence's earlier tokens on the host (repetition/presence/frequency penalties, or a
structured-outputs grammar, whose matcher must accept the last token before it masks the next), the step in
flight is resolved first: a step with a constrained row runs synchronously. Tokens, finish reasons and
stop-string cuts are the same either way (the CPU tests run both).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import distributed, snapshot
from ..config import EngineConfig
from ..errors import ConfigError
from ..layers.sharded import TPGroup, check_model
from ..registry import FamilyRegistry
from ..sampler import Sampler, token_logprobs
from ..sampling import SamplingParams
from ..tokenizer import load_tokenizer
from . import build
from .kv_cache import BlockAllocator
from .outputs import RequestOutput, Response  # noqa: F401  (re-exported: fastgen_core.engine.engine.Response)
from .requests import PreparedRequest, Request, RequestProcessor  # noqa: F401
from .scheduler import ScheduledBatch, Scheduler

log = logging.getLogger("fastgen.engine")
PLACEHOLDER = -1            # a sampled token the host has not read back yet


@dataclass
class _Launched:
    """A step on its way through the GPU: what it sampled, for whom, and where the tokens land."""

    batch: ScheduledBatch
    seqs: list                      # sampled sequences, in token order
    positions: list[int]            # index of each one's placeholder in its output_token_ids
    tokens: torch.Tensor            # [n] sampled ids on the device (the next step reads them there)
    host: torch.Tensor              # [n] the same, copied to (pinned) host memory
    ready: torch.cuda.Event | None
    logits: torch.Tensor | None     # kept for rows that return logits or logprobs
    rows: list | None
    prompt: tuple | None
    needs_tokens: bool              # a row has penalties or a grammar: they read every token, so resolve it first


class LLMEngine:
    def __init__(self, config: EngineConfig, registry: FamilyRegistry | None = None):
        self.config = config
        self.registry = registry if registry is not None else FamilyRegistry()
        size = config.tensor_parallel_size
        if size > 1 and registry is not None:
            raise ConfigError("registry= cannot be combined with tensor_parallel_size > 1: the worker processes "
                              "find families through the installed plugins")
        source = build.read_source(config, self.registry)
        self.hf_config, self.snapshot, self.family = source.hf_config, source.snapshot, source.family
        self.model_config = mc = source.model_config
        self.tp, self.workers, self.runner = TPGroup(), None, None
        self._inflight: _Launched | None = None
        try:
            if size > 1:
                from .tp_worker import start_group
                check_model(mc.num_attention_heads, mc.num_key_value_heads, size)
                self.workers, self.tp = start_group(config, size, build.TP_TIMEOUT_S)
            parts = build.build_runner(config, source, self.tp, self.workers)
            build.enable_graphs(config, parts)
        except BaseException:
            self.close()
            raise
        self.device, self.dtype, self.max_context = parts.device, parts.dtype, parts.max_context
        self.model, self.runner = parts.model, parts.runner
        path = Path(config.model)
        self.tokenizer = load_tokenizer(path)
        self.eos_token_ids = build.eos_token_ids(path, mc, self.tokenizer)
        self.allocator = BlockAllocator(self.runner.num_blocks, self.runner.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.allocator, config.max_ragged_batch_size, config.max_ragged_sequence_count)
        self.sampler = Sampler()
        self.processor = RequestProcessor(self.tokenizer, self.eos_token_ids, mc.vocab_size, self.max_context,
                                          self.allocator, self.device, config.model)
        self.requests = self.processor.requests
        self.async_scheduling = config.resolve_async_scheduling(self.tp.size)
        self.counters = {"prompt_tokens": 0, "generated_tokens": 0, "steps": 0, "finished": 0}

    @property
    def kernel_plan(self):
        """The kernels this engine's model may run, per operation (ops/plan.py), or None for a model that is not
        a ``CausalLM``."""
        return getattr(self.model, "kernel_plan", None)

    # ---- requests --------------------------------------------------------------------------
    def validate_prompt(self, prompt) -> tuple[list[int], str | None]:
        return self.processor.validate_prompt(prompt)

    def prepare_request(self, prompt, params: SamplingParams | None = None) -> PreparedRequest:
        """Every check a request must pass, without queuing it (raises InvalidRequestError)."""
        return self.processor.prepare(prompt, params)

    def add_prepared(self, prepared: PreparedRequest, request_id: str | None = None) -> str:
        req = self.processor.add(prepared, request_id)
        self.scheduler.add(req.seq)
        return req.seq.request_id

    def add_request(self, prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request; raises InvalidRequestError (nothing queued) if it is unacceptable."""
        return self.add_prepared(self.prepare_request(prompt, params), request_id)

    def abort(self, request_id: str) -> bool:
        """Drop a request and free its KV blocks. False if it was not in flight."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return False
        self.scheduler.finish(req.seq, "abort")
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished() or self._inflight is not None

    def request_timing(self, request_id: str) -> dict | None:
        return self.processor.timing(request_id)

    # ---- the step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        outputs = []
        if self._inflight is not None and self._inflight.needs_tokens:
            outputs = self._resolve(self._inflight)       # penalties and grammars read every token of the sequence
            self._inflight = None
        batch = self.scheduler.schedule()
        launched = self._launch(batch) if batch else None
        if self._inflight is not None:
            outputs += self._resolve(self._inflight)
        self._inflight = launched
        if launched is not None and not self.async_scheduling:
            outputs += self._resolve(launched)
            self._inflight = None
        return outputs

    def _launch(self, batch: ScheduledBatch) -> _Launched:
        """Forward and sample ``batch`` on the device; the sampled tokens stay there (and start their copy to
        the host). Placeholders stand for them in the sequences until ``_resolve`` reads them."""
        now = time.monotonic()
        counters = self.counters
        for c in batch.chunks:
            seq = c.seq
            num_prompt = len(seq.prompt_token_ids)
            # a sequence's first chunk starts inside its prompt (one prompt token at least is computed)
            if c.start < num_prompt:
                req = self.requests[seq.request_id]
                if req.first_scheduled is None:
                    req.first_scheduled = now
                if seq.num_preemptions == 0:
                    counters["prompt_tokens"] += min(c.length, num_prompt - c.start)
        logits, sampled, prompt = self.runner.forward(batch, self._fed_from_device(batch))
        self.scheduler.postprocess(batch)
        counters["steps"] += 1
        chunks = batch.chunks
        seqs = [chunks[s].seq for s in sampled]
        rows = self.processor.sampling_rows(seqs)
        keep = needs_tokens = False
        for r in rows:
            p = r.params
            if p.logprobs is not None or p.return_logits:
                keep = True
            if p.penalized or r.grammar is not None:
                needs_tokens = True
        tokens = self.sampler(logits, rows) if seqs else torch.empty(0, dtype=torch.long, device=self.device)
        if keep and self.async_scheduling:
            logits = logits.clone()          # the decode graphs' output buffer is rewritten by the next step
        positions = []
        for seq in seqs:
            out = seq.output_token_ids
            positions.append(len(out))
            out.append(PLACEHOLDER)
            seq.pending += 1
            seq.last_pending = len(out) >= seq.max_new_tokens
        host, ready = tokens, None
        if tokens.is_cuda:
            host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            host.copy_(tokens, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        return _Launched(batch, seqs, positions, tokens, host, ready, logits if keep else None,
                         rows if keep else None, prompt, needs_tokens)

    def _fed_from_device(self, batch: ScheduledBatch) -> tuple | None:
        """(rows, source tokens, their indices): the batch rows whose input is a token still on the device
        (the last token of a chunk, sampled by the step in flight)."""
        if self._inflight is None:
            return None
        index = {id(seq): i for i, seq in enumerate(self._inflight.seqs)}
        rows, idx, row = [], [], 0
        for c in batch.chunks:
            seq = c.seq
            row += c.length
            if seq.pending and c.start + c.length == seq.num_tokens:
                i = index.get(id(seq))
                if i is not None:
                    rows.append(row - 1)
                    idx.append(i)
        return (rows, self._inflight.tokens, idx) if rows else None

    def _resolve(self, launched: _Launched) -> list[RequestOutput]:
        """Read a launched step's tokens back and turn them into outputs (finishing requests as they end)."""
        if launched.ready is not None:
            launched.ready.synchronize()
        tokens = launched.host.tolist()
        if launched.prompt is not None:
            self.processor.record_prompt_logprobs(launched.batch.chunks, *launched.prompt)
        lps = token_logprobs(launched.logits, tokens, launched.rows) if launched.rows is not None else None
        outputs = []
        now = time.monotonic()
        requests = self.requests
        register = self.scheduler.register_blocks if self.allocator.prefix_caching else None
        for i, (seq, pos, tok) in enumerate(zip(launched.seqs, launched.positions, tokens)):
            req = requests.get(seq.request_id)
            if req is None or seq.is_finished:          # aborted, or ended by the step before this one
                continue
            seq.output_token_ids[pos] = tok
            seq.pending -= 1
            if register is not None:
                register(seq)
            lp = lps[i] if lps is not None else None
            if req.params.return_logits:
                req.logits.append(launched.logits[i].cpu())
            if lp is not None:
                req.logprobs.append(lp)
            if req.grammar is not None:
                req.grammar.accept(tok)
            outputs.append(self._append(req, pos, tok, now, lp))
        self.counters["generated_tokens"] += len(outputs)       # one token each
        return outputs

    def _append(self, req: Request, pos: int, tok: int, now: float, lp) -> RequestOutput:
        seq = req.seq
        req.first_token = req.first_token or now
        req.last_token = now
        req.detok.add(tok)
        # the stop checks see the outputs up to this token (later ones may be pending)
        reason = self.processor.finish_reason(req, tok, pos + 1)
        if reason is None:
            return self.processor.stream_delta(req, tok, lp)
        del seq.output_token_ids[pos + 1:]   # tokens sampled after the end are dropped
        seq.pending = 0
        seq.last_pending = False
        self.scheduler.finish(seq, reason)
        self.requests.pop(seq.request_id, None)
        self.counters["finished"] += 1
        return self.processor.final_output(req, tok, reason, lp)

    # ---- lifecycle -------------------------------------------------------------------------
    def save_snapshot(self, out_dir) -> Path:
        """Save the loaded model in the engine's layout (see fastgen_core.snapshot); load it back with
        ``pipeline(out_dir)``. Engine options (budgets, KV size, device) are not part of it."""
        if self.tp.size > 1:
            raise ConfigError("save_snapshot needs tensor_parallel_size=1 (each rank holds only a slice of the "
                              "weights); a snapshot saved that way loads at any tensor_parallel_size")
        return snapshot.save(self.model, self.hf_config, self.family.family.name, self.family.dist, self.dtype,
                             Path(self.config.model), out_dir)

    def close(self) -> None:
        """Release GPU memory held outside the model's parameters (CUDA graphs, the KV cache); the engine
        cannot step afterwards. Stops the tensor-parallel workers. Safe to call twice."""
        self._inflight = None
        if self.runner is not None:
            if self.runner.graphs is not None:
                self.runner.graphs.close()
                self.runner.graphs = None
            self.runner.kv_caches.clear()
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        if self.tp.size > 1:
            distributed.destroy_group()
            self.tp = TPGroup()

    def stats(self) -> dict:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_blocks_total": self.allocator.num_blocks, "kv_blocks_used": self.allocator.num_used,
                "kv_usage": self.allocator.usage, "preemptions": self.scheduler.num_preemptions,
                "graph_steps": self.runner.graphs.replays if self.runner.graphs is not None else 0,
                "prefix_cache_hit_tokens": self.scheduler.num_cached_tokens,
                "prefix_cache_blocks": self.allocator.num_cached, **self.counters}
