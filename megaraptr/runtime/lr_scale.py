"""A one-step LR factor on a DeepSpeed optimizer (the stage re-warmup), with its undo."""
from __future__ import annotations

from typing import Callable, Optional


def scale_lr_once(optimizer, factor: float) -> Optional[Callable[[], None]]:
    """Multiply every param group's LR by ``factor``; returns an undo for the case no LR
    scheduler overwrites it after the step (None when ``factor`` is 1)."""
    if factor == 1.0:
        return None
    saved = [(g, g["lr"], g["lr"] * factor) for g in optimizer.param_groups]
    for group, _, scaled in saved:
        group["lr"] = scaled

    def undo():
        for group, lr, scaled in saved:
            if group["lr"] == scaled:  # a scheduler that stepped owns the LR now
                group["lr"] = lr
    return undo
