"""LayerDrop (Fan et al., 2019): every non-fixed layer is dropped with a constant probability.

One stage over the run (after an optional full-model warmup) of keep probability 1 - p,
unscaled; its settings block is ``"layerdrop": {"drop_prob": 0.2}``, or ``{"match_flops": f}``
to pick p so that the run spends the fraction f of full training's layer FLOPs (closed form:
W L + (N - W)(F + (1 - p)(L - F)) = f N L, with W warmup steps and F fixed layers).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

from megaraptr.core.config import LayerDropSpec, RaptrConfig
from megaraptr.core.policy import LayerPolicy
from megaraptr.core.schedule import Schedule, warmup_stage
from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError
from megaraptr.methods.base import Method


@dataclass(frozen=True)
class LayerDropPolicy(LayerPolicy):
    """RAPTR's policy with LayerDrop's name in the schedule's fingerprint."""

    name = "layerdrop"

    def fingerprint(self) -> list:
        return [self.name, None]


DEFAULT_DROP_PROB = 0.2


def drop_prob(spec: LayerDropSpec, *, num_layers: int, total_steps: int, warmup: int,
              num_fixed: int) -> float:
    """The drop probability: given, the paper's 0.2, or solved for ``spec.match_flops``.

    Raises:
        ConfigError: no drop probability in [0, 1) reaches the target in this run.
    """
    if spec.match_flops is None:
        return spec.drop_prob if spec.drop_prob is not None else DEFAULT_DROP_PROB
    count, free = total_steps - warmup, num_layers - num_fixed
    target_runs = spec.match_flops * total_steps * num_layers
    keep = (target_runs - warmup * num_layers - count * num_fixed) / (count * free) \
        if free else 1.0
    if not 0.0 < keep <= 1.0:
        lowest = (warmup * num_layers + count * num_fixed) / (total_steps * num_layers)
        raise ConfigError("raptr.layerdrop.match_flops", f"{spec.match_flops:g} is out of reach: "
                          f"this run spends more than {lowest:.4f} of the layer FLOPs with every "
                          "non-fixed layer dropped; allowed: a larger target")
    return 1.0 - keep


class LayerDrop(Method):
    name = "layerdrop"
    settings_key = "layerdrop"

    def build(self, config: RaptrConfig, *, num_layers: int, total_steps: int,
              fixed: Tuple[int, ...]) -> Schedule:
        stages = warmup_stage(config, num_layers, fixed)
        prob = 1.0 - drop_prob(config.layerdrop or LayerDropSpec(), num_layers=num_layers,
                               total_steps=total_steps, warmup=config.full_model_warmup_steps,
                               num_fixed=len(fixed))
        stages.append(Stage(len(stages), self.name, config.full_model_warmup_steps + 1,
                            total_steps, prob, num_layers, fixed))
        return Schedule(tuple(stages), total_steps, num_layers, "bernoulli",
                        config.effective_scaling, LayerDropPolicy())
