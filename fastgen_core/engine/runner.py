"""ModelRunner: owns the model and the KV-cache tensors, runs one ragged forward, returns sampled-row logits."""
from __future__ import annotations

import torch
from torch import nn

from .batch import prepare_batch
from .scheduler import ScheduledBatch


class ModelRunner:
    def __init__(self, model: nn.Module, num_layers: int, num_kv_heads: int, head_dim: int,
                 num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype):
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        self.num_blocks = num_blocks
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                          for _ in range(num_layers)]

    @staticmethod
    def kv_bytes_per_block(num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * block_size * num_kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()

    @torch.inference_mode()
    def forward(self, batch: ScheduledBatch) -> tuple[torch.Tensor, list[int]]:
        """Logits [n_sampled, vocab] (float32) for the chunks that sample, and those chunks' indices."""
        pb = prepare_batch(batch, self.block_size, self.kv_caches, self.device)
        hidden = self.model(pb.input_ids, pb.ctx)
        if not pb.sampled_chunks:
            return hidden.new_empty((0, 0), dtype=torch.float32), []
        logits = self.model.compute_logits(hidden.index_select(0, pb.logits_rows))
        return logits.float(), pb.sampled_chunks
