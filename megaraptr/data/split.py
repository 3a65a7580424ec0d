"""The train/val split of a prepare run: which documents are held out, and one line saying so.

Rule, in order:

1. Val inputs given (``--val-input``, or a directory holding ``train.<ext>`` and ``val.<ext>``,
   see sources.py): they are the val split, every other document is train.
2. Otherwise a document is val when the 64-bit BLAKE2b hash of its UTF-8 text, as a fraction of
   2**64, is below ``val_fraction`` (default 0.01; stable across machines and Python versions;
   identical documents land in the same split).
3. When that holds out nothing (a small corpus) but there are two or more documents, one
   document is held out: the one with the smallest hash among those no longer (in characters)
   than the average document. So the val split is at least one document, and at most one
   (with its identical copies, if any) holding at most 1/n of the text of n documents: never
   more than half, and less the more documents there are.
4. A single document cannot be split: preparing stops before tokenising with a one-line
   ``DataError`` saying what to give instead (more text or documents, or val inputs).

``val_fraction`` 0 asks for no val split at all (``python -m megaraptr.data prepare`` allows it;
training then stops at its first evaluation).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from megaraptr.errors import DataError

VAL_INPUTS, HASH, SMALLEST_HASH, NO_VAL = "val inputs", "hash", "smallest hash", "none"


def doc_hash(text: str) -> int:
    """The stable 64-bit hash that decides a document's split.

    Args:
        text: Document text.

    Returns:
        An integer in ``[0, 2**64)``.
    """
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Holdout:
    """Which train-input documents a prepare run holds out as val.

    Attributes:
        rule: ``VAL_INPUTS`` (none: the val inputs are the val split), ``HASH``,
            ``SMALLEST_HASH`` or ``NO_VAL``.
        cutoff: ``HASH``: a document is val when its hash is below this.
        chosen: ``SMALLEST_HASH``: the hash of the held-out document.
    """

    rule: str
    cutoff: int = 0
    chosen: int | None = None

    def is_val(self, text_hash: int) -> bool:
        """Whether a train-input document with this ``doc_hash`` goes to the val split."""
        if self.rule == SMALLEST_HASH:
            return text_hash == self.chosen
        return self.rule == HASH and text_hash < self.cutoff


def choose_holdout(hashes: Sequence[int], lengths: Sequence[int], val_fraction: float,
                   inputs: str, allowed: str) -> Holdout:
    """Fixes the hold-out split of train inputs without val inputs (rules 2-4 above).

    Args:
        hashes: ``doc_hash`` of every document, in order.
        lengths: Every document's length in characters, in the same order.
        val_fraction: Wanted share of documents held out, in ``[0, 1)``.
        inputs: Names the inputs, for the error message.
        allowed: What the inputs may be instead, for the error message.

    Returns:
        The hold-out.

    Raises:
        DataError: One document only, and ``val_fraction`` asks for a val split.
    """
    if val_fraction <= 0:
        return Holdout(NO_VAL)
    if len(hashes) < 2:
        raise DataError(f"data: {inputs}: 1 document is too few to hold out a val split; "
                        f"{allowed}")
    cutoff = int(val_fraction * 2**64)
    if min(hashes) < cutoff:
        return Holdout(HASH, cutoff=cutoff)
    total = sum(lengths)
    # length <= average, in integers: length * n <= total
    short = [h for h, n in zip(hashes, lengths) if n * len(lengths) <= total]
    return Holdout(SMALLEST_HASH, chosen=min(short))


def describe_split(index: dict[str, Any]) -> str:
    """One line on how a prepared directory's val split was made, with its size.

    Args:
        index: The directory's ``index.json`` content.

    Returns:
        E.g. ``"val split: 1 of 9 documents (2,310 of 20,587 tokens, 11.2%) held out: the one
        with the smallest document hash among those no longer than average, as none hashed
        below val_fraction 0.01"``.
    """
    splits, settings = index["splits"], index.get("settings", {})
    vd, vt = int(splits["val"]["documents"]), int(splits["val"]["tokens"])
    docs = vd + int(splits["train"]["documents"])
    tokens = vt + int(splits["train"]["tokens"])
    rule = index.get("split", {}).get("rule")
    fraction = settings.get("val_fraction")
    if rule is None:  # prepared before the rule was recorded
        if settings.get("held_out_by_hash"):
            return (f"val split: {vd:,} of {docs:,} documents ({vt:,} of {tokens:,} tokens) "
                    f"held out by document hash (val_fraction {fraction})")
        rule = VAL_INPUTS
    if rule == VAL_INPUTS:
        files = index.get("inputs", {}).get("val", [])
        more = f" and {len(files) - 1} more" if len(files) > 1 else ""
        return (f"val split: {vd:,} documents ({vt:,} tokens) from the val input "
                f"{files[0] if files else '?'}{more}")
    if rule == NO_VAL:
        return "val split: none (val_fraction 0)"
    share = f"{vd:,} of {docs:,} documents ({vt:,} of {tokens:,} tokens, " \
            f"{100 * vt / max(tokens, 1):.1f}%) held out"
    if rule == SMALLEST_HASH:
        return (f"val split: {share}: the one with the smallest document hash among those "
                f"no longer than average, as none hashed below val_fraction {fraction}")
    return f"val split: {share}: those whose document hash is below val_fraction {fraction}"
