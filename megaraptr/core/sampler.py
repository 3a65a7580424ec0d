"""Pure sampler: (seed, step, stage) -> LayerMask. The only randomness in megaraptr.

Every rank and every pipeline stage calls the same function with the same arguments and gets
the same subnetwork, with no communication; a resumed run needs only the step. The random
numbers come from a keyed hash (BLAKE2b of seed, step, layer), so they are identical on every
machine, Python, NumPy and PyTorch version.

- ``bernoulli`` (the paper): fixed layers always run; every other layer runs with
  probability p, independently.
- ``exact``: fixed layers plus a uniform random subset of the others, of the stage's size
  (the k smallest hash values), so every step costs the same.
- ``balanced`` (for pipeline parallelism): given a partition of the layers into pipeline stages
  (:mod:`megaraptr.core.partition`), pipeline stage s runs c_s layers, floor or ceil of its quota
  q_s = f_s + p (n_s - f_s): its fixed layers plus the c_s - f_s of its other layers with the
  smallest hash values. One extra uniform number V per step (its own hash key) rounds every
  pipeline stage alike, c_s = floor(q_s) + [V < frac(q_s)] = ceil(q_s - V): E[c_s] = q_s, so
  every non-fixed layer still runs with marginal probability exactly p, and the pipeline
  stages go up or down together. That keeps the busiest one (the step time) as low as any
  rounding can (this coupling minimises E[max_s c_s] for the given marginals; systematic
  rounding, which fixes the total instead, leaves some pipeline stage at the ceiling on almost
  every step), and two pipeline stages whose quotas differ by at most one never run counts
  that differ by more than one.

Scaling ``inverse_keep_prob`` multiplies a kept stochastic layer's residual branch by 1/p
(p: that layer's marginal keep probability), ``inverse_sqrt_keep_prob`` by 1/sqrt(p) (the
paper scales kept outputs "appropriately" without a formula we could establish; these are the
two candidates); fixed layers and ``none`` keep scale 1.

Which of these a step uses is the schedule's method policy (:mod:`megaraptr.core.policy`):
RAPTR's stages use the sampling above; the comparison methods (:mod:`megaraptr.methods`) draw
the same way from their own per-layer probabilities (PLD's depend on the layer and the step)
or draw nothing (stacking: the first k layers run, and only they exist).
"""
from __future__ import annotations

import hashlib
import math
import struct
from typing import TYPE_CHECKING, Iterable, List, Optional, Sequence, Tuple

from megaraptr.core.mask import LayerMask
from megaraptr.core.partition import check_partition, quotas
from megaraptr.core.stage import Stage

if TYPE_CHECKING:  # the schedule holds the policy that calls back into this module
    from megaraptr.core.schedule import Schedule

_TWO64 = float(2 ** 64)
ROUNDING_KEY = 2 ** 64 - 1
"""The "layer" slot of :func:`uniform` for the per-step rounding number of ``balanced``
sampling; no layer has this index, so it is independent of every layer's draw."""


def uniform(seed: int, step: int, layer: int) -> float:
    """A uniform number in [0, 1) that depends only on (seed, step, layer)."""
    key = struct.pack("<QQQ", seed & 0xFFFFFFFFFFFFFFFF, step, layer)
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / _TWO64


def sample_mask(seed: int, step: int, stage: Stage, *, sampling: str = "bernoulli",
                scaling: str = "none") -> LayerMask:
    """The subnetwork of applied step ``step`` (1-based) in ``stage``.

    Args:
        seed: the sampler seed (the same on every rank).
        step: applied optimizer step.
        stage: the step's stage, from :meth:`Schedule.stage_at`.
        sampling: "bernoulli", "exact", or "balanced" (here with one pipeline stage holding
            every layer; :func:`sample_balanced` takes a partition).
        scaling: one of :data:`SCALINGS`.
    """
    num_layers, fixed = stage.num_layers, set(stage.fixed)
    if stage.is_full:
        return LayerMask.full(num_layers)
    if sampling == "balanced":
        return sample_balanced(seed, step, stage, (0, num_layers), scaling=scaling)
    if sampling == "bernoulli":
        probs = tuple(1.0 if i in fixed else stage.keep_prob for i in range(num_layers))
        return sample_probs(seed, step, probs, scaling=scaling)
    if sampling != "exact":
        raise ValueError(f"unknown sampling {sampling!r}")
    stochastic = [i for i in range(num_layers) if i not in fixed]
    keep = stage.exact_layers - len(fixed)
    prob = keep / len(stochastic) if stochastic else 1.0
    return _fixed_plus(num_layers, fixed, _smallest(seed, step, stochastic, keep), prob, scaling)


