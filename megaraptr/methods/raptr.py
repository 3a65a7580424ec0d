"""RAPTR (Panigrahi et al., 2024): a random subnetwork per step, growing stage by stage.

Fixed layers always run; every other layer runs with the stage's keep probability p (or, with
``"exact"`` / ``"balanced"`` sampling, as many layers as the stage's depth). Its schedule and
policy are the core's (:func:`megaraptr.core.schedule.staged_schedule`,
:class:`megaraptr.core.policy.LayerPolicy`); see ``README.md`` here.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from megaraptr.core.config import RaptrConfig
from megaraptr.core.schedule import Schedule, staged_schedule
from megaraptr.core.stage import Stage
from megaraptr.methods.base import Method, depths_summary


class Raptr(Method):
    name = "raptr"
    needs_schedule = True
    any_sampling = True
    sweepable = True

    def build(self, config: RaptrConfig, *, num_layers: int, total_steps: int,
              fixed: Tuple[int, ...]) -> Schedule:
        return staged_schedule(config, num_layers=num_layers, total_steps=total_steps,
                               fixed=fixed)

    def summary(self, staged: Sequence[Stage]) -> str:
        return depths_summary(self.name, staged)
