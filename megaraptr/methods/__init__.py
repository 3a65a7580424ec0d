"""What trains on each step: RAPTR and the comparison methods, one module each, and the registry.

``"method"`` in the raptr block names one of :data:`METHODS`; every method runs through the
same engine. This module is the only place that chooses by method: it validates a block
(:func:`parse_raptr_block`: the schema, the checks shared by every method, then the method's
own) and builds the run's schedule (:func:`build_schedule`). ``README.md`` here describes each
method (how to use it, hyperparameters, technical details, attribution).

Adding a method: a module with a :class:`~megaraptr.methods.base.Method` subclass (and, if its
rule per step differs from RAPTR's, a :class:`~megaraptr.core.policy.LayerPolicy`), its entry
in :data:`METHODS`, and its name and defaults in the schema (:mod:`megaraptr.core.config`).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Union

from megaraptr.core.config import RaptrConfig, check_block_key, load_ds_config, validate_schema
from megaraptr.core.schedule import Schedule, check_run, full_schedule, resolve_fixed_layers
from megaraptr.errors import ConfigError
from megaraptr.methods.base import Method
from megaraptr.methods.full import Full
from megaraptr.methods.layerdrop import LayerDrop
from megaraptr.methods.pld import PLD
from megaraptr.methods.raptr import Raptr
from megaraptr.methods.stacking import Stacking

METHODS: Dict[str, Method] = {m.name: m for m in (Raptr(), Full(), PLD(), LayerDrop(),
                                                   Stacking())}


def get(name: str) -> Method:
    """The method called ``name`` (a name the schema accepted)."""
    return METHODS[name]


def method_name(config: RaptrConfig) -> str:
    """"full" when every step trains the full model, else the method ("raptr", "pld", ...)."""
    return config.method if config.trains_subnetworks else "full"


def parse_raptr_block(block: Any) -> RaptrConfig:
    """Validate a "raptr" block (a dict, or None for absent): schema, then the method's keys.

    Raises:
        ConfigError: naming the key path and what is allowed.
    """
    config = validate_schema(block)
    if block is not None:
        _check_method(config, block)
    return config


def _check_method(config: RaptrConfig, block: dict) -> None:
    """Keys that only some methods use: required where needed, refused where meaningless."""
    method = get(config.method)
    for other in METHODS.values():
        if other.settings_key and other.settings_key in block and other is not method:
            raise ConfigError(f"raptr.{other.settings_key}", f'settings of method "{other.name}"'
                              f', but "method" is "{method.name}"; allowed: only the block of '
                              "the chosen method")
    if not config.enabled:
        return
    if method.needs_schedule and not config.schedule:
        raise ConfigError("raptr.schedule", f'required when "enabled" is true and "method" is '
                          f'"{method.name}", e.g. {method.schedule_example} or a list of stages')
    if not method.needs_schedule and config.schedule:
        staged = " / ".join(f'"{m.name}"' for m in METHODS.values() if m.needs_schedule)
        raise ConfigError("raptr.schedule", f'not used by method "{method.name}"; allowed: no '
                          f'"schedule" (or "method": {staged})')
    if not method.any_sampling and config.sampling != "bernoulli":
        raise ConfigError("raptr.sampling", f'"{config.sampling}" is for method "raptr"; method '
                          f'"{method.name}" samples each layer on its own ("bernoulli")')
    method.check(config, block)


def split_ds_config(config: Union[str, os.PathLike, dict]) -> tuple[RaptrConfig, dict]:
    """Split a DeepSpeed config into the validated raptr block and the rest for DeepSpeed."""
    ds_config = load_ds_config(config)
    check_block_key(ds_config)
    return parse_raptr_block(ds_config.pop("raptr", None)), ds_config


def _fixed_layers(config: RaptrConfig, num_layers: int) -> list:
    """The fixed layer indices; "first_stage": the bottom d - 1 and the last (d: the first
    stage's depth)."""
    chosen = config.effective_fixed_layers
    if chosen != "first_stage":
        return chosen
    first = config.schedule[0] if config.schedule else None
    if first is None or first.layers is None or first.layers != int(first.layers) \
            or not 1 <= first.layers <= num_layers:
        raise ConfigError("raptr.fixed_layers", '"first_stage" needs a schedule whose first '
                          f'stage gives a whole "layers" from 1 to {num_layers}')
    return list(range(int(first.layers) - 1)) + [num_layers - 1]


def build_schedule(config: RaptrConfig, *, num_layers: int, total_steps: int) -> Schedule:
    """Resolve the raptr block against the model depth and run length.

    Args:
        config: the validated raptr block; disabled (or method "full") gives the full model.
        num_layers: the model's number of transformer blocks L.
        total_steps: N, the run's total applied optimizer steps.

    Raises:
        ConfigError: depth outside the model, a shrinking schedule, one not ending at the full
            model, lengths that do not fit the run.
    """
    check_run(num_layers, total_steps)
    if not config.trains_subnetworks:
        return full_schedule(num_layers, total_steps)
    fixed = resolve_fixed_layers(_fixed_layers(config, num_layers), num_layers)
    check_run(num_layers, total_steps, config.full_model_warmup_steps)
    return get(config.method).build(config, num_layers=num_layers, total_steps=total_steps,
                                    fixed=fixed)


__all__ = ["METHODS", "Method", "build_schedule", "get", "method_name", "parse_raptr_block",
           "split_ds_config"]
