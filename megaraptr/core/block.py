"""The model-side contract of RAPTR: skippable blocks with a global layer id.

A transformer block takes part by being marked (:func:`mark_block`) and by decorating its
``forward`` with :func:`skippable`:

- it knows its global layer id (``block.layer_id``), the same on every pipeline stage;
- while training, an inactive block returns its input and runs no kernel at all;
- an active block multiplies its residual branches by :func:`residual_scale`;
- in eval mode every block runs, unscaled: evaluation is always the full model (under gradual
  stacking, the model that exists: blocks not yet ``raptr_present`` are skipped there too);
- nothing is renamed or wrapped, so state_dict keys are the same with RAPTR on or off.

The engine calls :func:`set_layer_mask` once per optimizer step; it is the only setter. The
mask lives in two plain attributes of each block (not buffers, not in the state_dict).
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Sequence

from torch import nn

from megaraptr.core.mask import LayerMask


def mark_block(block: nn.Module, layer_id: int) -> nn.Module:
    """Give ``block`` its global layer id and an all-active mask; returns the block."""
    block.layer_id = int(layer_id)
    block.raptr_active = True
    block.raptr_scale = 1.0
    block.raptr_present = True
    return block


def is_block(module: nn.Module) -> bool:
    return isinstance(getattr(module, "layer_id", None), int) and hasattr(module, "raptr_active")


def find_blocks(model: nn.Module, *, partial: bool = False) -> List[nn.Module]:
    """The marked blocks of ``model`` in layer order (ids must be 0..L-1, each once; with
    ``partial``, the blocks of one pipeline stage: distinct ids, any subset)."""
    blocks = sorted((m for m in model.modules() if is_block(m)), key=lambda m: m.layer_id)
    ids = [b.layer_id for b in blocks]
    if partial and len(set(ids)) == len(ids) and all(i >= 0 for i in ids):
        return blocks
    if ids != list(range(len(ids))):
        raise ValueError(f"marked blocks must have layer ids 0..L-1 exactly once, got {ids}")
    return blocks


def set_layer_mask(blocks: Sequence[nn.Module], mask: Optional[LayerMask]) -> None:
    """Apply ``mask`` (None: everything active, scale 1) to blocks, matched by layer id.

    ``blocks`` may be a subset (the blocks of one pipeline stage); each block reads its own
    entry of the full-model mask.
    """
    for block in blocks:
        if mask is None:
            block.raptr_active, block.raptr_scale, block.raptr_present = True, 1.0, True
        else:
            block.raptr_active = mask.active[block.layer_id]
            block.raptr_scale = mask.scale[block.layer_id]
            block.raptr_present = True if mask.present is None else mask.present[block.layer_id]


def residual_scale(block: nn.Module) -> float:
    """The factor for the block's residual branches: 1 in eval mode."""
    return block.raptr_scale if block.training else 1.0


def is_skipped(block: nn.Module) -> bool:
    """Whether ``block`` runs nothing now: inactive while training (or not yet present)."""
    return not block.raptr_active and (block.training or not getattr(block, "raptr_present", True))


def skippable(forward: Callable) -> Callable:
    """Decorate a block's ``forward(self, hidden, ...)``: an inactive block returns ``hidden``."""

    @functools.wraps(forward)
    def wrapped(self, hidden, *args, **kwargs):
        if is_skipped(self):
            return hidden
        return forward(self, hidden, *args, **kwargs)

    return wrapped
