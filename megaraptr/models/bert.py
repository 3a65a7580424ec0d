"""BERT-style masked language model (pre-LN), MLM head computed on masked positions only.

``forward(input_ids, labels)`` returns the mean cross-entropy over positions whose label is
not -100; the head (dense, GELU, LayerNorm, tied decoder) runs only on those rows, so a 15%
masking rate costs 15% of a full-vocabulary head. Without labels it returns all logits.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megaraptr.models.blocks import Block, ModelConfig, init_weights, padding_mask


class BertMLM(nn.Module):
    """Embeddings -> L skippable blocks -> final LayerNorm -> masked-position MLM head."""

    kind = "mlm"

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.hidden)
        self.emb_ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i, causal=False) for i in range(cfg.num_layers))
        self.final_ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.head_dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.head_ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        init_weights(self, cfg.num_layers)

    def encode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None):
        """Hidden states after the final LayerNorm, (B, T, H)."""
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.drop(self.emb_ln(self.tok_emb(input_ids) + self.pos_emb(positions)))
        mask = padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask)
        return self.final_ln(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.head_ln(F.gelu(self.head_dense(hidden)))
        return F.linear(h, self.tok_emb.weight, self.head_bias)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden = self.encode(input_ids, attention_mask)
        if labels is None:
            return self.head(hidden)
        selected = labels != -100
        logits = self.head(hidden[selected])
        total = F.cross_entropy(logits.float(), labels[selected], reduction="sum")
        return total / selected.sum().clamp(min=1)  # 0, not NaN, with nothing masked
