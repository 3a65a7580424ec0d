"""UL2's mixture of denoisers (Tay et al. 2022) for the causal GPT model: ``--objective ul2``.

UL2 ("UL2: Unifying Language Learning Paradigms", Tay et al., arXiv:2205.05131) pretrains on a
mixture of denoising tasks: each row draws one denoiser and announces it with a mode token.
``UL2Collator`` turns one packed causal window into one UL2 row, as a pure function of the row's
random key; ``UL2Batches`` serves such rows in the order of ``CausalBatches``. Use::

    python -m megaraptr.train --model gpt --objective ul2 [--ul2-s-share 0.5] ...
    UL2Batches(data, seq_len=128, micro_batch_size=16, collator=UL2Collator(data.vocab_size, 128))

The mixture (``paper_mixture``: the paper's seven denoisers, its Section 3.1.2)::

    R  [NLU]  mean span 3, rate 0.15;  8, 0.15            regular: T5's span corruption
    X  [NLG]  3, 0.5;  8, 0.5;  64, 0.15;  64, 0.5        extreme: long spans or a high rate
    S  [S2S]  one suffix span, rate 0.25 (mean L/4)       sequential: prefix LM

Each denoiser gets 1/7 of the rows (R 2/7, X 4/7, S 1/7): the paper gives its tasks
"approximately equal participation" and its appendix code samples them uniformly. ``s_share``
(``--ul2-s-share``) gives S another share (the paper also tries S at up to 50%); the six span
denoisers split the rest equally. Any mixture of ``Denoiser`` works through the Python API.

A row is a sequence ``seq`` of ``T + 1`` tokens; ``input_ids = seq[:-1]`` and ``labels =
seq[1:]``, set to -100 (ignored by the loss) except where ``seq[t+1]`` is a target token::

    R, X:  mode  x0 <s0> x1 <s1> .. x(k-1) <s(k-1)>   <s0> y0 <s1> y1 .. <s(k-1)> y(k-1)
    S:     [S2S] prefix   suffix                       (<sj>: <extra_id_j>; targets after the gap)

``x0 y0 x1 y1 ..`` are the first ``n`` tokens of the row's causal window (the windows and the
order of ``CausalBatches``; the unused tail of a window is dropped): kept spans ``x`` and
corrupted spans ``y`` as T5's ``random_spans_noise_mask`` (a kept span first, a corrupted span
last; each set of lengths a uniformly random composition). The loss covers the targets only,
sentinels included (the model learns where each span ends).

Sizes, exact in expectation. A span denoiser (mean span ``mu``, rate ``r``) fills ``T = n + 2k``
exactly: ``k`` spans from ``n`` tokens. With ``x = T / (1 + 2r/mu)`` (where rate and span
length hold exactly), ``k`` is ``k* = r x / mu`` stochastically rounded (at least 1), ``n = T -
2k``, and the corrupted count is ``r n`` stochastically rounded (clipped to ``[k, n - k]``). So
``E[k] = k*`` and ``E[noise] = r x = r E[n]``: pooled over rows the corruption rate is ``r`` and
the mean span length ``mu``, as long as ``k* >= 1`` (a mean span of 64 at rate 0.15 needs ``T``
of about 430 or more; below, the one span keeps the rate and is shorter). S: ``n = T``, suffix
length uniform on ``1 .. round(2 r T) - 1`` (mean ``r T``).

Tokens (``UL2Vocab``): the three mode tokens, then the sentinels, take the ids right above the
data's vocabulary (``base``: ``[NLU]``, ``base+1``: ``[NLG]``, ``base+2``: ``[S2S]``,
``base+3+i``: ``<extra_id_i>``). The model's embedding grows by that many rows; prepared data,
its ``tokenizer.json`` and the cache stay as they are, and no data token can collide with them.
There are 100 sentinels (T5's extra ids), or as many as a denoiser may need at this ``T``
(X with mean span 3 and rate 0.5 at 1024 tokens: 128). ``add_ul2_tokens`` gives a tokenizer
the same tokens at the same ids, to decode rows.

Randomness: one ``np.random.default_rng([*key, 3])`` per row, where ``key`` is ``[seed, 1,
global slot]`` from ``StepBatches``: a function of (seed, step, dp rank, micro-batch, row), the
same for every factorization of the global batch, so a resumed run sees the same rows.

Decoder-only here, not the paper's Prefix-LM: the GPT attends causally over the whole row, the
inputs included (the paper's decoder attends bidirectionally over the inputs). Evaluation stays
next-token loss on held-out text (``CausalBatches.eval_batches``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import numpy as np

from megaraptr.data.batches import CausalBatches
from megaraptr.data.masking import IGNORE_INDEX
from megaraptr.data.prepared import PreparedData
from megaraptr.errors import ConfigError, DataError

MODE_TOKENS = {"R": "[NLU]", "X": "[NLG]", "S": "[S2S]"}
MIN_SENTINELS = 100
MIN_SEQ_LEN = 16
_UL2_TAG = 3
PAPER_SPAN_DENOISERS = (("R", 3, 0.15), ("R", 8, 0.15), ("X", 3, 0.5), ("X", 8, 0.5),
                        ("X", 64, 0.15), ("X", 64, 0.5))  # (kind, mean span, rate)
PAPER_S_RATE = 0.25


@dataclass(frozen=True)
class Denoiser:
    """One denoiser of the mixture.

    Attributes:
        kind: ``"R"``, ``"X"`` (span corruption) or ``"S"`` (one suffix span: prefix LM).
        rate: Expected fraction of the row's text tokens that are targets.
        mean_span: Mean corrupted-span length (``R`` and ``X``; None for ``S``).
        weight: Relative share of the rows.
    """

    kind: str
    rate: float
    mean_span: Optional[float] = None
    weight: float = 1.0

    def __post_init__(self):
        if self.kind not in MODE_TOKENS:
            raise ConfigError("ul2.kind", f"must be 'R', 'X' or 'S', not {self.kind!r}")
        if not 0 < self.rate < 1:
            raise ConfigError("ul2.rate", f"must be in (0, 1), not {self.rate!r}")
        if (self.kind == "S") != (self.mean_span is None) or \
                (self.mean_span is not None and self.mean_span < 1):
            raise ConfigError("ul2.mean_span", f"R and X need a mean span >= 1, S none; got "
                              f"{self.kind} with {self.mean_span!r}")
        if not self.weight >= 0:
            raise ConfigError("ul2.weight", f"must be >= 0, not {self.weight!r}")


def paper_mixture(s_share: Optional[float] = None) -> tuple[Denoiser, ...]:
    """The paper's seven denoisers (see the module docstring).

    Args:
        s_share: Share of S rows; None for the paper's equal shares (1/7). The six span
            denoisers split the rest equally.

    Returns:
        The six span denoisers, then S.
    """
    s = 1 / 7 if s_share is None else s_share
    if not 0 <= s <= 1:
        raise ConfigError("--ul2-s-share", f"must be in [0, 1], not {s_share!r}")
    rest = (1 - s) / len(PAPER_SPAN_DENOISERS)
    return tuple(Denoiser(kind, rate, mu, rest) for kind, mu, rate in PAPER_SPAN_DENOISERS) + \
        (Denoiser("S", PAPER_S_RATE, None, s),)


@dataclass(frozen=True)
class UL2Vocab:
    """The UL2 token ids, right above a data vocabulary of ``base`` ids."""

    base: int
    num_sentinels: int = MIN_SENTINELS

    @property
    def size(self) -> int:
        """The model's vocabulary size: data tokens, mode tokens, sentinels."""
        return self.base + len(MODE_TOKENS) + self.num_sentinels

    def mode_id(self, kind: str) -> int:
        """Id of the mode token of denoiser kind ``"R"``, ``"X"`` or ``"S"``."""
        return self.base + list(MODE_TOKENS).index(kind)

    @property
    def sentinel_ids(self) -> np.ndarray:
        """Ids of ``<extra_id_0>``, ``<extra_id_1>``, ... (int64)."""
        return np.arange(self.num_sentinels, dtype=np.int64) + self.base + len(MODE_TOKENS)

    def tokens(self) -> list[str]:
        """The UL2 token strings in id order, from ``base``."""
        return list(MODE_TOKENS.values()) + [f"<extra_id_{i}>" for i in range(self.num_sentinels)]


