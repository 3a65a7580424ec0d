"""Gradual stacking (Reddi et al., 2023): train the first k layers, grow by copying the top.

Stage i trains the first k_i layers (a ``"schedule"`` of whole depths such as ``"6-9-12"``);
the others do not exist yet (evaluation skips them too). At the first step of a stage the model
grows from k to k' layers (:func:`growth_plan`): the runtime copies each source layer onto its
new layer (:mod:`megaraptr.runtime.layer_copy`). Settings block: ``"stacking": {...}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from megaraptr.core.config import RaptrConfig
from megaraptr.core.mask import LayerMask
from megaraptr.core.policy import LayerPolicy
from megaraptr.core.schedule import Schedule, stage_lengths
from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError
from megaraptr.methods.base import Method, depths_summary


def growth_plan(old_depth: int, new_depth: int) -> List[Tuple[int, int]]:
    """(target, source) layer pairs when a stacked model grows from ``old_depth`` layers to
    ``new_depth``: the top ``new_depth - old_depth`` layers are copied in order on top (6 -> 9:
    layers 3, 4, 5 -> 6, 7, 8); when growing by more than the depth, the copies repeat."""
    if not 1 <= old_depth <= new_depth:
        raise ValueError(f"cannot grow {old_depth} layers to {new_depth}")
    grow = new_depth - old_depth
    top = min(grow, old_depth)
    return [(old_depth + j, old_depth - top + j % top) for j in range(grow)]


@dataclass(frozen=True)
class StackingPolicy(LayerPolicy):
    """The first k layers run and exist; the model grows at each stage start."""

    name = "stacking"

    def layer_probs(self, stage: Stage, step: int) -> Tuple[float, ...]:
        return tuple(1.0 if i < stage.exact_layers else 0.0 for i in range(stage.num_layers))

    def mask(self, sampler, stage: Stage, step: int) -> LayerMask:
        active = tuple(i < stage.exact_layers for i in range(stage.num_layers))
        return LayerMask(active, tuple(float(on) for on in active), active)

    def eval_mask(self, sampler, step: int) -> Optional[LayerMask]:
        return sampler.mask(max(1, step))  # evaluate the model that exists now

    def stage_start_copies(self, schedule: Schedule, stage: Stage) -> List[Tuple[int, int]]:
        if stage.index == 0:
            return []
        return growth_plan(schedule.stages[stage.index - 1].exact_layers, stage.exact_layers)

    def fingerprint(self) -> list:
        return [self.name, None]


class Stacking(Method):
    name = "stacking"
    settings_key = "stacking"
    needs_schedule = True
    schedule_example = '"6-9-12" (whole depths)'
    supports_pipeline = False

    def check(self, config: RaptrConfig, block: dict) -> None:
        for key in ("fixed_layers", "scaling"):
            if key in block:
                raise ConfigError(f"raptr.{key}", 'not used by method "stacking" (the first k '
                                  "layers train, unscaled); allowed: leave it out")
        if config.full_model_warmup_steps:
            raise ConfigError("raptr.full_model_warmup_steps", 'not used by method "stacking" '
                              "(the full model does not exist before the last stage)")
        if config.skipped_layers != "freeze":
            raise ConfigError("raptr.skipped_layers", 'method "stacking" needs "freeze": layers '
                              "that do not exist yet get no optimizer updates")
        for i, stage in enumerate(config.schedule):
            if stage.layers is None or stage.layers != int(stage.layers):
                raise ConfigError(f"raptr.schedule[{i}]", 'method "stacking" needs a whole '
                                  'number of "layers" per stage, e.g. "6-9-12"')

    def build(self, config: RaptrConfig, *, num_layers: int, total_steps: int,
              fixed: Tuple[int, ...]) -> Schedule:
        depths = []
        for i, spec in enumerate(config.schedule):
            depth, key = int(spec.layers), f"raptr.schedule[{i}]"
            if not 1 <= depth <= num_layers:
                raise ConfigError(f"{key}.layers", f"{depth} layers; allowed: 1 to {num_layers}")
            if depths and depth < depths[-1]:
                raise ConfigError(key, f"{depth} layers is below the previous stage's "
                                  f"{depths[-1]}; allowed: a model that never shrinks")
            depths.append(depth)
        if depths[-1] != num_layers:
            raise ConfigError(f"raptr.schedule[{len(depths) - 1}]", f"the last stage must be "
                              f"the full model ({num_layers} layers), got {depths[-1]}")
        lengths = stage_lengths(config.schedule, total_steps, 0)
        stages, step = [], 1
        for i, (depth, length) in enumerate(zip(depths, lengths)):
            stages.append(Stage(i, f"stack{depth}", step, step + length - 1, depth / num_layers,
                                num_layers, (), depth))
            step += length
        return Schedule(tuple(stages), total_steps, num_layers, "bernoulli", "none",
                        StackingPolicy())

    def check_engine(self, *, fp16: bool, zero_stage: int) -> None:
        # stacking writes fp32 master weights through DeepSpeed's mixed-precision links; the
        # non-ZeRO fp16 optimizer has none
        if fp16 and zero_stage == 0:
            raise ConfigError("raptr.method", '"stacking" with fp16 needs ZeRO stage 1, 2 or 3 '
                              "(or bf16/fp32); allowed: zero_optimization.stage 1-3 with fp16")

    def summary(self, staged: Sequence[Stage]) -> str:
        return depths_summary(self.name, staged)
