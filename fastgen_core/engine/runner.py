"""ModelRunner: owns the model and the KV-cache tensors, runs one ragged forward, returns sampled-row logits."""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from ..layers.sharded import TPGroup
from .batch import BatchPlan, feed_from_device, plan_batch, plan_to_device
from .graphs import DecodeGraphs, is_decode_only
from .scheduler import ScheduledBatch


class ModelRunner:
    def __init__(self, model: nn.Module, num_layers: int, num_kv_heads: int, head_dim: int,
                 num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype,
                 tp: TPGroup = TPGroup(), workers=None):
        self.model = model
        self.tp = tp
        self.workers = workers              # rank 0 of a tensor-parallel group: distributed.Workers
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.num_blocks = num_blocks
        # one block more than the allocator hands out: the scratch block padded graph rows write into
        self.scratch_block = num_blocks
        shape = (num_blocks + 1, block_size, num_kv_heads, head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                          for _ in range(num_layers)]
        self.graphs: DecodeGraphs | None = None

    @staticmethod
    def kv_bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    def enable_decode_graphs(self, max_batch: int, max_context: int, capture: bool | None = None) -> DecodeGraphs:
        """Serve decode-only steps of up to ``max_batch`` sequences from CUDA graphs (captured now).
        ``capture=False`` runs the same padded path without graphs (CPU tests); default: capture on CUDA."""
        capture = self.device.type == "cuda" if capture is None else capture
        if self.workers is not None:          # every rank captures (or builds) the same buckets, in step
            self.workers.send(("graphs", (max_batch, max_context, capture)))
        self.graphs = DecodeGraphs(self.model, self.kv_caches, self.block_size, -(-max_context // self.block_size),
                                   self.scratch_block, max_batch, self.device, capture)
        return self.graphs

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch, fed: tuple | None = None) -> tuple[torch.Tensor, list[int], tuple | None]:
        """Logits [n_sampled, vocab] (float32) for the chunks that sample, those chunks' indices, and for
        prompt_logprobs requests (plan.prompt_rows, their rows' float32 logits) or None.
        ``fed`` = (rows, tokens, indices): input rows whose token is ``tokens[index]`` on the device (sampled
        by the step before, not yet read back: asynchronous scheduling)."""
        if self.graphs is not None and len(batch.chunks) <= self.graphs.max_batch and is_decode_only(batch):
            plan = self.graphs.plan(batch)
            if self.workers is not None:
                self.workers.send(("graph_step", plan))
            return self.graphs.run_plan(plan, fed), list(range(len(batch.chunks))), None
        plan = plan_batch(batch, self.block_size)
        if self.workers is not None:
            self.workers.send(("step", plan))       # the other ranks run the same forward on their slices
        return self.run_plan(plan, fed)

    @torch.inference_mode()
    def run_plan(self, plan: BatchPlan, fed: tuple | None = None) -> tuple[torch.Tensor, list[int], tuple | None]:
        """The forward of a plan (every tensor-parallel rank runs it: lm_head gathers across ranks)."""
        pb = plan_to_device(plan, self.block_size, self.kv_caches, self.device)
        if fed is not None:
            feed_from_device(pb.input_ids, fed)
        with kernels.plan_scope(getattr(self.model, "kernel_plan", None)):
            hidden = self.model(pb.input_ids, pb.ctx)
            prompt = None
            if plan.prompt_rows:
                rows = torch.tensor([r for _, r0, n in plan.prompt_rows for r in range(r0, r0 + n)],
                                    device=self.device)
                prompt = (plan.prompt_rows, self.model.compute_logits(hidden.index_select(0, rows)).float())
            if not pb.sampled_chunks:
                return hidden.new_empty((0, 0), dtype=torch.float32), [], prompt
            logits = self.model.compute_logits(hidden.index_select(0, pb.logits_rows))
            return logits.float(), pb.sampled_chunks, prompt
