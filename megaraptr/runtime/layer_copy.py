"""Gradual stacking's growth step: copy the top layers onto the new ones, in a DeepSpeed engine.

At the first step of a stacking stage the model grows from k to k' layers
(:func:`megaraptr.methods.stacking.growth_plan`): each new layer gets the weights of a top layer of
the k-layer model. In a DeepSpeed engine a parameter can live in up to two places, and both
are written, on every rank, with the same values:

- the fp32 master copy the optimizer updates (ZeRO-1/2 and the bf16 optimizer: the parameter's
  ``_hp_mapping`` fragment; ZeRO-3: its fp32 partition), through DeepSpeed's
  ``safe_get_full_fp32_param`` / ``safe_set_full_fp32_param``;
- the module's (low-precision) parameter the forward reads (ZeRO-3: gathered, written,
  re-partitioned).

Optimizer state: the new layers have never been updated (they did not exist, and under
``"skipped_layers": "freeze"`` an absent layer gets no optimizer step), so they start with
fresh state: Adam's moments are zero and its bias correction counts from their first update,
while the source layers keep theirs. The growth is a function of the step, so a resumed run
grows at the same step, and a checkpoint taken after it holds the grown weights.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch


@torch.no_grad()
def copy_layers(ds_engine, blocks: Sequence[torch.nn.Module],
                plan: Sequence[Tuple[int, int]]) -> None:
    """Copy block ``source`` onto block ``target`` for every (target, source) in ``plan``."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_set_full_fp32_param

    zero3 = ds_engine.zero_optimization_stage() == 3
    for target, source in plan:
        pairs = list(zip(blocks[source].parameters(), blocks[target].parameters()))
        for src, dst in pairs:
            if src.shape != dst.shape and not zero3:
                raise ValueError(f"layer {source} and layer {target} differ in shape")
            master = safe_get_full_fp32_param(src)
            if master is not None:
                safe_set_full_fp32_param(dst, master)
            if zero3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([src, dst], modifier_rank=0):
                    dst.data.copy_(src.data if master is None else master.to(dst.dtype))
            else:
                dst.data.copy_(src.data if master is None else master.to(dst.dtype))
