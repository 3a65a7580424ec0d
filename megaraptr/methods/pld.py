"""Progressive Layer Dropping (Zhang & He, NeurIPS 2020), as a pure function of the step.

theta(t) = (1 - theta_bar) exp(-gamma t) + theta_bar, with t the number of PLD steps already
applied (the clock starts after any full-model warmup, so the first PLD step trains the full
model); layer i of L (1-based) runs with probability 1 - i/L (1 - theta(t)): deeper layers are
dropped more. Fixed layers, if any are configured, always run; kept layers are scaled by 1/p
by default (as in its paper). Settings block: ``"pld": {"theta_bar": 0.5, "gamma": ...}`` or
``"pld": {"match_flops": 0.75}``.

Fair defaults: gamma = 0.001 x 200,000 / (PLD steps) puts the decay at the same fraction of the
run as DeepSpeed's BERT recipe (gamma 0.001 over about 200k steps: theta within 1% of its floor
after ln(100) / 0.001 = 4,605 steps, 2.3% of the run); a fixed 0.001 in a run of a few thousand
steps would spend most of it near the full model. ``match_flops`` solves the closed form of the
expected layer runs (:func:`pld_layer_sum`, linear in theta_bar) for theta_bar.
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
from megaraptr.errors import ConfigError
from megaraptr.methods.base import Method

RECIPE_GAMMA, RECIPE_STEPS = 0.001, 200_000
"""DeepSpeed's BERT PLD recipe: the decay rate and the run length it was tuned for."""
DEFAULT_THETA_BAR = 0.5


def default_gamma(pld_steps: int) -> float:
    """gamma that spends the same fraction of a ``pld_steps``-step run decaying as the recipe."""
    return RECIPE_GAMMA * RECIPE_STEPS / max(pld_steps, 1)


def pld_theta(step: int, theta_bar: float, gamma: float, start: int = 1) -> float:
    """theta of applied step ``step``: 1 at ``start`` (the first PLD step), decaying to
    theta_bar."""
    return (1.0 - theta_bar) * math.exp(-gamma * (step - start)) + theta_bar


def pld_layer_probs(num_layers: int, fixed: Sequence[int], theta: float) -> Tuple[float, ...]:
    """Keep probability of every layer at one step."""
    fixed = set(fixed)
    return tuple(1.0 if i in fixed else 1.0 - (i + 1) / num_layers * (1.0 - theta)
                 for i in range(num_layers))


def _depth_weight(num_layers: int, fixed: Sequence[int]) -> float:
    """sum of i/L over the non-fixed layers (1-based i): how strongly (1 - theta) drops layers."""
    return sum((i + 1) / num_layers for i in range(num_layers) if i not in set(fixed))


def _decay_sum(first: int, last: int, gamma: float, start: int) -> float:
    """sum of exp(-gamma (t - start)) over steps t = first..last."""
    count = last - first + 1
    if gamma == 0.0:
        return float(count)
    ratio = math.exp(-gamma)
    return ratio ** (first - start) * (1.0 - ratio ** count) / (1.0 - ratio)


def pld_layer_sum(first: int, last: int, num_layers: int, fixed: Sequence[int],
                  theta_bar: float, gamma: float, start: int = 1) -> float:
    """Expected number of layer runs over steps first..last (closed form)."""
    if last < first:
        return 0.0
    count = last - first + 1
    # layer i is dropped with probability i/L (1 - theta(t)); 1 - theta(t) = (1 - theta_bar)
    # (1 - exp(-gamma (t - start))), summed over the steps in closed form
    dropped = (1.0 - theta_bar) * (count - _decay_sum(first, last, gamma, start)) * \
        _depth_weight(num_layers, fixed)
    return count * num_layers - dropped


def match_theta_bar(target: float, *, num_layers: int, total_steps: int, warmup: int,
                    fixed: Sequence[int], gamma: float) -> float:
    """theta_bar whose run spends ``target`` of full training's layer FLOPs (warmup included).

    Raises:
        ConfigError: no theta_bar in (0, 1] reaches the target in this run.
    """
    first, count = warmup + 1, total_steps - warmup
    slack = (count - _decay_sum(first, total_steps, gamma, first)) * \
        _depth_weight(num_layers, fixed)  # layer runs dropped per unit of (1 - theta_bar)
    excess = total_steps * num_layers * (1.0 - target)  # layer runs the target drops
    lowest = 1.0 - slack / (total_steps * num_layers)
    if slack <= 0.0 or excess > slack:
        raise ConfigError("raptr.pld.match_flops", f"{target:g} is out of reach: with gamma "
                          f"{gamma:.4g} this run spends at least {lowest:.4f} of the layer FLOPs; "
                          "allowed: a larger target, or a larger gamma")
    return 1.0 - excess / slack


@dataclass(frozen=True)
class PLDPolicy(LayerPolicy):
    """Per-layer keep probabilities that follow theta(t) outside full-model stages."""

    theta_bar: float = DEFAULT_THETA_BAR
    gamma: float = RECIPE_GAMMA
    start: int = 1
    """The first PLD step (after the full-model warmup): theta(start) = 1."""
    name = "pld"

    def keep_prob(self, stage: Stage, step: int) -> float:
        if stage.is_full:
            return stage.keep_prob
        return pld_theta(step, self.theta_bar, self.gamma, self.start)

    def layer_probs(self, stage: Stage, step: int) -> Tuple[float, ...]:
        if stage.is_full:
            return super().layer_probs(stage, step)
        return pld_layer_probs(stage.num_layers, stage.fixed, self.keep_prob(stage, step))

    def layer_runs(self, stage: Stage, first: int, last: int) -> float:
        if stage.is_full or last < first:
            return super().layer_runs(stage, first, last)
        return pld_layer_sum(first, last, stage.num_layers, stage.fixed, self.theta_bar,
                             self.gamma, self.start)

    def mask(self, sampler, stage: Stage, step: int) -> LayerMask:
        if stage.is_full:
            return super().mask(sampler, stage, step)
        return sample_probs(sampler.seed, step, self.layer_probs(stage, step),
                            scaling=sampler.schedule.scaling)

    def fingerprint(self) -> list:
        clock = [] if self.start == 1 else ["clock", self.start]  # runs without warmup as before
        return [self.name, [self.theta_bar, self.gamma]] + clock


class PLD(Method):
    name = "pld"
    settings_key = "pld"

    def build(self, config: RaptrConfig, *, num_layers: int, total_steps: int,
              fixed: Tuple[int, ...]) -> Schedule:
        spec, warmup = config.pld or PLDSpec(), config.full_model_warmup_steps
        gamma = spec.gamma if spec.gamma is not None else default_gamma(total_steps - warmup)
        if spec.match_flops is not None:
            theta_bar = match_theta_bar(spec.match_flops, num_layers=num_layers,
                                        total_steps=total_steps, warmup=warmup, fixed=fixed,
                                        gamma=gamma)
        else:
            theta_bar = spec.theta_bar if spec.theta_bar is not None else DEFAULT_THETA_BAR
        stages = warmup_stage(config, num_layers, fixed)
        stages.append(Stage(len(stages), self.name, warmup + 1, total_steps, theta_bar,
                            num_layers, fixed))
        return Schedule(tuple(stages), total_steps, num_layers, "bernoulli",
                        config.effective_scaling, PLDPolicy(theta_bar, gamma, warmup + 1))
