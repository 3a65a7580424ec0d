"""Pure schedule: applied optimizer step -> Stage, and the layer-FLOPs a schedule spends.

The clock is the number of applied optimizer steps, 1-based: step s is the s-th optimizer
step of the run (micro-steps and fp16-overflow steps do not count). A schedule is fixed by the
validated raptr block, the model's depth L and the run's total steps N:

- an optional full-model warmup stage of ``full_model_warmup_steps`` steps, then
- the configured stages over the remaining steps: explicit ``steps`` or ``fraction`` where
  given, the rest shared equally; the last stage must be the full model and runs to step N.

With F fixed layers and S = L - F stochastic ones, a stage of keep probability p has expected
depth F + p * S; "6-8-10-12" of 12 layers with the first and last fixed is p = .4 .6 .8 1.

The comparison methods build schedules here too: ``layerdrop`` is one stage of keep
probability 1 - p; ``pld`` one stage whose per-layer probabilities follow theta(t)
(:mod:`megaraptr.policies`); ``stacking`` stages of whole depths, the first k layers each.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megaraptr.config import LayerDropSpec, PLDSpec, RaptrConfig, StageSpec
from megaraptr.errors import ConfigError
from megaraptr.policies import pld_layer_probs, pld_layer_sum, pld_theta

_EPS = 1e-9


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
    """With "exact" sampling: the number of layers that run on every step of the stage."""

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


@dataclass(frozen=True)
class Schedule:
    """The stages of one run over steps 1..total_steps."""

    stages: Tuple[Stage, ...]
    total_steps: int
    num_layers: int
    sampling: str = "bernoulli"
    scaling: str = "none"
    method: str = "raptr"
    pld: Optional[Tuple[float, float]] = None
    """(theta_bar, gamma) of method "pld"."""

    def keep_prob_at(self, step: int) -> float:
        """The keep probability reported for a step (PLD: theta(t); stacking: k / L)."""
        stage = self.stage_at(step)
        if self.method == "pld" and not stage.is_full:
            return pld_theta(step, *self.pld)
        return stage.keep_prob

    def layer_probs(self, step: int) -> Tuple[float, ...]:
        """Every layer's marginal probability of running on ``step``."""
        stage = self.stage_at(step)
        if self.method == "pld" and not stage.is_full:
            return pld_layer_probs(self.num_layers, stage.fixed, pld_theta(step, *self.pld))
        if self.method == "stacking":
            return tuple(1.0 if i < stage.exact_layers else 0.0 for i in range(self.num_layers))
        if stage.exact_layers is not None and stage.num_layers > len(stage.fixed):
            free = stage.num_layers - len(stage.fixed)
            prob = (stage.exact_layers - len(stage.fixed)) / free
        else:
            prob = stage.keep_prob
        return tuple(1.0 if i in stage.fixed else prob for i in range(self.num_layers))

    def _layer_runs(self, stage: "Stage", first: int, last: int) -> float:
        if last < first:
            return 0.0
        if self.method == "pld" and not stage.is_full:
            return pld_layer_sum(first, last, self.num_layers, stage.fixed, *self.pld)
        return (last - first + 1) * stage.expected_layers

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
        spent = 0.0
        for stage in self.stages:
            spent += self._layer_runs(stage, stage.first_step, min(stage.last_step, upto))
        last = self.stages[-1]
        spent += self._layer_runs(last, last.last_step + 1, upto)
        return spent / (upto * self.num_layers)

    def fingerprint(self) -> str:
        """A short hash of everything that decides the subnetworks (the seed aside); stage
        names and numbering do not count."""
        spans = [[s.first_step, s.last_step, s.keep_prob, list(s.fixed), s.exact_layers]
                 for s in self.stages]
        method = [] if self.method == "raptr" else [self.method, self.pld]
        payload = json.dumps([self.total_steps, self.num_layers, self.sampling, self.scaling,
                              spans] + method).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def describe(self) -> List[dict]:
        """One row per stage, for logs and the config tool."""
        return [{"stage": s.name, "steps": f"{s.first_step}-{s.last_step}",
                 "keep_prob": round(s.keep_prob, 4), "expected_layers": round(s.expected_layers, 3),
                 "layer_flops": round(s.expected_layers / self.num_layers, 4)} for s in self.stages]


def full_schedule(num_layers: int, total_steps: int) -> Schedule:
    """Full-model training every step (RAPTR disabled): one stage with keep_prob 1."""
    fixed = tuple(range(num_layers))
    stage = Stage(0, "full", 1, total_steps, 1.0, num_layers, fixed)
    return Schedule((stage,), total_steps, num_layers)


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


def _split(total: int, weights: Sequence[float]) -> List[int]:
    """Split ``total`` steps in proportion to ``weights`` by rounding running sums."""
    cum, bounds = 0.0, [0]
    for w in weights:
        cum += w
        bounds.append(round(total * cum / sum(weights)))
    return [b - a for a, b in zip(bounds, bounds[1:])]


