"""Full-model training through the same engine: the baseline every method is compared with.

``"method": "full"`` (or ``"enabled": false``) trains every layer on every step; the engine,
data order, checkpoints and logs are the same as RAPTR's, so one flipped key is the comparison.
"""
from __future__ import annotations

from typing import Tuple

from megaraptr.core.config import RaptrConfig
from megaraptr.core.schedule import Schedule, full_schedule
from megaraptr.methods.base import Method


class Full(Method):
    name = "full"

    def build(self, config: RaptrConfig, *, num_layers: int, total_steps: int,
              fixed: Tuple[int, ...]) -> Schedule:
        return full_schedule(num_layers, total_steps)