def add_ul2_tokens(tok, vocab: UL2Vocab):
    """Adds the UL2 tokens to a ``tokenizers.Tokenizer`` (in place) at ``vocab``'s ids.

    Args:
        tok: The data's tokenizer (``PreparedData.tokenizer``), with ``vocab.base`` ids.
        vocab: The UL2 ids.

    Returns:
        ``tok``, which now encodes and decodes mode tokens and sentinels.

    Raises:
        DataError: The tokenizer's size is not ``vocab.base`` or it already has such tokens.
    """
    if tok.get_vocab_size(with_added_tokens=True) != vocab.base:
        raise DataError(f"data: tokenizer has {tok.get_vocab_size(with_added_tokens=True)} ids, "
                        f"UL2 tokens start at {vocab.base}")
    tok.add_special_tokens(vocab.tokens())
    if [tok.token_to_id(t) for t in vocab.tokens()] != list(range(vocab.base, vocab.size)):
        raise DataError("data: tokenizer already has UL2 tokens at other ids")
    return tok


class UL2Row(NamedTuple):
    """One UL2 row before the causal shift."""

    sequence: np.ndarray  # T + 1 ids: mode token, inputs, targets
    target_start: int     # index in ``sequence`` of the first target token
    denoiser: int         # index into the mixture
    num_text: int         # window tokens used (n)


