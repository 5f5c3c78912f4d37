"""LLMEngine: the step loop. schedule -> forward -> sample -> postprocess; per-token outputs for streaming."""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import parallel, snapshot
from ..config import EngineConfig
from ..errors import ConfigError, FastgenError, InvalidRequestError
from ..loader import (checkpoint_files, init_dummy_weights, iter_tensors, load_weights, read_hf_config,
                      skip_parameter_init)
from ..registry import FamilyRegistry
from ..sampling import Sampler, SamplingParams, SamplingRow, logprobs_of, token_logprobs
from ..tokenizer import IncrementalDetokenizer, load_tokenizer
from .kv_cache import BlockAllocator, gpu_kv_budget
from .outputs import RequestOutput, Response
from .runner import ModelRunner
from .scheduler import Scheduler
from .sequence import Sequence

DEFAULT_BLOCK_SIZE = 32
log = logging.getLogger("fastgen.engine")


@dataclass
class _Request:
    seq: Sequence
    params: SamplingParams
    prompt_text: str | None
    detok: IncrementalDetokenizer
    generator: torch.Generator | None
    emitted: int = 0                # chars of detok.text already streamed
    stop_hit: str | None = None
    final_text: str = ""
    logits: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    prompt_logprobs: list = field(default_factory=list)   # of prompt tokens 1.. (token 0 has none)
    arrival: float = field(default_factory=time.monotonic)
    first_scheduled: float | None = None
    first_token: float | None = None
    last_token: float | None = None


@dataclass
class PreparedRequest:
    """A request that passed every check (see LLMEngine.prepare_request)."""

    token_ids: list[int]
    text: str | None
    params: SamplingParams


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


TP_TIMEOUT_S = 300      # a tensor-parallel collective (or the group's start-up) waiting longer than this fails


