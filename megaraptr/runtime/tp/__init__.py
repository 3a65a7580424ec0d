"""Tensor parallelism (Megatron-style) under RAPTR: the process groups (``groups``), the
column- and row-parallel layers (``layers``), the function that applies them to a model's
blocks (``apply``) and their wiring into the engines' start-up (``setup``). A skipped layer
runs none of its tensor-parallel collectives."""
from megaraptr.runtime.tp.apply import ALL_REDUCES_PER_LAYER, apply_tensor_parallel, plan_of
from megaraptr.runtime.tp.groups import ParallelGroups
from megaraptr.runtime.tp.setup import (attach, check_grid, pipeline_ds_config, pipeline_groups,
                                        pipeline_topology, split_for_data_parallel, tensor_size)

__all__ = ["ALL_REDUCES_PER_LAYER", "ParallelGroups", "apply_tensor_parallel", "attach",
           "check_grid", "pipeline_ds_config", "pipeline_groups", "pipeline_topology", "plan_of",
           "split_for_data_parallel", "tensor_size"]
