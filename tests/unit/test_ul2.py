"""Tests of UL2's mixture of denoisers (megaraptr.data.ul2): mixing proportions, span statistics,
exact reconstruction, labels, determinism, the S-denoiser's split, the UL2 tokens, bad input,
and one short ``megaraptr.tools.train --objective ul2`` run. Real data: the built-in sample.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from megaraptr.data.batches import CausalBatches
from megaraptr.data.tokenizer import load_tokenizer
from megaraptr.data.ul2 import UL2Batches, UL2Collator, add_ul2_tokens, paper_mixture

SPAN_KINDS = ["R", "R", "X", "X", "X", "X"]


def windows(data, seq_len: int, count: int) -> list[np.ndarray]:
    """``count`` real causal windows (``seq_len + 1`` tokens) spread over the train stream."""
    last = data.num_train_tokens - seq_len - 1
    return [data.train_tokens.read((i * 7919) % last, seq_len + 1).astype(np.int64)
            for i in range(count)]


def parse(row, vocab):
    """(sentinels in the inputs, sentinels in the targets, kept spans, corrupted spans) of a
    span denoiser's row: ``mode x0 <s0> x1 <s1> .. | <s0> y0 <s1> y1 ..``."""
    inputs, targets = row.sequence[1:row.target_start], row.sequence[row.target_start:]
    at_in = np.flatnonzero(np.isin(inputs, vocab.sentinel_ids))
    at_out = np.flatnonzero(np.isin(targets, vocab.sentinel_ids))
    pieces = np.split(inputs, at_in)
    assert len(pieces[-1]) == 1 and at_out[0] == 0  # inputs end, targets start, with a sentinel
    kept = [pieces[0]] + [p[1:] for p in pieces[1:-1]]
    corrupted = [p[1:] for p in np.split(targets, at_out)[1:]]
    return inputs[at_in], targets[at_out], kept, corrupted


def test_mixing_proportions(causal):
    w = windows(causal, 64, 1)[0]
    for s_share, shares in [(None, [1 / 7] * 7), (0.5, [1 / 12] * 6 + [0.5])]:
        collator = UL2Collator(causal.vocab_size, 64, paper_mixture(s_share))
        n = 7000
        rows = [collator.row(w, [5, 1, g]) for g in range(n)]
        counts = Counter(r.denoiser for r in rows)
        for i, p in enumerate(shares):  # binomial counts within 4 standard deviations
            assert abs(counts[i] - n * p) < 4 * np.sqrt(n * p * (1 - p)), (i, counts)
        for r in rows:  # the mode token names the drawn denoiser's kind
            assert r.sequence[0] == collator.vocab.mode_id((SPAN_KINDS + ["S"])[r.denoiser])
    assert abs(collator.probs[-1] - 0.5) < 1e-12 and len(collator.mixture) == 7


def test_span_statistics_match_the_configured_rate_and_mean_span(causal):
    T, n = 512, 400  # at 512 tokens every paper denoiser expects at least one span
    collator = UL2Collator(causal.vocab_size, T)
    ws = windows(causal, T, n)
    for i, d in enumerate(collator.mixture):
        rows = [collator.row(w, [3, 1, g], denoiser=i) for g, w in enumerate(ws)]
        if d.kind == "S":
            suffix = np.array([T + 1 - r.target_start for r in rows])
            # uniform on 1..255: std 74, mean of 400 within 4 standard errors (15 tokens)
            assert abs(suffix.mean() - d.rate * T) < 15 and suffix.min() >= 1
            assert suffix.max() <= round(2 * d.rate * T) - 1
            continue
        spans = [parse(r, collator.vocab)[3] for r in rows]
        corrupted = sum(len(s) for row in spans for s in row)
        used = sum(r.num_text for r in rows)
        lengths = np.array([len(s) for row in spans for s in row])
        assert abs(corrupted / used - d.rate) < 0.002, (d, corrupted / used)
        # pooled mean span; only (64, 0.15) has few spans per row (1 or 2): 4 std is ~7%
        assert abs(lengths.mean() / d.mean_span - 1) < 0.08, (d, lengths.mean())
        assert lengths.min() >= 1


@pytest.mark.parametrize("T", [64, 512])
def test_sentinels_correspond_and_reconstruct_the_text(causal, T):
    collator = UL2Collator(causal.vocab_size, T)
    vocab = collator.vocab
    for g, w in enumerate(windows(causal, T, 30)):
        for i, d in enumerate(collator.mixture):
            row = collator.row(w, [1, 1, g], denoiser=i)
            assert row.sequence.shape == (T + 1,) and row.sequence.dtype == np.int64
            assert row.sequence[0] == vocab.mode_id(d.kind)
            assert (row.sequence[1:] < vocab.base).sum() == row.num_text  # every text token once
            if d.kind == "S":
                continue
            s_in, s_out, kept, corrupted = parse(row, vocab)
            k = len(s_in)
            assert k >= 1 and row.num_text == T - 2 * k
            assert list(s_in) == list(s_out) == list(vocab.sentinel_ids[:k])  # one to one, in order
            assert row.sequence[row.target_start] == vocab.sentinel_ids[0]
            assert all(len(s) for s in kept) and all(len(s) for s in corrupted)
            text = np.concatenate([x for pair in zip(kept, corrupted) for x in pair])
            assert np.array_equal(text, w[:row.num_text])


