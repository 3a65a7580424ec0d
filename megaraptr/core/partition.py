"""Partitions of the layers into pipeline stages, and each pipeline stage's quota of layers.

Under pipeline parallelism the L transformer layers are split into S contiguous pipeline
stages; pipeline stage s holds layers ``[b_s, b_{s+1})`` of a :data:`Partition`
``(0 = b_0 < b_1 < ... < b_S = L)``. ``balanced`` sampling (:mod:`megaraptr.core.sampler`)
runs about its quota q_s = f_s + p (n_s - f_s) on each pipeline stage (f_s of its n_s layers
fixed). Choosing partitions from a cost model is planning (:mod:`megaraptr.planning.balance`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError

Partition = Tuple[int, ...]
"""Pipeline-stage boundaries (0, b_1, ..., L): pipeline stage s holds layers [b_s, b_{s+1})."""


def check_partition(parts: Sequence[int], num_layers: int,
                    num_stages: Optional[int] = None) -> Partition:
    """Return ``parts`` as a Partition, or raise ValueError if it does not split the layers.

    Args:
        parts: boundaries 0 = b_0 < ... < b_S = num_layers.
        num_layers: the model's L.
        num_stages: the expected S, if known.
    """
    parts = tuple(int(b) for b in parts)
    if len(parts) < 2 or parts[0] != 0 or parts[-1] != num_layers or \
            any(b >= c for b, c in zip(parts, parts[1:])):
        raise ValueError(f"partition {list(parts)} does not split {num_layers} layers into "
                         "non-empty contiguous pipeline stages (0 = b_0 < b_1 < ... < b_S = L)")
    if num_stages is not None and len(parts) != num_stages + 1:
        raise ValueError(f"partition {list(parts)} has {len(parts) - 1} pipeline stages, "
                         f"expected {num_stages}")
    return parts


def check_sizes(num_layers: int, num_stages: int) -> None:
    """One-line error unless every one of ``num_stages`` pipeline stages can hold a layer."""
    if num_stages < 1 or num_stages > num_layers:
        raise ConfigError("pipeline_stages", f"{num_stages} pipeline stages for {num_layers} "
                          f"layers; allowed: 1 to {num_layers} (every stage holds a layer)")


def uniform_partition(num_layers: int, num_stages: int) -> Partition:
    """DeepSpeed's ``partition_method="uniform"`` for L layers: the first L mod S pipeline
    stages hold one layer more than the others."""
    check_sizes(num_layers, num_stages)
    size, extra = divmod(num_layers, num_stages)
    return tuple(s * size + min(s, extra) for s in range(num_stages + 1))


def quotas(stage: Stage, parts: Partition) -> Tuple[float, ...]:
    """Expected active layers of each pipeline stage in ``stage``: f_s + p (n_s - f_s).

    A full schedule stage gives n_s; values within 1e-9 of a whole number are snapped to it,
    so that ``balanced`` sampling never rounds a whole quota down by accident.
    """
    parts = check_partition(parts, stage.num_layers)
    fixed, prob = set(stage.fixed), 1.0 if stage.is_full else stage.keep_prob
    out = []
    for lo, hi in zip(parts, parts[1:]):
        held = sum(1 for i in range(lo, hi) if i in fixed)
        q = held + prob * (hi - lo - held)
        out.append(float(round(q)) if abs(q - round(q)) < 1e-9 else q)
    return tuple(out)
