"""Evaluations beside the val split: ``megaraptr.train --extra-eval NAME=DIR`` (repeatable).

Each ``DIR`` is prepared data made with the training data's tokenizer (same kind, same
vocabulary; :func:`megaraptr.data.eval_sets.prepare_eval_set` makes one from any text, and
:func:`megaraptr.data.eval_sets.hold_out_source` the text of a corpus source held out of
training). At every evaluation the full model is also evaluated on the first
``--eval-sequences`` sequences of each ``DIR``'s val split, packed and masked exactly like the
val split's; the losses go to the run's history (``extra_eval``: name -> [[step, loss], ...]),
TensorBoard (``eval/<name>_loss``) and the summary.
"""
from __future__ import annotations

import argparse
import os
from typing import Callable, Dict, List, Tuple

from megaraptr.data import make_batches, resolve_data
from megaraptr.errors import DataError
from megaraptr.runtime import monitor


def extra_eval_arg(text: str) -> Tuple[str, str]:
    """argparse type of ``--extra-eval``: ``NAME=DIR`` with an existing ``DIR``."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {text!r}")
    if not os.path.isfile(os.path.join(path, "index.json")):
        raise argparse.ArgumentTypeError(f"{path}: not a prepared data folder (no index.json)")
    return name, path


class ExtraEvals:
    """The extra held-out sets of one run, on the engine's device."""

    def __init__(self, specs: List[Tuple[str, str]], data, *, seq_len: int, micro_batch: int,
                 sequences: int, dp_rank: int, dp_size: int, to_device: Callable):
        self.sets: Dict[str, list] = {}
        for name, path in specs or []:
            extra = resolve_data(path, kind=data.kind, needed_by=f"--extra-eval {name}")
            if extra.vocab_size != data.vocab_size:
                raise DataError(f"--extra-eval {name}: {path} has vocabulary {extra.vocab_size}, "
                                f"the training data {data.vocab_size}; allowed: data prepared "
                                "with the training data's tokenizer.json")
            batches = make_batches(extra, seq_len=seq_len, micro_batch_size=1, dp_rank=dp_rank,
                                   dp_size=dp_size)
            self.sets[name] = to_device(batches.eval_batches(sequences, micro_batch))

    def evaluate(self, engine, step: int, curves: Dict[str, list]) -> None:
        """Evaluate every set at ``step``; append [step, loss] to ``curves[name]`` (the run
        history's ``extra_eval``)."""
        for name, batches in self.sets.items():
            loss = engine.evaluate(batches)
            curves.setdefault(name, []).append([step, loss])
            monitor.write(engine, [(f"eval/{name}_loss", loss, step)])

    @staticmethod
    def summary(curves: Dict[str, list]) -> dict:
        """The summary's entries: every curve and each set's final loss."""
        return {"extra_eval_history": curves,
                "final_extra_eval_loss": {n: c[-1][1] for n, c in curves.items() if c}}
