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
grad scaler, MoE) keep DeepSpeed's own step, and so does a DeepSpeed whose step sources differ
from those of DeepSpeed 0.19.8 (patches ``zero12_frozen_step`` and ``zero3_frozen_step`` in
:mod:`megaraptr.runtime.compat`).
"""
from __future__ import annotations

from typing import Callable, FrozenSet, Optional

import torch

from megaraptr.runtime import compat
from megaraptr.runtime.zero.groups import partition_layers


def _zero12_step(opt, frozen_groups: Callable[[], FrozenSet[int]]):
    """DeepSpeed 0.19.8 ``DeepSpeedZeroOptimizer.step`` (non-offload) with frozen groups.

    Line for line DeepSpeed's, in its order; each ``# megaraptr:`` comment marks a difference.
    Left out throughout: the CPU-offload and Muon branches (:func:`partition_layers` never
    installs this step there) and ``see_memory_usage`` (debug logging).
    """
    from deepspeed import comm as dist
    from deepspeed.runtime.utils import all_gather_dp_groups, is_invalid_grad_norm
    from deepspeed.runtime.zero import stage_1_and_2 as z

    def step(closure=None):
        opt.micro_step_id = z.INITIAL_MICRO_STEP_ID
        opt._wait_for_offload_copies()
        # megaraptr: no offload, so no `_offload_accumulated_param_ids` reset
        if not opt.compute_grad_norm:
            opt._global_grad_norm = None
        opt.overflow = False
        if opt.check_grad_overflow:
            opt.check_overflow(partition_gradients=opt.partition_gradients)
        scaled_norm = None
        if opt.compute_grad_norm and not opt.overflow:
            # megaraptr: no offload, so no `_apply_muon_updates_cpu_offload()`
            scaled_norm = opt.scaled_global_norm()
            if (opt.dtype != torch.bfloat16 or opt.check_grad_overflow) and \
                    is_invalid_grad_norm(scaled_norm):
                opt.overflow = True
        prev_scale = opt.loss_scale
        opt._update_scale(opt.overflow)
        # megaraptr: no Muon, so no `_commit_muon_momentum()` (it commits nothing without Muon)
        if opt.overflow:
            if opt.compute_grad_norm:
                opt._global_grad_norm = float("inf")
            opt.zero_grad(set_to_none=True)
            opt._release_preflattened_grad_buffers()
            for k in opt.averaged_gradients.keys():  # megaraptr: the non-offload branch only
                opt.averaged_gradients[k] = None
                opt.all_grad_tensors[k] = None
            for timer in z.OPTIMIZER_TIMERS:
                opt.timers(timer).start()
                opt.timers(timer).stop()
            return
        if scaled_norm is not None:
            opt._global_grad_norm = scaled_norm / prev_scale
        frozen = frozen_groups()  # megaraptr: the groups of this step's skipped layers
        active = []  # megaraptr: the groups that get an update and an all-gather
        for i, _ in enumerate(opt.bit16_groups):
            # megaraptr: the non-offload branch only
            opt.free_grad_in_param_list(opt.params_not_in_partition[i])
            if i in frozen:
                # megaraptr: a frozen group skips flatten/optimizer/all-gather; it only
                # releases its gradients, as an active group does below
                opt.free_grad_in_param_list(opt.params_in_partition[i])
                opt._release_preflattened_grad_buffers(i)
                opt.averaged_gradients[i] = None
                opt.all_grad_tensors[i] = None
                continue
            active.append(i)  # megaraptr
            opt.timers(z.OPTIMIZER_GRADIENTS_TIMER).start()
            partition_id = dist.get_rank(group=opt.real_dp_process_group[i])
            flat = opt._get_preflattened_grad_partition(i)
            if flat is not None:
                assert flat.numel() == opt.partition_size[i], "pre-flattened gradient partition"
            if flat is None:
                if partition_id == dist.get_world_size(group=opt.real_dp_process_group[i]) - 1:
                    flat = opt.flatten_dense_tensors_aligned(opt.averaged_gradients[i],
                                                            int(opt.partition_size[i]))
                else:
                    flat = opt.flatten(opt.averaged_gradients[i])
            grad = flat.to(opt.single_partition_of_fp32_groups[i].dtype)
            del flat
            # megaraptr: no Muon, so no `_muon_update_lacks_loss_scale` rescale
            assert grad.numel() == opt.partition_size[i], "averaged gradients vs partition size"
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
        # megaraptr: no offload, so no `reset_cpu_buffers()`
        opt.timers(z.OPTIMIZER_ALLGATHER_TIMER).start()
        # megaraptr: the active groups only (a frozen group's weights changed on no rank)
        all_gather_dp_groups(groups_flat=[opt.bit16_groups_flat[i] for i in active],
                             partitioned_param_groups=[opt.parallel_partitioned_bit16_groups[i]
                                                       for i in active],
                             dp_process_group=[opt.real_dp_process_group[i] for i in active],
                             start_alignment_factor=opt.nccl_start_alignment_factor,
                             allgather_bucket_size=opt.allgather_bucket_size)
        opt.timers(z.OPTIMIZER_ALLGATHER_TIMER).stop()
        for i in active:  # megaraptr: the active groups only (DeepSpeed: every group)
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


def install_frozen_step(ds_optimizer, frozen: Callable[[], FrozenSet[int]],
                        patches: Optional[dict] = None) -> bool:
    """Make the ZeRO step skip the groups of frozen layers; returns whether it was installed.

    Args:
        ds_optimizer: DeepSpeed's ZeRO-1/2 or ZeRO-3 optimizer.
        frozen: gives the layer ids frozen on the current step.
        patches: where the outcome is recorded (``RaptrEngine.deepspeed_patches``); the step
            stays DeepSpeed's when the installed DeepSpeed's sources differ
            (megaraptr.runtime.compat).
    """
    layers = partition_layers(ds_optimizer)
    if layers is None:
        return False
    zero3 = hasattr(ds_optimizer, "sub_group_to_group_id")
    if not compat.guard(patches, "zero3_frozen_step" if zero3 else "zero12_frozen_step"):
        return False
    if zero3:  # ZeRO-3: sub-group helpers
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
