"""Tensor parallelism (Megatron-style) under RAPTR: the process groups (``groups``), the
column- and row-parallel layers (``layers``) and the function that applies them to a model's
blocks (``apply``). A skipped layer runs none of its tensor-parallel collectives."""
from megaraptr.runtime.tp.apply import ALL_REDUCES_PER_LAYER, apply_tensor_parallel, plan_of
from megaraptr.runtime.tp.groups import ParallelGroups

__all__ = ["ALL_REDUCES_PER_LAYER", "ParallelGroups", "apply_tensor_parallel", "plan_of"]
