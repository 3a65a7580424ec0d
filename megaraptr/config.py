"""The "raptr" block of the DeepSpeed JSON: typed, unknown keys rejected, one-line errors.

DeepSpeed ignores unknown top-level keys, so megaraptr validates its own block here, before
any process group or model exists. Checks that need the model's depth or the run's length
(a depth above the model's, a schedule that does not end at the full model) happen when the
schedule is built (:func:`megaraptr.schedule.build_schedule`), still before expensive work.

Example::

    "raptr": {"enabled": true, "schedule": "6-8-10-12", "sampling": "bernoulli",
              "fixed_layers": [0, -1], "scaling": "none", "skipped_layers": "freeze"}
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from megaraptr.errors import ConfigError

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


class RaptrConfig(BaseModel):
    """The "raptr" block. Defaults follow DeepSpeed's convention: absent means disabled."""

    model_config = _STRICT

    enabled: bool = False
    """False trains the full model every step through the same code path."""
    schedule: Optional[List[StageSpec]] = None
    """"6-8-10-12" (expected active depth per stage, equal stages) or a list of StageSpec."""
    full_model_warmup_steps: int = Field(default=0, ge=0)
    """Steps of full-model training before the first stage (the paper's UL2 recipe)."""
    sampling: Literal["bernoulli", "exact"] = "bernoulli"
    """bernoulli: each non-fixed layer kept with p (the paper); exact: exactly k layers."""
    fixed_layers: List[int] = Field(default_factory=lambda: [0, -1])
    """Layers that always run; negative indices count from the end."""
    scaling: Literal["none", "inverse_keep_prob"] = "none"
    """Residual-branch scale of kept stochastic layers: 1, or 1/p (inverted dropout)."""
    skipped_layers: Literal["freeze", "momentum"] = "freeze"
    """freeze: a skipped layer's weights and optimizer state do not change on that step;
    momentum: the zero-gradient update plain DeepSpeed applies."""
    seed: Optional[int] = Field(default=None, ge=0, le=2 ** 63 - 1)
    """Seed of the subnetwork sampler; None takes the run's seed."""
    consistency_check_interval: int = Field(default=100, ge=0)
    """Every N applied steps, check with one collective that all ranks chose the same
    subnetwork (0 turns the check off). The first step is always checked."""

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
    first = err.errors()[0]
    loc, kind = tuple(first["loc"]), first["type"]
    if kind == "extra_forbidden":
        model = StageSpec if "schedule" in loc else RaptrConfig
        message = f"unknown key; allowed: {', '.join(model.model_fields)}"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if kind not in ("value_error", "missing"):
            message += f" (got {json.dumps(first.get('input'), default=str)[:60]})"
    more = err.error_count() - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(_key_path(loc), message)


def parse_raptr_block(block: Any) -> RaptrConfig:
    """Validate a "raptr" block (a dict, or None for absent).

    Raises:
        ConfigError: naming the key path and what is allowed.
    """
    if block is None:
        return RaptrConfig()
    if not isinstance(block, dict):
        raise ConfigError("raptr", f"expected an object {{...}}, got {type(block).__name__}")
    try:
        config = RaptrConfig.model_validate(block)
    except ValidationError as err:
        raise _format(err) from None
    if config.enabled and not config.schedule:
        raise ConfigError("raptr.schedule", 'required when "enabled" is true, e.g. "6-8-10-12" '
                          "or a list of stages")
    return config


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


def split_ds_config(config: Union[str, os.PathLike, dict]) -> tuple[RaptrConfig, dict]:
    """Split a DeepSpeed config into the validated raptr block and the rest for DeepSpeed."""
    ds_config = load_ds_config(config)
    return parse_raptr_block(ds_config.pop("raptr", None)), ds_config
