"""One gradient-norm pass per step over the layers that ran, for ZeRO-1/2/3 clipping.

DeepSpeed's ZeRO optimizers compute the clipping norm group by group: one norm kernel and one
fp64 copy per parameter, and one all-reduce per parameter group. megaraptr gives every layer
its own groups (megaraptr.zero), so that would be one all-reduce per layer per step, and the
skipped layers' all-zero gradients would be read for nothing.

:func:`install_layer_norm` replaces the instance's norm method with one that reads only the
gradients of groups that are not frozen this step (a frozen group's gradient is zero and adds
nothing to the sum), computes all per-tensor norms with one fused ``torch._foreach_norm`` in
fp64, and all-reduces a single number. Same value up to float summation order; the invalid
(inf/NaN) sentinel is kept. Under ZeRO-1/2 the same pass answers DeepSpeed's overflow check
(by default an isfinite kernel per gradient tensor, also in bf16), and its norm is reused. Configurations it does not cover (CPU offload, MoE, Muon,
model- or pipeline-replicated parameters) keep DeepSpeed's own method.
"""
from __future__ import annotations

from typing import Callable, FrozenSet, List

import torch

from megaraptr.zero import GROUP_KEY, NOT_A_LAYER


def _squared_norm(grads: List[torch.Tensor], device) -> torch.Tensor:
    if not grads:
        return torch.zeros((), dtype=torch.float64, device=device)
    norms = torch._foreach_norm(grads, 2, dtype=torch.float64)
    return torch.stack(norms).pow(2).sum()


def _supported(opt, params) -> bool:
    if getattr(opt, "cpu_offload", False) or getattr(opt, "offload_optimizer", False):
        return False
    if getattr(opt, "has_moe_layers", False) or getattr(opt, "use_muon", False):
        return False
    if getattr(opt, "model_parallel_world_size", 1) not in (None, 1):
        return False
    return not any(getattr(p, "ds_pipe_replicated", False) for p in params)


def install_layer_norm(ds_optimizer, frozen: Callable[[], FrozenSet[int]]) -> bool:
    """Replace a ZeRO optimizer's clipping-norm method; returns whether it was installed.

    Args:
        ds_optimizer: DeepSpeed's ZeRO-1/2 (``DeepSpeedZeroOptimizer``) or ZeRO-3
            (``DeepSpeedZeroOptimizer_Stage3``) optimizer.
        frozen: gives the layer ids whose groups are frozen on the current step.
    """
    from deepspeed import comm as dist
    from deepspeed.runtime.utils import (combine_grad_norm_groups, is_invalid_grad_norm,
                                         mask_nan_or_inf_with_val_inplace)

    basic = getattr(ds_optimizer, "optimizer", None)
    if basic is None:  # ZeRO-0 without a DeepSpeed wrapper: torch's clip_grad_norm_
        return False
    if hasattr(ds_optimizer, "sub_group_to_group_id"):  # ZeRO-3: sub-groups of groups
        partitions = ds_optimizer.fp16_groups
        groups = [basic.param_groups[ds_optimizer.sub_group_to_group_id[i]]
                  for i in range(len(partitions))]
        method = "_get_norm_groups"
    elif hasattr(ds_optimizer, "bit16_groups"):  # ZeRO-1/2
        partitions = ds_optimizer.bit16_groups
        groups = list(basic.param_groups)
        method = "scaled_global_norm"
    else:
        return False
    params = [p for partition in partitions for p in partition]
    if not _supported(ds_optimizer, params) or len(groups) != len(partitions):
        return False
    layer_of_group = [group.get(GROUP_KEY, NOT_A_LAYER) for group in groups]

    def global_norm() -> torch.Tensor:
        skip = frozen()
        grads = []
        for i, layer in enumerate(layer_of_group):
            if layer in skip:
                continue
            grads.extend(g for g in ds_optimizer.averaged_gradients[i]
                         if not getattr(g, "_zero_padding", False))
        squared = _squared_norm(grads, ds_optimizer.device)
        dist.all_reduce(squared, op=dist.ReduceOp.SUM, group=ds_optimizer.dp_process_group)
        norm = squared.sqrt().float()
        mask_nan_or_inf_with_val_inplace(norm, device=ds_optimizer.device)
        return norm

    if method == "scaled_global_norm":
        cached = {}

        def has_overflow(partition_gradients=True):
            # inf/NaN in any gradient makes the norm invalid: one fused pass instead of an
            # isfinite kernel per tensor (DeepSpeed's bf16 default); the norm is reused below
            cached["norm"] = global_norm()
            return is_invalid_grad_norm(cached["norm"])

        def scaled_global_norm(norm_type=2):
            assert norm_type == 2, "only L2 norm supported"
            norm = cached.pop("norm", None)
            return combine_grad_norm_groups([global_norm() if norm is None else norm],
                                            norm_type=norm_type)
        ds_optimizer.has_overflow = has_overflow
        ds_optimizer.scaled_global_norm = scaled_global_norm
    else:
        ds_optimizer._get_norm_groups = lambda: [global_norm()]
    return True
