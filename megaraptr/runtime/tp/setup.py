"""Tensor parallelism wired into the engines' start-up, kept out of the engine files.

In the order the engines call them:

- :func:`split_for_data_parallel` (``megaraptr.initialize``): makes the T x D groups, splits
  the model's blocks over their tensor-parallel group and hands DeepSpeed the groups as its
  ``mpu`` and a config without the ``"tensor_parallel"`` block (DeepSpeed's AutoTP would split
  the model a second time);
- :func:`pipeline_groups`, :func:`pipeline_topology`, :func:`pipeline_ds_config` and
  :func:`check_grid` (:func:`megaraptr.runtime.pipe.engine.initialize`, 3D): the groups once
  per run, DeepSpeed's ``PipeModelDataParallelTopology`` on the same layout, unpartitioned
  activations between stages, and the grid's ``"model"`` axis checked against the groups;
- :func:`attach` (``RaptrEngine``): the engine's groups, with the DeepSpeed patch its norms
  rely on recorded in the engine's patch report; :func:`tensor_size` reads T off an engine.
"""
from __future__ import annotations

from typing import Optional, Tuple

from megaraptr.errors import ConfigError
from megaraptr.planning.layout import check_layout, check_tensor_parallel, tensor_parallel_size
from megaraptr.runtime import compat
from megaraptr.runtime.tp.apply import apply_tensor_parallel
from megaraptr.runtime.tp.groups import ParallelGroups


def split_for_data_parallel(model, blocks, ds_config: dict,
                            ds_kwargs: dict) -> Tuple[Optional[ParallelGroups], dict]:
    """Split ``model`` over its tensor-parallel group when the config asks for T > 1; returns
    (the groups or None, the config DeepSpeed gets). Sets ``ds_kwargs["mpu"]``."""
    import torch.distributed as dist

    tensor = tensor_parallel_size(ds_config)
    if tensor == 1:
        return None, ds_config
    check_tensor_parallel(ds_config, tensor=tensor)
    compat.require(None, "tp_grad_norm")  # DeepSpeed's norms must count shards as expected
    if ds_kwargs.get("mpu") is not None:
        raise ConfigError("tensor_parallel.autotp_size", "megaraptr makes the tensor-parallel "
                          "groups itself: pass no mpu")
    groups = ParallelGroups(check_layout(world=dist.get_world_size(), tensor=tensor))
    apply_tensor_parallel(model, rank=groups.tensor_index, size=tensor,
                          group=groups.tensor_group, blocks=blocks)
    ds_kwargs["mpu"] = groups
    return groups, {k: v for k, v in ds_config.items() if k != "tensor_parallel"}


def pipeline_groups(ds_config: dict, num_stages: int) -> Optional[ParallelGroups]:
    """The tensor-parallel groups of a pipeline run (None without tensor parallelism); every
    rank calls it, once per run (re-partitioned engines reuse them)."""
    import torch.distributed as dist

    tensor = tensor_parallel_size(ds_config)
    if tensor == 1:
        return None
    check_tensor_parallel(ds_config, tensor=tensor, pipeline=True)
    compat.require(None, "tp_grad_norm")
    layout = check_layout(world=dist.get_world_size(), tensor=tensor, pipeline=num_stages)
    return ParallelGroups(layout, data_groups=False)  # the grid makes the data groups


def pipeline_topology(groups: Optional[ParallelGroups], num_stages: int):
    """DeepSpeed's P x D x T topology for ``groups`` (None without tensor parallelism: the
    pipeline module's own P x D)."""
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    if groups is None:
        return None
    return PipeModelDataParallelTopology(num_pp=num_stages, num_mp=groups.tensor_size,
                                         num_dp=groups.layout.data)


def pipeline_ds_config(ds_config: dict, groups: Optional[ParallelGroups]) -> dict:
    """What DeepSpeed's pipeline gets: no "tensor_parallel" block (megaraptr splits the
    blocks) and, under tensor parallelism, unpartitioned activations between stages."""
    if groups is None:
        return ds_config
    out = {k: v for k, v in ds_config.items() if k != "tensor_parallel"}
    out["pipeline"] = dict(out.get("pipeline") or {}, pipe_partitioned=False,
                           grad_partitioned=False)
    return out


def check_grid(ds_engine, groups: Optional[ParallelGroups]) -> None:
    """The pipeline grid's ``"model"`` axis must be exactly this rank's tensor-parallel group."""
    if groups is not None and sorted(ds_engine.grid.slice_group) != groups.tensor_ranks:
        raise RuntimeError(f"the pipeline grid's model axis {ds_engine.grid.slice_group} is not "
                           f"the tensor-parallel group {groups.tensor_ranks}")


def attach(groups: Optional[ParallelGroups], patches: dict) -> Optional[ParallelGroups]:
    """An engine's groups (None without tensor parallelism). The patch DeepSpeed's norms need
    was checked before the model was split; here it is recorded in the engine's ``patches``."""
    if groups is not None:
        compat.require(patches, "tp_grad_norm")
    return groups


def tensor_size(engine) -> int:
    """T of an engine: the ranks each layer is split over (1 without tensor parallelism)."""
    groups = getattr(engine, "tp", None)
    return 1 if groups is None else groups.tensor_size
