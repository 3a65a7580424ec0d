"""ZeRO optimizer steps that do no work at all for frozen (skipped) layers.

Leaving a skipped layer's group out of the torch optimizer (megaraptr.runtime.zero.groups) keeps its state
bit-identical, but DeepSpeed's ZeRO step still visits every group: it flattens the group's
(zero) gradients into an fp32 partition, scales them, copies the unchanged fp32 master back
into the bf16 partition, all-gathers the partition and re-points the model's weights, group by
group. On a GPU this is mostly host-side launch work that does not shrink with the subnetwork.

- ZeRO-1/2: :func:`install_frozen_step` replaces ``DeepSpeedZeroOptimizer.step`` on the
  instance with the same sequence as DeepSpeed 0.19.8's non-offload path (overflow check,
  norm, loss scale, per-group update, all-gather), except that a frozen group only releases
  its gradients: no flatten, no scaling, no optimizer, no copy back, no all-gather (its weights
  did not change on any rank, since every rank freezes the same layers).
- ZeRO-3: the step's per-sub-group helpers (prepare the fp32 gradient, unscale, optimizer,
  copy back into the partitioned weights) are skipped for frozen sub-groups.

Configurations with more moving parts (CPU/NVMe offload, Muon, ZenFlow, torch autocast's
grad scaler, MoE) keep DeepSpeed's own step.
"""
from __future__ import annotations

from typing import Callable, FrozenSet

import torch

from megaraptr.runtime.zero.groups import partition_layers


def _zero12_step(opt, frozen_groups: Callable[[], FrozenSet[int]]):
    """DeepSpeed 0.19.8 ``DeepSpeedZeroOptimizer.step`` (non-offload) with frozen groups."""
    from deepspeed import comm as dist
    from deepspeed.runtime.utils import all_gather_dp_groups, is_invalid_grad_norm
    from deepspeed.runtime.zero import stage_1_and_2 as z

    def step(closure=None):
        opt.micro_step_id = z.INITIAL_MICRO_STEP_ID
        opt._wait_for_offload_copies()
        if not opt.compute_grad_norm:
            opt._global_grad_norm = None
        opt.overflow = False
        if opt.check_grad_overflow:
            opt.check_overflow(partition_gradients=opt.partition_gradients)
        scaled_norm = None
        if opt.compute_grad_norm and not opt.overflow:
            scaled_norm = opt.scaled_global_norm()
            if (opt.dtype != torch.bfloat16 or opt.check_grad_overflow) and \
                    is_invalid_grad_norm(scaled_norm):
                opt.overflow = True
        prev_scale = opt.loss_scale
        opt._update_scale(opt.overflow)
        if opt.overflow:
            if opt.compute_grad_norm:
                opt._global_grad_norm = float("inf")
            opt.zero_grad(set_to_none=True)
            opt._release_preflattened_grad_buffers()
            for k in opt.averaged_gradients.keys():
                opt.averaged_gradients[k] = None
                opt.all_grad_tensors[k] = None
            for timer in z.OPTIMIZER_TIMERS:
                opt.timers(timer).start()
                opt.timers(timer).stop()
            return
        if scaled_norm is not None:
            opt._global_grad_norm = scaled_norm / prev_scale
        frozen = frozen_groups()
        active = []
        for i, _ in enumerate(opt.bit16_groups):
            opt.free_grad_in_param_list(opt.params_not_in_partition[i])
            if i in frozen:
                opt.free_grad_in_param_list(opt.params_in_partition[i])
                opt._release_preflattened_grad_buffers(i)
                opt.averaged_gradients[i] = None
                opt.all_grad_tensors[i] = None
                continue
            active.append(i)
            opt.timers(z.OPTIMIZER_GRADIENTS_TIMER).start()
            partition_id = dist.get_rank(group=opt.real_dp_process_group[i])
            flat = opt._get_preflattened_grad_partition(i)
            if flat is None:
                if partition_id == dist.get_world_size(group=opt.real_dp_process_group[i]) - 1:
                    flat = opt.flatten_dense_tensors_aligned(opt.averaged_gradients[i],
                                                            int(opt.partition_size[i]))
                else:
                    flat = opt.flatten(opt.averaged_gradients[i])
            grad = flat.to(opt.single_partition_of_fp32_groups[i].dtype)
            del flat
            opt.single_partition_of_fp32_groups[i].grad = grad
            opt.free_grad_in_param_list(opt.params_in_partition[i])
            opt._release_preflattened_grad_buffers(i)
            opt.averaged_gradients[i] = None
            opt.all_grad_tensors[i] = None
            opt.unscale_and_clip_grads([grad], scaled_norm)
            opt.timers(z.OPTIMIZER_GRADIENTS_TIMER).stop()
            opt.timers(z.OPTIMIZER_STEP_TIMER).start()
            opt._optimizer_step(i)
            opt.single_partition_of_fp32_groups[i].grad = None
            del grad
            opt.parallel_partitioned_bit16_groups[i][partition_id].data.copy_(
                opt.single_partition_of_fp32_groups[i].data)
            opt.timers(z.OPTIMIZER_STEP_TIMER).stop()
        opt.timers(z.OPTIMIZER_ALLGATHER_TIMER).start()
        all_gather_dp_groups(groups_flat=[opt.bit16_groups_flat[i] for i in active],
                             partitioned_param_groups=[opt.parallel_partitioned_bit16_groups[i]
                                                       for i in active],
                             dp_process_group=[opt.real_dp_process_group[i] for i in active],
                             start_alignment_factor=opt.nccl_start_alignment_factor,
                             allgather_bucket_size=opt.allgather_bucket_size)
        opt.timers(z.OPTIMIZER_ALLGATHER_TIMER).stop()
        for i in active:
            opt._update_model_bit16_weights(i)
        opt.timers.log(z.OPTIMIZER_TIMERS)

    return step


def _skip_frozen(opt, name: str, frozen_sub: Callable[[int], bool]) -> None:
    original = getattr(opt, name)

    def wrapped(sub_group_id, *args, **kwargs):
        if frozen_sub(sub_group_id):
            return None
        return original(sub_group_id, *args, **kwargs)
    setattr(opt, name, wrapped)


def install_frozen_step(ds_optimizer, frozen: Callable[[], FrozenSet[int]]) -> bool:
    """Make the ZeRO step skip the groups of frozen layers; returns whether it was installed.

    Args:
        ds_optimizer: DeepSpeed's ZeRO-1/2 or ZeRO-3 optimizer.
        frozen: gives the layer ids frozen on the current step.
    """
    layers = partition_layers(ds_optimizer)
    if layers is None:
        return False
    if hasattr(ds_optimizer, "sub_group_to_group_id"):  # ZeRO-3: sub-group helpers
        def frozen_sub(sub_group_id: int) -> bool:
            return layers[sub_group_id] in frozen()
        for name in ("_prepare_sub_group", "unscale_and_clip_grads", "_optimizer_step",
                     "_reassign_or_swap_out_partitioned_parameters"):
            _skip_frozen(ds_optimizer, name, frozen_sub)
    else:  # ZeRO-1/2: the whole step

        def frozen_groups() -> FrozenSet[int]:
            skip = frozen()
            return frozenset(i for i, layer in enumerate(layers) if layer in skip)
        ds_optimizer.step = _zero12_step(ds_optimizer, frozen_groups)
    return True
