"""One gradient-norm pass per step over the layers that ran, for ZeRO-1/2/3 clipping.

DeepSpeed's ZeRO optimizers compute the clipping norm group by group: one norm kernel and one
fp64 copy per parameter, and one all-reduce per parameter group. megaraptr gives every layer
its own groups (megaraptr.runtime.zero.groups), so that would be one all-reduce per layer per step, and the
skipped layers' all-zero gradients would be read for nothing.

:func:`install_layer_norm` replaces the instance's norm method with one that reads only the
gradients of groups that are not frozen this step (a frozen group's gradient is zero and adds
nothing to the sum), computes all per-tensor norms with one fused ``torch._foreach_norm`` in
fp64, and all-reduces a single number. Same value up to float summation order; the invalid
(inf/NaN) sentinel is kept. Under ZeRO-1/2 the same pass answers DeepSpeed's overflow check
(by default an isfinite kernel per gradient tensor, also in bf16), and its norm is reused.
Configurations it does not cover (CPU offload, MoE, Muon, model- or pipeline-replicated
parameters) keep DeepSpeed's own method, and so does a DeepSpeed whose norm sources differ from
those of DeepSpeed 0.19.8 (``zero12_layer_norm``, ``zero3_layer_norm`` in
:mod:`megaraptr.runtime.compat`).
"""
from __future__ import annotations

from typing import Callable, FrozenSet, List, Optional

import torch

from megaraptr.runtime import compat
from megaraptr.runtime.zero.groups import partition_layers


def _squared_norm(grads: List[torch.Tensor], device) -> torch.Tensor:
    if not grads:
        return torch.zeros((), dtype=torch.float64, device=device)
    norms = torch._foreach_norm(grads, 2, dtype=torch.float64)
    return torch.stack(norms).pow(2).sum()


def install_layer_norm(ds_optimizer, frozen: Callable[[], FrozenSet[int]],
                       patches: Optional[dict] = None) -> bool:
    """Replace a ZeRO optimizer's clipping-norm method; returns whether it was installed.

    Args:
        ds_optimizer: DeepSpeed's ZeRO-1/2 (``DeepSpeedZeroOptimizer``) or ZeRO-3
            (``DeepSpeedZeroOptimizer_Stage3``) optimizer.
        frozen: gives the layer ids whose groups are frozen on the current step.
        patches: where the outcome is recorded (``RaptrEngine.deepspeed_patches``); the
            norm stays DeepSpeed's when the installed DeepSpeed's sources differ
            (megaraptr.runtime.compat).
    """
    from deepspeed import comm as dist
    from deepspeed.runtime.utils import (combine_grad_norm_groups, is_invalid_grad_norm,
                                         mask_nan_or_inf_with_val_inplace)

    layer_of_group = partition_layers(ds_optimizer)
    if layer_of_group is None:
        return False
    zero3 = hasattr(ds_optimizer, "sub_group_to_group_id")
    if not compat.guard(patches, "zero3_layer_norm" if zero3 else "zero12_layer_norm"):
        return False

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

    if not zero3:
        cached = {}

        def has_overflow(partition_gradients=True):
            # inf/NaN in any gradient makes the norm invalid: one fused pass instead of an
            # isfinite kernel per tensor (DeepSpeed's bf16 default). The combined norm that
            # scaled_global_norm returns next is the one tested here, so the step's own test
            # of it (a second host sync) can be left out: scaled_global_norm.verified
            cached["norm"] = combine_grad_norm_groups([global_norm()])
            invalid = is_invalid_grad_norm(cached["norm"])
            verified[0] = cached["norm"]
            return invalid

        def scaled_global_norm(norm_type=2):
            assert norm_type == 2, "only L2 norm supported"
            norm = cached.pop("norm", None)
            if norm is None:
                verified[0] = None
                return combine_grad_norm_groups([global_norm()], norm_type=norm_type)
            return norm

        verified = [None]
        scaled_global_norm.verified = verified
        """The norm tensor has_overflow tested on the host last (the step skips its test)."""
        ds_optimizer.has_overflow = has_overflow
        ds_optimizer.scaled_global_norm = scaled_global_norm
    else:
        ds_optimizer._get_norm_groups = lambda: [global_norm()]
    return True
