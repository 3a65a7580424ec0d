"""What the ZeRO optimizers need for skipped layers: per-layer groups and the freeze policy.

``"skipped_layers": "freeze"`` means that on a step where a layer is skipped its weights (low
precision and fp32 master), its optimizer state (Adam moments and step count) and its weight
decay do not move, and the optimizer spends no work on it. megaraptr gets this without
touching DeepSpeed's code paths:

1. :func:`layer_param_groups` splits the optimizer's parameter groups so that each group holds
   the parameters of at most one block, tagged ``group["raptr_layer"] = layer_id`` (-1 for
   embeddings, head and anything shared). DeepSpeed keeps one flat fp32 partition per group
   under ZeRO-1/2 and the bf16 optimizer, so a group is exactly one layer's slice.
2. :class:`FrozenLayers` wraps the *basic* (torch) optimizer's ``step``: groups of the step's
   skipped layers are left out of ``param_groups`` for that call. Every DeepSpeed wrapper
   (ZeRO-0 fp32, the bf16 and fp16 optimizers, ZeRO-1/2, which steps one group at a time)
   ends in that call, then copies the unchanged fp32 master back into the model weights.
   The step count of each group is its own, so Adam's bias correction stays per layer.

``"momentum"`` leaves everything to DeepSpeed: skipped layers get zero gradients and the
optimizer still applies momentum and weight decay to them.

ZeRO-3 keeps each parameter's reduced gradient in a persistent partition buffer and only
overwrites the buffers of parameters that received a gradient, so a skipped layer's buffer
still holds the gradient of the last step in which it ran: DeepSpeed would apply it again and
count it in the clipping norm. :func:`clear_stale_zero3_grads` zeroes those partitions before
every optimizer step (both policies), which makes ZeRO-3 follow the ZeRO-0 trajectory.

Under both policies the wrapper also mends a DeepSpeed 0.19.8 gap: ZeRO-1/2 and the bf16
optimizer link their per-parameter views of the optimizer state (``safe_get_full_optimizer_
state``, used to inspect or move Adam moments) once, right after the *first group's* first
step, when later groups have no state yet; with one group per layer most layers would never be
linked. Whenever a group is stepped for the first time, the wrapper asks DeepSpeed to link again
(patch ``hp_state_relink`` in :mod:`megaraptr.runtime.compat`).
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import torch
from torch import nn

from megaraptr.runtime import compat

NOT_A_LAYER = -1
GROUP_KEY = "raptr_layer"


def _as_groups(model: nn.Module, model_parameters) -> List[dict]:
    if model_parameters is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    items = list(model_parameters)
    if items and isinstance(items[0], dict):
        return [dict(g, params=list(g["params"])) for g in items]
    return [{"params": items}]


def layer_param_groups(model: nn.Module, blocks: Sequence[nn.Module],
                       model_parameters: Optional[Iterable] = None) -> List[dict]:
    """Split parameter groups by block and tag each with its layer id.

    Args:
        model: the model holding ``blocks``.
        blocks: the marked blocks (``megaraptr.core.block.find_blocks``).
        model_parameters: None (all trainable parameters), an iterable of parameters, or a list
            of group dicts (their options, e.g. weight_decay, are kept per split group).

    Returns:
        Group dicts; each holds the parameters of one layer, or of no layer (tag -1).
    """
    owner = {}
    for block in blocks:
        for param in block.parameters():
            owner[id(param)] = NOT_A_LAYER if id(param) in owner else block.layer_id
    split = []
    for group in _as_groups(model, model_parameters):
        by_layer = {}
        for param in group["params"]:
            by_layer.setdefault(owner.get(id(param), NOT_A_LAYER), []).append(param)
        for layer_id in sorted(by_layer):
            split.append(dict(group, params=by_layer[layer_id], **{GROUP_KEY: layer_id}))
    return split


def has_layer_groups(optimizer: torch.optim.Optimizer) -> bool:
    return all(GROUP_KEY in g for g in optimizer.param_groups)


_MOVING_PARTS = ("cpu_offload", "offload_optimizer", "swap_optimizer", "use_muon", "zenflow",
                 "torch_autocast_gradscaler", "has_moe_layers")


def partition_layers(ds_optimizer) -> Optional[List[int]]:
    """The layer id of each flat partition of a plain ZeRO optimizer, in DeepSpeed's order.

    A partition is a parameter group under ZeRO-1/2 (``bit16_groups``) and a sub-group under
    ZeRO-3 (``fp16_groups``). None for anything else: ZeRO-0, and ZeRO configurations with more
    moving parts (offload, Muon, ZenFlow, autocast's grad scaler, MoE, model- or pipeline-
    replicated parameters), which megaraptr leaves to DeepSpeed's own step and norm.
    """
    basic = getattr(ds_optimizer, "optimizer", None)
    if basic is None or any(getattr(ds_optimizer, name, False) for name in _MOVING_PARTS):
        return None
    if "muon" in type(basic).__name__.lower():  # ZeRO-1/2 has no use_muon flag: DeepSpeed's
        return None  # own Muon test (_is_muon_group) looks at the optimizer's class name
    if getattr(ds_optimizer, "model_parallel_world_size", 1) not in (None, 1):
        return None
    if hasattr(ds_optimizer, "sub_group_to_group_id"):  # ZeRO-3
        partitions = ds_optimizer.fp16_groups
        groups = [basic.param_groups[ds_optimizer.sub_group_to_group_id[i]]
                  for i in range(len(partitions))]
    elif hasattr(ds_optimizer, "bit16_groups"):  # ZeRO-1/2
        partitions, groups = ds_optimizer.bit16_groups, list(basic.param_groups)
    else:
        return None
    if len(groups) != len(partitions) or any(getattr(p, "ds_pipe_replicated", False)
                                             for part in partitions for p in part):
        return None
    return [group.get(GROUP_KEY, NOT_A_LAYER) for group in groups]


class FrozenLayers:
    """Leave skipped layers' parameter groups out of the basic optimizer's step.

    Args:
        basic_optimizer: the torch optimizer DeepSpeed wraps (``engine.basic_optimizer``).
        ds_optimizer: DeepSpeed's wrapper (``engine.optimizer``); told to re-link its
            optimizer-state views when a group is stepped for the first time.
        patches: where the re-link patch's outcome is recorded
            (``RaptrEngine.deepspeed_patches``).
    """

    def __init__(self, basic_optimizer: torch.optim.Optimizer, ds_optimizer=None,
                 patches: Optional[dict] = None):
        if not has_layer_groups(basic_optimizer):
            raise ValueError('"skipped_layers": "freeze" needs per-layer parameter groups: build '
                             "the optimizer from megaraptr.layer_param_groups(model, ...)")
        self.frozen: frozenset = frozenset()
        self._optimizer = basic_optimizer
        self._ds_optimizer = ds_optimizer
        self._stateless = {id(g) for g in basic_optimizer.param_groups}
        """Groups not yet holding optimizer state (their first step needs a re-link)."""
        self._relink = hasattr(ds_optimizer, "_hp_optimizer_states_linked") and \
            compat.guard(patches, "hp_state_relink")
        """Whether to re-link (ZeRO-1/2 and bf16 optimizers, on a DeepSpeed that matches)."""
        self._step = basic_optimizer.step
        basic_optimizer.step = self._filtered_step

    def forget_state(self) -> None:
        """Every group holds optimizer state anew from its next update (after a copy or a reset
        of the state): DeepSpeed's per-parameter views are linked again then."""
        self._stateless = {id(g) for g in self._optimizer.param_groups}

    def set_frozen(self, layer_ids: Iterable[int]) -> None:
        """Layers whose groups the next optimizer step leaves alone."""
        self.frozen = frozenset(layer_ids)

    def _filtered_step(self, *args, **kwargs):
        opt = self._optimizer
        groups = opt.param_groups
        keep = [g for g in groups if g.get(GROUP_KEY, NOT_A_LAYER) not in self.frozen]
        fresh = [g for g in keep if id(g) in self._stateless and g["params"]] \
            if self._stateless else []
        if len(keep) == len(groups):
            out = self._step(*args, **kwargs)
        else:
            opt.param_groups = keep
            try:
                out = self._step(*args, **kwargs)
            finally:
                opt.param_groups = groups
        stepped = [g for g in fresh if all(opt.state.get(p) for p in g["params"])]
        self._stateless.difference_update(id(g) for g in stepped)
        if stepped and self._relink:
            # DeepSpeed links per-parameter views of the optimizer state once, after the first
            # step; a group first stepped later (frozen until now) needs linking again.
            self._ds_optimizer._hp_optimizer_states_linked = False
        return out


def clear_stale_zero3_grads(ds_optimizer, params: Sequence[torch.nn.Parameter], *,
                            private: bool = True) -> None:
    """Zero this rank's reduced-gradient partitions of ``params`` (skipped layers) under ZeRO-3.

    Call between the last backward of an optimizer step and ``engine.step()``.

    Args:
        private: zero the partitions in place, found through a private DeepSpeed method, in
            one foreach call (patch ``zero3_stale_grads``); else through DeepSpeed's public
            ``safe_set_local_grad``, one zero tensor per parameter.
    """
    if not private:
        from deepspeed.utils import safe_set_local_grad

        for param in params:
            if param.requires_grad:
                safe_set_local_grad(param, torch.zeros(param.ds_tensor.numel(),
                                                       device=param.ds_tensor.device))
        return
    buffers = []
    for param in params:
        if param.requires_grad:
            grad, _ = ds_optimizer._get_fp32_grad_state_partition(param=param,
                                                                  release_swap_buffers=False)
            buffers.append(grad)
    if buffers:
        torch._foreach_zero_(buffers)
