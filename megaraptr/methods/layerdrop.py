"""LayerDrop (Fan et al., 2019): every non-fixed layer is dropped with a constant probability.

One stage over the run (after an optional full-model warmup) of keep probability 1 - p,
unscaled; its settings block is ``"layerdrop": {"drop_prob": 0.2}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from megaraptr.core.config import LayerDropSpec, RaptrConfig
from megaraptr.core.policy import LayerPolicy
from megaraptr.core.schedule import Schedule, warmup_stage
from megaraptr.core.stage import Stage
from megaraptr.methods.base import Method


@dataclass(frozen=True)
class LayerDropPolicy(LayerPolicy):
    """RAPTR's policy with LayerDrop's name in the schedule's fingerprint."""

    name = "layerdrop"

    def fingerprint(self) -> list:
        return [self.name, None]


class LayerDrop(Method):
    name = "layerdrop"
    settings_key = "layerdrop"

    def build(self, config: RaptrConfig, *, num_layers: int, total_steps: int,
              fixed: Tuple[int, ...]) -> Schedule:
        stages = warmup_stage(config, num_layers, fixed)
        prob = 1.0 - (config.layerdrop or LayerDropSpec()).drop_prob
        stages.append(Stage(len(stages), self.name, config.full_model_warmup_steps + 1,
                            total_steps, prob, num_layers, fixed))
        return Schedule(tuple(stages), total_steps, num_layers, "bernoulli",
                        config.effective_scaling, LayerDropPolicy())