def _smallest(seed: int, step: int, layers: Sequence[int], count: int) -> List[int]:
    """The ``count`` layers of ``layers`` with the smallest draws: a uniform random subset."""
    return sorted(layers, key=lambda i: (uniform(seed, step, i), i))[:count]


SCALINGS = ("none", "inverse_keep_prob", "inverse_sqrt_keep_prob")
"""Residual-branch factors of a kept stochastic layer: 1, 1/p, 1/sqrt(p)."""


def branch_scale(scaling: str, prob: float) -> float:
    """The residual-branch factor of a kept layer that runs with marginal probability ``prob``
    (fixed layers and layers that always run keep 1)."""
    if scaling == "none" or not 0.0 < prob < 1.0:
        return 1.0
    if scaling == "inverse_keep_prob":
        return 1.0 / prob
    if scaling == "inverse_sqrt_keep_prob":
        return 1.0 / math.sqrt(prob)
    raise ValueError(f"unknown scaling {scaling!r}; allowed: {', '.join(SCALINGS)}")


def _fixed_plus(num_layers: int, fixed: set, kept: Iterable[int], prob: float,
                scaling: str) -> LayerMask:
    """Fixed layers (scale 1) plus ``kept`` (scale :func:`branch_scale` of ``prob``)."""
    kept = set(kept)
    branch = branch_scale(scaling, prob)
    active = tuple(i in fixed or i in kept for i in range(num_layers))
    scale = tuple(0.0 if not on else (1.0 if i in fixed else branch)
                  for i, on in enumerate(active))
    return LayerMask(active, scale)


def sample_probs(seed: int, step: int, probs: Tuple[float, ...], *,
                 scaling: str = "none") -> LayerMask:
    """Bernoulli draws with a probability per layer (1 always runs, unscaled)."""
    active = tuple(p >= 1.0 or uniform(seed, step, i) < p for i, p in enumerate(probs))
    scale = tuple(branch_scale(scaling, p) if on else 0.0 for on, p in zip(active, probs))
    return LayerMask(active, scale)


def balanced_counts(seed: int, step: int, stage: Stage, parts: Sequence[int]) -> Tuple[int, ...]:
    """Active layers of each pipeline stage under ``balanced`` sampling (see the module doc)."""
    rounding = uniform(seed, step, ROUNDING_KEY)
    return tuple(int(math.floor(q)) + (rounding < q - math.floor(q)) for q in quotas(stage, parts))


def sample_balanced(seed: int, step: int, stage: Stage, parts: Sequence[int], *,
                    scaling: str = "none") -> LayerMask:
    """The ``balanced`` subnetwork of applied step ``step`` in ``stage``.

    Args:
        seed: the sampler seed (the same on every rank).
        step: applied optimizer step.
        stage: the step's schedule stage.
        parts: the pipeline partition (0, b_1, ..., L) in force during ``stage``.
        scaling: one of :data:`SCALINGS` (kept non-fixed layers scaled by :func:`branch_scale`).
    """
    num_layers, fixed = stage.num_layers, set(stage.fixed)
    if stage.is_full:
        return LayerMask.full(num_layers)
    kept = []
    for lo, hi, count in zip(parts, parts[1:], balanced_counts(seed, step, stage, parts)):
        others = [i for i in range(lo, hi) if i not in fixed]
        kept += _smallest(seed, step, others, count - (hi - lo - len(others)))
    return _fixed_plus(num_layers, fixed, kept, stage.keep_prob, scaling)


class SubnetworkSampler:
    """The schedule and seed of a run: ``mask(step)`` for any applied step.

    Args:
        schedule: the run's schedule.
        seed: the sampler seed.
        partitions: for ``balanced`` sampling, the pipeline partition of each schedule stage
            (one per ``schedule.stages``, e.g. from :func:`megaraptr.planning.balance.plan_partitions`);
            None: one pipeline stage holding every layer. Other samplings ignore it.

    Raises:
        ValueError: ``partitions`` does not give one partition of the model's layers per
            schedule stage.
    """

    def __init__(self, schedule: Schedule, seed: int,
                 partitions: Optional[Sequence[Sequence[int]]] = None):
        self.schedule = schedule
        self.seed = int(seed)
        if partitions is None:
            partitions = [(0, schedule.num_layers)] * len(schedule.stages)
        if len(partitions) != len(schedule.stages):
            raise ValueError(f"{len(partitions)} pipeline partitions for "
                             f"{len(schedule.stages)} schedule stages; expected one per stage")
        self.partitions = tuple(check_partition(p, schedule.num_layers) for p in partitions)

    def mask(self, step: int) -> LayerMask:
        """The subnetwork of applied step ``step``, by the schedule's method policy."""
        return self.schedule.policy.mask(self, self.schedule.stage_at(step), step)

    def masks(self, steps: Iterable[int]):
        return [self.mask(s) for s in steps]
