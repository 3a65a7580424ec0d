"""Reference models: a BERT-style masked LM and a GPT-style causal LM, in named sizes.

``build_model("bert", "tiny", vocab_size=8192, seq_len=128)``; ``num_layers("base")`` gives a
size's depth without building anything (for validating a schedule before the model exists).
"""
from __future__ import annotations

from megaraptr.models.bert import BertMLM
from megaraptr.models.blocks import Block, ModelConfig
from megaraptr.models.gpt import GPTLM

SIZES = {
    "tiny": dict(num_layers=4, hidden=128, heads=2, ffn=512),       # tests
    "mini": dict(num_layers=8, hidden=256, heads=4, ffn=1024),      # CPU benchmarks
    "narrow": dict(num_layers=12, hidden=48, heads=3, ffn=192),     # CPU quality studies
    # GPU quality study (megaraptr.bench.gpu_quality): 12 x 256 = 9.48M non-embedding
    # parameters (BERT); 12 x 176 = 4.49M (GPT: 20 tokens per parameter in ~4 passes over the
    # corpus; two heads of 88, a width flash attention takes)
    "small": dict(num_layers=12, hidden=256, heads=4, ffn=1024),
    "slim": dict(num_layers=12, hidden=176, heads=2, ffn=704),
    "base": dict(num_layers=12, hidden=768, heads=12, ffn=3072),    # BERT-base shape
    "medium": dict(num_layers=24, hidden=1024, heads=16, ffn=4096),  # GPT-2-medium = BERT-large
    # 24 x (12 h^2 + 13 h) = 1.209B in blocks + 50304 x 2048 tied embedding = 1.31B (GPT-3 XL)
    "1.3b": dict(num_layers=24, hidden=2048, heads=16, ffn=8192),
    # 24 x (12 h^2 + 13 h) = 1.530B + 32768 x 2304 tied embedding = 1.61B: a UL2-1.6B-sized decoder
    "1.6b": dict(num_layers=24, hidden=2304, heads=18, ffn=9216),
}
MODELS = {"bert": BertMLM, "gpt": GPTLM}
DATA_KIND = {"bert": "mlm", "gpt": "causal"}


def num_layers(size: str) -> int:
    return SIZES[size]["num_layers"]


def model_config(size: str, *, vocab_size: int, seq_len: int, dropout: float = 0.0,
                 checkpoint: str = "none") -> ModelConfig:
    """The :class:`ModelConfig` of a named size, for a tokenizer and sequence length."""
    return ModelConfig(vocab_size=vocab_size, max_seq_len=seq_len, dropout=dropout,
                       checkpoint=checkpoint, **SIZES[size])


def build_model(name: str, size: str, *, vocab_size: int, seq_len: int, dropout: float = 0.0,
                checkpoint: str = "none"):
    """A freshly initialised reference model ("bert" or "gpt") of a named size; ``checkpoint``
    selects activation checkpointing of each block ("none", "torch", "deepspeed")."""
    return MODELS[name](model_config(size, vocab_size=vocab_size, seq_len=seq_len,
                                     dropout=dropout, checkpoint=checkpoint))


__all__ = ["BertMLM", "GPTLM", "Block", "ModelConfig", "SIZES", "MODELS", "DATA_KIND",
           "build_model", "model_config", "num_layers", "optimizer_groups"]


def optimizer_groups(model, no_decay_dims: int = 1):
    """Two parameter groups: weights with decay; biases and LayerNorm (1-D) without."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > no_decay_dims]
    rest = [p for p in model.parameters() if p.requires_grad and p.dim() <= no_decay_dims]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]
