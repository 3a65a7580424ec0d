"""Pure schedule: applied optimizer step -> Stage, and the layer-FLOPs a schedule spends.

The clock is the number of applied optimizer steps, 1-based: step s is the s-th optimizer
step of the run (micro-steps and fp16-overflow steps do not count). A schedule is fixed by the
validated raptr block, the model's depth L and the run's total steps N:

- an optional full-model warmup stage of ``full_model_warmup_steps`` steps, then
- the configured stages over the remaining steps: explicit ``steps`` or ``fraction`` where
  given, the rest shared equally; the last stage must be the full model and runs to step N.

With F fixed layers and S = L - F stochastic ones, a stage of keep probability p has expected
depth F + p * S; "6-8-10-12" of 12 layers with the first and last fixed is p = .4 .6 .8 1.

:func:`staged_schedule` builds RAPTR's stages; each method of :mod:`megaraptr.methods` builds
its schedule from these pieces and gives it its :class:`~megaraptr.core.policy.LayerPolicy`
(:func:`megaraptr.methods.build_schedule` picks the method).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megaraptr.core.config import RaptrConfig, StageSpec
from megaraptr.core.policy import STAGED, LayerPolicy
from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError

_EPS = 1e-9


@dataclass(frozen=True)
class Schedule:
    """The stages of one run over steps 1..total_steps."""

    stages: Tuple[Stage, ...]
    total_steps: int
    num_layers: int
    sampling: str = "bernoulli"
    scaling: str = "none"
    policy: LayerPolicy = STAGED
    """The method's rule for a stage's layers (:mod:`megaraptr.core.policy`)."""

    @property
    def method(self) -> str:
        return self.policy.name

    @property
    def warmup_steps(self) -> int:
        """Full-model warmup steps before the first staged stage (0 without warmup)."""
        return self.stages[0].num_steps if self.stages[0].warmup else 0

    def keep_prob_at(self, step: int) -> float:
        """The keep probability reported for a step (PLD: theta(t); stacking: k / L)."""
        return self.policy.keep_prob(self.stage_at(step), step)

    def layer_probs(self, step: int) -> Tuple[float, ...]:
        """Every layer's marginal probability of running on ``step``."""
        return self.policy.layer_probs(self.stage_at(step), step)

    def stage_at(self, step: int) -> Stage:
        """The stage of applied step ``step`` (1-based); steps past the end stay in the last."""
        if step < 1:
            raise ValueError(f"steps are 1-based, got {step}")
        for stage in self.stages:
            if step <= stage.last_step:
                return stage
        return self.stages[-1]

    def expected_flops_fraction(self, upto: Optional[int] = None) -> float:
        """Expected layer FLOPs of steps 1..upto relative to full-model training."""
        upto = self.total_steps if upto is None else upto
        if upto < 1:
            return 1.0
        runs = self.policy.layer_runs
        spent = sum(runs(s, s.first_step, min(s.last_step, upto)) for s in self.stages)
        last = self.stages[-1]
        spent += runs(last, last.last_step + 1, upto)
        return spent / (upto * self.num_layers)

    def fingerprint(self) -> str:
        """A short hash of everything that decides the subnetworks (the seed aside); stage
        names and numbering do not count."""
        spans = [[s.first_step, s.last_step, s.keep_prob, list(s.fixed), s.exact_layers]
                 for s in self.stages]
        payload = json.dumps([self.total_steps, self.num_layers, self.sampling, self.scaling,
                              spans] + self.policy.fingerprint()).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def expected_layers(self, stage: Stage) -> float:
        """Mean active layers per step over ``stage`` under the method's policy (PLD: theta
        decays within the stage, so this is not F + theta_bar S)."""
        return self.policy.layer_runs(stage, stage.first_step, stage.last_step) / stage.num_steps

    def describe(self) -> List[dict]:
        """One row per stage, for logs and the config tool."""
        rows = []
        for s in self.stages:
            layers = self.expected_layers(s)
            rows.append({"stage": s.name, "steps": f"{s.first_step}-{s.last_step}",
                         "keep_prob": round(s.keep_prob, 4), "expected_layers": round(layers, 3),
                         "layer_flops": round(layers / self.num_layers, 4)})
        return rows


