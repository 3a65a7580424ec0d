"""A fused AdamW for the fast paths, chosen from the ds_config's optimizer block.

With ``"kernels"`` other than eager, an ``"Adam"``/``"AdamW"`` optimizer block that leaves the
implementation open (no ``"fused"``, ``"foreach"`` or ``"torch_adam": false``) becomes:

1. NVIDIA apex's ``FusedAdam`` on CUDA when apex is already importable (a client optimizer
   built from the same parameter groups; the block is removed from the config);
2. else torch's ``AdamW(fused=True)`` (``"torch_adam": true, "fused": true``) where torch has
   a fused kernel for the device (CUDA; CPU from torch 2.4);
3. else the block as it is.

An explicit ``"torch_adam": false`` keeps DeepSpeed's own FusedAdam (a JIT-built CUDA op; on
H100/H200 set ``TORCH_CUDA_ARCH_LIST=9.0``). All three keep ``"skipped_layers": "freeze"``
cheap: each steps only the parameter groups it is given, and megaraptr's FrozenLayers hands
it the groups of the layers that ran (:mod:`megaraptr.runtime.zero.groups`).
"""
from __future__ import annotations

import copy
from typing import Callable, Optional, Tuple

import torch

from megaraptr.kernels.select import KernelPlan

ADAM_TYPES = ("adam", "adamw")


def apex_fused_adam():
    """apex's ``FusedAdam`` class, or None when apex is not importable."""
    try:
        from apex.optimizers import FusedAdam
    except Exception:  # ImportError, or an apex built for another torch
        return None
    return FusedAdam


def torch_fused_adamw_supported(device: str) -> bool:
    """Whether ``torch.optim.AdamW(fused=True)`` runs on this device type."""
    try:
        param = torch.nn.Parameter(torch.zeros(1, device=device))
        torch.optim.AdamW([param], fused=True)
    except (RuntimeError, ValueError, TypeError):
        return False
    return True


def fused_optimizer(ds_config: dict, plan: KernelPlan,
                    client_optimizer=None) -> Tuple[dict, Optional[Callable], str]:
    """The optimizer of a fast path.

    Args:
        ds_config: the DeepSpeed config (not modified).
        plan: the resolved kernels.
        client_optimizer: what the caller passed to ``initialize`` (kept when given).

    Returns:
        (ds_config to use, client optimizer to use, a description of the choice).
    """
    block = ds_config.get("optimizer")
    if plan.mode == "eager" or client_optimizer is not None or not isinstance(block, dict):
        return ds_config, client_optimizer, "as configured"
    kind = str(block.get("type", "")).lower()
    params = dict(block.get("params") or {})
    if kind not in ADAM_TYPES or "fused" in params or params.get("foreach") or \
            params.get("torch_adam", None) is False:
        return ds_config, client_optimizer, "as configured"
    apex_adam = apex_fused_adam() if plan.device == "cuda" else None
    adam_w = kind == "adamw" or bool(params.pop("adam_w_mode", True))
    params.pop("torch_adam", None)
    params.pop("foreach", None)
    if apex_adam is not None:
        config = {k: v for k, v in ds_config.items() if k != "optimizer"}

        def build(groups):
            return apex_adam(groups, adam_w_mode=adam_w, **params)
        return config, build, "apex FusedAdam"
    if not torch_fused_adamw_supported(plan.device):
        return ds_config, client_optimizer, "as configured (no fused AdamW for this device)"
    config = copy.deepcopy(ds_config)
    config["optimizer"]["params"] = dict(config["optimizer"].get("params") or {},
                                         torch_adam=True, fused=True)
    return config, client_optimizer, "torch AdamW(fused=True)"
