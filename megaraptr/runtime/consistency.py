"""Cheap cross-rank check that every rank trains the same subnetwork.

Ranks never exchange masks: each derives the step's mask from (seed, step). A rank with
another seed or schedule would silently corrupt ZeRO-1/2 gradients, so every
``consistency_check_interval`` steps (and on the first step) each rank reduces one 63-bit key
of (seed, schedule fingerprint, step, mask) with MAX over ``[key, -key]``: one tiny
all-reduce, before the step's forward. Any disagreement stops every rank with
:class:`RankMismatchError` before a corrupted update is applied.
"""
from __future__ import annotations

import hashlib
import struct

import torch

from megaraptr.core.mask import LayerMask
from megaraptr.errors import RankMismatchError


def subnetwork_key(seed: int, fingerprint: str, step: int, mask: LayerMask) -> int:
    """A 63-bit key of everything that decides a step's subnetwork."""
    payload = struct.pack("<QQ", seed & 0xFFFFFFFFFFFFFFFF, step) + fingerprint.encode() + \
        mask.to_bytes()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") >> 1


def due(step: int, interval: int) -> bool:
    """Whether step ``step`` (1-based) is checked: the first, then every ``interval``."""
    return interval > 0 and (step == 1 or step % interval == 0)


def check_same_subnetwork(*, seed: int, fingerprint: str, step: int, mask: LayerMask,
                          device, group=None) -> None:
    """All-reduce the step's key; raise on every rank if any rank differs.

    Raises:
        RankMismatchError: naming this rank's step, layers and seed.
    """
    from deepspeed import comm as dist

    key = subnetwork_key(seed, fingerprint, step, mask)
    both = torch.tensor([key, -key], dtype=torch.int64, device=device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    high, low = int(both[0]), -int(both[1])
    if high != key or low != key:
        raise RankMismatchError(
            f"rank {dist.get_rank()}: ranks disagree on the subnetwork of step {step} (this rank "
            f"runs layers {list(mask.active_ids)} with raptr seed {seed}, schedule {fingerprint}); "
            "every rank must use the same raptr seed and schedule")
