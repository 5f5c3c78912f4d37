"""fastgen_core.pipeline: the offline, in-process API (DeepSpeed-MII's ``mii.pipeline``)."""
from __future__ import annotations

import gc

import torch

from .config import EngineConfig
from .engine.engine import LLMEngine, Response
from .errors import InvalidRequestError
from .sampling import SamplingParams, warn_unused_sampling_options


class Pipeline:
    def __init__(self, engine: LLMEngine):
        self.engine = engine

    def __call__(self, prompts, **generate_options) -> list[Response]:
        """Generate for one prompt or many; returns Responses in prompt order.

        Every prompt and option is validated before any request is queued, so a bad call changes nothing.
        Decoding is greedy unless ``do_sample=True`` (as in transformers); sampling options given without it
        are ignored, with a warning the first time.
        """
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and
                                         all(isinstance(t, int) and not isinstance(t, bool) for t in prompts)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)) or not prompts:
            raise InvalidRequestError("prompts must be a non-empty string, list of strings or list of token-id lists")
        try:
            base = SamplingParams(**generate_options)
        except TypeError as e:
            allowed = sorted(SamplingParams.__dataclass_fields__)
            raise InvalidRequestError(f"{e}; allowed generate options: {allowed}") from None
        warn_unused_sampling_options(generate_options)
        eng = self.engine
        prepared = []
        for i, p in enumerate(prompts):
            try:
                prepared.append(eng.prepare_request(p, SamplingParams(**{**base.__dict__})))
            except InvalidRequestError as e:
                raise InvalidRequestError(f"prompt {i}: {e}", e.param) from None
        rids = [eng.add_prepared(r) for r in prepared]
        pending = set(rids)
        results: dict[str, Response] = {}
        try:
            while pending:
                for out in eng.step():
                    if out.finished and out.request_id in pending:
                        results[out.request_id] = out.response
                        pending.discard(out.request_id)
        except BaseException:
            for rid in pending:
                eng.abort(rid)
            raise
        return [results[r] for r in rids]

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def destroy(self) -> None:
        """Free the model and the KV cache."""
        eng = self.engine
        for rid in list(eng.requests):
            eng.abort(rid)
        self.engine = None
        eng.close()
        del eng
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def pipeline(model: str | None = None, device=None, dtype=None,
             max_ragged_batch_size: int = EngineConfig.max_ragged_batch_size,
             max_ragged_sequence_count: int = EngineConfig.max_ragged_sequence_count, kv_block_size: int | None = None,
             num_kv_blocks: int | None = None, load_format: str = EngineConfig.load_format, registry=None,
             **engine_options) -> Pipeline:
    """Load ``model`` and return a Pipeline: an HF model directory, a Hugging Face Hub id (``org/name``: the
    cached snapshot, else downloaded; see fastgen_core.hub) or None (the embedded SmolLM2-135M-Instruct).
    The engine options and their defaults are EngineConfig's (the defaults above are read from it)."""
    if model is None:
        from .default_model import default_model_dir
        model = str(default_model_dir())
    else:
        from .hub import resolve_model
        model = resolve_model(str(model))
    cfg = EngineConfig.from_kwargs(str(model), device=device, dtype=dtype, max_ragged_batch_size=max_ragged_batch_size,
                                   max_ragged_sequence_count=max_ragged_sequence_count, kv_block_size=kv_block_size,
                                   num_kv_blocks=num_kv_blocks, load_format=load_format, **engine_options)
    return Pipeline(LLMEngine(cfg, registry=registry))
