"""ZeRO-1/2 gradient reduction by buckets of whole layer groups, once per backward.

DeepSpeed 0.19.8 reduces ZeRO-1/2 gradients parameter by parameter: under ZeRO-2 a hook per
parameter copies each gradient into a bucket during backward; under ZeRO-1, at the boundary,
each gradient is copied into the bucket, the bucket is reduced with a per-parameter offset
computation (``average_tensor``), each gradient of this rank's partition is copied again into a
partition buffer, and the epilogue builds a list of views per group. On a GPU that is host work
per parameter per step that does not shrink with the work (docs/host_overhead.md).

:func:`install_layer_reduce` replaces that, on the instance, with: after backward, for each run
of active groups of at most ``reduce_bucket_size`` elements, one flatten of their gradients in
the groups' own flat layout (DeepSpeed's padding and alignment included, zeros where a parameter
got no gradient), one division by the data-parallel world and one all-reduce (or DeepSpeed's
``gradient_reduction_w_predivide`` where ``reduce_scatter`` is off: predivide factor and
postscale as DeepSpeed), and this rank's partition of each group taken from it: the partition
DeepSpeed builds (``GradPartitionBufferGroup``: the same views, the same padding marks), by the
same arithmetic per element. Frozen groups are not touched (no gradient partition, as
:mod:`megaraptr.runtime.zero.epilogue`). ZeRO-2 reduces every micro-batch and adds the partitions
up, as DeepSpeed does; ZeRO-1 reduces the accumulated gradients at the boundary.

Installed only with megaraptr's step, norm and epilogue (patch ``zero12_layer_reduce`` in
:mod:`megaraptr.runtime.compat`), on fp32 or bf16 with gradients accumulated in the same dtype
and communicated in it, without ``overlap_comm``, sequence parallelism, pipelines or unmanaged
gradient accumulation, and for ZeRO-2 on one data-parallel rank only (on more ranks DeepSpeed's
hooks keep the gradient memory partitioned during backward; this path would hold every
gradient until its end). Anywhere else DeepSpeed reduces as always.
"""
from __future__ import annotations

from typing import Callable, Dict, FrozenSet, List, Optional

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from megaraptr.runtime import compat

NAME = "zero12_layer_reduce"


def uncovered(opt, managed: bool, pipeline: bool) -> Optional[str]:
    """Why this optimizer's configuration keeps DeepSpeed's reduction, or None."""
    from deepspeed import comm as dist
    from deepspeed.runtime.zero import stage_1_and_2 as z

    world = dist.get_world_size(group=opt.dp_process_group)
    checks = [
        (opt.dtype not in (torch.float32, torch.bfloat16), "fp16"),
        (opt.gradient_accumulation_dtype != opt.dtype or opt.use_grad_accum_attribute,
         "gradients accumulated in another dtype"),
        (opt.communication_data_type != opt.dtype, "communication in another dtype"),
        (opt.overlap_comm, "overlap_comm"),
        (opt.sequence_parallel_size != 1 or z.pg_correctness_test, "sequence parallelism"),
        (pipeline, "a pipeline"), (not managed, "unmanaged gradient accumulation"),
        (opt._offload_gradient_safety_enabled, "offload"),
        (opt.partition_gradients and world > 1, "ZeRO-2 on more than one rank"),
        (any(dist.get_world_size(group=g) != world for g in opt.real_dp_process_group),
         "a group reduced over another process group")]
    return next((why for bad, why in checks if bad), None)


