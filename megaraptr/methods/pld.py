"""Progressive Layer Dropping (Zhang & He, NeurIPS 2020), as a pure function of the step.

theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar, with t the number of steps already
applied (so step 1 trains the full model); layer i of L (1-based) runs with probability
1 - i/L (1 - theta(t)): deeper layers are dropped more. Fixed layers, if any are configured,
always run; kept layers are scaled by 1/p by default (as in its paper). Settings block:
``"pld": {"theta_bar": 0.5, "gamma": 0.001}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

from megaraptr.core.config import PLDSpec, RaptrConfig
from megaraptr.core.mask import LayerMask
from megaraptr.core.policy import LayerPolicy
from megaraptr.core.sampler import sample_probs
from megaraptr.core.schedule import Schedule, warmup_stage
from megaraptr.core.stage import Stage
from megaraptr.methods.base import Method


def pld_theta(step: int, theta_bar: float, gamma: float) -> float:
    """theta of applied step ``step`` (1-based): 1 at step 1, decaying to theta_bar."""
    return (1.0 - theta_bar) * math.exp(-gamma * (step - 1)) + theta_bar


def pld_layer_probs(num_layers: int, fixed: Sequence[int], theta: float) -> Tuple[float, ...]:
    """Keep probability of every layer at one step."""
    fixed = set(fixed)
    return tuple(1.0 if i in fixed else 1.0 - (i + 1) / num_layers * (1.0 - theta)
                 for i in range(num_layers))


def pld_layer_sum(first: int, last: int, num_layers: int, fixed: Sequence[int],
                  theta_bar: float, gamma: float) -> float:
    """Expected number of layer runs over steps first..last (closed form)."""
    if last < first:
        return 0.0
    count = last - first + 1
    depth_weight = sum((i + 1) / num_layers for i in range(num_layers) if i not in set(fixed))
    # sum of (1 - theta(t)) over the steps: (1 - theta_bar) * sum exp(-gamma (t - 1))
    if gamma == 0.0:
        decay = float(count)
    else:
        ratio = math.exp(-gamma)
        decay = ratio ** (first - 1) * (1.0 - ratio ** count) / (1.0 - ratio)
    dropped = (1.0 - theta_bar) * (count - decay) * depth_weight
    return count * num_layers - dropped


@dataclass(frozen=True)
class PLDPolicy(LayerPolicy):
    """Per-layer keep probabilities that follow theta(t) outside full-model stages."""

    theta_bar: float = 0.5
    gamma: float = 0.001
    name = "pld"

    def keep_prob(self, stage: Stage, step: int) -> float:
        if stage.is_full:
            return stage.keep_prob
        return pld_theta(step, self.theta_bar, self.gamma)

    def layer_probs(self, stage: Stage, step: int) -> Tuple[float, ...]:
        if stage.is_full:
            return super().layer_probs(stage, step)
        return pld_layer_probs(stage.num_layers, stage.fixed, self.keep_prob(stage, step))

    def layer_runs(self, stage: Stage, first: int, last: int) -> float:
        if stage.is_full or last < first:
            return super().layer_runs(stage, first, last)
        return pld_layer_sum(first, last, stage.num_layers, stage.fixed, self.theta_bar,
                             self.gamma)

    def mask(self, sampler, stage: Stage, step: int) -> LayerMask:
        if stage.is_full:
            return super().mask(sampler, stage, step)
        return sample_probs(sampler.seed, step, self.layer_probs(stage, step),
                            scaling=sampler.schedule.scaling)

    def fingerprint(self) -> list:
        return [self.name, [self.theta_bar, self.gamma]]


class PLD(Method):
    name = "pld"
    settings_key = "pld"

    def build(self, config: RaptrConfig, *, num_layers: int, total_steps: int,
              fixed: Tuple[int, ...]) -> Schedule:
        spec = config.pld or PLDSpec()
        stages = warmup_stage(config, num_layers, fixed)
        stages.append(Stage(len(stages), self.name, config.full_model_warmup_steps + 1,
                            total_steps, spec.theta_bar, num_layers, fixed))
        return Schedule(tuple(stages), total_steps, num_layers, "bernoulli",
                        config.effective_scaling, PLDPolicy(spec.theta_bar, spec.gamma))