def full_schedule(num_layers: int, total_steps: int) -> Schedule:
    """Full-model training every step (RAPTR disabled): one stage with keep_prob 1."""
    fixed = tuple(range(num_layers))
    stage = Stage(0, "full", 1, total_steps, 1.0, num_layers, fixed)
    return Schedule((stage,), total_steps, num_layers)


def check_run(num_layers: int, total_steps: int, warmup: int = 0) -> None:
    """One-line errors for a model without layers, an empty run, or a warmup filling it."""
    if num_layers < 1:
        raise ConfigError("model", f"needs at least one layer, got {num_layers}: mark each "
                          "transformer block with megaraptr.mark_block(block, layer_id) and "
                          "decorate its forward with @megaraptr.skippable")
    if total_steps < 1:
        raise ConfigError("train_steps", f"must be at least 1, got {total_steps}")
    if warmup >= total_steps:
        raise ConfigError("raptr.full_model_warmup_steps",
                          f"{warmup} leaves no steps for the stages of a {total_steps}-step run")


def warmup_stage(config: RaptrConfig, num_layers: int, fixed: Tuple[int, ...],
                 exact: bool = False) -> List[Stage]:
    """The full-model warmup stage, if the config asks for one (as a list of 0 or 1)."""
    warmup = config.full_model_warmup_steps
    if not warmup:
        return []
    return [Stage(0, "warmup", 1, warmup, 1.0, num_layers, fixed,
                  num_layers if exact else None, warmup=True)]


def resolve_fixed_layers(fixed_layers: Sequence[int], num_layers: int) -> Tuple[int, ...]:
    """Normalise negative indices; reject layers outside the model."""
    resolved = []
    for i, layer in enumerate(fixed_layers):
        if not -num_layers <= layer < num_layers:
            raise ConfigError(f"raptr.fixed_layers[{i}]",
                              f"layer {layer} is outside the model; allowed: {-num_layers} to "
                              f"{num_layers - 1} for {num_layers} layers")
        resolved.append(layer % num_layers)
    return tuple(sorted(set(resolved)))


def _keep_prob(spec: StageSpec, key: str, num_layers: int, num_fixed: int) -> float:
    stochastic = num_layers - num_fixed
    if spec.keep_prob is not None:
        return spec.keep_prob
    depth = spec.layers
    if depth > num_layers + _EPS:
        raise ConfigError(f"{key}.layers", f"{depth:g} layers is above the model's {num_layers}; "
                          f"allowed: {num_fixed} to {num_layers}")
    if depth < num_fixed - _EPS:
        raise ConfigError(f"{key}.layers", f"{depth:g} layers is below the {num_fixed} fixed "
                          f"layers; allowed: {num_fixed} to {num_layers}")
    return 1.0 if stochastic == 0 else min(1.0, max(0.0, (depth - num_fixed) / stochastic))


def _exact_count(prob: float, key: str, num_layers: int, num_fixed: int) -> int:
    depth = num_fixed + prob * (num_layers - num_fixed)
    if abs(depth - round(depth)) > 1e-6:
        raise ConfigError(key, f"gives {depth:g} expected layers; sampling \"exact\" needs a whole "
                          "number of layers (use \"layers\": k)")
    return int(round(depth))


def split_steps(total: int, weights: Sequence[float]) -> List[int]:
    """Split ``total`` steps in proportion to ``weights`` by rounding running sums."""
    cum, bounds = 0.0, [0]
    for w in weights:
        cum += w
        bounds.append(round(total * cum / sum(weights)))
    return [b - a for a, b in zip(bounds, bounds[1:])]


