"""The "raptr" block of the DeepSpeed JSON: typed, unknown keys rejected, one-line errors.

DeepSpeed ignores unknown top-level keys, so megaraptr validates its own block here, before
any process group or model exists. This module is the schema (every key, its type, default
and docstring; README's key table is generated from it). The checks of each method
(:mod:`megaraptr.methods`) come on top, and those that need the model's depth or the run's
length (a depth above the model's, a schedule that does not end at the full model) when the
schedule is built (:func:`megaraptr.methods.build_schedule`), still before expensive work.

Example::

    "raptr": {"enabled": true, "schedule": "6-8-10-12", "sampling": "bernoulli",
              "fixed_layers": [0, -1], "scaling": "none", "skipped_layers": "freeze"}

``"method"`` picks what trains on each step (default ``"raptr"``); the comparison methods use
the same engine: ``"full"``, ``"pld"`` (Progressive Layer Dropping, its ``"pld"`` block),
``"layerdrop"`` (its ``"layerdrop"`` block) and ``"stacking"`` (gradual stacking: a
``"schedule"`` of whole depths such as ``"6-9-12"``, and its ``"stacking"`` block).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from megaraptr.errors import ConfigError

BLOCK_KEY = "raptr"
"""The ds_config's top-level key of megaraptr's block."""
_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True, use_attribute_docstrings=True)
_DEPTHS = re.compile(r"^\s*\d+(\.\d+)?(\s*-\s*\d+(\.\d+)?)*\s*$")


class StageSpec(BaseModel):
    """One stage of the schedule: how much of the model trains, and for how long."""

    model_config = _STRICT

    keep_prob: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    """Probability that each non-fixed layer runs on a step of this stage."""
    layers: Optional[float] = Field(default=None, ge=0.0)
    """Expected number of active layers (fixed layers included); a whole number for "exact"."""
    steps: Optional[int] = Field(default=None, ge=1)
    """Length of the stage in optimizer steps."""
    fraction: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    """Length of the stage as a fraction of the staged part of the run (after warmup)."""

    @model_validator(mode="after")
    def _one_of_each(self) -> "StageSpec":
        if (self.keep_prob is None) == (self.layers is None):
            raise ValueError('give exactly one of "keep_prob" or "layers"')
        if self.steps is not None and self.fraction is not None:
            raise ValueError('give at most one of "steps" or "fraction"')
        return self


class PLDSpec(BaseModel):
    """Progressive Layer Dropping (Zhang & He, 2020): theta(t) = (1 - theta_bar) exp(-gamma t)
    + theta_bar, t counted from the first step after any full-model warmup; layer i of L
    (1-based) runs with probability 1 - i/L (1 - theta(t))."""

    model_config = _STRICT

    theta_bar: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    """The limit of theta(t): the keep probability of the last layer in the long run (default
    0.5, the paper's; or the value that meets "match_flops")."""
    gamma: Optional[float] = Field(default=None, ge=0.0)
    """Decay rate of theta per applied step. Default: 0.001 x 200,000 / (steps after warmup), so
    theta gets within 1% of its floor at the same fraction of the run (2.3%) as in DeepSpeed's
    BERT recipe (gamma 0.001 over about 200k steps)."""
    match_flops: Optional[float] = Field(default=None, gt=0.0, lt=1.0)
    """Pick theta_bar so that the run's expected layer FLOPs are this fraction of full training
    (e.g. RAPTR's 0.75); exclusive with theta_bar."""

    @model_validator(mode="after")
    def _one_target(self) -> "PLDSpec":
        if self.match_flops is not None and self.theta_bar is not None:
            raise ValueError('give at most one of "theta_bar" or "match_flops"')
        return self


class LayerDropSpec(BaseModel):
    """LayerDrop (Fan et al., 2019): every non-fixed layer is dropped with drop_prob."""

    model_config = _STRICT

    drop_prob: Optional[float] = Field(default=None, ge=0.0, lt=1.0)
    """Probability that each non-fixed layer is skipped on a step. Unset: 0.2 (the paper's
    choice for training), or the value that meets "match_flops"."""
    match_flops: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    """Pick drop_prob so that the run's expected layer FLOPs are this fraction of full training;
    exclusive with drop_prob."""

    @model_validator(mode="after")
    def _one_target(self) -> "LayerDropSpec":
        if self.match_flops is not None and self.drop_prob is not None:
            raise ValueError('give at most one of "drop_prob" or "match_flops"')
        return self


class CostSpec(BaseModel):
    """Per-micro-batch forward+backward times (any one unit, e.g. ms) of the pipeline's parts."""

    model_config = _STRICT

    layer: float = Field(gt=0.0)
    """One active transformer layer."""
    embedding: float = Field(default=0.0, ge=0.0)
    """Embeddings (and anything else fixed) on the first pipeline stage."""
    head: float = Field(default=0.0, ge=0.0)
    """Final norm, output head and loss on the last pipeline stage."""


class PipelineSpec(BaseModel):
    """Balancing under DeepSpeed pipeline parallelism (used with ``--pipeline-stages N``)."""

    model_config = _STRICT

    costs: Optional[CostSpec] = None
    """The cost model; unset: measured by a short profile before training starts."""
    repartition: bool = True
    """Move layers between pipeline stages at stage transitions when the cost model predicts
    a faster step (through a checkpoint written and reloaded under the new partition)."""
    repartition_min_gain: float = Field(default=0.03, ge=0.0, lt=1.0)
    """Re-partition only when the predicted step time falls by at least this fraction."""
    profile_steps: int = Field(default=3, ge=1)
    """Timed repetitions per part when the costs are measured."""


class StackingSpec(BaseModel):
    """Gradual stacking (Reddi et al., 2023): train the first layers, grow by copying the top."""

    model_config = _STRICT

    optimizer_state: Literal["fresh", "copy", "reset_all"] = "fresh"
    """Optimizer state at a growth: "fresh": the new layers start with none (they never stepped
    before they existed); "copy": each new layer takes its source layer's Adam moments and step
    count; "reset_all": every layer starts over (moments zero, step 0)."""


METHOD_DEFAULTS = {  # per method: the schema's defaults; behaviour lives in megaraptr.methods
    "raptr": dict(fixed_layers=[0, -1], scaling="none", subnetworks=True),
    "full": dict(fixed_layers=[], scaling="none", subnetworks=False),
    "pld": dict(fixed_layers=[], scaling="inverse_keep_prob", subnetworks=True),
    "layerdrop": dict(fixed_layers=[], scaling="none", subnetworks=True),
    "stacking": dict(fixed_layers=[], scaling="none", subnetworks=True),
}


class RaptrConfig(BaseModel):
    """The "raptr" block. Defaults follow DeepSpeed's convention: absent means disabled."""

    model_config = _STRICT

    enabled: bool = False
    """false trains the full model every step through the same code path (the baseline);
    an absent block is disabled."""
    method: Literal["raptr", "full", "pld", "layerdrop", "stacking"] = "raptr"
    """What trains on each step: RAPTR, or a comparison method through the same engine
    (megaraptr/methods/README.md)."""
    schedule: Optional[List[StageSpec]] = Field(
        default=None, json_schema_extra={"doc_type": "string or list of objects"})
    """Required when enabled. "6-8-10-12": the expected active depth of each stage, stages of
    equal length. Or a list of stages (the rows below); stages without a length share what is
    left equally. Depths never shrink; the last stage is the full model and runs to the end."""
    full_model_warmup_steps: int = Field(default=0, ge=0)
    """Steps of full-model training before the first stage (the paper's UL2 recipe)."""
    stage_lr_rewarm_steps: int = Field(default=0, ge=0)
    """At the start of every stage after the first, the learning rate ramps linearly from 0
    back to the LR schedule's value over this many steps (0: one global schedule, the paper)."""
    sampling: Literal["bernoulli", "exact", "balanced"] = "bernoulli"
    """bernoulli: each non-fixed layer runs with probability p, independently (the paper);
    exact: the fixed layers plus a uniform random subset, exactly k layers every step (whole
    depths only); balanced (pipelines): every pipeline stage runs its expected number of
    layers rounded the same way (+-1), each non-fixed layer still with probability p."""
    fixed_layers: Optional[Union[List[int], Literal["first_stage"]]] = None
    """Layers that always run; negative indices count from the end. Or "first_stage": the
    bottom d - 1 layers and the last, d being the first stage's depth, so the first stage
    trains one fixed subnetwork (as gradual stacking's first stage does) and later stages
    sample the top layers. Unset: [0, -1] for raptr, none for the other methods."""
    scaling: Optional[Literal["none", "inverse_keep_prob", "inverse_sqrt_keep_prob"]] = None
    """Residual-branch scale of kept stochastic layers: 1, 1/p (inverted dropout) or 1/sqrt(p).
    The paper scales kept outputs without a formula we could establish: 1/p and 1/sqrt(p) are
    the candidates. Unset: "inverse_keep_prob" for pld (as in its paper), "none" otherwise."""
    skipped_layers: Literal["freeze", "momentum"] = "freeze"
    """freeze: on a step that skips a layer, its weights (and fp32 master), Adam moments and
    step count do not change and the optimizer does no work for it; momentum: what plain
    DeepSpeed does (a zero gradient; momentum and weight decay still move the layer)."""
    seed: Optional[int] = Field(default=None, ge=0, le=2 ** 63 - 1)
    """Seed of the subnetwork sampler, the same on every rank; unset: the run's seed
    (``--seed`` of megaraptr-train, ``seed=`` of megaraptr.initialize)."""
    consistency_check_interval: int = Field(default=100, ge=0)
    """Every N applied steps, check with one collective that all ranks chose the same
    subnetwork (0 turns the check off). The first step is always checked."""
    pld: Optional[PLDSpec] = None
    """Settings of method "pld"."""
    layerdrop: Optional[LayerDropSpec] = None
    """Settings of method "layerdrop"."""
    stacking: Optional[StackingSpec] = None
    """Settings of method "stacking"."""
    pipeline: Optional[PipelineSpec] = None
    """Pipeline balancing (cost model, re-partitioning); defaults apply when absent."""
    kernels: Literal["eager", "fused", "compiled", "auto"] = "eager"
    """Kernels of the blocks and the optimizer (megaraptr.kernels), whether or not "enabled":
    "eager" as written; "fused": one-kernel scaled residual add, apex FusedLayerNorm if
    importable, fused AdamW; "compiled": "fused" with each block's active computation
    compiled once (no recompiles across subsets); "auto": the fastest available path for the
    device and ZeRO stage."""
    on_nonfinite: Literal["stop", "skip_step"] = "stop"
    """What a diverged step does, whether or not "enabled": a step whose training loss is not
    finite on some rank, or whose gradient norm is not (fp16's loss-scaler overflows excepted:
    they stay DeepSpeed's, retried with a smaller scale). "stop": every rank stops after the
    step with one line naming it (exit code 3); nothing is saved from then on, so the newest
    checkpoint stays the last good one. "skip_step": the step's update is dropped (weights and
    optimizer state as before it) while its batch, subnetwork and LR step are
    consumed, and training goes on; more than max_consecutive_skips dropped steps in a row stop
    as "stop" does. Not with pipelines."""
    max_consecutive_skips: int = Field(default=10, ge=1)
    """Under "skip_step": the most diverged steps in a row that are dropped before the run
    stops (exit code 3)."""
    loss_spike_factor: Optional[float] = Field(default=None, gt=1.0)
    """Also treat a step as diverged when its loss (mean over ranks) is more than this many
    times the running mean of the previous steps' losses (after loss_spike_window steps);
    None (the default) turns the spike check off."""
    loss_spike_window: int = Field(default=100, ge=1)
    """Steps in the running mean of the spike check: their plain mean over the first steps,
    then an exponential mean with weight 1/loss_spike_window per step."""

    @property
    def effective_fixed_layers(self) -> Union[List[int], str]:
        """The fixed layers asked for: a list of indices, or "first_stage" (resolved against
        the schedule by :func:`megaraptr.methods.build_schedule`)."""
        chosen = self.fixed_layers if self.fixed_layers is not None else \
            METHOD_DEFAULTS[self.method]["fixed_layers"]
        return chosen if isinstance(chosen, str) else list(chosen)

    @field_validator("fixed_layers", mode="before")
    @classmethod
    def _named_fixed_layers(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "first_stage":
            raise ValueError(f'{json.dumps(value)} is not a fixed-layer set; allowed: a list of '
                             'layer indices, or "first_stage"')
        return value

    @property
    def effective_scaling(self) -> str:
        return self.scaling or METHOD_DEFAULTS[self.method]["scaling"]

    def sampler_seed(self, run_seed: Optional[int]) -> int:
        """The subnetwork sampler's seed: the block's ``seed`` if set, else the run's (else 0).
        The one place it is resolved: the plain and the pipeline engines both ask here."""
        if self.seed is not None:
            return self.seed
        return 0 if run_seed is None else run_seed

    @property
    def trains_subnetworks(self) -> bool:
        """False when every step trains the full model (disabled, or method "full")."""
        return self.enabled and METHOD_DEFAULTS[self.method]["subnetworks"]

    @field_validator("schedule", mode="before")
    @classmethod
    def _parse_depth_string(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not _DEPTHS.match(value):
                raise ValueError(f'{json.dumps(value)} is not a schedule; allowed: expected '
                                 'depths joined by "-" such as "6-8-10-12", or a list of stages')
            return [{"layers": float(v) if "." in v else int(v)} for v in value.split("-")]
        return value


def _key_path(loc: tuple) -> str:
    path = "raptr"
    for part in loc:
        part = part if isinstance(part, int) or str(part).isprintable() else json.dumps(part)
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _format(err: ValidationError) -> ConfigError:
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # a union's branch names ("list[int]", "literal[...]") are no part of the key path
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and "[" in p))
    kind = first["type"]
    if kind == "extra_forbidden":
        model = {"schedule": StageSpec, "pld": PLDSpec, "layerdrop": LayerDropSpec,
                 "stacking": StackingSpec, "pipeline": PipelineSpec}.get(loc[0], RaptrConfig) \
            if len(loc) > 1 else RaptrConfig
        if loc[:2] == ("pipeline", "costs") and len(loc) > 2:
            model = CostSpec
        message = f"unknown key; allowed: {', '.join(model.model_fields)}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if kind not in ("value_error", "missing"):
            message += f" (got {json.dumps(first.get('input'), default=str)[:60]})"
    more = err.error_count() - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(_key_path(loc), message)


def validate_schema(block: Any) -> RaptrConfig:
    """Validate a "raptr" block (a dict, or None for absent) against the schema alone; the
    method's own checks come on top (:func:`megaraptr.methods.parse_raptr_block`).

    Raises:
        ConfigError: naming the key path and what is allowed.
    """
    if block is None:
        return RaptrConfig()
    if not isinstance(block, dict):
        raise ConfigError("raptr", f"expected an object {{...}}, got {type(block).__name__}")
    try:
        return RaptrConfig.model_validate(block)
    except ValidationError as err:
        raise _format(err) from None


def load_ds_config(config: Union[str, os.PathLike, dict]) -> dict:
    """Read a DeepSpeed JSON config from a path (or copy a dict), with one-line errors."""
    if isinstance(config, dict):
        return json.loads(json.dumps(config))
    path = os.fspath(config)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise ConfigError("deepspeed_config", f"cannot read {path}: {err.strerror}") from None
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError("deepspeed_config",
                          f"{path} is not valid JSON: {err.msg} at line {err.lineno} "
                          f"column {err.colno}") from None
    if not isinstance(loaded, dict):
        raise ConfigError("deepspeed_config", f"{path} must hold a JSON object")
    return loaded


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def check_block_key(ds_config: dict) -> None:
    """Refuse a top-level key that is a misspelt "raptr" (DeepSpeed ignores unknown keys, so
    ``"raptor": {...}`` would silently train the full model).

    Raises:
        ConfigError: naming the key.
    """
    for key in ds_config:
        if isinstance(key, str) and key != BLOCK_KEY and _edit_distance(key.lower(), BLOCK_KEY) <= 2:
            raise ConfigError(key, 'unknown top-level key; did you mean "raptr"? DeepSpeed '
                              "ignores unknown keys, so this block would be dropped silently")


def scheduler_warmup_note(ds_config: dict, total_steps: int) -> Optional[str]:
    """A warning when the ds_config's LR scheduler warms up for the whole run (or longer)."""
    params = (ds_config.get("scheduler") or {}).get("params") or {}
    warmup = params.get("warmup_num_steps")
    if isinstance(warmup, int) and not isinstance(warmup, bool) and warmup >= total_steps:
        return (f"warning: scheduler.params.warmup_num_steps {warmup} is not below the run's "
                f"{total_steps} steps: the learning rate warms up for the whole run and never "
                "reaches its peak or decays")
    return None