def test_s_denoiser_is_a_prefix_and_its_continuation(causal):
    T = 128
    collator = UL2Collator(causal.vocab_size, T)
    s = len(collator.mixture) - 1
    drawn = 0
    for g, w in enumerate(windows(causal, T, 200)):
        row = collator.row(w, [2, 1, g])
        if row.denoiser != s:
            continue
        drawn += 1
        assert row.sequence[0] == collator.vocab.mode_id("S")
        assert np.array_equal(row.sequence[1:], w[:T])  # no sentinels: the text itself
        prefix = row.target_start - 1
        assert 1 <= T - prefix <= 63  # suffix length uniform on 1..2 r T - 1
        x, y = collator(w, [2, 1, g])
        assert np.array_equal(x, np.concatenate([row.sequence[:1], w[:T - 1]]))
        assert (y[:prefix] == -100).all()  # no loss on the mode token and the prefix
        assert np.array_equal(y[prefix:], w[prefix:T])  # next-token loss on the suffix
    assert drawn >= 15


def test_batches_labels_only_on_targets(causal):
    T = 96
    b = UL2Batches(causal, seq_len=T, micro_batch_size=8, grad_accum=2, dp_rank=1, dp_size=2,
                   seed=11)
    seen = set()
    for m, batch in enumerate(b.step_batches(4)):
        x, y = batch["input_ids"].numpy(), batch["labels"].numpy()
        assert x.shape == y.shape == (8, T) and x.dtype == y.dtype == np.int64
        for j, g in enumerate(b.slots(4)[m]):
            w = b.window(causal.train_tokens, b.sequence_index(g))
            row = b.collator.row(w, [11, 1, int(g)])
            seen.add(row.denoiser)
            assert np.array_equal(x[j], row.sequence[:-1])
            assert (y[j, :row.target_start - 1] == -100).all()
            assert np.array_equal(y[j, row.target_start - 1:], row.sequence[row.target_start:])
    assert len(seen) >= 4
    assert max(int(bt["input_ids"].max()) for bt in b.step_batches(4)) < b.collator.vocab.size


def test_batches_are_deterministic_and_eval_stays_next_token(causal):
    kw = dict(seq_len=64, micro_batch_size=4, seed=7)

    def rows(batches):
        return [tuple(b["input_ids"][i].tolist() + b["labels"][i].tolist())
                for b in batches for i in range(b["input_ids"].shape[0])]

    a = UL2Batches(causal, grad_accum=2, **kw)
    first = rows(a.step_batches(3))
    assert rows(a.step_batches(3)) == first == rows(UL2Batches(causal, grad_accum=2,
                                                               **kw).step_batches(3))
    assert rows(a.step_batches(4)) != first
    assert rows(UL2Batches(causal, grad_accum=2, **{**kw, "seed": 8}).step_batches(3)) != first
    wide = [UL2Batches(causal, dp_size=2, dp_rank=r, **kw) for r in range(2)]
    assert rows(wide[0].step_batches(3)) != rows(wide[1].step_batches(3))
    assert Counter(first) == Counter(rows(wide[0].step_batches(3) + wide[1].step_batches(3)))
    plain = CausalBatches(causal, grad_accum=2, **kw)
    assert rows(a.eval_batches(8, 4)) == rows(plain.eval_batches(8, 4))


def test_ul2_tokens_sit_above_the_data_vocabulary(causal):
    collator = UL2Collator(causal.vocab_size, 128)
    vocab = collator.vocab
    assert vocab.num_sentinels == 100 and vocab.size == causal.vocab_size + 103
    assert UL2Collator(causal.vocab_size, 1024).vocab.num_sentinels == 128  # X(3, 0.5) at 1024
    tok = add_ul2_tokens(load_tokenizer(causal.path / "tokenizer.json"), vocab)
    assert [tok.token_to_id(t) for t in ("[NLU]", "[NLG]", "[S2S]", "<extra_id_0>",
                                         "<extra_id_99>")] == \
        [vocab.base, vocab.base + 1, vocab.base + 2, vocab.base + 3, vocab.base + 102]
    row = collator.row(windows(causal, 128, 1)[0], [0, 1, 0], denoiser=2)
    text = tok.decode(row.sequence.tolist(), skip_special_tokens=False)
    assert text.startswith("[NLG]") and "<extra_id_0>" in text
    assert tok.encode("x <extra_id_5>").ids[-1] == vocab.sentinel_ids[5]
