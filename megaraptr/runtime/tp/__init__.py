"""Tensor parallelism (Megatron-style) under RAPTR: the process groups (``groups``), the
column- and row-parallel layers (``layers``) and the function that applies them to a model's
blocks (``apply``). A skipped layer runs none of its tensor-parallel collectives."""
from megaraptr.runtime.tp.apply import all_reduces_per_layer, apply_tensor_parallel, plan_of
from megaraptr.runtime.tp.groups import ParallelGroups

__all__ = ["ParallelGroups", "all_reduces_per_layer", "apply_tensor_parallel", "plan_of"]
