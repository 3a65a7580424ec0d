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

Mistakes are loud: :func:`check_block_contract` (run by ``megaraptr.initialize`` before
anything is built) refuses a marked block whose forward is not skippable, and each skip counts
itself (``block.raptr_skips``), so the engine can check on the first step that skips layers that
every skipped block really took its skip branch.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Optional, Sequence

from torch import nn

from megaraptr.core.mask import LayerMask
from megaraptr.errors import ConfigError

SKIPPABLE = "raptr_skippable"
"""Set on a forward that returns its input when the block is skipped (:func:`skippable`)."""
DELEGATES = "raptr_skip_delegated"
"""A block class sets this True when its forward delegates to a skippable one (the pipeline's
block, which unpacks its activation tuple and calls the reference block's forward)."""


def mark_block(block: nn.Module, layer_id: int) -> nn.Module:
    """Give ``block`` its global layer id and an all-active mask; returns the block."""
    block.layer_id = int(layer_id)
    block.raptr_active = True
    block.raptr_scale = 1.0
    block.raptr_present = True
    block.raptr_skips = 0  # skip branches taken: counted, so a skip that ran anyway is caught
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
            self.raptr_skips += 1
            return hidden
        return forward(self, hidden, *args, **kwargs)

    setattr(wrapped, SKIPPABLE, True)
    return wrapped


def forwards_skippably(block: nn.Module) -> bool:
    """Whether calling ``block`` goes through a skippable forward (its own, an instance's, or
    one its class delegates to)."""
    forward = getattr(block.forward, "__func__", block.forward)
    return bool(getattr(forward, SKIPPABLE, False) or getattr(type(block), DELEGATES, False))


def check_block_contract(blocks: Sequence[nn.Module]) -> None:
    """Refuse a marked block whose forward is not skippable (it would run when skipped).

    Raises:
        ConfigError: naming the block's class and the decorator.
    """
    for block in blocks:
        if not forwards_skippably(block):
            cls = type(block)
            raise ConfigError("model", f"{cls.__module__}.{cls.__qualname__} (layer "
                              f"{block.layer_id}) is marked with megaraptr.mark_block but its "
                              "forward is not decorated with @megaraptr.skippable, so a skipped "
                              "layer would still run; allowed: decorate the forward with "
                              "@megaraptr.skippable")


def unskipped(blocks: Sequence[nn.Module], skips_before: Sequence[int]) -> List[nn.Module]:
    """Of ``blocks`` (skipped on a step), those whose skip count did not grow since
    ``skips_before``: their forward ran although they were skipped."""
    return [b for b, n in zip(blocks, skips_before) if b.raptr_skips <= n]
