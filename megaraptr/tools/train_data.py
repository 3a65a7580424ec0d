"""The data of a ``megaraptr-train`` run: the prepared corpus and how it is cut into batches.

:func:`load_data` resolves ``--data`` (prepared shards, raw files prepared on the fly, or the
built-in sample) for the model's data kind, and under ``--objective ul2`` puts UL2's collator
on top (its rows and its extra tokens, :mod:`megaraptr.data.ul2`). It runs before the process
group exists; the batches themselves are cut once the engine says this rank's share.
:func:`data_summary` is what the run reads, for the log and the summary JSON.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Tuple

from megaraptr.data import PreparedData, make_batches, resolve_data
from megaraptr.data.ul2 import UL2Batches, UL2Collator, paper_mixture
from megaraptr.tools.preflight import RunPlan


@dataclasses.dataclass(frozen=True)
class RunData:
    """The prepared corpus of a run and its batch source."""

    prepared: PreparedData
    batch_source: Callable
    """``batch_source(prepared, seq_len=, seed=, micro_batch_size=, grad_accum=, dp_rank=,
    dp_size=)``: :func:`megaraptr.data.make_batches`, or UL2's batches."""
    vocab_size: int
    """The model's vocabulary: the data's, plus UL2's tokens under --objective ul2."""
    notes: Tuple[str, ...]
    """What the data adds to the run's notes (inputs, split sizes, how val was held out; UL2's
    mixture)."""


def load_data(plan: RunPlan) -> RunData:
    """Resolve --data for the run's model and objective (one-line DataError when it cannot)."""
    flags = plan.flags
    data = resolve_data(flags.data, kind=plan.data_kind, vocab_size=flags.vocab_size,
                        tokenizer_file=flags.tokenizer)
    described = (data.describe(),)  # inputs, split sizes, how val was held out
    if flags.objective != "ul2":
        return RunData(data, make_batches, data.vocab_size, described)
    ul2 = UL2Collator(data.vocab_size, flags.seq_len, paper_mixture(flags.ul2_s_share))
    return RunData(data, functools.partial(UL2Batches, collator=ul2), ul2.vocab.size,
                   described + (ul2.describe(),))


def data_summary(data: RunData, batches, train_steps: int) -> dict:
    """What the run reads (the summary JSON's ``data``): the cache folder, the tokenizer and
    its vocabulary, tokens per split, train sequences, and passes over them in ``train_steps``."""
    prepared = data.prepared
    per_step = batches.global_batch_sequences
    return {"cache": str(prepared.path), "tokenizer": prepared.tokenizer_kind,
            "vocab_size": data.vocab_size, "train_tokens": prepared.num_train_tokens,
            "val_tokens": prepared.num_val_tokens, "seq_len": batches.seq_len,
            "train_sequences": batches.num_train_sequences, "sequences_per_step": per_step,
            "passes": train_steps * per_step / batches.num_train_sequences}


def describe_data(summary: dict, train_steps: int) -> str:
    """:func:`data_summary` as one log line."""
    return (f"data summary: cache {summary['cache']}; tokenizer {summary['tokenizer']} "
            f"({summary['vocab_size']:,} ids); tokens: train {summary['train_tokens']:,}, val "
            f"{summary['val_tokens']:,}; {summary['train_sequences']:,} train sequences of "
            f"{summary['seq_len']}; {train_steps:,} steps x {summary['sequences_per_step']:,} "
            f"sequences = {summary['passes']:.2f} passes over the train split")
