"""What one optimizer step did (:class:`StepResult`), and the loss in a model's output.

``train_step`` keeps the step's loss on the device: reading :attr:`StepResult.loss` is the
one host sync it costs, when the caller wants it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple, Union

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
    _loss: Union[float, Tuple[torch.Tensor, int]]
    """The loss, or (its sum over the micro-batches on the device, their count) until
    :attr:`loss` is first read."""
    applied: bool
    """False when the optimizer skipped the step (fp16 overflow)."""
    keep_prob: float = 1.0
    """The step's keep probability (PLD: theta(t); stacking: depth / L)."""

    @property
    def loss(self) -> float:
        """Mean training loss over the micro-batches of this rank (``engine.mean_over_ranks``
        or :class:`~megaraptr.runtime.monitor.StepMonitor` average it over the ranks). Reading
        it waits for the device (one host sync, on first read): ``train_step`` itself does
        not, so a loop that reads the loss only now and then lets the host run ahead."""
        if isinstance(self._loss, tuple):
            total, count = self._loss
            self._loss = float(total) / count
        return self._loss

    @loss.setter
    def loss(self, value: float) -> None:
        self._loss = value


def loss_of(output) -> torch.Tensor:
    """The loss in a model's output: a tensor, ``output.loss`` or ``output["loss"]``."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["loss"]
    return output.loss
