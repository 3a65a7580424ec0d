"""BERT-style masked-LM corruption of one packed sequence, as a pure function of its random key.

Of the sequence's non-special positions, ``round(probability * n)`` (at least one) are chosen
without replacement; each chosen position gets ``[MASK]`` with probability 0.8, a random
non-special token with probability 0.1, and keeps its token otherwise. Labels hold the original
token at chosen positions and ``-100`` (ignored by the loss) elsewhere. Special tokens
(``[CLS]``, ``[SEP]``, ``[PAD]``, ``[UNK]``, ...) are never chosen nor drawn as replacements.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100
MASK_SHARE = 0.8
RANDOM_SHARE = 0.1


class Masker:
    """Applies MLM corruption with fixed token settings.

    Args:
        vocab_size: Number of token ids.
        mask_id: The ``[MASK]`` id.
        special_ids: Every special id.
        probability: Fraction of non-special positions to corrupt and predict.
    """

    def __init__(self, vocab_size: int, mask_id: int, special_ids: tuple[int, ...],
                 probability: float = 0.15):
        if not 0 < probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), not {probability}")
        self.mask_id = mask_id
        self.probability = probability
        self.special_ids = np.asarray(sorted(special_ids), dtype=np.int64)
        self.replacements = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), self.special_ids)

    def __call__(self, tokens: np.ndarray, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Masks one sequence.

        Args:
            tokens: 1-D token ids of the packed sequence.
            key: Entropy for ``np.random.default_rng`` (e.g. ``[seed, 1, slot]``); the result
                depends on nothing else.

        Returns:
            ``(input_ids, labels)``, both int64 of the same length as ``tokens``.
        """
        input_ids = np.array(tokens, dtype=np.int64)
        labels = np.full_like(input_ids, IGNORE_INDEX)
        candidates = np.flatnonzero(~np.isin(input_ids, self.special_ids))
        if candidates.size == 0:
            return input_ids, labels
        rng = np.random.default_rng(key)
        count = max(1, int(round(self.probability * candidates.size)))
        chosen = rng.choice(candidates, size=count, replace=False)
        labels[chosen] = input_ids[chosen]
        action = rng.random(count)
        input_ids[chosen[action < MASK_SHARE]] = self.mask_id
        swap = chosen[(action >= MASK_SHARE) & (action < MASK_SHARE + RANDOM_SHARE)]
        if swap.size and self.replacements.size:
            input_ids[swap] = self.replacements[rng.integers(0, self.replacements.size, swap.size)]
        return input_ids, labels
