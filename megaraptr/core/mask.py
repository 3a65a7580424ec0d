"""A step's subnetwork (:class:`LayerMask`) and the running digest of the masks a run trained.

A mask says which layers run on one applied optimizer step and the residual scale of each. It
is a value: every rank derives the same one from (seed, step) (:mod:`megaraptr.core.sampler`),
and :meth:`LayerMask.to_bytes` is its canonical encoding for digests and cross-rank checks.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass(frozen=True)
class LayerMask:
    """Which layers run on a step, and the residual scale of each (0 for skipped layers)."""

    active: Tuple[bool, ...]
    scale: Tuple[float, ...]
    present: Optional[Tuple[bool, ...]] = None
    """Layers that exist in the model at this step (None: all); only stacking has absent ones,
    and evaluation skips them too."""

    @classmethod
    def full(cls, num_layers: int) -> "LayerMask":
        """The all-active mask: one shared object per depth, so that a step can tell in O(1)
        that the mask it is given is the one already applied."""
        return _full(cls, num_layers)

    # computed once per mask (a mask is a value: its fields never change)
    @functools.cached_property
    def num_active(self) -> int:
        return sum(self.active)

    @functools.cached_property
    def active_ids(self) -> Tuple[int, ...]:
        return tuple(i for i, on in enumerate(self.active) if on)

    @functools.cached_property
    def skipped_ids(self) -> Tuple[int, ...]:
        return tuple(i for i, on in enumerate(self.active) if not on)

    def to_bytes(self) -> bytes:
        """A canonical encoding, for digests and cross-rank checks."""
        return bytes(self.active) + struct.pack(f"<{len(self.scale)}d", *self.scale)

    def __str__(self) -> str:
        return "".join("#" if on else "." for on in self.active)


@functools.lru_cache(maxsize=None)
def _full(cls, num_layers: int) -> LayerMask:
    return cls((True,) * num_layers, (1.0,) * num_layers)


class MaskDigest:
    """A running SHA-256 over the (step, mask) pairs a run actually trained with."""

    def __init__(self, hexdigest: str = ""):
        self.hexdigest = hexdigest

    def update(self, step: int, mask: LayerMask) -> str:
        payload = self.hexdigest.encode() + struct.pack("<Q", step) + mask.to_bytes()
        self.hexdigest = hashlib.sha256(payload).hexdigest()
        return self.hexdigest


def subnetwork_key(seed: int, fingerprint: str, step: int, mask: LayerMask) -> int:
    """A 63-bit key of everything that decides a step's subnetwork (compared across ranks)."""
    payload = struct.pack("<QQ", seed & 0xFFFFFFFFFFFFFFFF, step) + fingerprint.encode() + \
        mask.to_bytes()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "little") >> 1
