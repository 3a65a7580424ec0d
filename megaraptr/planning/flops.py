"""Training FLOPs of the reference models, counted from the model's shape.

Matmul FLOPs (a multiply-add is 2), forward and backward, of one optimizer step; what
``torch.utils.flop_counter.FlopCounterMode`` counts for the same step with the math attention
kernel (tests/unit/test_flops.py checks equality on tiny BERT and GPT models, with skipped
layers). With hidden size h, FFN size f, sequence length T, vocabulary V, and n tokens per step:

- one active layer: ``3 n (2 (4 h^2 + 2 h f) + 4 T h)``: the QKV, output, FC1 and FC2
  projections, plus QK^T and AV over the full T x T score matrix (a causal kernel may skip
  about half of those, and they are counted anyway, as in most MFU accounting); backward costs
  twice the forward (gradients of inputs and of weights);
- the head, run every step by every method: GPT ``3 n 2 h V`` (the tied LM head on all
  positions); BERT ``3 m (2 h^2 + 2 h V)`` on the m masked positions only (dense + tied
  decoder; m = round(p (T - 2)) per sequence, p = 0.15);
- embeddings (a lookup and its scatter-add gradient), LayerNorms, activations, softmax and the
  cross-entropy loss: elementwise, no matmul FLOPs (0 here; under 1% of the step at the sizes
  studied); the optimizer's per-parameter update is not counted either.

A run of S steps whose layers ran a fraction F of the full model's layer-steps (the engine's
``layer_flops_fraction``; stacking's shallower models count their depth) costs
``S (F L layer + head)``. Gradual stacking, RAPTR, PLD and LayerDrop save layer FLOPs only,
so their total fraction is above their layer fraction: 0.75 of the layers of gpt-narrow is
0.79 of the total.
"""
from __future__ import annotations

from dataclasses import dataclass

MLM_PROBABILITY = 0.15


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimizer step, by part."""

    layer: float
    """One active transformer layer, forward and backward."""
    head: float
    """The output head (and final norm), forward and backward."""
    num_layers: int
    embedding: float = 0.0
    """Embedding lookup and gradient: no matmul FLOPs."""

    @property
    def full(self) -> float:
        """A full-model step."""
        return self.num_layers * self.layer + self.head + self.embedding

    def run(self, steps: float, layer_fraction: float) -> float:
        """FLOPs of ``steps`` steps that ran ``layer_fraction`` of the layers on average."""
        return steps * (layer_fraction * self.num_layers * self.layer + self.head
                        + self.embedding)

    def total_fraction(self, layer_fraction: float) -> float:
        """Total FLOPs of a step at ``layer_fraction`` of the layers, relative to full."""
        return self.run(1, layer_fraction) / self.full


def step_flops(kind: str, shape: dict, *, vocab_size: int, seq_len: int, sequences: int,
               mlm_probability: float = MLM_PROBABILITY) -> StepFlops:
    """The step FLOPs of a reference model.

    Args:
        kind: ``"mlm"`` (BERT: head on masked positions) or ``"causal"`` (GPT: head on all).
        shape: ``num_layers``, ``hidden``, ``ffn`` (a ``megaraptr.models.SIZES`` entry).
        vocab_size: V.
        seq_len: T.
        sequences: Sequences per optimizer step (all micro-batches and ranks).
        mlm_probability: Fraction of a BERT sequence's T - 2 body tokens predicted.
    """
    h, f, L = shape["hidden"], shape["ffn"], shape["num_layers"]
    tokens = sequences * seq_len
    layer = 3 * tokens * (2 * (4 * h * h + 2 * h * f) + 4 * seq_len * h)
    if kind == "mlm":
        predicted = sequences * max(1, round(mlm_probability * (seq_len - 2)))
        head = 3 * predicted * (2 * h * h + 2 * h * vocab_size)
    elif kind == "causal":
        head = 3 * tokens * 2 * h * vocab_size
    else:
        raise ValueError(f"kind {kind!r}; allowed: mlm, causal")
    return StepFlops(layer=float(layer), head=float(head), num_layers=L)
