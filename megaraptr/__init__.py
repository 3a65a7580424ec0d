"""megaraptr: RAPTR progressive subnetwork pretraining (arXiv 2402.05913) for DeepSpeed.

Each optimizer step trains a random subset of the transformer's layers; the subset grows
stage by stage until the full model trains. Import graph = data flow:
config -> schedule -> sampler -> layers -> zero/engine -> monitor/checkpoint.
"""
from megaraptr.config import RaptrConfig, parse_raptr_block, split_ds_config
from megaraptr.errors import (CheckpointError, ConfigError, DataError, MegaraptrError,
                              RankMismatchError)
from megaraptr.layers import find_blocks, mark_block, residual_scale, set_layer_mask, skippable
from megaraptr.sampler import LayerMask, SubnetworkSampler, sample_mask
from megaraptr.schedule import Schedule, Stage, build_schedule
from megaraptr.zero import layer_param_groups

__version__ = "0.1.0"


def initialize(*args, **kwargs):
    """``deepspeed.initialize`` with RAPTR; see :func:`megaraptr.engine.initialize`."""
    from megaraptr.engine import initialize as _initialize

    return _initialize(*args, **kwargs)


__all__ = ["initialize", "RaptrConfig", "parse_raptr_block", "split_ds_config", "Schedule",
           "Stage", "build_schedule", "LayerMask", "SubnetworkSampler", "sample_mask",
           "find_blocks", "mark_block", "residual_scale", "set_layer_mask", "skippable",
           "layer_param_groups",
           "MegaraptrError", "ConfigError", "DataError", "RankMismatchError", "CheckpointError"]
