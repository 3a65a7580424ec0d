"""Tests of megaraptr.sampler: (seed, step, stage) -> LayerMask, the only randomness.

Pure: no DeepSpeed, no process group. The statistical tests are deterministic (the draws are a
keyed hash of seed, step and layer), so they cannot flake; their tolerances are chosen from the
binomial standard deviation so that a correct sampler passes by a wide margin (5 sigma) and a
biased one (off by a few percent) fails.
"""
import itertools
import math
import struct
from collections import Counter

import pytest

from megaraptr.core.mask import LayerMask, MaskDigest
from megaraptr.core.sampler import (SubnetworkSampler, balanced_counts, branch_scale,
                                    sample_balanced, sample_mask, uniform)
from megaraptr.core.stage import Stage
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block


def _schedule(block, *, layers=12, steps=100):
    return build_schedule(parse_raptr_block(dict({"enabled": True}, **block)),
                          num_layers=layers, total_steps=steps)


def _stage(keep_prob, *, layers=12, fixed=(0, 11), exact=None):
    return Stage(0, "s", 1, 10 ** 9, keep_prob, layers, tuple(fixed), exact)


# ---------------------------------------------------------------- the random numbers


def test_uniform_values_are_pinned():
    # Resuming a run, and every rank agreeing, rely on these exact numbers: a change to the
    # hash, its key layout or its scaling changes every subnetwork of every saved run.
    assert uniform(0, 1, 0) == 0.4633667468151501
    assert uniform(0, 1, 1) == 0.3981677852268754
    assert uniform(1234, 5678, 9) == 0.8834306896081916
    assert uniform(2 ** 63 + 5, 1, 11) == 0.248170609192027
    assert uniform(42, 10 ** 9, 3) == 0.8288366515707086


