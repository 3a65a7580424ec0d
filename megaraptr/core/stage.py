"""One stage of a schedule: a span of applied steps and how much of the model trains in it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class Stage:
    """One stage: steps first_step..last_step (inclusive) train this much of the model."""

    index: int
    name: str
    first_step: int
    last_step: int
    keep_prob: float
    """Marginal probability that a non-fixed layer runs."""
    num_layers: int
    fixed: Tuple[int, ...]
    exact_layers: Optional[int] = None
    """With "exact" sampling (and stacking): the number of layers that run on every step."""
    warmup: bool = False
    """A full-model warmup stage before the staged part of the run."""

    @property
    def num_steps(self) -> int:
        return self.last_step - self.first_step + 1

    @property
    def expected_layers(self) -> float:
        if self.exact_layers is not None:
            return float(self.exact_layers)
        stochastic = self.num_layers - len(self.fixed)
        return len(self.fixed) + self.keep_prob * stochastic

    @property
    def is_full(self) -> bool:
        return self.keep_prob >= 1.0
