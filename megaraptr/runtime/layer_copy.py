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

Optimizer state (``"stacking": {"optimizer_state": ...}``): the new layers have never been
updated (they did not exist, and under ``"skipped_layers": "freeze"`` an absent layer gets no
optimizer step), so by default (``"fresh"``) they start with none: Adam's moments are zero and
its bias correction counts from their first update, while the source layers keep theirs.
``"copy"`` gives each new layer its source layer's state (:func:`copy_optimizer_state`),
``"reset_all"`` drops every layer's (:func:`reset_optimizer_state`). Both work on the basic
(torch) optimizer's state, which every DeepSpeed wrapper keys by the tensors of a parameter
group's ``"params"`` (the parameters under ZeRO-0 fp32, the group's flat fp32 partition under
ZeRO-1/2 and the bf16 optimizer, its sub-group partitions under ZeRO-3); a layer and its copy
have the same shapes in the same order, so their holders have the same layout on every rank.
The growth is a function of the step, so a resumed run grows at the same step, and a
checkpoint taken after it holds the grown weights and state.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch

from megaraptr.runtime import compat
from megaraptr.runtime.zero.groups import GROUP_KEY


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


def state_holders(ds_optimizer, optimizer: torch.optim.Optimizer) -> Dict[int, List[list]]:
    """For each layer, the tensors that key its groups' optimizer state on this rank, one list
    per group in order: each group's ``"params"``, except under ZeRO-3, which puts a sub-group's
    flat fp32 partition into its group only while it steps (patch ``stacking_optimizer_state``).
    """
    if hasattr(ds_optimizer, "sub_group_to_group_id"):
        held: List[list] = [[] for _ in optimizer.param_groups]
        for sub, group_id in sorted(ds_optimizer.sub_group_to_group_id.items()):
            held[group_id].append(ds_optimizer.fp32_partitioned_groups_flat[sub])
    else:
        held = [list(g["params"]) for g in optimizer.param_groups]
    layers: Dict[int, List[list]] = {}
    for group, tensors in zip(optimizer.param_groups, held):
        layers.setdefault(group.get(GROUP_KEY), []).append(tensors)
    return layers


@torch.no_grad()
def copy_optimizer_state(ds_optimizer, optimizer: torch.optim.Optimizer,
                         plan: Sequence[Tuple[int, int]]) -> int:
    """Give layer ``target`` the optimizer state of layer ``source`` for each (target, source):
    Adam's moments and step count, cloned; returns the number of state holders copied.

    Args:
        ds_optimizer: DeepSpeed's optimizer (``engine.optimizer``).
        optimizer: the basic (torch) optimizer it wraps, with megaraptr's per-layer groups.
        plan: (target, source) layer pairs of one growth.
    """
    layers, copied = state_holders(ds_optimizer, optimizer), 0
    for target, source in plan:
        pairs = [(t, s) for tg, sg in zip(layers.get(target, []), layers.get(source, []))
                 for t, s in zip(tg, sg)]
        if len(layers.get(target, [])) != len(layers.get(source, [])):
            raise ValueError(f"layer {target} and layer {source} have different parameter groups")
        for held, src in pairs:
            if held.shape != src.shape:
                raise ValueError(f"layer {source} and layer {target} differ in shape")
            state = optimizer.state.get(src)
            if state:  # a source that never stepped has no state: the target stays fresh
                optimizer.state[held] = {k: v.clone() if torch.is_tensor(v) else v
                                         for k, v in state.items()}
                copied += 1
    return copied


def reset_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Drop every layer's optimizer state: each group's next update starts from zero moments
    and step 0, as at the start of training."""
    optimizer.state.clear()


def grow(ds_engine, blocks: Sequence[torch.nn.Module], copies: Sequence[Tuple[int, int]],
         optimizer_state: str, freezer, patches: dict) -> None:
    """Stacking's growth: :func:`copy_layers`, then the new layers' optimizer state as
    ``"stacking": {"optimizer_state"}`` says ("fresh", "copy" or "reset_all")."""
    copy_layers(ds_engine, blocks, copies)
    if optimizer_state == "fresh" or freezer is None:
        return
    basic = ds_engine.basic_optimizer
    compat.require(patches, "stacking_optimizer_state")
    if optimizer_state == "copy":
        copy_optimizer_state(ds_engine.optimizer, basic, copies)
    else:
        reset_optimizer_state(basic)
    freezer.forget_state()  # DeepSpeed re-links its state views after the next update
