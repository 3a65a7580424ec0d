"""LayerDrop (method "layerdrop"): constant drop probability, no scaling, every layer may
drop; a tiny run that resumes exactly and reports its FLOPs."""
from __future__ import annotations

import pytest

from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block


def build(block=None, layers=12, steps=1000):
    config = parse_raptr_block(dict({"enabled": True, "method": "layerdrop"}, **(block or {})))
    return build_schedule(config, num_layers=layers, total_steps=steps)


def test_recommended_defaults():
    schedule = build()
    (stage,) = schedule.stages
    assert stage.keep_prob == pytest.approx(0.8) and stage.fixed == ()
    assert schedule.scaling == "none"
    assert schedule.expected_flops_fraction() == pytest.approx(0.8)
    assert schedule.keep_prob_at(500) == pytest.approx(0.8)


def test_every_layer_drops_at_p_and_kept_layers_are_unscaled():
    schedule = build({"layerdrop": {"drop_prob": 0.3}}, layers=8, steps=3000)
    sampler = SubnetworkSampler(schedule, seed=11)
    counts = [0] * 8
    for step in range(1, 3001):
        mask = sampler.mask(step)
        assert set(mask.scale) <= {0.0, 1.0}
        counts = [c + on for c, on in zip(counts, mask.active)]
    assert all(c / 3000 == pytest.approx(0.7, abs=0.03) for c in counts)


def test_fixed_layers_and_warmup_are_honoured():
    schedule = build({"fixed_layers": [0], "full_model_warmup_steps": 10}, layers=4, steps=100)
    assert [s.name for s in schedule.stages] == ["warmup", "layerdrop"]
    assert schedule.layer_probs(5) == (1.0,) * 4
    assert schedule.layer_probs(50) == pytest.approx((1.0, 0.8, 0.8, 0.8))
    assert schedule.expected_flops_fraction() == pytest.approx((10 * 4 + 90 * 3.4) / 400)


@pytest.mark.parametrize("block, key", [
    ({"layerdrop": {"drop_prob": 1.0}}, "raptr.layerdrop.drop_prob"),
    ({"schedule": "2-4"}, "raptr.schedule"),
    ({"sampling": "exact"}, "raptr.sampling"),
    ({"method": "pld", "layerdrop": {}}, "raptr.layerdrop"),
])
def test_bad_blocks_name_the_key(block, key):
    with pytest.raises(ConfigError) as err:
        build(block)
    assert str(err.value).startswith(key + ":"), err.value


@pytest.mark.parametrize("block, target", [({}, 0.75), ({"full_model_warmup_steps": 500}, 0.75),
                                           ({"fixed_layers": [0, -1]}, 0.6)])
def test_match_flops_picks_the_drop_probability(block, target):
    steps = 20_000
    schedule = build(dict(block, layerdrop={"match_flops": target}), steps=steps)
    assert schedule.expected_flops_fraction() == pytest.approx(target, abs=1e-12)
    sampler = SubnetworkSampler(schedule, seed=5)
    ran = sum(sampler.mask(s).num_active for s in range(1, steps + 1))
    assert ran / (steps * 12) == pytest.approx(target, abs=0.004)


def test_match_flops_out_of_reach_and_exclusive_settings_are_one_line():
    with pytest.raises(ConfigError, match=r"^raptr.layerdrop.match_flops: 0.1 is out of reach"):
        build({"fixed_layers": [0, 1, 2], "layerdrop": {"match_flops": 0.1}})
    with pytest.raises(ConfigError, match=r'^raptr.layerdrop: give at most one of "drop_prob"'):
        build({"layerdrop": {"match_flops": 0.75, "drop_prob": 0.2}})
