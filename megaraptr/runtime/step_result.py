"""What one optimizer step did (:class:`StepResult`), and the loss in a model's output.

Each step ends in one all-reduce over all ranks (the mean loss, a non-finite count, the
caller's votes): the divergence guard and the agreed stop read it, so the step's loss is on the
host when ``train_step`` returns (one host sync per step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch

from megaraptr.core.mask import LayerMask
from megaraptr.core.stage import Stage


@dataclass
class StepResult:
    """What one optimizer step did (``engine.train_step`` returns it)."""

    step: int
    """The applied optimizer step it trained (1-based; the schedule's clock)."""
    stage: Stage
    """The schedule stage of the step (``stage.name``, ``stage.index``, ``stage.keep_prob``)."""
    mask: LayerMask
    """The subnetwork: ``mask.active`` per layer, ``mask.active_ids``, ``mask.num_active``,
    ``mask.scale`` (each layer's residual-branch factor), the same on every rank."""
    loss: float
    """Mean training loss over the micro-batches of this rank (:attr:`mean_loss`: over all
    ranks)."""
    applied: bool
    """False when the optimizer skipped the step (fp16 overflow)."""
    keep_prob: float = 1.0
    """The step's keep probability (PLD: theta(t); stacking: depth / L)."""

    mean_loss: float = float("nan")
    """The step's loss averaged over all ranks (from the step's one all-reduce)."""
    votes: Tuple[float, ...] = ()
    """The ``votes`` passed to ``train_step``, each summed over all ranks."""
    dropped: bool = False
    """``raptr.on_nonfinite`` "skip_step" dropped the step's update (weights and optimizer
    state as before it; the clock, the LR schedule and the data moved on)."""


def loss_of(output) -> torch.Tensor:
    """The loss in a model's output: a tensor, ``output.loss`` or ``output["loss"]``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["loss"]
    return output.loss
