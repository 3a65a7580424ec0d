"""``megaraptr.initialize``: ``deepspeed.initialize`` with RAPTR, returning a RaptrEngine.

It validates the config's "raptr" block and schedule against the model's blocks before
DeepSpeed builds anything, installs the chosen kernels (:mod:`megaraptr.kernels`), gives
each layer its own optimizer parameter groups, and wraps DeepSpeed's engine in
:class:`megaraptr.runtime.engine.RaptrEngine`.

With ``"tensor_parallel": {"autotp_size": T}`` (T > 1) in the config, megaraptr makes the
T x D process groups (:class:`megaraptr.runtime.tp.ParallelGroups`), splits every block over
its tensor-parallel group (:func:`megaraptr.runtime.tp.apply_tensor_parallel`) and hands
DeepSpeed the groups as its ``mpu``, and the config without that block (DeepSpeed's AutoTP
would split the model a second time).
"""
from __future__ import annotations

import copy
from typing import Optional

import torch

from megaraptr import methods
from megaraptr.core.block import find_blocks
from megaraptr.errors import ConfigError
from megaraptr.kernels import apply_kernels, fused_optimizer, resolve_kernels
from megaraptr.planning.layout import check_layout, check_tensor_parallel, tensor_parallel_size
from megaraptr.runtime import compat
from megaraptr.runtime.engine import RaptrEngine
from megaraptr.runtime.tp import ParallelGroups, apply_tensor_parallel
from megaraptr.runtime.zero.groups import has_layer_groups, layer_param_groups


def initialize(args=None, model=None, optimizer=None, model_parameters=None,
               training_data=None, lr_scheduler=None, config=None, *, total_steps: int,
               seed: Optional[int] = None, partitions=None, **ds_kwargs):
    """``deepspeed.initialize`` with RAPTR: returns (engine, optimizer, dataloader, scheduler).

    Args:
        config: the DeepSpeed config (dict or JSON path), with an optional "raptr" block;
            ``args.deepspeed_config`` is used when None.
        total_steps: the run's total optimizer steps N (the schedule spans 1..N).
        seed: sampler seed when the raptr block gives none (default 0;
            :meth:`RaptrConfig.sampler_seed`).
        optimizer: None (the ds_config "optimizer" block), a callable taking parameter groups,
            or a torch optimizer built from :func:`megaraptr.layer_param_groups`.
        partitions: "balanced" sampling's layer partition per schedule stage (default: one
            part; a pipeline run's plan reproduces its subnetworks without a pipeline).
        Other arguments go to ``deepspeed.initialize`` unchanged.

    Raises:
        ConfigError: a bad raptr block or schedule, before DeepSpeed builds anything.
    """
    import deepspeed

    if config is None and args is not None:
        config = getattr(args, "deepspeed_config", None)
    if config is None:
        raise ConfigError("config", "a DeepSpeed config (dict or JSON path) is required")
    raptr_config, ds_config = methods.split_ds_config(config)
    blocks = find_blocks(model)
    schedule = methods.build_schedule(raptr_config, num_layers=len(blocks), total_steps=total_steps)
    tensor, ds_config = _tensor_parallel(model, blocks, ds_config, ds_kwargs)
    kernels, ds_config, optimizer = _install_kernels(raptr_config.kernels, model, blocks,
                                                     ds_config, optimizer, tensor)
    if isinstance(optimizer, torch.optim.Optimizer):
        if raptr_config.trains_subnetworks and raptr_config.skipped_layers == "freeze" and \
                not has_layer_groups(optimizer):
            raise ConfigError("raptr.skipped_layers", '"freeze" needs an optimizer built from '
                              "megaraptr.layer_param_groups(model, ...) or none at all")
        groups = model_parameters
    else:
        groups = layer_param_groups(model, blocks, model_parameters)
    if args is not None and getattr(args, "deepspeed_config", None) is not None:
        args = copy.copy(args)  # the caller's args stay as they are
        args.deepspeed_config = None  # the dict below is the config; DeepSpeed refuses both
    ds_engine, ds_optimizer, dataloader, scheduler = deepspeed.initialize(
        args=args, model=model, optimizer=optimizer, model_parameters=groups,
        training_data=training_data, lr_scheduler=lr_scheduler, config=ds_config, **ds_kwargs)
    engine = RaptrEngine(ds_engine, config=raptr_config, schedule=schedule,
                         seed=raptr_config.sampler_seed(seed), partitions=partitions,
                         kernels=kernels, tensor_parallel=ds_kwargs.get("mpu") if tensor else None)
    return engine, ds_optimizer, dataloader, scheduler


def _tensor_parallel(model, blocks, ds_config: dict, ds_kwargs: dict):
    """Split ``model`` over its tensor-parallel group when the config asks for T > 1; returns
    (whether it did, the config DeepSpeed gets). Sets ``ds_kwargs["mpu"]``."""
    import torch.distributed as dist

    tensor = tensor_parallel_size(ds_config)
    if tensor == 1:
        return False, ds_config
    check_tensor_parallel(ds_config, tensor=tensor)
    compat.require(None, "tp_grad_norm")  # DeepSpeed's norms must count shards as expected
    if ds_kwargs.get("mpu") is not None:
        raise ConfigError("tensor_parallel.autotp_size", "megaraptr makes the tensor-parallel "
                          "groups itself: pass no mpu")
    groups = ParallelGroups(check_layout(world=dist.get_world_size(), tensor=tensor))
    apply_tensor_parallel(model, rank=groups.tensor_index, size=tensor,
                          group=groups.tensor_group, blocks=blocks)
    ds_kwargs["mpu"] = groups
    return True, {k: v for k, v in ds_config.items() if k != "tensor_parallel"}


def _install_kernels(mode: str, model, blocks, ds_config: dict, optimizer, tensor: bool = False):
    """Resolve the "kernels" setting for this device and ZeRO stage and install it on the
    model and the optimizer; returns (report, ds_config, optimizer) (megaraptr.kernels)."""
    from deepspeed.accelerator import get_accelerator

    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    size = blocks[0].tp_size if tensor and blocks else 1
    plan = resolve_kernels(mode, device=get_accelerator().device_name(), zero_stage=stage,
                           tensor_parallel=size)
    installed = apply_kernels(model, blocks, plan)
    ds_config, optimizer, choice = fused_optimizer(ds_config, plan, optimizer)
    return dict(plan.to_dict(), optimizer=choice, **installed), ds_config, optimizer
