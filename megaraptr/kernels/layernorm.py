"""NVIDIA apex's FusedLayerNorm, used where apex is already importable (never required).

:func:`swap_layer_norms` turns ``nn.LayerNorm`` modules into :class:`ApexLayerNorm`, a subclass
with the same parameters and state-dict keys whose forward calls apex's fused kernel; it falls
back to ``nn.LayerNorm.forward`` under autocast or when input and weight dtypes differ (apex
would cast differently from torch there). Layer norms inside compiled blocks are left alone:
inductor fuses them itself, and apex's kernel would break the graph.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from torch import nn


def apex_layer_norm() -> Optional[Callable]:
    """apex's ``fused_layer_norm_affine``, or None when apex is not importable."""
    try:
        from apex.normalization.fused_layer_norm import fused_layer_norm_affine
    except Exception:  # ImportError, or an apex built for another torch
        return None
    return fused_layer_norm_affine


class ApexLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` computed by apex's fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = apex_layer_norm()
        if fused is None or x.dtype != self.weight.dtype or torch.is_autocast_enabled():
            return super().forward(x)
        return fused(x, self.weight, self.bias, self.normalized_shape, self.eps)


def swap_layer_norms(model: nn.Module, *, skip: Iterable[nn.Module] = ()) -> int:
    """Make every affine ``nn.LayerNorm`` of ``model`` outside ``skip`` (modules whose
    subtrees stay as they are) an :class:`ApexLayerNorm`; returns how many were swapped."""
    skipped = {id(m) for root in skip for m in root.modules()}
    count = 0
    for module in model.modules():
        if type(module) is nn.LayerNorm and module.elementwise_affine and \
                module.bias is not None and id(module) not in skipped:
            module.__class__ = ApexLayerNorm
            count += 1
    return count
