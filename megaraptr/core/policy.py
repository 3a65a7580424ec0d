"""How a schedule's stages become each step's layers: the policy a method plugs in.

A :class:`~megaraptr.core.schedule.Schedule` holds one policy. The base class here is RAPTR's:
a stage's keep probability applies to every non-fixed layer, and the step's mask is drawn by
the schedule's sampling (:mod:`megaraptr.core.sampler`). The comparison methods subclass it in
:mod:`megaraptr.methods` (PLD's probabilities decay with the step and the depth; stacking runs
the first k layers and grows the model at a stage start). Policies are frozen values: they take
part in a schedule's equality and fingerprint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Tuple

from megaraptr.core.mask import LayerMask
from megaraptr.core.sampler import sample_balanced, sample_mask
from megaraptr.core.stage import Stage

if TYPE_CHECKING:
    from megaraptr.core.sampler import SubnetworkSampler
    from megaraptr.core.schedule import Schedule


@dataclass(frozen=True)
class LayerPolicy:
    """RAPTR's staged policy; the hooks a method overrides."""

    name = "raptr"

    def keep_prob(self, stage: Stage, step: int) -> float:
        """The keep probability reported for ``step`` (logs and TensorBoard)."""
        return stage.keep_prob

    def layer_probs(self, stage: Stage, step: int) -> Tuple[float, ...]:
        """Every layer's marginal probability of running on ``step``."""
        if stage.exact_layers is not None and stage.num_layers > len(stage.fixed):
            free = stage.num_layers - len(stage.fixed)
            prob = (stage.exact_layers - len(stage.fixed)) / free
        else:
            prob = stage.keep_prob
        return tuple(1.0 if i in stage.fixed else prob for i in range(stage.num_layers))

    def layer_runs(self, stage: Stage, first: int, last: int) -> float:
        """Expected layer runs over steps first..last of ``stage`` (0 when last < first)."""
        return 0.0 if last < first else (last - first + 1) * stage.expected_layers

    def mask(self, sampler: "SubnetworkSampler", stage: Stage, step: int) -> LayerMask:
        """The subnetwork of applied step ``step``, drawn by the schedule's sampling."""
        schedule = sampler.schedule
        if schedule.sampling == "balanced":
            return sample_balanced(sampler.seed, step, stage, sampler.partitions[stage.index],
                                   scaling=schedule.scaling)
        return sample_mask(sampler.seed, step, stage, sampling=schedule.sampling,
                           scaling=schedule.scaling)

    def eval_mask(self, sampler: "SubnetworkSampler", step: int) -> Optional[LayerMask]:
        """The mask evaluation runs after ``step``: None is the full model."""
        return None

    def stage_start_copies(self, schedule: "Schedule", stage: Stage) -> List[Tuple[int, int]]:
        """(target, source) layer copies at the first step of ``stage`` (none here)."""
        return []

    def fingerprint(self) -> list:
        """What the method adds to the schedule's fingerprint (RAPTR: nothing)."""
        return []


STAGED = LayerPolicy()
"""The policy of RAPTR and of full-model training."""