def _lengths(specs: Sequence[StageSpec], staged: int, warmup: int) -> List[int]:
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
        for i, n in zip(fracs, _split(rounded, [specs[i].fraction for i in fracs])):
            lengths[i] = n
    left = staged - sum(lengths)
    if free:
        if left < len(free):
            raise ConfigError("raptr.schedule", f"{len(specs)} stages need at least one step "
                              f"each; explicit lengths take {staged - left} steps and {run}")
        for i, n in zip(free, _split(left, [1.0] * len(free))):
            lengths[i] = n
    if min(lengths) < 1:
        raise ConfigError("raptr.schedule", f"a stage gets {min(lengths)} steps; every stage "
                          f"needs at least one and {run}")
    return lengths


def build_schedule(config: RaptrConfig, *, num_layers: int, total_steps: int) -> Schedule:
    """Resolve the raptr block against the model depth and run length.

    Args:
        config: the validated raptr block; disabled gives :func:`full_schedule`.
        num_layers: the model's number of transformer blocks L.
        total_steps: N, the run's total applied optimizer steps.

    Raises:
        ConfigError: depth outside the model, a shrinking schedule, one not ending at the full
            model, lengths that do not fit the run.
    """
    if num_layers < 1:
        raise ConfigError("model", f"needs at least one layer, got {num_layers}")
    if total_steps < 1:
        raise ConfigError("train_steps", f"must be at least 1, got {total_steps}")
    if not config.trains_subnetworks:
        return full_schedule(num_layers, total_steps)
    fixed = resolve_fixed_layers(config.effective_fixed_layers, num_layers)
    warmup = config.full_model_warmup_steps
    if warmup >= total_steps:
        raise ConfigError("raptr.full_model_warmup_steps",
                          f"{warmup} leaves no steps for the stages of a {total_steps}-step run")
    if config.method in ("pld", "layerdrop"):
        return _single_stage(config, num_layers, total_steps, fixed, warmup)
    if config.method == "stacking":
        return _stacking(config, num_layers, total_steps)
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
    lengths = _lengths(config.schedule, total_steps - warmup, warmup)
    stages, step = [], 1
    if warmup:
        stages.append(Stage(0, "warmup", 1, warmup, 1.0, num_layers, fixed,
                            num_layers if config.sampling == "exact" else None))
        step = warmup + 1
    for i, (prob, length) in enumerate(zip(probs, lengths)):
        stages.append(Stage(len(stages), f"stage{i + 1}", step, step + length - 1,
                            1.0 if prob > 1.0 - _EPS else prob, num_layers, fixed,
                            exact[i] if exact else None))
        step += length
    return Schedule(tuple(stages), total_steps, num_layers, config.sampling,
                    config.effective_scaling)


def _single_stage(config: RaptrConfig, num_layers: int, total_steps: int, fixed: Tuple[int, ...],
                  warmup: int) -> Schedule:
    """PLD or LayerDrop: one stage over the run (after the optional full-model warmup)."""
    stages = []
    if warmup:
        stages.append(Stage(0, "warmup", 1, warmup, 1.0, num_layers, fixed))
    if config.method == "pld":
        spec = config.pld or PLDSpec()
        pld, prob = (spec.theta_bar, spec.gamma), spec.theta_bar
    else:
        pld, prob = None, 1.0 - (config.layerdrop or LayerDropSpec()).drop_prob
    stages.append(Stage(len(stages), config.method, warmup + 1, total_steps, prob, num_layers,
                        fixed))
    return Schedule(tuple(stages), total_steps, num_layers, "bernoulli",
                    config.effective_scaling, config.method, pld)


def _stacking(config: RaptrConfig, num_layers: int, total_steps: int) -> Schedule:
    """Gradual stacking: stage i trains the first k_i layers; k grows to the full depth."""
    depths = []
    for i, spec in enumerate(config.schedule):
        depth, key = int(spec.layers), f"raptr.schedule[{i}]"
        if not 1 <= depth <= num_layers:
            raise ConfigError(f"{key}.layers", f"{depth} layers; allowed: 1 to {num_layers}")
        if depths and depth < depths[-1]:
            raise ConfigError(key, f"{depth} layers is below the previous stage's {depths[-1]}; "
                              "allowed: a model that never shrinks")
        depths.append(depth)
    if depths[-1] != num_layers:
        raise ConfigError(f"raptr.schedule[{len(depths) - 1}]", f"the last stage must be the "
                          f"full model ({num_layers} layers), got {depths[-1]}")
    lengths = _lengths(config.schedule, total_steps, 0)
    stages, step = [], 1
    for i, (depth, length) in enumerate(zip(depths, lengths)):
        stages.append(Stage(i, f"stack{depth}", step, step + length - 1, depth / num_layers,
                            num_layers, (), depth))
        step += length
    return Schedule(tuple(stages), total_steps, num_layers, "bernoulli", "none", "stacking")
