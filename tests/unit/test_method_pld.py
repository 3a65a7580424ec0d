"""Progressive Layer Dropping (method "pld"): theta(t), depth-scaled keep probabilities,
1/keep scaling, expected FLOPs, and a tiny run that resumes exactly and reports its FLOPs."""
from __future__ import annotations

import math

import pytest

from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.methods.pld import default_gamma, pld_layer_probs, pld_layer_sum, pld_theta


def build(block=None, layers=12, steps=1000):
    config = parse_raptr_block(dict({"enabled": True, "method": "pld"}, **(block or {})))
    return build_schedule(config, num_layers=layers, total_steps=steps)


def test_paper_defaults():
    config = parse_raptr_block({"enabled": True, "method": "pld"})
    schedule = build(steps=10)
    assert (schedule.policy.theta_bar, schedule.policy.gamma) == (0.5, default_gamma(10))
    assert build(steps=200_000).policy.gamma == pytest.approx(0.001)  # DeepSpeed's BERT recipe
    assert config.effective_scaling == schedule.scaling == "inverse_keep_prob"
    assert config.effective_fixed_layers == [] and schedule.stages[-1].fixed == ()


def test_theta_starts_at_one_and_decays_to_theta_bar():
    assert pld_theta(1, 0.5, 0.001) == 1.0
    assert pld_theta(1001, 0.5, 0.001) == pytest.approx(0.5 + 0.5 * math.exp(-1))
    assert pld_theta(10 ** 6, 0.5, 0.001) == pytest.approx(0.5)


def test_deeper_layers_are_dropped_more():
    probs = pld_layer_probs(12, (), 0.5)
    assert probs[0] == pytest.approx(1 - 1 / 12 * 0.5)
    assert probs[-1] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(probs, probs[1:]))
    assert pld_layer_probs(4, (3,), 0.5)[3] == 1.0  # a configured fixed layer always runs


def test_sampled_frequencies_and_scales_follow_the_probabilities():
    schedule = build({"pld": {"theta_bar": 0.5, "gamma": 50.0}}, layers=6, steps=4000)
    sampler = SubnetworkSampler(schedule, seed=3)
    counts = [0] * 6
    for step in range(1, 4001):
        mask = sampler.mask(step)
        for i, (on, scale) in enumerate(zip(mask.active, mask.scale)):
            counts[i] += on
            expected = schedule.layer_probs(step)[i]
            assert scale == (pytest.approx(1 / expected) if on else 0.0)
    for i, p in enumerate(pld_layer_probs(6, (), 0.5)):
        assert counts[i] / 4000 == pytest.approx(p, abs=0.03)


def test_expected_flops_closed_form_equals_the_sum():
    schedule = build({"pld": {"theta_bar": 0.4, "gamma": 0.01}, "full_model_warmup_steps": 7},
                     layers=12, steps=500)
    total = sum(sum(schedule.layer_probs(s)) for s in range(1, 501))
    assert schedule.expected_flops_fraction() == pytest.approx(total / (500 * 12), rel=1e-12)
    assert pld_layer_sum(5, 4, 12, (), 0.5, 0.1) == 0.0
    # in the long run: mean keep 1 - (1 - theta_bar) (L + 1) / 2L
    assert build(steps=10 ** 6).expected_flops_fraction() == pytest.approx(
        1 - 0.5 * 13 / 24, abs=2e-3)


@pytest.mark.parametrize("block, key", [
    ({"schedule": "6-8-10-12"}, "raptr.schedule"),
    ({"sampling": "exact"}, "raptr.sampling"),
    ({"pld": {"theta_bar": 0.0}}, "raptr.pld.theta_bar"),
    ({"pld": {"gama": 0.1}}, "raptr.pld.gama"),
    ({"method": "raptr", "schedule": "2-4", "pld": {}}, "raptr.pld"),
])
def test_bad_blocks_name_the_key(block, key):
    with pytest.raises(ConfigError) as err:
        build(block)
    assert str(err.value).startswith(key + ":"), err.value


@pytest.mark.parametrize("steps, warmup", [(200, 0), (3000, 0), (3000, 300), (10 ** 6, 0)])
def test_default_gamma_decays_at_the_recipes_fraction_of_the_run(steps, warmup):
    schedule = build({"full_model_warmup_steps": warmup} if warmup else None, steps=steps)
    first = warmup + 1
    assert schedule.keep_prob_at(first) == 1.0  # the clock starts after the warmup
    within = next(s for s in range(first, steps + 1)  # theta within 1% of its floor
                  if schedule.keep_prob_at(s) - 0.5 <= 0.01 * (1 - 0.5))
    recipe = math.log(100) / 0.001 / 200_000  # 4,605 of 200,000 steps
    assert (within - first) / (steps - warmup) == pytest.approx(recipe, abs=1.5 / (steps - warmup))


def test_theta_clock_starts_after_the_full_model_warmup():
    schedule = build({"full_model_warmup_steps": 100, "pld": {"gamma": 0.01}}, steps=1000)
    assert [schedule.keep_prob_at(s) for s in (100, 101)] == [1.0, 1.0]
    assert schedule.keep_prob_at(201) == pytest.approx(0.5 + 0.5 * math.exp(-1))
    no_warmup = build({"pld": {"gamma": 0.01}}, steps=1000)
    assert no_warmup.policy.fingerprint() == ["pld", [0.5, 0.01]]  # runs without warmup as before


@pytest.mark.parametrize("warmup, target", [(0, 0.75), (50, 0.75), (0, 0.9), (100, 0.8)])
def test_match_flops_spends_the_target_in_closed_form_and_in_samples(warmup, target):
    steps = 20_000
    block = {"pld": {"match_flops": target}}
    if warmup:
        block["full_model_warmup_steps"] = warmup
    schedule = build(block, steps=steps)
    assert schedule.expected_flops_fraction() == pytest.approx(target, abs=1e-12)
    sampler = SubnetworkSampler(schedule, seed=11)
    ran = sum(sampler.mask(s).num_active for s in range(1, steps + 1))
    assert ran / (steps * 12) == pytest.approx(target, abs=0.004)  # 20k steps: sd ~0.0013


def test_match_flops_out_of_reach_and_exclusive_settings_are_one_line():
    with pytest.raises(ConfigError, match=r"^raptr.pld.match_flops: 0.3 is out of reach"):
        build({"pld": {"match_flops": 0.3}})
    with pytest.raises(ConfigError, match=r'^raptr.pld: give at most one of "theta_bar"'):
        build({"pld": {"match_flops": 0.75, "theta_bar": 0.5}})
