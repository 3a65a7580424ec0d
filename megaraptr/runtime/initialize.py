"""``megaraptr.initialize``: ``deepspeed.initialize`` with RAPTR, returning a RaptrEngine.

It validates the config's "raptr" block and schedule against the model's blocks before
DeepSpeed builds anything, installs the chosen kernels (:mod:`megaraptr.kernels`), gives
each layer its own optimizer parameter groups, and wraps DeepSpeed's engine in
:class:`megaraptr.runtime.engine.RaptrEngine`.

With ``"tensor_parallel": {"autotp_size": T}`` (T > 1) in the config, megaraptr makes the
T x D process groups, splits every block over its tensor-parallel group and hands DeepSpeed
the groups as its ``mpu`` (:func:`megaraptr.runtime.tp.split_for_data_parallel`).
"""
from __future__ import annotations

import copy
import warnings
from typing import Optional

import torch

from megaraptr import methods
from megaraptr.core.block import check_block_contract, find_blocks
from megaraptr.core.config import scheduler_warmup_note
from megaraptr.errors import ConfigError, RunWarning
from megaraptr.kernels import apply_kernels, fused_optimizer, resolve_kernels
from megaraptr.runtime.distributed import init_distributed
from megaraptr.runtime.engine import RaptrEngine
from megaraptr.runtime.tp import split_for_data_parallel
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

    Without a process group (a plain ``python my_loop.py``, no launcher) it starts a
    one-process group itself; under torchrun or the deepspeed launcher, DeepSpeed's.

    Raises:
        ConfigError: a bad raptr block or schedule, a marked block whose forward is not
            skippable, before DeepSpeed builds anything.
    """
    import deepspeed

    if config is None and args is not None:
        config = getattr(args, "deepspeed_config", None)
    if config is None:
        raise ConfigError("config", "a DeepSpeed config (dict or JSON path) is required")
    raptr_config, ds_config = methods.split_ds_config(config)
    ds_config = unsynchronised_throughput_timer(ds_config)
    blocks = find_blocks(model)
    check_block_contract(blocks)
    schedule = methods.build_schedule(raptr_config, num_layers=len(blocks), total_steps=total_steps)
    if not torch.distributed.is_initialized():  # a plain `python my_loop.py`: one process
        init_distributed()  # (DeepSpeed's own start-up would look for MPI and fail)
    note = scheduler_warmup_note(ds_config, total_steps)
    if note is not None:
        warnings.warn(note, RunWarning, stacklevel=2)
    tp_groups, ds_config = split_for_data_parallel(model, blocks, ds_config, ds_kwargs)
    kernels, ds_config, optimizer = _install_kernels(raptr_config.kernels, model, blocks,
                                                     ds_config, optimizer, tp_groups)
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
                         kernels=kernels, tensor_parallel=tp_groups)
    return engine, ds_optimizer, dataloader, scheduler


def unsynchronised_throughput_timer(ds_config: dict) -> dict:
    """DeepSpeed's throughput timer synchronizes the device twice per step by default (when
    forward starts and when step ends: two stalls of the GPU queue per step, whatever the
    model). Unless the config has a "timers" block, megaraptr keeps the timer with
    ``"synchronized": false``: its samples/s over ``steps_per_print`` steps are the same once
    the queue is full, and the host runs ahead of the device as it would without the timer."""
    if "timers" in ds_config:
        return ds_config
    return dict(ds_config, timers={"throughput": {"enabled": True, "synchronized": False}})


def _install_kernels(mode: str, model, blocks, ds_config: dict, optimizer, tp_groups=None):
    """Resolve the "kernels" setting for this device and ZeRO stage and install it on the
    model and the optimizer; returns (report, ds_config, optimizer) (megaraptr.kernels)."""
    from deepspeed.accelerator import get_accelerator

    stage = int((ds_config.get("zero_optimization") or {}).get("stage", 0))
    size = 1 if tp_groups is None else tp_groups.tensor_size
    plan = resolve_kernels(mode, device=get_accelerator().device_name(), zero_stage=stage,
                           tensor_parallel=size)
    installed = apply_kernels(model, blocks, plan)
    ds_config, optimizer, choice = fused_optimizer(ds_config, plan, optimizer)
    return dict(plan.to_dict(), optimizer=choice, **installed), ds_config, optimizer
