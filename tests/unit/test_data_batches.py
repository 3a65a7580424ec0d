"""Tests of megaraptr.data batches: purity in the step, factorization invariance, MLM masking,
causal shift, eval sharding. Real data: the built-in sample, prepared once for the module.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from megaraptr.data import CausalBatches, MLMBatches, make_batches
from megaraptr.errors import DataError


def rows(batches: list[dict]) -> list[tuple]:
    return [tuple(b["input_ids"][i].tolist() + b["labels"][i].tolist())
            for b in batches for i in range(b["input_ids"].shape[0])]


def test_step_batches_are_pure_functions_of_the_step(mlm):
    kw = dict(seq_len=64, micro_batch_size=4, grad_accum=2, dp_rank=1, dp_size=2, seed=7)
    a = MLMBatches(mlm, **kw)
    first = a.step_batches(9)
    a.step_batches(1)
    a.step_batches(5000)  # a later epoch
    assert rows(a.step_batches(9)) == rows(first)
    assert rows(MLMBatches(mlm, **kw).step_batches(9)) == rows(first)
    assert len(first) == 2 and first[0]["input_ids"].shape == (4, 64)
    assert first[0]["input_ids"].dtype == first[0]["labels"].dtype == torch.int64
    assert rows(MLMBatches(mlm, **{**kw, "seed": 8}).step_batches(9)) != rows(first)
    assert a.tokens_per_step == 16 * 64 and a.global_batch_sequences == 16
    perm = [a.sequence_index(g) for g in range(a.num_train_sequences)]
    assert sorted(perm) == list(range(a.num_train_sequences))


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_same_global_batch_for_any_factorization(kind, mlm, causal):
    data = mlm if kind == "mlm" else causal
    base = dict(seq_len=32, micro_batch_size=3, seed=1)
    wide = [make_batches(data, dp_size=2, dp_rank=r, grad_accum=1, **base) for r in range(2)]
    deep = make_batches(data, dp_size=1, dp_rank=0, grad_accum=2, **base)
    boundary = deep.num_train_sequences // deep.global_batch_sequences + 1  # spans two epochs
    for step in (1, 2, boundary):
        assert Counter(rows(deep.step_batches(step))) == \
            Counter(rows(wide[0].step_batches(step) + wide[1].step_batches(step)))


def test_mlm_masking_statistics(mlm):
    b = MLMBatches(mlm, seq_len=128, micro_batch_size=100, grad_accum=10, seed=3)
    batches = b.step_batches(2)
    inputs = np.concatenate([x["input_ids"].numpy() for x in batches])
    labels = np.concatenate([x["labels"].numpy() for x in batches])
    special = np.asarray(mlm.all_special_ids)
    assert (inputs[:, 0] == mlm.cls_id).all() and (inputs[:, -1] == mlm.sep_id).all()
    masked = labels != -100
    assert masked.any(axis=1).all()  # at least one prediction per sequence
    assert not np.isin(labels[masked], special).any()  # special tokens never masked
    # Recover the unmasked sequences from the stream to count maskable positions exactly.
    originals = np.stack([b.window(mlm.train_tokens, b.sequence_index(g))
                          for g in b.slots(2).ravel()])
    assert np.array_equal(originals[masked], labels[masked])
    assert np.array_equal(inputs[~masked], originals[~masked])
    maskable = ~np.isin(originals, special)
    # round(0.15 * n) of the n maskable positions of each row: 15% within rounding.
    per_row = masked.sum(1) / maskable.sum(1)
    assert np.all(np.abs(per_row - 0.15) <= 0.5 / maskable.sum(1) + 1e-9)
    # ~19k predictions: binomial std of the 80/10/10 shares is <= 0.003, allow 4 std.
    n = masked.sum()
    to_mask = (inputs[masked] == mlm.mask_id).mean()
    kept = (inputs[masked] == labels[masked]).mean()
    randomized = 1 - to_mask - kept
    assert n > 15_000
    assert abs(to_mask - 0.8) < 0.012 and abs(kept - 0.1) < 0.008
    assert abs(randomized - 0.1) < 0.008
    swapped = masked & (inputs != mlm.mask_id) & (inputs != labels)
    assert not np.isin(inputs[swapped], special).any()  # random replacements never special


def test_causal_labels_are_shifted_inputs(causal):
    b = CausalBatches(causal, seq_len=48, micro_batch_size=4, grad_accum=1, seed=0)
    batch = b.step_batches(3)[0]
    x, y = batch["input_ids"].numpy(), batch["labels"].numpy()
    assert np.array_equal(x[:, 1:], y[:, :-1]) and (y != -100).all()
    i = b.sequence_index(int(b.slots(3)[0, 0]))
    assert np.array_equal(x[0], causal.train_tokens[i * 48:i * 48 + 48])
    assert np.array_equal(y[0], causal.train_tokens[i * 48 + 1:i * 48 + 49])


@pytest.mark.parametrize("kind", ["mlm", "causal"])
def test_eval_batches_split_across_ranks(kind, mlm, causal):
    data = mlm if kind == "mlm" else causal
    ranks = [make_batches(data, seq_len=64, micro_batch_size=2, dp_size=3, dp_rank=r, seed=r)
             for r in range(3)]
    shares = [r.eval_batches(50, 4) for r in ranks]
    assert [len(s) for s in shares] == [4, 4, 4]  # 50 -> 48 sequences, 16 per rank
    assert rows(ranks[0].eval_batches(50, 4)) == rows(shares[0])
    single = make_batches(data, seq_len=64, micro_batch_size=2, seed=99).eval_batches(48, 48)
    all_rows = rows(single)
    for r, share in enumerate(shares):
        assert rows(share) == all_rows[r::3]  # disjoint, independent of the training seed
    with pytest.raises(DataError, match="val split has .* too few"):
        make_batches(data, seq_len=20000, micro_batch_size=1, dp_size=2).eval_batches(10, 1)


def test_too_little_train_data_is_a_data_error(mlm):
    with pytest.raises(DataError, match=r"sequences of 128, fewer than one global batch of "
                                        r"8000000") as err:
        MLMBatches(mlm, seq_len=128, micro_batch_size=1000, grad_accum=1000, dp_size=8)
    assert "\n" not in str(err.value)


def test_mlm_masks_are_fresh_on_every_pass_over_the_data(mlm):
    """Dynamic masking: a sequence seen again in a later epoch gets a new mask (its slot, not
    its index, keys the mask), while the first pass keeps the documented key [seed, 1, slot]."""
    b = MLMBatches(mlm, seq_len=64, micro_batch_size=4, seed=5)
    n = b.num_train_sequences
    first_pass = {b.sequence_index(g): g for g in range(n)}
    fresh = 0
    for g2 in range(n, n + 40):  # the second epoch's first slots
        index = b.sequence_index(g2)
        window = b.window(mlm.train_tokens, index)
        ids1, labels1 = b.train_example(window, [5, 1, first_pass[index]])
        ids2, labels2 = b.train_example(window, [5, 1, g2])
        assert (labels1[labels1 != -100] == window[labels1 != -100]).all()
        fresh += not np.array_equal(labels1 != -100, labels2 != -100)
        step, row = divmod(g2, 4)
        got = b.step_batches(step + 1)[0]
        assert got["labels"][row].tolist() == labels2.tolist()  # what training sees
    assert fresh == 40