def stage_lengths(specs: Sequence[StageSpec], staged: int, warmup: int) -> List[int]:
    """Stage lengths: explicit ``steps``; ``fraction`` of the staged run; the rest shared."""
    run = f"the run has {staged} steps after warmup (train steps {staged + warmup}, " \
          f"full_model_warmup_steps {warmup})"
    fixed_steps = sum(s.steps for s in specs if s.steps is not None)
    fracs = [i for i, s in enumerate(specs) if s.fraction is not None]
    free = [i for i, s in enumerate(specs) if s.steps is None and s.fraction is None]
    share = sum(specs[i].fraction for i in fracs) * staged
    if not free and fracs and abs(fixed_steps + share - staged) >= 0.5:
        raise ConfigError("raptr.schedule", f"stage lengths add up to {fixed_steps + share:g} "
                          f"steps but {run}")
    if not free and not fracs and fixed_steps != staged:
        raise ConfigError("raptr.schedule", f"stage lengths add up to {fixed_steps} steps but {run}")
    lengths = [s.steps or 0 for s in specs]
    if fracs:
        rounded = round(share) if free else staged - fixed_steps
        for i, n in zip(fracs, split_steps(rounded, [specs[i].fraction for i in fracs])):
            lengths[i] = n
    left = staged - sum(lengths)
    if free:
        if left < len(free):
            raise ConfigError("raptr.schedule", f"{len(specs)} stages need at least one step "
                              f"each; explicit lengths take {staged - left} steps and {run}")
        for i, n in zip(free, split_steps(left, [1.0] * len(free))):
            lengths[i] = n
    if min(lengths) < 1:
        raise ConfigError("raptr.schedule", f"a stage gets {min(lengths)} steps; every stage "
                          f"needs at least one and {run}")
    return lengths


def staged_schedule(config: RaptrConfig, *, num_layers: int, total_steps: int,
                    fixed: Tuple[int, ...]) -> Schedule:
    """RAPTR's stages: keep probabilities that never shrink, ending at the full model.

    Raises:
        ConfigError: depth outside the model, a shrinking schedule, one not ending at the full
            model, lengths that do not fit the run.
    """
    warmup = config.full_model_warmup_steps
    probs, exact = [], []
    for i, spec in enumerate(config.schedule):
        key = f"raptr.schedule[{i}]"
        prob = _keep_prob(spec, key, num_layers, len(fixed))
        if probs and prob < probs[-1] - _EPS:
            raise ConfigError(key, f"keep probability {prob:.4g} is below the previous stage's "
                              f"{probs[-1]:.4g}; allowed: a schedule that never shrinks")
        probs.append(prob)
        if config.sampling == "exact":
            exact.append(_exact_count(prob, key, num_layers, len(fixed)))
    if probs[-1] < 1.0 - _EPS:
        last = len(probs) - 1
        raise ConfigError(f"raptr.schedule[{last}]",
                          f"the last stage must be the full model ({num_layers} layers or "
                          f"keep_prob 1), got expected depth "
                          f"{len(fixed) + probs[-1] * (num_layers - len(fixed)):.4g}")
    lengths = stage_lengths(config.schedule, total_steps - warmup, warmup)
    stages = warmup_stage(config, num_layers, fixed, exact=config.sampling == "exact")
    step = warmup + 1
    for i, (prob, length) in enumerate(zip(probs, lengths)):
        stages.append(Stage(len(stages), f"stage{i + 1}", step, step + length - 1,
                            1.0 if prob > 1.0 - _EPS else prob, num_layers, fixed,
                            exact[i] if exact else None))
        step += length
    return Schedule(tuple(stages), total_steps, num_layers, config.sampling,
                    config.effective_scaling)


def rewarm_multiplier(step: int, stage_first_step: int, stage_index: int, rewarm_steps: int,
                      first_staged_index: int = 0) -> float:
    """Factor on the learning rate of ``step``: ramps (1 .. K) / (K + 1) over the first K =
    ``rewarm_steps`` steps of every stage after the first staged one, else 1."""
    into = step - stage_first_step
    if rewarm_steps <= 0 or stage_index <= first_staged_index or into >= rewarm_steps:
        return 1.0
    return (into + 1) / (rewarm_steps + 1)
