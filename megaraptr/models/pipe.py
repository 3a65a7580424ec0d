"""The reference models as DeepSpeed pipeline layer specs, with the same parameters and maths.

``layer_specs("gpt", cfg)`` lists what ``deepspeed.pipe.PipelineModule`` builds, in order::

    0      TiedLayerSpec "embed"  token embedding (its weight is also the output decoder)
    1      Positions              position embedding (BERT: + embedding LayerNorm), dropout
    2..L+1 PipeBlock 0..L-1       the reference Block, global layer id = its index in the model
    L+2    Head                   final LayerNorm (BERT: + the masked-position MLM transform)
    L+3    TiedLayerSpec "embed"  decoder: logits = h @ token_embedding.T (+ BERT's bias)

The transformer blocks are the reference :class:`~megaraptr.models.blocks.Block` (a subclass
that only unpacks the activation tuple), so a block's parameter names, its skip rule and its
global layer id are exactly those of the non-pipeline model. Layer ``i`` of the model is spec
``i + FIRST_BLOCK``; :func:`spec_bounds` maps a partition of the layers to spec boundaries
(embeddings always on the first pipeline stage, head and loss on the last).

Activations between stages: GPT passes the hidden states; BERT passes ``(hidden, labels)`` so
that the last stage runs the head on the masked positions only (labels are int64 and need no
gradient). :func:`copy_reference_weights` loads a reference model's weights into the local
specs (identical initialisation with and without a pipeline).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from megaraptr.models.blocks import Block, ModelConfig, init_weights

FIRST_BLOCK = 2
"""Spec index of layer 0."""
EXTRA_SPECS = 4
"""Specs that are not transformer layers (two before them, two after)."""


class TokenEmbedding(nn.Module):
    """The token embedding shared by the first and last pipeline stage (tied weights)."""

    def __init__(self, cfg: ModelConfig, *, mlm: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.vocab_size, cfg.hidden))
        nn.init.normal_(self.weight, std=0.02)
        self.mlm = mlm

    def forward(self, inputs):
        if self.mlm:
            input_ids, labels = inputs
            return F.embedding(input_ids, self.weight), labels
        return F.embedding(inputs, self.weight)


def decode(embedding: TokenEmbedding, inputs):
    """The tied output layer: ``h @ W.T`` (+ the MLM bias that :class:`Head` passes along)."""
    if embedding.mlm:
        hidden, bias = inputs
        return F.linear(hidden, embedding.weight, bias)
    return F.linear(inputs, embedding.weight)


class Positions(nn.Module):
    """Position embedding added to the token embedding (BERT: then its LayerNorm), dropout."""

    def __init__(self, cfg: ModelConfig, *, mlm: bool):
        super().__init__()
        self.pos_emb = nn.Embedding(cfg.max_seq_len, cfg.hidden)
        self.emb_ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps) if mlm else None
        self.drop = nn.Dropout(cfg.dropout)
        init_weights(self, cfg.num_layers)

    def forward(self, inputs):
        tokens, labels = inputs if isinstance(inputs, tuple) else (inputs, None)
        x = tokens + self.pos_emb(torch.arange(tokens.shape[1], device=tokens.device))
        x = self.drop(self.emb_ln(x) if self.emb_ln is not None else x)
        return x if labels is None else (x, labels)


class PipeBlock(Block):
    """The reference block; BERT's ``(hidden, labels)`` activation passes through."""

    raptr_skip_delegated = True  # forward unpacks the tuple and calls Block's skippable forward

    def __init__(self, cfg: ModelConfig, layer_id: int, *, causal: bool):
        super().__init__(cfg, layer_id, causal=causal)
        init_weights(self, cfg.num_layers)

    def forward(self, inputs):  # noqa: D401 - same contract as Block.forward
        if isinstance(inputs, tuple):
            hidden, labels = inputs
            return super().forward(hidden), labels
        return super().forward(inputs)


class Head(nn.Module):
    """Final LayerNorm; for BERT also the MLM transform, on the masked positions only."""

    def __init__(self, cfg: ModelConfig, *, mlm: bool):
        super().__init__()
        self.final_ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
        self.mlm = mlm
        if mlm:
            self.head_dense = nn.Linear(cfg.hidden, cfg.hidden)
            self.head_ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
            self.head_bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        init_weights(self, cfg.num_layers)

    def forward(self, inputs):
        if not self.mlm:
            return self.final_ln(inputs)
        hidden, labels = inputs
        selected = self.final_ln(hidden[labels != -100])
        return self.head_ln(F.gelu(self.head_dense(selected))), self.head_bias


def causal_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """GPTLM's loss: mean next-token cross-entropy (labels already shifted)."""
    return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.reshape(-1))


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BertMLM's loss: cross-entropy over the masked positions (logits are those rows only)."""
    selected = labels[labels != -100]
    total = F.cross_entropy(logits.float(), selected, reduction="sum")
    return total / selected.numel() if selected.numel() else total


def layer_specs(name: str, cfg: ModelConfig) -> List:
    """The pipeline layer specs of reference model ``name`` ("gpt" or "bert")."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    if name not in ("gpt", "bert"):
        raise ValueError(f"model {name!r} has no pipeline specs; allowed: gpt, bert")
    if cfg.checkpoint != "none":
        raise ValueError("activation checkpointing of blocks is not supported in a pipeline; "
                         "use the ds_config's pipeline activation_checkpoint_interval")
    mlm = name == "bert"
    return ([TiedLayerSpec("embed", TokenEmbedding, cfg, mlm=mlm),
             LayerSpec(Positions, cfg, mlm=mlm)]
            + [LayerSpec(PipeBlock, cfg, i, causal=not mlm) for i in range(cfg.num_layers)]
            + [LayerSpec(Head, cfg, mlm=mlm),
               TiedLayerSpec("embed", TokenEmbedding, cfg, mlm=mlm, forward_fn=decode)])


def loss_fn(name: str):
    return mlm_loss if name == "bert" else causal_loss


def spec_bounds(layer_parts: Sequence[int], num_layers: int) -> List[int]:
    """Spec boundaries of a partition of the transformer layers (``b_0 = 0 .. b_S = L``)."""
    parts = list(layer_parts)
    if parts[0] != 0 or parts[-1] != num_layers or any(b >= a for a, b in
                                                        zip(parts[1:], parts[:-1])):
        raise ValueError(f"partition {parts} must rise strictly from 0 to {num_layers}")
    return [0] + [FIRST_BLOCK + b for b in parts[1:-1]] + [num_layers + EXTRA_SPECS]


def reference_prefix(spec_index: int, num_layers: int) -> str:
    """The prefix of a spec's parameters in the reference (non-pipeline) model."""
    if spec_index in (0, num_layers + FIRST_BLOCK + 1):  # the tied embedding, both places
        return "tok_emb."
    if FIRST_BLOCK <= spec_index < num_layers + FIRST_BLOCK:
        return f"blocks.{spec_index - FIRST_BLOCK}."
    return ""  # Positions and Head keep the reference model's own attribute names


@torch.no_grad()
def copy_reference_weights(pipe_module: nn.Module, reference: nn.Module) -> None:
    """Load a reference model's weights into the specs this pipeline stage holds."""
    source = reference.state_dict()
    num_layers = reference.cfg.num_layers
    start = pipe_module._local_start
    for offset, layer in enumerate(pipe_module.forward_funcs):
        module = getattr(layer, "func", None) and layer.args[0] or layer
        if not isinstance(module, nn.Module):
            continue
        prefix = reference_prefix(start + offset, num_layers)
        for key, tensor in module.state_dict().items():
            tensor.copy_(source[prefix + key])
