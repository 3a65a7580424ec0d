"""Training data for megaraptr: raw text -> tokenizer + memory-mapped token shards -> packed,
deterministic per-step batches.

Modules: ``sources`` (reading inputs), ``tokenizer`` (WordPiece / byte-level BPE), ``split``
(the train/val split), ``shards`` (token files), ``vocab`` (token ids against the vocabulary),
``prepared`` (``index.json`` and ``PreparedData``), ``prepare`` (raw -> prepared),
``cache`` (``prepare_cached``), ``resolve`` (``--data`` -> prepared), ``masking`` and
``batches`` (per-step batches), ``ul2`` (UL2's mixture of denoisers, ``--objective ul2``),
``make_sample`` (builds the built-in sample in ``sample/``). Command line:
``python -m megaraptr.data``. User guide: docs/data.md.
"""
from __future__ import annotations

from megaraptr.data.batches import CausalBatches, MLMBatches, StepBatches, make_batches
from megaraptr.data.cache import prepare_cached
from megaraptr.data.prepare import prepare
from megaraptr.data.prepared import PreparedData, load_prepared
from megaraptr.data.resolve import SAMPLE_DIR, resolve_data

__all__ = ["prepare", "prepare_cached", "load_prepared", "resolve_data", "PreparedData",
           "SAMPLE_DIR", "StepBatches", "MLMBatches", "CausalBatches", "make_batches"]
