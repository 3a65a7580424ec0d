"""GPT-style causal language model (pre-LN, tied embeddings).

``forward(input_ids, labels)`` returns the mean next-token cross-entropy over the positions
whose label is not -100 (``F.cross_entropy``'s default ``ignore_index``: every position for
next-token training, the targets for UL2); the data pipeline already shifts ``labels`` by one.
Without labels it returns the logits.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megaraptr.models.blocks import Block, ModelConfig, init_weights


class GPTLM(nn.Module):
    """Embeddings -> L skippable causal blocks -> final LayerNorm -> tied LM head."""

    kind = "causal"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i, causal=True) for i in range(cfg.num_layers))
        self.final_ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        init_weights(self, cfg.num_layers)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if attention_mask is not None:
            raise ValueError("GPTLM trains on packed sequences: attention_mask is not supported")
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(positions))
        for block in self.blocks:
            x = block(x)
        logits = F.linear(self.final_ln(x), self.tok_emb.weight)
        if labels is None:
            return logits
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))
