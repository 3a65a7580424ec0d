"""No gradient buffers for frozen layers in ZeRO's reduction epilogue.

After backward, DeepSpeed's ZeRO-1/2 epilogue (``independent_gradient_partition_epilogue``)
builds every parameter group's gradient partition: a zero tensor for each parameter that got no
gradient, then a list of views of the group's slice (fp32 and fp16), or a zeroed flat fp32
buffer per group (bf16 with fp32 gradient accumulation). A frozen (skipped) layer's gradient is
all zeros, and megaraptr's step (:mod:`megaraptr.runtime.zero.step`) and norm
(:mod:`megaraptr.runtime.zero.norm`) never read it: they drop it unread. So that a skipped
layer costs no kernel and no allocation, :func:`install_frozen_epilogue` makes the three
builders answer None for the groups of the step's frozen layers; active groups are built as
before, bit for bit.

Installed only together with megaraptr's ZeRO-1/2 step and norm (both active: nothing else
reads the partitions), on a DeepSpeed whose epilogue and builders match 0.19.8's (patch
``zero12_frozen_epilogue`` in :mod:`megaraptr.runtime.compat`); otherwise DeepSpeed builds
them as always.
"""
from __future__ import annotations

from typing import Callable, FrozenSet, Optional

from megaraptr.runtime import compat


def install_frozen_epilogue(ds_optimizer, frozen_groups: Callable[[], FrozenSet[int]],
                            patches: Optional[dict] = None) -> bool:
    """Make the epilogue's builders skip frozen groups; returns whether it was installed.

    Args:
        ds_optimizer: DeepSpeed's ZeRO-1/2 optimizer, with megaraptr's step and norm installed.
        frozen_groups: gives the indices of the groups frozen on the current step.
        patches: where the outcome is recorded (``RaptrEngine.deepspeed_patches``).
    """
    if not compat.guard(patches, "zero12_frozen_epilogue"):
        return False
    opt = ds_optimizer
    group_of = {id(params): i for i, params in enumerate(opt.params_in_partition)}
    all_grads, flat, compact = (opt.get_all_grad_tensors, opt.get_flat_partition,
                                opt._build_compact_grad_partition_buffer)

    def get_all_grad_tensors(tensor_list, dtype):
        if group_of.get(id(tensor_list), -1) in frozen_groups():
            return None  # no zero tensor per parameter of a frozen layer
        return all_grads(tensor_list, dtype)

    def get_flat_partition(tensor_list, first_offset, partition_size, dtype, device,
                           param_group_idx, return_tensor_list=False):
        if param_group_idx in frozen_groups():
            return None
        return flat(tensor_list, first_offset, partition_size, dtype, device, param_group_idx,
                    return_tensor_list=return_tensor_list)

    def build_compact_grad_partition_buffer(group_idx):
        if group_idx in frozen_groups():
            return None  # no zeroed fp32 buffer for a frozen layer
        return compact(group_idx)

    opt.get_all_grad_tensors = get_all_grad_tensors
    opt.get_flat_partition = get_flat_partition
    opt._build_compact_grad_partition_buffer = build_compact_grad_partition_buffer
    return True