class LayerReduce:
    """The replacement methods, bound to one ZeRO-1/2 optimizer (see the module docstring)."""

    def __init__(self, opt, frozen_groups: Callable[[], FrozenSet[int]]):
        from deepspeed import comm as dist
        from deepspeed.runtime.zero.stage_1_and_2 import GradPartitionBufferGroup

        self.opt, self.frozen_groups, self.dist = opt, frozen_groups, dist
        self.buffer_group = GradPartitionBufferGroup
        self.originals = {name: getattr(opt, name) for name in (
            "process_gradients", "reduce_gradients",
            "overlapping_partition_gradients_reduce_epilogue")}
        self.world = dist.get_world_size(group=opt.dp_process_group)
        self.rank = dist.get_rank(group=opt.dp_process_group)
        self.zeros = torch.zeros(0, dtype=opt.dtype, device=opt.device)
        self.layouts = [self._layout(i) for i in range(len(opt.bit16_groups))]
        self.accumulated: Dict[int, torch.Tensor] = {}  # group -> partition (ZeRO-2 micro-steps)

    def _zeros(self, n: int) -> torch.Tensor:
        if self.zeros.numel() < n:  # never written: flatten copies out of it
            self.zeros = torch.zeros(n, dtype=self.opt.dtype, device=self.opt.device)
        return self.zeros.narrow(0, 0, n)

    def _layout(self, i: int):
        """Group ``i``'s flat layout (DeepSpeed's ``bit16_groups_flat[i]``: each parameter in
        round-robin order, its padding, zeros to the alignment) and the views DeepSpeed's
        ``get_flat_partition`` gives this rank's partition of it."""
        opt = self.opt
        params, paddings = opt.round_robin_bit16_groups[i], opt.round_robin_bit16_padding[i]
        size = int(opt.partition_size[i])
        slots, position = [], 0  # slots: a parameter, or a tensor of zeros
        for param, padding in zip(params, paddings):
            slots.append(param)
            position += param.numel()
            if padding:
                slots.append(self._zeros(padding).clone())
                position += padding
        if position < size * self.world:
            slots.append(self._zeros(size * self.world - position).clone())
        # this rank's window [start, start + size) of the layout, cut as get_flat_partition cuts
        padded, start = any(paddings), size * self.rank
        views, offset, at = [], 0, 0  # views: (shape template, marked as padding)
        for param, padding in zip(params, paddings):
            n = param.numel()
            lo, hi = max(offset, start), min(offset + n, start + size)
            if hi > lo:
                if lo - start > at:  # only where parameters carry padding
                    views.append((torch.empty(lo - start - at, device="meta"), True))
                whole = hi - lo == n
                views.append((torch.empty(param.shape if whole else (hi - lo,), device="meta"),
                              False))
                at = hi - start
            offset += n + padding
        if at < size:  # DeepSpeed marks the tail as padding only in groups with padding
            views.append((torch.empty(size - at, device="meta"), padded))
        specs, at = [], 0  # GradPartitionBufferGroup's (offset, shape, padding) of each view
        for template, padding in views:
            specs.append((at, template.shape, padding))
            at += template.numel()
        return slots, size, views, specs

    # the per-parameter hook's work: only the bookkeeping DeepSpeed's setup_buckets does
    def process_gradients(self, param, i):
        opt = self.opt
        if opt._coalesce_grad_reduction:
            return
        if not opt.ready_for_gradients:
            opt.micro_step_id += 1
            opt.ready_for_gradients = True

    def reduce_gradients(self, pipeline_parallel=False):  # ZeRO-1, at the boundary
        if pipeline_parallel or self._queued():
            return self.originals["reduce_gradients"](pipeline_parallel=pipeline_parallel)
        self.epilogue()

    def overlapping_partition_gradients_reduce_epilogue(self):  # ZeRO-2, every micro-batch
        if self._queued():
            return self.originals["overlapping_partition_gradients_reduce_epilogue"]()
        self.epilogue()

    def _queued(self) -> bool:
        """Whether DeepSpeed's own reduction holds gradients (its buckets, filled by a path
        that bypassed these methods) or must correct them (AutoEP folding): then it runs."""
        opt = self.opt
        return opt.autoep_folding_tp_group is not None or any(
            bucket.params for bucket in opt.ipg_buckets.values())

    def epilogue(self):
        opt = self.opt
        frozen = self.frozen_groups()
        active = [i for i in range(len(self.layouts)) if i not in frozen]
        for run in self._runs(active):
            pieces = []
            for i in run:
                for slot in self.layouts[i][0]:
                    if isinstance(slot, torch.nn.Parameter):
                        slot = slot.grad if slot.grad is not None else self._zeros(slot.numel())
                    pieces.append(slot)
            flat = _flatten_dense_tensors(pieces)
            del pieces
            self._reduce(flat)
            offset = 0
            for i in run:
                size = self.layouts[i][1]
                part = flat.narrow(0, offset + size * self.rank, size)
                if self.world > 1:
                    part = part.clone()  # not the other ranks' gradients with it
                if i in self.accumulated:
                    self.accumulated[i].add_(part)
                else:
                    self.accumulated[i] = part
                offset += size * self.world
        if opt.is_gradient_accumulation_boundary():
            for i in range(len(self.layouts)):
                opt.averaged_gradients[i] = None if i in frozen else self._group(i)
            self.accumulated.clear()
        for i in range(len(self.layouts)):
            opt.all_grad_tensors[i] = None
        # DeepSpeed's epilogue bookkeeping: no parameter reduced yet, buffers released
        opt._release_ipg_buffers()
        opt._clear_param_grad_only()
        opt._epilogue_ran_this_backward = True

    def _runs(self, active: List[int]) -> List[List[int]]:
        """The active groups in order, cut into runs of at most ``reduce_bucket_size``
        elements (a larger group alone)."""
        out, size = [], 0
        for i in active:
            n = self.layouts[i][1] * self.world
            if not out or size + n > self.opt.reduce_bucket_size:
                out.append([])
                size = 0
            out[-1].append(i)
            size += n
        return out

    def _reduce(self, flat: torch.Tensor) -> None:
        """DeepSpeed's arithmetic: with contiguous gradients and no reduce_scatter,
        gradient_reduction_w_predivide itself (predivide factor, postscale); otherwise divide by
        the world and sum over the ranks (average_tensor's reduce_scatter branch, and
        allreduce_bucket under buffered_reduce_fallback without contiguous gradients)."""
        opt = self.opt
        if opt.contiguous_gradients and not opt.reduce_scatter:
            opt.gradient_reduction_w_predivide(flat, opt.communication_data_type)
            return
        if opt.gradient_average and self.world != 1:  # x / 1.0 is x: no kernel for it
            flat.div_(self.world / float(opt.sequence_parallel_size))
        self.dist.all_reduce(flat, group=opt.dp_process_group)

    def _group(self, i: int):
        """Group ``i``'s gradient partition as DeepSpeed's epilogue leaves it: the views
        ``get_flat_partition`` would list (padding marked ``_zero_padding`` where it marks it),
        over one flat partition the step reads without flattening again."""
        part = self.accumulated[i]
        templates = self.layouts[i][2]
        views = _unflatten_dense_tensors(part, [t for t, _ in templates])
        for view, (_, padding) in zip(views, templates):
            if padding:
                view._zero_padding = True
        group = self.buffer_group.__new__(self.buffer_group)
        list.__init__(group, views)
        group.flat_partition = part
        group._view_specs = self.layouts[i][3]  # static: the same views of every partition
        return group


def install_layer_reduce(ds_optimizer, frozen_groups: Callable[[], FrozenSet[int]],
                         patches: Optional[dict] = None, managed: bool = True,
                         pipeline: bool = False, needs: Optional[str] = None) -> bool:
    """Replace a ZeRO-1/2 optimizer's gradient reduction; returns whether it was installed.

    Args:
        ds_optimizer: DeepSpeed's ZeRO-1/2 optimizer with megaraptr's step, norm and epilogue.
        frozen_groups: gives the indices of the groups frozen on the current step.
        patches: where the outcome is recorded (``RaptrEngine.deepspeed_patches``).
        managed: the engine's ``managed_gradient_accumulation()``.
        pipeline: whether the engine is a pipeline.
        needs: the patch this one relies on when that one is off (recorded as the reason).
    """
    if uncovered(ds_optimizer, managed, pipeline) is not None:
        return False  # not recorded: as the other patches, for configurations they leave alone
    if needs is not None:
        compat.depends_off(patches, NAME, needs)
        return False
    if not compat.guard(patches, NAME):
        return False
    reduce = LayerReduce(ds_optimizer, frozen_groups)
    for name in reduce.originals:
        setattr(ds_optimizer, name, getattr(reduce, name))
    return True
