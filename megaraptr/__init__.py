"""megaraptr: RAPTR progressive subnetwork pretraining (arXiv 2402.05913) for DeepSpeed.

Each optimizer step trains a random subset of the transformer's layers; the subset grows
stage by stage until the full model trains. The packages are layers, and imports only go down:

    core      config ("raptr" block), schedule, sampler, subnetwork mask, the block contract
    methods   RAPTR and the comparison methods (one module each) and their registry
    kernels   fused and compiled kernels of the active layers
    models    reference BERT/GPT models, pipeline specs, Hugging Face adapters; data: corpora
    planning  cost models: pipeline partitions, step costs, profiling, the simulator
    runtime   what touches a DeepSpeed engine: engine, ZeRO and pipeline paths, checkpoints
    tools     the command-line programs (train, config tool, simulator); bench: benchmarks

This module is the public API.
"""
from megaraptr.core.block import find_blocks, mark_block, residual_scale, set_layer_mask, skippable
from megaraptr.core.config import RaptrConfig
from megaraptr.core.mask import LayerMask
from megaraptr.core.sampler import SubnetworkSampler, sample_mask
from megaraptr.core.schedule import Schedule
from megaraptr.core.stage import Stage
from megaraptr.errors import (CheckpointError, ConfigError, DataError, MegaraptrError,
                              RankMismatchError)
from megaraptr.methods import build_schedule, parse_raptr_block, split_ds_config
from megaraptr.runtime.engine import RaptrEngine, StepResult
from megaraptr.runtime.initialize import initialize
from megaraptr.runtime.monitor import StepMonitor
from megaraptr.runtime.zero.groups import layer_param_groups

__version__ = "0.1.0"

__all__ = ["initialize", "RaptrEngine", "StepResult", "StepMonitor", "RaptrConfig", "parse_raptr_block",
           "split_ds_config", "Schedule", "Stage", "build_schedule", "LayerMask",
           "SubnetworkSampler", "sample_mask", "find_blocks", "mark_block", "residual_scale",
           "set_layer_mask", "skippable", "layer_param_groups",
           "MegaraptrError", "ConfigError", "DataError", "RankMismatchError", "CheckpointError"]
