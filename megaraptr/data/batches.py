"""Training and eval batches as pure functions of the step, so a run resumes exactly without
saving any data state.

Packing: a split's token stream is cut into consecutive fixed windows.

* MLM: sequence ``i`` is ``[CLS] + stream[i*(T-2) : (i+1)*(T-2)] + [SEP]`` (the stream already
  holds ``[SEP]`` between documents); inputs are masked (see masking.py).
* Causal: sequence ``i`` is the window ``w = stream[i*T : i*T + T + 1]`` (windows overlap by one
  token, so no next-token pair is lost); ``input_ids = w[:-1]``, ``labels = w[1:]``.

Order: with global batch ``G = micro_batch_size * dp_size * grad_accum``, row ``j`` of micro-batch
``m`` on rank ``r`` in optimizer step ``s`` (from 1) fills global slot
``g = (s-1)*G + m*dp_size*micro_batch_size + r*micro_batch_size + j``. Slot ``g`` is in epoch
``g // N`` (``N`` train sequences) and takes sequence ``perm_epoch[g % N]``, where ``perm_epoch``
is a permutation drawn from ``np.random.default_rng([seed, 0, epoch])``. MLM masking of slot
``g`` uses ``default_rng([seed, 1, g])``. So a step's sequences (and their masking) are the same
for every factorization of the same global batch, and any step is computed directly.

Eval: the first ``max_sequences`` val sequences (rounded down to a multiple of ``dp_size``, so
every rank runs the same number of batches), rank ``r`` taking those with ``i % dp_size == r``;
masking uses ``default_rng([EVAL_SEED, 2, i])``, independent of the training seed.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from megaraptr.data.masking import Masker
from megaraptr.data.prepared import PreparedData
from megaraptr.data.shards import ShardedTokens
from megaraptr.errors import DataError

EVAL_SEED = 0
_PERM_TAG, _TRAIN_MASK_TAG, _EVAL_MASK_TAG = 0, 1, 2


def _positive(name: str, value: int, minimum: int = 1) -> int:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


class StepBatches:
    """Base class: deterministic micro-batches of one data-parallel rank.

    Use ``MLMBatches`` or ``CausalBatches`` (or ``make_batches``).

    Args:
        data: Prepared data.
        seq_len: Tokens per sequence (``T``).
        micro_batch_size: Sequences per micro-batch on one rank.
        grad_accum: Micro-batches per optimizer step.
        dp_rank: This rank's data-parallel index.
        dp_size: Number of data-parallel ranks.
        seed: Training seed (order and masking).
        mlm_probability: Fraction of tokens masked (MLM only).

    Raises:
        DataError: The train split holds fewer sequences than one global batch.
    """

    min_seq_len = 2

    def __init__(self, data: PreparedData, *, seq_len: int, micro_batch_size: int,
                 grad_accum: int = 1, dp_rank: int = 0, dp_size: int = 1, seed: int = 0,
                 mlm_probability: float = 0.15):
        self.data = data
        self.seq_len = _positive("seq_len", seq_len, self.min_seq_len)
        self.micro_batch_size = _positive("micro_batch_size", micro_batch_size)
        self.grad_accum = _positive("grad_accum", grad_accum)
        self.dp_size = _positive("dp_size", dp_size)
        self.dp_rank = _positive("dp_rank", dp_rank, 0)
        if self.dp_rank >= self.dp_size:
            raise ValueError(f"dp_rank {dp_rank} must be below dp_size {dp_size}")
        self.seed = _positive("seed", seed, 0)
        self.mlm_probability = mlm_probability
        self._perms: OrderedDict[int, np.ndarray] = OrderedDict()
        self.num_train_sequences = self.count(len(data.train_tokens))
        if self.num_train_sequences < self.global_batch_sequences:
            raise DataError(
                f"data: {data.path}: train split has {len(data.train_tokens)} tokens = "
                f"{self.num_train_sequences} sequences of {self.seq_len}, fewer than one global "
                f"batch of {self.global_batch_sequences} (micro_batch_size "
                f"{self.micro_batch_size} x dp_size {self.dp_size} x grad_accum "
                f"{self.grad_accum}); use more data or a smaller batch")

    # -- packing, specialized by subclasses ------------------------------------------------

    def count(self, n_tokens: int) -> int:
        """Number of packed sequences in a stream of ``n_tokens`` tokens."""
        raise NotImplementedError

    def window(self, tokens: ShardedTokens, index: int) -> np.ndarray:
        """The raw token window of packed sequence ``index``."""
        raise NotImplementedError

    def example(self, window: np.ndarray, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, labels)`` of one sequence, given its random key."""
        raise NotImplementedError

    def train_example(self, window: np.ndarray, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """``(input_ids, labels)`` of one training sequence: ``example`` unless a training
        objective differs from the eval one (UL2 trains on denoising, evaluates next-token)."""
        return self.example(window, key)

    # -- sizes -------------------------------------------------------------------------------

    @property
    def global_batch_sequences(self) -> int:
        """Sequences per optimizer step over all ranks."""
        return self.micro_batch_size * self.dp_size * self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step over all ranks."""
        return self.global_batch_sequences * self.seq_len

    @property
    def num_val_sequences(self) -> int:
        """Packed sequences in the val split."""
        return self.count(len(self.data.val_tokens))

    # -- training ----------------------------------------------------------------------------

    def slots(self, step: int) -> np.ndarray:
        """Global slots of this rank's rows in an optimizer step.

        Args:
            step: Optimizer step, from 1.

        Returns:
            int64 array ``[grad_accum, micro_batch_size]``.
        """
        _positive("step", step)
        mb, dp = self.micro_batch_size, self.dp_size
        m = np.arange(self.grad_accum, dtype=np.int64)[:, None]
        j = np.arange(mb, dtype=np.int64)[None, :]
        return (step - 1) * self.global_batch_sequences + m * dp * mb + self.dp_rank * mb + j

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, _PERM_TAG, epoch])
            perm = rng.permutation(self.num_train_sequences)
            self._perms[epoch] = perm
            while len(self._perms) > 2:
                self._perms.popitem(last=False)
        return perm

    def sequence_index(self, slot: int) -> int:
        """The train sequence a global slot takes.

        Args:
            slot: Global slot ``g``.

        Returns:
            Index of the packed train sequence.
        """
        epoch, pos = divmod(int(slot), self.num_train_sequences)
        return int(self._permutation(epoch)[pos])

    def step_batches(self, step: int) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches for an optimizer step.

        Args:
            step: Optimizer step, from 1.

        Returns:
            ``grad_accum`` dicts of ``input_ids`` and ``labels``, int64 ``[micro_batch_size,
            seq_len]``.
        """
        batches = []
        for row_slots in self.slots(step):
            rows = [self.train_example(self.window(self.data.train_tokens,
                                                   self.sequence_index(g)),
                                       [self.seed, _TRAIN_MASK_TAG, int(g)]) for g in row_slots]
            batches.append(_stack(rows))
        return batches

    # -- evaluation --------------------------------------------------------------------------

    def eval_batches(self, max_sequences: int, micro_batch_size: int) -> list[dict]:
        """This rank's share of the fixed held-out val sequences.

        Args:
            max_sequences: Use at most this many val sequences (over all ranks).
            micro_batch_size: Rows per returned batch (the last may have fewer).

        Returns:
            Dicts of ``input_ids`` and ``labels``, int64 ``[rows, seq_len]``; the same on every
            call and in every run with the same data, ``seq_len`` and ``dp_size``.

        Raises:
            DataError: The val split is too small for one sequence per rank.
        """
        _positive("max_sequences", max_sequences)
        _positive("micro_batch_size", micro_batch_size)
        available = self.num_val_sequences
        n = min(max_sequences, available)
        n -= n % self.dp_size
        if n == 0:
            raise DataError(
                f"data: {self.data.path}: val split has {len(self.data.val_tokens)} tokens = "
                f"{available} sequences of {self.seq_len}, too few for one per rank "
                f"(dp_size {self.dp_size}); use more val data or a shorter seq_len")
        mine = range(self.dp_rank, n, self.dp_size)
        rows = [self.example(self.window(self.data.val_tokens, i), [EVAL_SEED, _EVAL_MASK_TAG, i])
                for i in mine]
        return [_stack(rows[a:a + micro_batch_size])
                for a in range(0, len(rows), micro_batch_size)]


def _stack(rows: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.from_numpy(np.stack([r[0] for r in rows])),
            "labels": torch.from_numpy(np.stack([r[1] for r in rows]))}


class MLMBatches(StepBatches):
    """Masked-LM batches: ``[CLS] + T-2 stream tokens + [SEP]``, BERT-style masking."""

    min_seq_len = 3

    def __init__(self, data: PreparedData, **kwargs):
        if data.kind != "mlm":
            raise DataError(f"data: {data.path}: prepared for {data.kind}, MLMBatches needs mlm")
        super().__init__(data, **kwargs)
        self.masker = Masker(data.vocab_size, data.mask_id, data.all_special_ids,
                             self.mlm_probability)

    def count(self, n_tokens: int) -> int:
        return n_tokens // (self.seq_len - 2)

    def window(self, tokens: ShardedTokens, index: int) -> np.ndarray:
        body = self.seq_len - 2
        seq = np.empty(self.seq_len, dtype=np.int64)
        seq[0], seq[-1] = self.data.cls_id, self.data.sep_id
        seq[1:-1] = tokens.read(index * body, body)
        return seq

    def example(self, window: np.ndarray, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return self.masker(window, key)


class CausalBatches(StepBatches):
    """Causal-LM batches: windows of ``T+1`` tokens, labels shifted by one."""

    def __init__(self, data: PreparedData, **kwargs):
        if data.kind != "causal":
            raise DataError(f"data: {data.path}: prepared for {data.kind}, "
                            f"CausalBatches needs causal")
        super().__init__(data, **kwargs)

    def count(self, n_tokens: int) -> int:
        return max(0, n_tokens - 1) // self.seq_len

    def window(self, tokens: ShardedTokens, index: int) -> np.ndarray:
        return tokens.read(index * self.seq_len, self.seq_len + 1).astype(np.int64)

    def example(self, window: np.ndarray, key: list[int]) -> tuple[np.ndarray, np.ndarray]:
        return window[:-1].copy(), window[1:].copy()


def make_batches(data: PreparedData, **kwargs) -> StepBatches:
    """Builds the batch source for the data's kind.

    Args:
        data: Prepared data.
        **kwargs: ``StepBatches`` arguments (``seq_len``, ``micro_batch_size``, ...).

    Returns:
        ``MLMBatches`` for mlm data, ``CausalBatches`` for causal data.
    """
    return (MLMBatches if data.kind == "mlm" else CausalBatches)(data, **kwargs)
