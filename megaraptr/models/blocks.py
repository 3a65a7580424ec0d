"""Pre-LayerNorm transformer blocks that follow the RAPTR layer contract (megaraptr.core.block).

``x = x + s * Attn(LN(x)); x = x + s * MLP(LN(x))`` with ``scaled_dot_product_attention``;
``s`` is the block's residual scale (1 unless ``"scaling": "inverse_keep_prob"``). A skipped
block returns its input before touching any parameter, so it runs no kernel, forward or
backward. Shapes are given by :class:`ModelConfig`; the sizes live in ``megaraptr.models``.
``Block.fast`` is set by :mod:`megaraptr.kernels` (``"kernels"`` other than ``"eager"``): the
active computation ``layer`` then runs compiled or with fused kernels, and the scale is passed
as a tensor; the skip test stays here, outside any compiled region.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from megaraptr.core.block import mark_block, residual_scale, skippable
from megaraptr.kernels.residual import residual_add

CHECKPOINTING = ("none", "torch", "deepspeed")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a reference model."""

    num_layers: int
    hidden: int
    heads: int
    ffn: int
    vocab_size: int
    max_seq_len: int
    dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    checkpoint: str = "none"
    """Activation checkpointing of each block: "none", "torch" (torch.utils.checkpoint,
    non-reentrant) or "deepspeed" (deepspeed.checkpointing, configured by the ds_config's
    "activation_checkpointing" block)."""


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection.

    Shapes follow ``heads`` and ``head_dim``, not the input width, so a tensor-parallel rank
    that holds ``heads / T`` of the heads (:mod:`megaraptr.runtime.tp`) runs the same code."""

    def __init__(self, cfg: ModelConfig, *, causal: bool):
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden {cfg.hidden} is not divisible by heads {cfg.heads}")
        self.heads, self.causal, self.dropout = cfg.heads, causal, cfg.dropout
        self.head_dim = cfg.hidden // cfg.heads
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).view(batch, seq, 3, self.heads, self.head_dim).unbind(2)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attn_mask is None)
        return self.proj(out.transpose(1, 2).reshape(batch, seq, self.heads * self.head_dim))


class MLP(nn.Module):
    """Two linear layers with GELU in between."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.ffn)
        self.fc2 = nn.Linear(cfg.ffn, cfg.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """One pre-LN transformer layer, skippable, with global id ``layer_id``."""

    def __init__(self, cfg: ModelConfig, layer_id: int, *, causal: bool):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.attn = SelfAttention(cfg, causal=causal)
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        if cfg.checkpoint not in CHECKPOINTING:
            raise ValueError(f"checkpoint {cfg.checkpoint!r}; allowed: {', '.join(CHECKPOINTING)}")
        self.checkpoint = cfg.checkpoint
        self.fast = None
        """The fast path of megaraptr.kernels (a FastLayer), or None: the eager layer."""
        mark_block(self, layer_id)

    @skippable
    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # Whether the block runs and its scale are decided here, outside the recomputed
        # region: recomputation in backward replays exactly this step's subnetwork.
        scale, layer = residual_scale(self), self.layer
        if self.fast is not None:
            scale, layer = self.fast.scale(scale, x), self.fast.layer
        if self.checkpoint == "none" or not torch.is_grad_enabled():
            return layer(x, attn_mask, scale)
        if self.checkpoint == "torch":
            return torch.utils.checkpoint.checkpoint(layer, x, attn_mask, scale,
                                                     use_reentrant=False)
        from deepspeed import checkpointing

        return checkpointing.checkpoint(layer, x, attn_mask, scale)

    def layer(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor], scale):
        """The computation of an active block (what checkpointing recomputes and the compiled
        path compiles); ``scale``: a float, or None / a 0-d tensor on the fast paths."""
        branch = self.drop(self.attn(self.ln1(x), attn_mask))
        x = residual_add(x, branch, scale)
        branch = self.drop(self.mlp(self.ln2(x)))
        return residual_add(x, branch, scale)


def init_weights(model: nn.Module, num_layers: int, std: float = 0.02) -> None:
    """GPT-2/BERT initialisation; residual output projections scaled by 1/sqrt(2L)."""
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for name, param in model.named_parameters():
        if name.endswith(("attn.proj.weight", "mlp.fc2.weight")):
            nn.init.normal_(param, mean=0.0, std=std / math.sqrt(2 * num_layers))


def padding_mask(attention_mask: Optional[torch.Tensor]):
    """(B, T) 1/0 key mask -> boolean (B, 1, 1, T) for SDPA, or None when nothing is padded."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]
