"""The block contract, checked once in a real step: every skipped block took its skip branch.

``megaraptr.initialize`` already refuses a marked block whose forward is not skippable
(:func:`megaraptr.core.block.check_block_contract`). That cannot see a block whose decorated
forward is bypassed (called through another method, a hook that runs the layer anyway): it
would still run while "skipped", training something else and saving nothing. On the first
step whose subnetwork skips layers, :class:`SkipProbe` notes each skipped block's skip count
(``block.raptr_skips``) before the step and checks after it that every count grew; every rank
agrees through one all-reduce (all ranks reach that step together: the mask is the same
everywhere), and a block that ran anyway stops the run with one line. Then it is off: no host
work on any later step.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

from megaraptr.core.block import unskipped
from megaraptr.core.mask import LayerMask
from megaraptr.errors import ConfigError


class SkipProbe:
    """Arm on the first skipping step (:meth:`arm`), check after it (:meth:`verify`).

    Args:
        blocks: this rank's marked blocks (one pipeline stage's, or all).
        device: where the one flag of the all-reduce lives.
    """

    def __init__(self, blocks: Sequence[nn.Module], device):
        self.blocks, self.device = list(blocks), device
        self.done = False
        self._armed: Optional[tuple] = None

    def arm(self, mask: LayerMask) -> None:
        """Before a step: note the skip counts when this is the first step that skips."""
        if self.done or not mask.skipped_ids:  # the same decision on every rank
            return
        skipped = [b for b in self.blocks if not mask.active[b.layer_id]]
        self._armed = (skipped, [b.raptr_skips for b in skipped])

    def verify(self, step: int) -> None:
        """After the step: every skipped block took its skip branch, on every rank.

        Raises:
            ConfigError: naming the block that ran (on its rank; the others say another did).
        """
        if self._armed is None:
            return
        skipped, before = self._armed
        self._armed, self.done = None, True
        ran: List[nn.Module] = unskipped(skipped, before)
        flag = torch.tensor([0 if ran else 1], dtype=torch.int64, device=self.device)
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        if int(flag) == 1:
            return
        if ran:
            cls = type(ran[0])
            what = f"{cls.__module__}.{cls.__qualname__} (layer {ran[0].layer_id})"
        else:
            what = "a block on another rank"
        raise ConfigError("model", f"{what} was skipped on step {step} but its forward ran "
                          "anyway (its skip branch never ran): call the block itself, whose "
                          "forward is decorated with @megaraptr.skippable, not another method")