def _stochastic_round(x: float, rng: np.random.Generator) -> int:
    low = math.floor(x)
    return low + int(rng.random() < x - low)


def _composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random positive lengths of ``parts`` segments summing to ``total`` (T5's
    ``_random_segmentation``)."""
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False)) + 1
    return np.diff(np.concatenate([[0], cuts, [total]]))


def _runs_to_sentinels(tokens: np.ndarray, mask: np.ndarray, sentinels: np.ndarray) -> np.ndarray:
    """``tokens`` with the j-th run of masked positions replaced by ``sentinels[j]`` (T5's
    ``noise_span_to_unique_sentinel``)."""
    previous = np.concatenate([[False], mask[:-1]])
    first = mask & ~previous
    ids = np.where(first, sentinels[np.maximum(np.cumsum(first) - 1, 0)], tokens)
    return ids[~(mask & previous)]


class UL2Collator:
    """Turns causal windows into UL2 rows of ``seq_len`` tokens (see the module docstring).

    Args:
        base_vocab: The data's vocabulary size (UL2 ids start there).
        seq_len: Tokens per row (``T``).
        mixture: The denoisers (default ``paper_mixture()``).
    """

    def __init__(self, base_vocab: int, seq_len: int, mixture: Optional[Sequence[Denoiser]] = None):
        self.mixture = tuple(paper_mixture() if mixture is None else mixture)
        weights = np.array([d.weight for d in self.mixture], dtype=np.float64)
        if not self.mixture or weights.sum() <= 0:
            raise ConfigError("ul2", "the mixture needs a denoiser with a positive weight")
        self.probs = weights / weights.sum()
        self._cumulative = np.cumsum(self.probs)
        if seq_len < MIN_SEQ_LEN:
            raise ConfigError("--seq-len", f"UL2 needs rows of at least {MIN_SEQ_LEN} tokens, "
                              f"not {seq_len}")
        self.seq_len = T = int(seq_len)
        # k* per denoiser (None for S), capped at T // 4 so that n = T - 2k >= 2k
        self.expected_spans = [None if d.kind == "S" else
                               min(d.rate * T / (1 + 2 * d.rate / d.mean_span) / d.mean_span,
                                   T // 4) for d in self.mixture]
        need = max([math.ceil(k) for k in self.expected_spans if k is not None], default=0)
        self.vocab = UL2Vocab(int(base_vocab), max(MIN_SENTINELS, need))

    def row(self, window: np.ndarray, key: Sequence[int],
            denoiser: Optional[int] = None) -> UL2Row:
        """The UL2 row of one window.

        Args:
            window: At least ``seq_len`` token ids (a causal window has ``seq_len + 1``).
            key: The row's entropy (``[seed, 1, slot]``); the row depends on nothing else.
            denoiser: Force this mixture index (tests); None draws it from the mixture.

        Returns:
            The row.
        """
        rng = np.random.default_rng([*map(int, key), _UL2_TAG])
        drawn = int(np.searchsorted(self._cumulative, rng.random(), side="right"))
        index = min(drawn, len(self.mixture) - 1) if denoiser is None else int(denoiser)
        d, T = self.mixture[index], self.seq_len
        mode = np.array([self.vocab.mode_id(d.kind)], dtype=np.int64)
        if d.kind == "S":
            longest = min(max(round(2 * d.rate * T) - 1, 1), T - 1)
            suffix = int(rng.integers(1, longest + 1))
            sequence = np.concatenate([mode, np.asarray(window[:T], dtype=np.int64)])
            return UL2Row(sequence, 1 + T - suffix, index, T)
        k = max(1, _stochastic_round(self.expected_spans[index], rng))
        n = T - 2 * k
        noise = min(max(_stochastic_round(d.rate * n, rng), k), n - k)
        lengths = np.stack([_composition(n - noise, k, rng), _composition(noise, k, rng)], 1)
        is_noise = np.repeat(np.tile([False, True], k), lengths.ravel())
        tokens = np.asarray(window[:n], dtype=np.int64)
        sentinels = self.vocab.sentinel_ids
        inputs = _runs_to_sentinels(tokens, is_noise, sentinels)
        targets = _runs_to_sentinels(tokens, ~is_noise, sentinels)
        return UL2Row(np.concatenate([mode, inputs, targets]), 1 + len(inputs), index, n)

    def __call__(self, window: np.ndarray, key: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, labels)`` of one row, int64 ``[seq_len]``; labels -100 but on targets."""
        row = self.row(window, key)
        labels = row.sequence[1:].copy()
        labels[:row.target_start - 1] = IGNORE_INDEX
        return row.sequence[:-1].copy(), labels

    def describe(self) -> str:
        """One line: the shares of R, X and S and the UL2 ids."""
        shares = {kind: sum(p for d, p in zip(self.mixture, self.probs) if d.kind == kind)
                  for kind in MODE_TOKENS}
        mix = ", ".join(f"{kind} {100 * p:.1f}%" for kind, p in shares.items())
        return (f"objective ul2 (Tay et al. 2022): {mix} of rows; {len(self.vocab.tokens())} "
                f"UL2 tokens at ids {self.vocab.base}..{self.vocab.size - 1}")


class UL2Batches(CausalBatches):
    """``CausalBatches`` whose training rows are UL2 rows; eval rows stay next-token.

    Args:
        data: Prepared causal data.
        collator: The UL2 collator (default: the paper's mixture at ``seq_len``).
        **kwargs: ``StepBatches`` arguments.
    """

    min_seq_len = MIN_SEQ_LEN

    def __init__(self, data: PreparedData, *, collator: Optional[UL2Collator] = None, **kwargs):
        super().__init__(data, **kwargs)
        self.collator = collator or UL2Collator(data.vocab_size, self.seq_len)
        if (self.collator.seq_len, self.collator.vocab.base) != (self.seq_len, data.vocab_size):
            raise ValueError(f"collator is for seq_len {self.collator.seq_len} and vocabulary "
                             f"{self.collator.vocab.base}, the batches for {self.seq_len} and "
                             f"{data.vocab_size}")

    def train_example(self, window: np.ndarray, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.collator(window, key)