class LLMEngine:
    def __init__(self, config: EngineConfig, registry: FamilyRegistry | None = None, _tp=None):
        """``_tp`` = (rank, size, init method) in a tensor-parallel worker process (parallel.Workers)."""
        self.config = config
        path = Path(config.model)
        self.hf_config = read_hf_config(path)
        self.registry = registry if registry is not None else FamilyRegistry()
        self.snapshot = snapshot.read_meta(path) if config.load_format in ("auto", "snapshot") else None
        if config.load_format == "snapshot" and self.snapshot is None:
            raise ConfigError(f"load_format='snapshot' but {path} is not a fastgen snapshot (no {snapshot.META}); "
                              "make one with engine.save_snapshot(dir) or `fastgen snapshot`")
        family = config.family
        if self.snapshot is not None:
            if family is not None and family != self.snapshot["family"]:
                raise ConfigError(f"{path} is a snapshot of a {self.snapshot['family']!r} model, not {family!r}")
            family = self.snapshot["family"]
        self.family = self.registry.resolve(self.hf_config, path, family)
        self.model_config = self._parse_config(path)
        mc = self.model_config
        size = config.tensor_parallel_size
        rank = _tp[0] if _tp is not None else 0
        if size > 1 and registry is not None and _tp is None:
            raise ConfigError("registry= cannot be combined with tensor_parallel_size > 1: the worker processes "
                              "find families through the installed plugins")
        if size > 1 and _tp is None:
            parallel.check_model(mc.num_attention_heads, mc.num_key_value_heads, size)
        self.device = parallel.rank_device(config.torch_device(), rank)
        self.tp, self.workers = parallel.TPGroup(), None
        self.runner = None
        if size > 1:
            if _tp is None:
                self.workers = parallel.Workers(config, size)
            try:
                if self.workers is not None:
                    self.workers.wait_started(TP_TIMEOUT_S)
                init = _tp[2] if _tp is not None else self.workers.init_method
                self.tp = parallel.init_group(rank, size, init, self.device, TP_TIMEOUT_S)
            except BaseException:
                self.close()
                raise
        try:
            self._build(path, mc)
        except BaseException:
            self.close()
            raise

    def _build(self, path: Path, mc) -> None:
        config = self.config
        self.dtype = config.torch_dtype(self.snapshot["dtype"] if self.snapshot is not None else mc.dtype)
        self.max_context = min(config.max_context or mc.max_position_embeddings, mc.max_position_embeddings)
        self.num_kv_heads = parallel.kv_head_shard(mc.num_key_value_heads, self.tp)[0]     # on this rank
        model_cls = self.family.family.load_model_class()
        with (torch.device(self.device), _default_dtype(self.dtype), parallel.building(self.tp),
              skip_parameter_init()):
            try:
                self.model = model_cls(mc)
            except (TypeError, ValueError) as e:
                if isinstance(e, FastgenError):
                    raise
                raise ConfigError(f"{path / 'config.json'}: the {self.family.family.name!r} family cannot build a "
                                  f"model from these values: {e}") from None
        self.model.eval()
        if config.load_format == "dummy":
            init_dummy_weights(self.model, config.seed)
        elif self.snapshot is not None:
            snapshot.load(self.model, path, self.snapshot)
        else:
            kind, files = checkpoint_files(path, config.load_format)
            load_weights(self.model, self.family.family.load_weight_map(mc), iter_tensors(kind, files))
        self.tokenizer = load_tokenizer(path)
        self.eos_token_ids = self._eos_ids(path)
        block_size = config.kv_block_size or DEFAULT_BLOCK_SIZE
        num_blocks = config.num_kv_blocks or self._auto_num_blocks(block_size)
        if self.tp.size > 1 and not config.num_kv_blocks:      # every rank's cache holds the same blocks
            n = torch.tensor([num_blocks], device=self.device)
            torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
            num_blocks = int(n.item())
        self.runner = ModelRunner(self.model, mc.num_hidden_layers, self.num_kv_heads, mc.head_dim,
                                  num_blocks, block_size, self.device, self.dtype, self.tp, self.workers)
        self.allocator = BlockAllocator(num_blocks, block_size, config.enable_prefix_caching)
        if self.device.type == "cuda" and config.cuda_graphs and self.tp.rank == 0:   # rank 0 starts the others'
            if self.tp.size > 1 and os.environ.get("FASTGEN_TP_CUDA_GRAPHS") != "1":
                log.warning("CUDA graphs off under tensor parallelism: capturing NCCL all-reduces has not been "
                            "measured on GPUs yet (FASTGEN_TP_CUDA_GRAPHS=1 tries it)")
            else:
                self._enable_graphs()
        self.scheduler = Scheduler(self.allocator, config.max_ragged_batch_size, config.max_ragged_sequence_count)
        self.sampler = Sampler()
        self.requests: dict[str, _Request] = {}
        self._ids = itertools.count()
        self.counters = {"prompt_tokens": 0, "generated_tokens": 0, "steps": 0, "finished": 0}

    # ---- set-up helpers --------------------------------------------------------------------
    def _parse_config(self, path: Path):
        name = self.family.family.name
        try:
            return self.family.family.load_config_class().from_hf(self.hf_config)
        except KeyError as e:
            raise ConfigError(f"{path / 'config.json'} lacks {e.args[0]!r}, which the {name!r} family "
                              f"({self.family.dist}) needs") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, FastgenError):
                raise
            raise ConfigError(f"{path / 'config.json'} has a value the {name!r} family ({self.family.dist}) "
                              f"cannot use: {e}") from None

    def _eos_ids(self, path: Path) -> set[int]:
        ids = set(self.model_config.eos_token_id)
        gen = path / "generation_config.json"
        if gen.is_file():
            eos = json.loads(gen.read_text()).get("eos_token_id")
            ids |= set([eos] if isinstance(eos, int) else (eos or []))
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    def _enable_graphs(self) -> None:
        from ..layers import paged_decode
        if not paged_decode.available():      # the torch decode fallback sizes its tensors on the host
            log.warning("CUDA graphs off: the Triton paged-decode kernel is not available here")
            return
        c = self.config
        self.runner.enable_decode_graphs(min(c.cuda_graph_max_batch, c.max_ragged_sequence_count,
                                             c.max_ragged_batch_size), self.max_context)

    def _auto_num_blocks(self, block_size: int) -> int:
        mc = self.model_config
        per_block = ModelRunner.kv_bytes_per_block(mc.num_hidden_layers, self.num_kv_heads, mc.head_dim,
                                                   block_size, self.dtype)
        # never more than every sequence slot at full context could use
        cap = -(-self.config.max_ragged_sequence_count * self.max_context // block_size)
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            # room for activations of a full ragged batch, the CUDA context and the decode graphs
            act = self.config.max_ragged_batch_size * (mc.hidden_size * 40 + mc.vocab_size * 8) + (512 << 20)
            try:
                budget = gpu_kv_budget(total, free, torch.cuda.memory_reserved(self.device),
                                       self.config.gpu_memory_fraction, act, str(self.device))
            except ValueError as e:
                raise ConfigError(str(e)) from None
        else:
            budget = self.config.cpu_kv_cache_bytes
        blocks = int(budget // per_block) - 1          # the runner adds one scratch block
        need_one = -(-self.max_context // block_size)
        if blocks < need_one:
            raise InvalidRequestError(f"not enough memory for the KV cache: {blocks} blocks fit, one full-context "
                                      f"sequence needs {need_one}; lower max_context or free memory")
        return min(blocks, cap)

    # ---- requests --------------------------------------------------------------------------
    def validate_prompt(self, prompt) -> tuple[list[int], str | None]:
        if isinstance(prompt, str):
            if not prompt:
                raise InvalidRequestError("prompt is an empty string; give at least one character or token id")
            if self.tokenizer is None:
                raise InvalidRequestError(f"{self.config.model} has no tokenizer files: give prompts as token-id lists")
            ids = self.tokenizer(prompt).input_ids
            text = prompt
        elif isinstance(prompt, (list, tuple)):
            ids, text = list(prompt), None
            if not ids:
                raise InvalidRequestError("prompt is an empty token list; give at least one token id")
            vocab = self.model_config.vocab_size
            bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab]
            if bad:
                raise InvalidRequestError(f"token ids must be integers in [0, {vocab}); got {bad[:5]}")
        else:
            raise InvalidRequestError(f"a prompt must be a string or a list of token ids, got {type(prompt).__name__}")
        if len(ids) >= self.max_context:
            raise InvalidRequestError(f"prompt has {len(ids)} tokens but the model's context is {self.max_context} "
                                      "tokens (the prompt must be shorter, to leave room for at least one new token)")
        return ids, text

    def resolve_params(self, params: SamplingParams, prompt_len: int) -> SamplingParams:
        room = self.max_context - prompt_len
        if params.max_new_tokens is None:
            params.max_new_tokens = max(room, 1)
        elif params.max_new_tokens > room:
            raise InvalidRequestError(f"prompt ({prompt_len} tokens) + max_new_tokens ({params.max_new_tokens}) "
                                      f"exceeds the model's context of {self.max_context} tokens")
        if params.min_new_tokens > params.max_new_tokens:
            raise InvalidRequestError(f"min_new_tokens ({params.min_new_tokens}) exceeds max_new_tokens "
                                      f"({params.max_new_tokens})")
        if params.stop and self.tokenizer is None:
            raise InvalidRequestError("stop strings need a tokenizer; this model directory has none "
                                      "(use stop_token_ids)")
        return params

    def prepare_request(self, prompt, params: SamplingParams | None = None) -> PreparedRequest:
        """Every check a request must pass, without queuing it (raises InvalidRequestError). Callers that
        submit several prompts at once prepare them all first, so a bad one leaves nothing queued."""
        params = params or SamplingParams()
        ids, text = self.validate_prompt(prompt)
        params = self.resolve_params(params, len(ids))
        need = self.allocator.blocks_for(len(ids) + max(params.max_new_tokens - 1, 0))
        if need > self.allocator.num_blocks:
            raise InvalidRequestError(
                f"request needs {need} KV blocks (prompt {len(ids)} + max_new_tokens {params.max_new_tokens}) "
                f"but the whole cache has {self.allocator.num_blocks}")
        return PreparedRequest(ids, text, params)

    def add_prepared(self, prepared: PreparedRequest, request_id: str | None = None) -> str:
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        if rid in self.requests:
            raise InvalidRequestError(f"request id {rid!r} is already in flight")
        params = prepared.params
        seq = Sequence(next(self._ids), rid, prepared.token_ids, params.max_new_tokens, params)
        gen = None
        if params.seed is not None and not params.greedy:
            gen = torch.Generator(device=self.device).manual_seed(params.seed)
        self.requests[rid] = _Request(seq, params, prepared.text, IncrementalDetokenizer(self.tokenizer), gen)
        self.scheduler.add(seq)
        return rid

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
        return self.scheduler.has_unfinished()

    # ---- the step --------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch:
            return []
        now = time.monotonic()
        for c in batch.chunks:
            req = self.requests[c.seq.request_id]
            if req.first_scheduled is None:
                req.first_scheduled = now
            if c.seq.num_preemptions == 0 and c.start < len(c.seq.prompt_token_ids):
                self.counters["prompt_tokens"] += min(c.length, len(c.seq.prompt_token_ids) - c.start)
        logits, sampled, prompt = self.runner.forward(batch)
        if prompt is not None:
            self._prompt_logprobs(batch, *prompt)
        self.scheduler.postprocess(batch)
        self.counters["steps"] += 1
        if not sampled:
            return []
        rows = []
        for s in sampled:
            req = self.requests[batch.chunks[s].seq.request_id]
            banned = []
            if len(req.seq.output_token_ids) < req.params.min_new_tokens:
                banned = sorted((set() if req.params.ignore_eos else self.eos_token_ids) | set(req.params.stop_token_ids))
            rows.append(SamplingRow(req.params, req.generator, banned, req.seq.prompt_token_ids,
                                    req.seq.output_token_ids))
        tokens = self.sampler(logits, rows).tolist()
        lps = token_logprobs(logits, tokens, rows)
        outputs = []
        now = time.monotonic()
        for row, s, tok in zip(range(len(rows)), sampled, tokens):
            req = self.requests[batch.chunks[s].seq.request_id]
            if req.params.return_logits:
                req.logits.append(logits[row].cpu())
            if lps[row] is not None:
                req.logprobs.append(lps[row])
            outputs.append(self._append_token(req, tok, now, lps[row]))
        return outputs

    def _prompt_logprobs(self, batch, prompt_rows, logits) -> None:
        """Record the logprobs of the prompt tokens these chunks' rows predict (positions already recorded,
        as when a preempted sequence recomputes its prompt, are skipped)."""
        row = 0
        for s, _, n in prompt_rows:
            c = batch.chunks[s]
            req = self.requests[c.seq.request_id]
            have = len(req.prompt_logprobs)
            skip = max(0, have - c.start)
            if skip < n:
                targets = c.seq.prompt_token_ids[c.start + skip + 1:c.start + n + 1]
                req.prompt_logprobs += logprobs_of(logits[row + skip:row + n], targets, req.params.prompt_logprobs)
            row += n

    def _append_token(self, req: _Request, tok: int, now: float, lp=None) -> RequestOutput:
        seq, p = req.seq, req.params
        seq.output_token_ids.append(tok)
        self.counters["generated_tokens"] += 1
        req.first_token = req.first_token or now
        req.last_token = now
        req.detok.add(tok)
        n = len(seq.output_token_ids)
        reason = None
        if tok in p.stop_token_ids or (not p.ignore_eos and tok in self.eos_token_ids):
            reason = "stop"
        elif p.stop and n >= p.min_new_tokens:
            window = req.detok.text[max(0, req.emitted - max(map(len, p.stop))):]
            for s in p.stop:
                if s in window:
                    req.stop_hit = s
                    reason = "stop"
                    break
        if reason is None and n >= seq.max_new_tokens:
            reason = "length"
        if reason is None:
            text = req.detok.text
            hold = max(map(len, p.stop)) - 1 if p.stop else 0      # a stop string may still be forming
            upto = max(req.emitted, len(text) - hold)
            delta = text[req.emitted:upto]
            req.emitted = upto
            return RequestOutput(seq.request_id, [tok], delta, False, logprobs=[lp] if lp is not None else None)
        self.scheduler.finish(seq, reason)
        self.requests.pop(seq.request_id, None)
        self.counters["finished"] += 1
        response = self._response(req)
        delta = req.final_text[req.emitted:]
        return RequestOutput(seq.request_id, [tok], delta, True, reason, response,
                             [lp] if lp is not None else None)

    def _final_text(self, req: _Request) -> str:
        """The whole output decoded at once (the incremental text may hold back an incomplete character),
        cut at the stop string that ended it."""
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(req.seq.output_token_ids, skip_special_tokens=True)
        if req.stop_hit is not None:
            text = text[:text.find(req.stop_hit)]
        return text

    def _response(self, req: _Request) -> Response:
        seq, p = req.seq, req.params
        text = req.final_text = self._final_text(req)
        if p.return_full_text:
            prompt = req.prompt_text
            if prompt is None and self.tokenizer is not None:          # a token-id prompt: its text
                prompt = self.tokenizer.decode(seq.prompt_token_ids, skip_special_tokens=True)
            text = (prompt or "") + text
        return Response(text, list(seq.output_token_ids), len(seq.prompt_token_ids), len(seq.output_token_ids),
                        seq.finish_reason, seq.request_id, req.logits if p.return_logits else None,
                        req.logprobs if p.logprobs is not None else None,
                        [None, *req.prompt_logprobs] if p.prompt_logprobs is not None else None,
                        seq.prompt_token_ids)

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
        if self.runner is not None:
            if self.runner.graphs is not None:
                self.runner.graphs.close()
                self.runner.graphs = None
            self.runner.kv_caches.clear()
        if self.workers is not None:
            self.workers.close()
            self.workers = None
        if self.tp.size > 1:
            parallel.destroy_group()
            self.tp = parallel.TPGroup()

    # ---- observability ---------------------------------------------------------------------
    def stats(self) -> dict:
        return {"running": len(self.scheduler.running), "waiting": len(self.scheduler.waiting),
                "kv_blocks_total": self.allocator.num_blocks, "kv_blocks_used": self.allocator.num_used,
                "kv_usage": self.allocator.usage, "preemptions": self.scheduler.num_preemptions,
                "graph_steps": self.runner.graphs.replays if self.runner.graphs is not None else 0,
                "prefix_cache_hit_tokens": self.scheduler.num_cached_tokens,
                "prefix_cache_blocks": self.allocator.num_cached, **self.counters}

    def request_timing(self, request_id: str) -> dict | None:
        req = self.requests.get(request_id)
        if req is None:
            return None
        return {"arrival": req.arrival, "first_scheduled": req.first_scheduled, "first_token": req.first_token}
