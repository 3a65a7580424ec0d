"""Training data for megaraptr: raw text -> tokenizer + memory-mapped token shards -> packed,
deterministic per-step batches.

Modules: ``sources`` (reading inputs), ``tokenizer`` (WordPiece / byte-level BPE), ``shards``
(token files), ``prepared`` (``index.json`` and ``PreparedData``), ``prepare`` (raw -> prepared),
``cache`` (``prepare_cached``), ``resolve`` (``--data`` -> prepared), ``masking`` and
``batches`` (per-step batches; these import torch, so they load on first use), ``ul2`` (UL2's
mixture of denoisers, ``--objective ul2``; imports torch), ``make_sample``
(builds the built-in sample in ``sample/``). Command line: ``python -m megaraptr.data``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from megaraptr.data.cache import prepare_cached
from megaraptr.data.prepare import prepare
from megaraptr.data.prepared import PreparedData, load_prepared
from megaraptr.data.resolve import SAMPLE_DIR, resolve_data

if TYPE_CHECKING:
    from megaraptr.data.batches import CausalBatches, MLMBatches, StepBatches, make_batches

_LAZY = {"StepBatches", "MLMBatches", "CausalBatches", "make_batches"}

__all__ = ["prepare", "prepare_cached", "load_prepared", "resolve_data", "PreparedData",
           "SAMPLE_DIR", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    """Loads the torch-dependent batch classes on first access."""
    if name in _LAZY:
        from megaraptr.data import batches

        return getattr(batches, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
