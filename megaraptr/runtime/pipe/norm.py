"""Gradient clipping in DeepSpeed pipelines: one norm of the whole model on every stage.

DeepSpeed 0.19.8 gets the clipping norm of a ``PipelineModule`` wrong in two paths:

- fp32 without ZeRO (``clip_grad_norm_`` with the pipeline grid as ``mpu``) counts only the
  first stage's gradients, since pipeline parameters are not marked model-parallel: every
  stage then clips by a different, partial norm;
- ZeRO-1 all-reduces one partial norm per parameter group over the pipeline stages; with
  megaraptr's per-layer groups the stages hold different numbers of groups, so the
  collectives do not pair up and training hangs.

:func:`install_pipeline_norm` replaces both with one computation: each rank sums the squares
of the gradients it holds (a tied weight once: its replicas are ``ds_pipe_replicated``;
ZeRO padding left out; under tensor parallelism a replicated parameter once, on tensor rank 0,
and each shard on its rank), one all-reduce over the data-parallel group (ZeRO-1's
partitions) and one over the stages (DeepSpeed's model-parallel group: stages x tensor ranks)
give the model's norm, and every stage clips by it. The bf16
optimizer already computes one global norm and is left alone.

DeepSpeed's own path is wrong here (a partial norm, or a hang), so there is no fallback: when
the installed DeepSpeed's sources differ from those of 0.19.8, the run stops before training
(patches ``pipe_fp32_clip`` and ``pipe_zero1_norm`` in :mod:`megaraptr.runtime.compat`).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from megaraptr.runtime import compat


def _squared(grads: List[torch.Tensor], device) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=device)
    if grads:
        total += torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)).pow(2).sum()
    return total


def _counted(pairs, shards_only: bool = False) -> List[torch.Tensor]:
    """The gradients counted on this rank (``shards_only``: tensor ranks other than 0 count
    only their shards of tensor-parallel parameters)."""
    return [g for g, p in pairs if not getattr(p, "ds_pipe_replicated", False)
            and not (shards_only and not getattr(p, "tensor_model_parallel", False))]


def install_pipeline_norm(ds_engine, patches: Optional[dict] = None) -> None:
    """Give a pipeline engine's fp32 and ZeRO-1 paths the whole model's clipping norm.

    Args:
        patches: where the outcome is recorded (``RaptrEngine.deepspeed_patches``).

    Raises:
        DeepSpeedCompatError: a path this run takes differs from DeepSpeed 0.19.8's.
    """
    from deepspeed import comm as dist
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer

    stages = ds_engine.mpu.get_model_parallel_group()
    optimizer = ds_engine.optimizer
    shards_only = ds_engine.grid.get_slice_parallel_rank() != 0

    @torch.no_grad()
    def clip_fp32_gradients():
        params = [p for p in ds_engine.module.parameters() if p.grad is not None]
        total = _squared(_counted(((p.grad, p) for p in params), shards_only), ds_engine.device)
        dist.all_reduce(total, group=stages)
        coef = torch.clamp(ds_engine.gradient_clipping() / (total.sqrt() + 1e-6), max=1.0)
        if params:
            torch._foreach_mul_([p.grad for p in params], coef.to(params[0].grad.dtype))
        return total.sqrt()

    # DeepSpeedEngine._take_model_step calls it with clipping on, in fp32 without ZeRO only
    low_precision = ds_engine.fp16_enabled() or ds_engine.bfloat16_enabled()
    if ds_engine.gradient_clipping() > 0 and not (low_precision or ds_engine.zero_optimization()):
        compat.require(patches, "pipe_fp32_clip")
        ds_engine.clip_fp32_gradients = clip_fp32_gradients
    if isinstance(optimizer, DeepSpeedZeroOptimizer):  # ZeRO-1 (bf16 with fp32 gradient
        compat.require(patches, "pipe_zero1_norm")  # accumulation: the bf16 optimizer)
        from deepspeed.runtime.utils import mask_nan_or_inf_with_val_inplace

        @torch.no_grad()
        def scaled_global_norm(norm_type=2):
            assert norm_type == 2, "only L2 norm supported"
            grads = []
            for i in range(len(optimizer.bit16_groups)):
                real = (g for g in optimizer.averaged_gradients.get(i) or []
                        if not getattr(g, "_zero_padding", False))
                grads.extend(_counted(zip(real, optimizer.params_in_partition[i]), shards_only))
            total = _squared(grads, optimizer.device)
            dist.all_reduce(total, group=optimizer.dp_process_group)
            dist.all_reduce(total, group=stages)
            norm = total.sqrt().float()
            mask_nan_or_inf_with_val_inplace(norm, device=optimizer.device)
            return norm

        optimizer.scaled_global_norm = scaled_global_norm
