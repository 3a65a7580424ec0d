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

import math
from typing import Callable, FrozenSet, List, Optional

import torch

from megaraptr.runtime import compat
from megaraptr.runtime.zero.epilogue import install_frozen_epilogue
from megaraptr.runtime.zero.groups import partition_layers
from megaraptr.runtime.zero.reduce import install_layer_reduce


def _zero12_step(opt, frozen_groups: Callable[[], FrozenSet[int]]):
    """DeepSpeed 0.19.8 ``DeepSpeedZeroOptimizer.step`` (non-offload) with frozen groups.

    Line for line DeepSpeed's, in its order; each ``# megaraptr:`` comment marks a difference.
    Left out throughout: the CPU-offload and Muon branches (:func:`partition_layers` never
    installs this step there) and ``see_memory_usage`` (debug logging).
    """
    from deepspeed import comm as dist
    from deepspeed.runtime.utils import is_invalid_grad_norm
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
            # megaraptr: not tested again when megaraptr's overflow check just tested this very
            # norm on the host (norm.py): one host sync per step, not two
            verified = getattr(opt.scaled_global_norm, "verified", [None])[0]
            if (opt.dtype != torch.bfloat16 or opt.check_grad_overflow) and \
                    scaled_norm is not verified and is_invalid_grad_norm(scaled_norm):
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
            active.append(i)
        # megaraptr: DeepSpeed flattens, unscales, steps and copies back one group at a time,
        # testing the norm on the host in each group's unscale (a sync per group); here a batch
        # of groups at a time: the same arithmetic per group, one factor, one foreach multiply,
        # one optimizer call and one foreach copy per batch
        factor = clip_factor(opt, scaled_norm)
        for batch in batches(opt, active):
            opt.timers(z.OPTIMIZER_GRADIENTS_TIMER).start()
            grads = [_flat_gradient(opt, i) for i in batch]
            if factor is not None:
                torch._foreach_mul_([g.data for g in grads], factor)
            del grads
            opt.timers(z.OPTIMIZER_GRADIENTS_TIMER).stop()
            opt.timers(z.OPTIMIZER_STEP_TIMER).start()
            optimizer_step(opt, batch)
            ranks = [dist.get_rank(group=opt.real_dp_process_group[i]) for i in batch]
            torch._foreach_copy_([opt.parallel_partitioned_bit16_groups[i][r].data
                                  for i, r in zip(batch, ranks)],
                                 [opt.single_partition_of_fp32_groups[i].data for i in batch])
            opt.timers(z.OPTIMIZER_STEP_TIMER).stop()
        # megaraptr: no offload, so no `reset_cpu_buffers()`
        opt.timers(z.OPTIMIZER_ALLGATHER_TIMER).start()
        # megaraptr: the active groups only (a frozen group's weights changed on no rank)
        z.all_gather_dp_groups(groups_flat=[opt.bit16_groups_flat[i] for i in active],
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


def _flat_gradient(opt, i: int) -> torch.Tensor:
    """Group ``i``'s fp32 gradient partition, set as its fp32 master's ``.grad``, with the
    group's gradients released: DeepSpeed 0.19.8's step for one group up to the unscale."""
    from deepspeed import comm as dist

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
    return grad


def clip_factor(opt, total_norm):
    """What DeepSpeed 0.19.8's ``unscale_and_clip_grads`` multiplies every gradient by, or
    None where it returns at once; the same value, computed once per step instead of once per
    group, and an invalid norm made inf on the device (DeepSpeed tests it on the host)."""
    if opt.clip_grad == 0.0 and opt.loss_scale == 1.0:
        return None
    combined_scale = opt.loss_scale
    if opt.clip_grad > 0.:
        clip_norm = total_norm
        if torch.is_tensor(clip_norm):
            valid = torch.isfinite(clip_norm) & (clip_norm >= 0)
            clip_norm = torch.where(valid, clip_norm, torch.full_like(clip_norm, float("inf")))
        elif not math.isfinite(float(clip_norm)) or clip_norm < 0:
            clip_norm = torch.tensor(float("inf"), dtype=torch.float, device=opt.device)
        clip = ((clip_norm / opt.loss_scale) + 1e-6) / opt.clip_grad
        clip = torch.clamp(clip, min=1.0)
        combined_scale = clip * opt.loss_scale
    factor = 1. / combined_scale
    if torch.is_tensor(factor) and factor.dim() and factor.numel() == 1:
        factor = factor.reshape(())  # foreach takes a 0-d tensor; the same value
    return factor


def batches(opt, active: List[int]) -> List[List[int]]:
    """The active groups in order, cut into runs of at most ``reduce_bucket_size`` elements
    (one group may exceed it alone): the fp32 gradients of a run are alive together."""
    out, size = [], 0
    for i in active:
        n = int(opt.partition_size[i])
        if not out or size + n > opt.reduce_bucket_size:
            out.append([])
            size = 0
        out[-1].append(i)
        size += n
    return out


def optimizer_step(opt, group_ids: List[int]) -> None:
    """DeepSpeed 0.19.8's ``DeepSpeedZeroOptimizer._optimizer_step`` for several groups: one
    call of the torch optimizer over their param groups (it steps each group on its own, as
    per-group calls do), then the frees of their fp32 gradients."""
    original_param_groups = opt.optimizer.param_groups
    opt.optimizer.param_groups = [original_param_groups[i] for i in group_ids]
    try:
        opt.optimizer.step()
    finally:
        opt.optimizer.param_groups = original_param_groups
    opt._lazy_init_hp_params_optimizer_state()
    for i in group_ids:
        opt.single_partition_of_fp32_groups[i].grad = None


def _skip_frozen(opt, name: str, frozen_sub: Callable[[int], bool]) -> None:
    original = getattr(opt, name)

    def wrapped(sub_group_id, *args, **kwargs):
        if frozen_sub(sub_group_id):
            return None
        return original(sub_group_id, *args, **kwargs)
    setattr(opt, name, wrapped)


def install_frozen_step(ds_optimizer, frozen: Callable[[], FrozenSet[int]],
                        patches: Optional[dict] = None, epilogue: bool = False,
                        managed: bool = True) -> bool:
    """Make the ZeRO step skip the groups of frozen layers; returns whether it was installed.

    Args:
        ds_optimizer: DeepSpeed's ZeRO-1/2 or ZeRO-3 optimizer.
        frozen: gives the layer ids frozen on the current step.
        patches: where the outcome is recorded (``RaptrEngine.deepspeed_patches``); the step
            stays DeepSpeed's when the installed DeepSpeed's sources differ
            (megaraptr.runtime.compat).
        epilogue: ZeRO-1/2 only, with megaraptr's norm installed: also build no gradient
            partitions for frozen groups after backward (:mod:`megaraptr.runtime.zero.epilogue`),
            and reduce gradients by layer groups (:mod:`megaraptr.runtime.zero.reduce`).
        managed: the engine's ``managed_gradient_accumulation()`` (the reduction needs it).
    """
    layers = partition_layers(ds_optimizer)
    if layers is None:
        return False
    zero3 = hasattr(ds_optimizer, "sub_group_to_group_id")
    if not compat.guard(patches, "zero3_frozen_step" if zero3 else "zero12_frozen_step"):
        if not zero3:
            compat.depends_off(patches, "zero12_frozen_epilogue", "zero12_frozen_step")
            install_layer_reduce(ds_optimizer, None, patches, managed=managed,
                                 needs="zero12_frozen_step")
        return False
    if zero3:  # ZeRO-3: sub-group helpers
        def frozen_sub(sub_group_id: int) -> bool:
            return layers[sub_group_id] in frozen()
        for name in ("_prepare_sub_group", "unscale_and_clip_grads", "_optimizer_step",
                     "_reassign_or_swap_out_partitioned_parameters"):
            _skip_frozen(ds_optimizer, name, frozen_sub)
    else:  # ZeRO-1/2: the whole step, and with megaraptr's norm the epilogue's builders
        frozen_groups = FrozenGroups(layers, frozen)
        ds_optimizer.step = _zero12_step(ds_optimizer, frozen_groups)
        if not epilogue:
            compat.depends_off(patches, "zero12_frozen_epilogue", "zero12_layer_norm")
            needs = "zero12_layer_norm"
        elif install_frozen_epilogue(ds_optimizer, frozen_groups, patches):
            needs = None
        else:
            needs = "zero12_frozen_epilogue"
        install_layer_reduce(ds_optimizer, frozen_groups, patches, managed=managed, needs=needs)
    return True


class FrozenGroups:
    """The indices of the optimizer groups of the frozen layers, recomputed only when the set
    of frozen layers changes (O(1) per call otherwise)."""

    def __init__(self, layers, frozen: Callable[[], FrozenSet[int]]):
        self.layers, self.frozen = layers, frozen
        self._layers_seen: Optional[FrozenSet[int]] = None
        self._groups: FrozenSet[int] = frozenset()

    def __call__(self) -> FrozenSet[int]:
        skip = self.frozen()
        if skip is not self._layers_seen:
            self._layers_seen = skip
            self._groups = frozenset(i for i, layer in enumerate(self.layers) if layer in skip)
        return self._groups
