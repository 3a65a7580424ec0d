"""Optimizer state per named parameter, independent of how DeepSpeed flattens or places it.

DeepSpeed's optimizer checkpoints are flat partitions tied to one layout: loading one into a
pipeline with a different layer partition fails (docs: ``load_optimizer_states=False`` is the
only way, and it loses Adam's moments). megaraptr re-partitions a pipeline at stage
boundaries, so it writes its own copy of what the optimizer holds, keyed by the pipeline
module's parameter names (``"<global spec index>.<name>"``, ``"tied_modules.embed.weight"``),
which do not depend on the partition:

- ``fp32``: the master weight (ZeRO-1 and the bf16 optimizer: the parameter's ``_hp_mapping``
  fragment, gathered over the data-parallel group; plain fp32: the parameter);
- Adam's ``exp_avg`` and ``exp_avg_sq`` (absent for a layer that has never been updated);
- ``step``: the step count of the parameter's group (per layer under ``"freeze"``);
- ``lr``: the group's current learning rate (DeepSpeed's LR scheduler writes it into the
  groups only at its next step, and without the optimizer checkpoint nothing else would).

:func:`export_state` must run on every rank of a stage (the gathers are collective); the
caller writes the result from data-parallel rank 0. :func:`import_state` runs on every rank
after the new engine is built, and makes every parameter's optimizer state exactly the saved
one: the moments, the step count and the fp32 master, bit for bit.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple

import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


def _groups(ds_optimizer, basic) -> List[Tuple[dict, List[torch.nn.Parameter], object]]:
    """(basic group, its model parameters, the tensor holding the group's optimizer state)."""
    for name in ("bit16_groups", "bf16_groups"):  # ZeRO-1/2, the bf16 optimizer
        lists = getattr(ds_optimizer, name, None)
        if lists is not None:
            return [(g, list(lp), g["params"][0]) for g, lp in zip(basic.param_groups, lists)]
    return [(g, list(g["params"]), None) for g in basic.param_groups]  # plain fp32


def _basic(ds_engine):
    return ds_engine.basic_optimizer if ds_engine.basic_optimizer is not None \
        else ds_engine.optimizer


def _mapped(param) -> bool:
    return getattr(param, "_hp_mapping", None) is not None or hasattr(param, "get_full_hp_param")


def _step_of(state: dict) -> Optional[float]:
    step = state.get("step")
    return None if step is None else float(step)


def _named(ds_engine) -> Iterator[Tuple[str, torch.nn.Parameter]]:
    return ((n, p) for n, p in ds_engine.module.named_parameters() if p.requires_grad)


@torch.no_grad()
def export_state(ds_engine) -> Dict[str, dict]:
    """Every trainable parameter's fp32 master, Adam moments and step count, by name (CPU)."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    ds_optimizer, basic = ds_engine.optimizer, _basic(ds_engine)
    if hasattr(ds_optimizer, "_lazy_init_hp_params_optimizer_state"):
        ds_optimizer._hp_optimizer_states_linked = False
        ds_optimizer._lazy_init_hp_params_optimizer_state()
    step_of, lr_of = {}, {}
    for group, params, flat in _groups(ds_optimizer, basic):
        for param in params:
            holder = flat if flat is not None else param
            step_of[id(param)] = _step_of(basic.state.get(holder, {}))
            lr_of[id(param)] = float(group["lr"])
    out = {}
    for name, param in _named(ds_engine):
        has_state = step_of.get(id(param)) is not None
        entry = {"step": step_of.get(id(param)), "lr": lr_of.get(id(param))}
        if _mapped(param):
            entry["fp32"] = safe_get_full_fp32_param(param).detach().float().cpu().clone()
            for key in MOMENTS:  # collective: every rank calls, whether or not it has state
                value = safe_get_full_optimizer_state(param, key) if has_state else None
                if value is not None:
                    entry[key] = value.detach().float().cpu().clone()
        else:
            entry["fp32"] = param.detach().float().cpu().clone()
            state = basic.state.get(param, {})
            for key in MOMENTS:
                if key in state:
                    entry[key] = state[key].detach().float().cpu().clone()
        out[name] = entry
    return out


def _fresh_state(tensor: torch.Tensor, group: dict) -> dict:
    on_device = group.get("fused") or group.get("capturable")
    return {"step": torch.zeros((), dtype=torch.float32,
                                device=tensor.device if on_device else "cpu"),
            "exp_avg": torch.zeros_like(tensor, memory_format=torch.preserve_format),
            "exp_avg_sq": torch.zeros_like(tensor, memory_format=torch.preserve_format)}


@torch.no_grad()
def import_state(ds_engine, saved: Dict[str, dict]) -> int:
    """Make this engine's optimizer state that of ``saved`` for every parameter found there.

    Returns the number of parameters restored. Raises KeyError for a local parameter that
    ``saved`` lacks (the checkpoint is of another model).
    """
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    ds_optimizer, basic = ds_engine.optimizer, _basic(ds_engine)
    groups = _groups(ds_optimizer, basic)
    params = dict(_named(ds_engine))
    missing = [n for n in params if n not in saved]
    if missing:
        raise KeyError(f"the saved optimizer state has no entry for {missing[:3]}")
    by_id = {id(p): n for n, p in params.items()}
    # Adam creates its state lazily at a group's first update; create it now (zeros, step 0:
    # what the first update would create) so that the saved moments have somewhere to go.
    for group, members, flat in groups:
        entries = [saved[by_id[id(p)]] for p in members if id(p) in by_id]
        step = next((e["step"] for e in entries if e["step"] is not None), None)
        lr = next((e["lr"] for e in entries if e.get("lr") is not None), None)
        if lr is not None:
            group["lr"] = lr
        for holder in ([flat] if flat is not None else members):
            if step is None:
                basic.state.pop(holder, None)
                continue
            state = basic.state.setdefault(holder, {})
            if not state:
                state.update(_fresh_state(holder, group))
            state["step"].fill_(step)
    if hasattr(ds_optimizer, "_lazy_init_hp_params_optimizer_state"):
        ds_optimizer._hp_optimizer_states_linked = False
        ds_optimizer._lazy_init_hp_params_optimizer_state()
    for name, param in params.items():
        entry = saved[name]
        if _mapped(param):
            safe_set_full_fp32_param(param, entry["fp32"].to(param.device))
            for key in MOMENTS:
                if key in entry:
                    safe_set_full_optimizer_state(param, entry[key].to(param.device), key)
            param.data.copy_(entry["fp32"].to(param.device, param.dtype))
        else:
            param.data.copy_(entry["fp32"].to(param.device, param.dtype))
            state = basic.state.get(param)
            for key in MOMENTS:
                if state is not None and key in entry:
                    state[key].copy_(entry[key].to(param.device))
    return len(params)