def test_uniform_range_and_key_sensitivity():
    values = [uniform(seed, step, layer) for seed in range(3) for step in range(1, 40)
              for layer in range(12)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert len(set(values)) == len(values)  # seed, step and layer each change the number
    assert sum(values) / len(values) == pytest.approx(0.5, abs=5 * math.sqrt(1 / 12 / len(values)))


def test_masks_are_pinned():
    schedule = _schedule({"schedule": "6-8-10-12"}, steps=100)
    sampler = SubnetworkSampler(schedule, 1234)
    assert {s: str(sampler.mask(s)) for s in (1, 2, 3, 30, 60, 99)} == {
        1: "##.#.#...###", 2: "#.###....#.#", 3: "#..#...#.#.#",
        30: "#.######.#.#", 60: "#########..#", 99: "############"}
    exact = SubnetworkSampler(_schedule({"schedule": "6-8-10-12", "sampling": "exact"}), 1234)
    assert {s: str(exact.mask(s)) for s in (1, 2, 3, 30, 60, 99)} == {
        1: "##.#.#....##", 2: "#.###....#.#", 3: "##.#...#.#.#",
        30: "#..#####.#.#", 60: "#########..#", 99: "############"}


# ---------------------------------------------------------------- determinism


def test_same_arguments_same_mask_across_fresh_calls():
    schedule = _schedule({"schedule": "6-8-10-12", "scaling": "inverse_keep_prob"}, steps=200)
    first = [SubnetworkSampler(schedule, 7).mask(s) for s in range(1, 201)]
    again = SubnetworkSampler(schedule, 7).masks(range(1, 201))
    rebuilt = SubnetworkSampler(_schedule({"schedule": "6-8-10-12",
                                           "scaling": "inverse_keep_prob"}, steps=200), 7)
    assert first == again == rebuilt.masks(range(1, 201))
    # The functional form agrees with the sampler.
    for step in (1, 17, 99, 150):
        stage = schedule.stage_at(step)
        assert sample_mask(7, step, stage, scaling="inverse_keep_prob") == first[step - 1]
    # Asking out of order, or twice, changes nothing (no hidden state).
    sampler = SubnetworkSampler(schedule, 7)
    assert [sampler.mask(s) for s in (150, 3, 150, 3)] == [first[149], first[2]] * 2


def test_different_seeds_give_different_masks():
    stage = _stage(0.4)
    a = [sample_mask(0, s, stage) for s in range(1, 201)]
    b = [sample_mask(1, s, stage) for s in range(1, 201)]
    # Two independent masks of 10 stochastic layers coincide with probability
    # (0.4^2 + 0.6^2)^10 = 0.0014, so nearly every step must differ.
    assert sum(x != y for x, y in zip(a, b)) >= 195
    # ... and the steps of one seed differ from each other too.
    assert len({str(m) for m in a}) > 150


def test_fixed_layers_always_active():
    for sampling, stage in [("bernoulli", _stage(0.0, fixed=(0, 5, 11))),
                            ("bernoulli", _stage(0.3, fixed=(0, 5, 11))),
                            ("exact", _stage(0.0, fixed=(0, 5, 11), exact=3)),
                            ("exact", _stage(0.3, fixed=(0, 5, 11), exact=5))]:
        for step in range(1, 300):
            mask = sample_mask(3, step, stage, sampling=sampling)
            assert mask.active[0] and mask.active[5] and mask.active[11]
            assert len(mask.active) == len(mask.scale) == 12
    only_fixed = sample_mask(3, 1, _stage(0.0, fixed=(0, 5, 11)))
    assert only_fixed.active_ids == (0, 5, 11)


def test_full_stage_runs_every_layer_with_scale_one():
    schedule = _schedule({"schedule": "6-12", "scaling": "inverse_keep_prob",
                          "full_model_warmup_steps": 10}, steps=30)
    sampler = SubnetworkSampler(schedule, 5)
    for step in list(range(1, 11)) + list(range(21, 40)):  # warmup, last stage, and beyond
        assert sampler.mask(step) == LayerMask.full(12)
    exact = SubnetworkSampler(_schedule({"schedule": "6-12", "sampling": "exact"}, steps=30), 5)
    assert all(exact.mask(s) == LayerMask.full(12) for s in range(16, 31))


def test_disabled_schedule_always_full():
    schedule = build_schedule(parse_raptr_block(None), num_layers=6, total_steps=50)
    assert SubnetworkSampler(schedule, 0).masks(range(1, 60)) == [LayerMask.full(6)] * 59


# ---------------------------------------------------------------- Bernoulli statistics


def test_bernoulli_marginal_frequencies():
    n, p = 20_000, 0.4
    stage = _stage(p)
    counts = [0] * 12
    depths = []
    for step in range(1, n + 1):
        mask = sample_mask(11, step, stage)
        depths.append(mask.num_active)
        for i in mask.active_ids:
            counts[i] += 1
    sigma = math.sqrt(p * (1 - p) / n)  # 0.0035: 5 sigma = 0.017
    assert counts[0] == counts[11] == n
    for i in range(1, 11):
        assert abs(counts[i] / n - p) < 5 * sigma, (i, counts[i] / n)
    # Depth: mean F + p S = 6, variance S p (1 - p) = 2.4 (independent layers).
    mean = sum(depths) / n
    var = sum((d - mean) ** 2 for d in depths) / n
    assert abs(mean - 6.0) < 5 * math.sqrt(2.4 / n)
    assert var == pytest.approx(2.4, rel=0.06)
    assert min(depths) == 2 and max(depths) >= 11  # any depth between F and L can happen


def test_bernoulli_layers_and_steps_are_independent():
    n, p = 20_000, 0.5
    stage = _stage(p, layers=6, fixed=())
    masks = [sample_mask(2, step, stage).active for step in range(1, n + 1)]
    sigma = math.sqrt(p * p * (1 - p * p) / n)  # joint frequency of two independent layers
    for i, j in itertools.combinations(range(6), 2):
        both = sum(m[i] and m[j] for m in masks) / n
        assert abs(both - p * p) < 5 * sigma, (i, j, both)
    for i in range(6):  # a layer at step s and the same layer at step s + 1
        both = sum(a[i] and b[i] for a, b in zip(masks, masks[1:])) / (n - 1)
        assert abs(both - p * p) < 5 * sigma, (i, both)


def test_bernoulli_mean_depth_matches_expected_flops():
    schedule = _schedule({"schedule": "6-8-10-12"}, steps=8000)
    sampler = SubnetworkSampler(schedule, 99)
    active = sum(sampler.mask(s).num_active for s in range(1, 8001))
    # Variance of the total: 2000 steps each of S p (1-p) for p = .4, .6, .8 (and 0 at p = 1).
    sigma = math.sqrt(2000 * 10 * (0.24 + 0.24 + 0.16))
    assert abs(active - 0.75 * 12 * 8000) < 5 * sigma


# ---------------------------------------------------------------- exact sampling


def test_exact_sampling_has_exactly_k_layers_and_even_marginals():
    n, k = 20_000, 6
    stage = _stage(0.4, exact=k)
    counts = Counter()
    for step in range(1, n + 1):
        mask = sample_mask(4, step, stage, sampling="exact")
        assert mask.num_active == k
        counts.update(mask.active_ids)
    q = (k - 2) / 10
    sigma = math.sqrt(q * (1 - q) / n)
    assert counts[0] == counts[11] == n
    for i in range(1, 11):
        assert abs(counts[i] / n - q) < 5 * sigma, (i, counts[i] / n)


def test_exact_sampling_reaches_every_subset_equally_often():
    # L = 6, k = 4 with layers 0 and 5 fixed: 2 of the 4 stochastic layers, 6 subsets of
    # probability 1/6. Pearson's chi-square over the 6 cells has 5 degrees of freedom; its
    # 0.9999 quantile is 25.7. A sampler that favoured low layer ids would score in the hundreds.
    n = 6000
    stage = _stage(0.5, layers=6, fixed=(0, 5), exact=4)
    counts = Counter(sample_mask(8, step, stage, sampling="exact").active_ids
                     for step in range(1, n + 1))
    expected_subsets = {(0,) + pair + (5,) for pair in itertools.combinations(range(1, 5), 2)}
    assert set(counts) == expected_subsets
    chi2 = sum((c - n / 6) ** 2 / (n / 6) for c in counts.values())
    assert chi2 < 25.7, counts


def test_exact_mean_depth_equals_expected_flops_exactly():
    schedule = _schedule({"schedule": "4-7-9-12", "sampling": "exact", "fixed_layers": [0]},
                         steps=203)
    sampler = SubnetworkSampler(schedule, 1)
    for step in range(1, 204):
        assert sampler.mask(step).num_active == schedule.stage_at(step).exact_layers
    mean = sum(sampler.mask(s).num_active for s in range(1, 204)) / (203 * 12)
    assert mean == pytest.approx(schedule.expected_flops_fraction(), rel=1e-12)


def test_exact_with_only_fixed_layers():
    stage = _stage(0.0, layers=6, fixed=(0, 5), exact=2)
    for scaling in ("none", "inverse_keep_prob"):
        mask = sample_mask(1, 1, stage, sampling="exact", scaling=scaling)
        assert mask.active_ids == (0, 5) and mask.scale == (1.0, 0.0, 0.0, 0.0, 0.0, 1.0)


def test_every_layer_fixed_with_a_partial_stage():
    # Two layers, both fixed by the default [0, -1]: a keep_prob < 1 stage has nothing to drop.
    for sampling in ("bernoulli", "exact"):
        schedule = _schedule({"schedule": [{"keep_prob": 0.5}, {"keep_prob": 1}],
                              "sampling": sampling, "scaling": "inverse_keep_prob"},
                             layers=2, steps=10)
        sampler = SubnetworkSampler(schedule, 0)
        assert sampler.masks(range(1, 11)) == [LayerMask.full(2)] * 10


def test_unknown_sampling():
    with pytest.raises(ValueError):
        sample_mask(0, 1, _stage(0.5), sampling="balanced?")


# ---------------------------------------------------------------- scales


def test_scaling_none_is_one_on_active_and_zero_on_skipped():
    stage = _stage(0.4)
    for step in range(1, 200):
        mask = sample_mask(0, step, stage, scaling="none")
        assert mask.scale == tuple(1.0 if on else 0.0 for on in mask.active)


@pytest.mark.parametrize("sampling, exact, p", [("bernoulli", None, 0.4), ("bernoulli", None, 0.7),
                                                ("exact", 6, 0.4), ("exact", 9, 0.7)])
def test_inverse_keep_prob_scales(sampling, exact, p):
    stage = _stage(p, exact=exact)
    skipped_seen = kept_seen = 0
    for step in range(1, 200):
        mask = sample_mask(0, step, stage, sampling=sampling, scaling="inverse_keep_prob")
        plain = sample_mask(0, step, stage, sampling=sampling, scaling="none")
        assert mask.active == plain.active  # scaling never changes which layers run
        for i, on in enumerate(mask.active):
            if i in (0, 11):
                assert mask.scale[i] == 1.0
            elif on:
                assert mask.scale[i] == pytest.approx(1 / p, rel=1e-12)
                kept_seen += 1
            else:
                assert mask.scale[i] == 0.0
                skipped_seen += 1
    assert kept_seen and skipped_seen


def test_inverse_scale_uses_the_stage_probability_from_the_schedule():
    schedule = _schedule({"schedule": "6-8-10-12", "scaling": "inverse_keep_prob"}, steps=100)
    sampler = SubnetworkSampler(schedule, 3)
    for step, p in ((10, 0.4), (30, 0.6), (60, 0.8)):
        mask = sampler.mask(step)
        kept = [mask.scale[i] for i in mask.active_ids if i not in (0, 11)]
        assert kept and all(s == pytest.approx(1 / p) for s in kept)


# ---------------------------------------------------------------- LayerMask and MaskDigest


def test_layer_mask_accessors():
    mask = LayerMask((True, False, True, False), (1.0, 0.0, 2.5, 0.0))
    assert mask.num_active == 2
    assert mask.active_ids == (0, 2) and mask.skipped_ids == (1, 3)
    assert str(mask) == "#.#."
    assert LayerMask.full(3) == LayerMask((True,) * 3, (1.0,) * 3)
    assert mask.to_bytes() == bytes([1, 0, 1, 0]) + struct.pack("<4d", 1.0, 0.0, 2.5, 0.0)
    # The encoding distinguishes masks that differ only in scale.
    assert mask.to_bytes() != LayerMask(mask.active, (1.0, 0.0, 1.0, 0.0)).to_bytes()


def test_mask_digest_is_reproducible_and_pinned():
    sampler = SubnetworkSampler(_schedule({"schedule": "6-8-10-12", "sampling": "exact"}), 1234)
    a, b = MaskDigest(), MaskDigest()
    for step in range(1, 11):
        a.update(step, sampler.mask(step))
        b.update(step, sampler.mask(step))
    assert a.hexdigest == b.hexdigest
    # Stored in checkpoints: pinned so that a change of encoding is a deliberate one.
    assert a.hexdigest == "a568ccb877fce3e4e02ca81ce47bdff211fbcb7baf7ab309b1c58f3c2f34dd89"


def test_mask_digest_is_order_and_step_sensitive():
    m1, m2 = LayerMask((True, False), (1.0, 0.0)), LayerMask((True, True), (1.0, 1.0))
    forward = MaskDigest()
    forward.update(1, m1)
    forward.update(2, m2)
    backward = MaskDigest()
    backward.update(2, m2)
    backward.update(1, m1)
    assert forward.hexdigest != backward.hexdigest
    swapped_masks = MaskDigest()
    swapped_masks.update(1, m2)
    swapped_masks.update(2, m1)
    assert swapped_masks.hexdigest not in (forward.hexdigest, backward.hexdigest)
    shifted = MaskDigest()
    shifted.update(2, m1)
    shifted.update(3, m2)
    assert shifted.hexdigest != forward.hexdigest


def test_mask_digest_resumes_from_a_saved_hexdigest():
    sampler = SubnetworkSampler(_schedule({"schedule": "6-8-10-12"}), 9)
    whole = MaskDigest()
    for step in range(1, 51):
        whole.update(step, sampler.mask(step))
    first = MaskDigest()
    for step in range(1, 21):
        first.update(step, sampler.mask(step))
    resumed = MaskDigest(first.hexdigest)
    for step in range(21, 51):
        returned = resumed.update(step, sampler.mask(step))
    assert returned == resumed.hexdigest == whole.hexdigest


# ---------------------------------------------------------------- balanced sampling


def _stage_counts(mask, parts):
    return [sum(mask.active[lo:hi]) for lo, hi in zip(parts, parts[1:])]


# 24-32-40-48 of 48 layers with layers 0 and 47 fixed: p = 22/46, 30/46, 38/46, 1.
PIPELINE_PROBS = [(d - 2) / 46 for d in (24, 32, 40, 48)]


@pytest.mark.parametrize("layers, stages", [(12, 2), (48, 8)])
@pytest.mark.parametrize("p", PIPELINE_PROBS)
def test_balanced_marginals_and_stage_counts(layers, stages, p):
    # 40,000 draws: the binomial sigma is at most 0.0025, so 0.01 is 4 sigma (10,000 draws
    # would make 0.01 2 sigma, which some of 46 correct layers exceed by chance).
    from megaraptr.core.partition import quotas, uniform_partition

    n, parts = 40_000 if p < 1 else 100, uniform_partition(layers, stages)
    stage = _stage(p, layers=layers, fixed=(0, layers - 1))
    low = [math.floor(q) for q in quotas(stage, parts)]
    counts = [0] * layers
    for step in range(1, n + 1):
        mask = sample_balanced(6, step, stage, parts)
        per_stage = _stage_counts(mask, parts)
        assert max(per_stage) - min(per_stage) <= 1  # the quotas lie within one unit
        assert all(c - f in (0, 1) for c, f in zip(per_stage, low))
        for i in mask.active_ids:
            counts[i] += 1
    assert counts[0] == counts[-1] == n
    for i in range(1, layers - 1):
        assert abs(counts[i] / n - p) < 0.01, (i, counts[i] / n)


def test_balanced_counts_follow_the_quotas_on_an_uneven_partition():
    from megaraptr.core.partition import quotas

    stage, parts = _stage(0.4, layers=12, fixed=(0, 11)), (0, 2, 7, 12)
    q = quotas(stage, parts)  # 1.4, 2.0, 2.6
    n, total = 5000, [0, 0, 0]
    for step in range(1, n + 1):
        counts = balanced_counts(2, step, stage, parts)
        assert counts == tuple(_stage_counts(sample_balanced(2, step, stage, parts), parts))
        assert all(math.floor(x) <= c <= math.ceil(x) for c, x in zip(counts, q))
        total = [t + c for t, c in zip(total, counts)]
        # One rounding number for all stages: they round up together (stage 0 up => stage 2 up).
        assert counts[0] == 1 or counts[2] == 3
    assert [t / n for t in total] == pytest.approx(q, abs=0.02)


def test_balanced_is_deterministic_and_depends_on_the_partition():
    stage = _stage(0.5)
    a = [sample_balanced(3, s, stage, (0, 6, 12)) for s in range(1, 101)]
    assert a == [sample_balanced(3, s, stage, (0, 6, 12)) for s in range(1, 101)]
    assert a != [sample_balanced(3, s, stage, (0, 4, 12)) for s in range(1, 101)]
    assert a != [sample_balanced(4, s, stage, (0, 6, 12)) for s in range(1, 101)]
    # With one pipeline stage it is sample_mask's "balanced".
    for step in range(1, 50):
        assert sample_mask(3, step, stage, sampling="balanced") == \
            sample_balanced(3, step, stage, (0, 12))


def test_balanced_masks_are_pinned():
    # Digests of balanced runs rely on these: 3 + 3 layers at p = 0.4, 3 + 4 at step 30
    # (quotas 3.4 and 4.6 on (0, 5, 12), rounding number 0.82), 5 + 5 at p = 0.8.
    schedule = _schedule({"schedule": "6-8-10-12", "sampling": "balanced"}, steps=100)
    sampler = SubnetworkSampler(schedule, 1234, [(0, 6, 12), (0, 5, 12), (0, 6, 12),
                                                 (0, 6, 12)])
    assert {s: str(sampler.mask(s)) for s in (1, 2, 3, 30, 60, 99)} == {
        1: "#..#.#...###", 2: "#..##....###", 3: "##.#...#.#.#",
        30: "#..####..#.#", 60: "##.######.##", 99: "############"}


def test_sampler_uses_each_schedule_stage_partition():
    schedule = _schedule({"schedule": "6-8-10-12", "sampling": "balanced",
                          "scaling": "inverse_keep_prob"}, steps=100)
    plan = [(0, 4, 12), (0, 6, 12), (0, 8, 12), (0, 6, 12)]
    sampler = SubnetworkSampler(schedule, 9, plan)
    for step in range(1, 101):
        stage = schedule.stage_at(step)
        mask = sampler.mask(step)
        assert mask == sample_balanced(9, step, stage, plan[stage.index],
                                       scaling="inverse_keep_prob")
        assert mask.active[0] and mask.active[11]
        for i in mask.active_ids:
            expected = 1.0 if i in (0, 11) else 1 / stage.keep_prob
            assert mask.scale[i] == pytest.approx(expected)
    # Without partitions: one pipeline stage holding every layer.
    single = SubnetworkSampler(schedule, 9)
    assert single.mask(5) == sample_balanced(9, 5, schedule.stage_at(5), (0, 12),
                                             scaling="inverse_keep_prob")


def test_other_samplings_ignore_partitions():
    plan = [(0, 3, 12)] * 4
    for sampling in ("bernoulli", "exact"):
        schedule = _schedule({"schedule": "6-8-10-12", "sampling": sampling})
        with_plan = SubnetworkSampler(schedule, 1234, plan).masks(range(1, 101))
        assert with_plan == SubnetworkSampler(schedule, 1234).masks(range(1, 101))


def test_sampler_rejects_mismatched_partitions():
    schedule = _schedule({"schedule": "6-8-10-12", "sampling": "balanced"})
    for bad in ([(0, 6, 12)] * 3, [(0, 6, 11)] * 4, [(0, 6, 6, 12)] * 4, [(0, 13)] * 4):
        with pytest.raises(ValueError) as info:
            SubnetworkSampler(schedule, 0, bad)
        assert "\n" not in str(info.value)


def test_balanced_schedule_expected_flops_and_probs():
    balanced = _schedule({"schedule": "6-8-10-12", "sampling": "balanced"}, steps=8000)
    bernoulli = _schedule({"schedule": "6-8-10-12"}, steps=8000)
    assert balanced.sampling == "balanced"
    assert balanced.expected_flops_fraction() == bernoulli.expected_flops_fraction() == 0.75
    assert balanced.layer_probs(10) == bernoulli.layer_probs(10)
    assert balanced.fingerprint() != bernoulli.fingerprint()
    sampler = SubnetworkSampler(balanced, 99, [(0, 6, 12)] * 4)
    active = sum(sampler.mask(s).num_active for s in range(1, 8001))
    # Only the shared rounding varies: each step's depth is 6, 8, 10 +- 1 at most.
    assert active / (8000 * 12) == pytest.approx(0.75, abs=0.005)


@pytest.mark.parametrize("sampling, exact, p", [("bernoulli", None, 0.4), ("exact", 9, 0.7),
                                                ("balanced", None, 0.55)])
def test_inverse_sqrt_keep_prob_scales(sampling, exact, p):
    stage = _stage(p, exact=exact)
    kept = 0
    for step in range(1, 200):
        mask = sample_mask(0, step, stage, sampling=sampling, scaling="inverse_sqrt_keep_prob")
        assert mask.active == sample_mask(0, step, stage, sampling=sampling).active
        for i, on in enumerate(mask.active):
            expected = 1.0 if i in (0, 11) else (p ** -0.5 if on else 0.0)
            assert mask.scale[i] == pytest.approx(expected, rel=1e-12)
            kept += on and i not in (0, 11)
    assert kept


def test_scaling_through_the_config_and_unknown_forms():
    config = parse_raptr_block({"enabled": True, "schedule": "6-12",
                                "scaling": "inverse_sqrt_keep_prob"})
    schedule = build_schedule(config, num_layers=12, total_steps=10)
    mask = SubnetworkSampler(schedule, 3).mask(2)
    assert {round(s, 12) for s in mask.scale} <= {0.0, 1.0, round(0.4 ** -0.5, 12)}
    with pytest.raises(ConfigError, match="^raptr.scaling: "):
        parse_raptr_block({"enabled": True, "schedule": "6-12", "scaling": "sqrt"})
    with pytest.raises(ValueError, match="unknown scaling 'sqrt'"):
        branch_scale("sqrt", 0.5)


def test_the_full_mask_is_one_object_and_its_fields_are_computed_once():
    # the engine applies a mask to the blocks only when it is not the one applied already:
    # O(1) per step in the full-model stage
    from megaraptr.core.mask import LayerMask

    assert LayerMask.full(12) is LayerMask.full(12) and LayerMask.full(12) is not LayerMask.full(6)
    mask = LayerMask((True, False, True), (1.0, 0.0, 2.0))
    assert (mask.num_active, mask.active_ids, mask.skipped_ids) == (2, (0, 2), (1,))
    assert mask.skipped_ids is mask.skipped_ids and "skipped_ids" in vars(mask)
    assert mask == LayerMask((True, False, True), (1.0, 0.0, 2.0))  # still a value
