"""``"fixed_layers": "first_stage"``: the bottom d - 1 layers and the last always run (d: the
first stage's depth), so RAPTR's first stage trains one fixed subnetwork like stacking's."""
from __future__ import annotations

import pytest

from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block


def schedule(**block):
    return build_schedule(parse_raptr_block(dict({"enabled": True, "schedule": "6-8-10-12"},
                                                 **block)), num_layers=12, total_steps=400)


def test_first_stage_equals_the_explicit_list_and_its_first_stage_is_deterministic():
    named, listed = schedule(fixed_layers="first_stage"), schedule(fixed_layers=[0, 1, 2, 3, 4, -1])
    assert named.describe() == listed.describe()
    assert [round(s.keep_prob, 4) for s in named.stages] == [0.0, 0.3333, 0.6667, 1.0]
    sampler = SubnetworkSampler(named, seed=3)
    assert {sampler.mask(step).active_ids for step in range(1, 101)} == {(0, 1, 2, 3, 4, 11)}
    assert named.expected_flops_fraction() == pytest.approx(0.75)


def test_first_stage_needs_a_whole_first_depth_and_other_names_are_refused():
    with pytest.raises(ConfigError, match=r'^raptr.fixed_layers: "first_stage" needs a schedule '
                                          r'whose first stage gives a whole "layers" from 1 to 12'):
        schedule(fixed_layers="first_stage", schedule=[{"keep_prob": 0.5}, {"keep_prob": 1.0}])
    with pytest.raises(ConfigError, match=r'^raptr.fixed_layers: "half" is not a fixed-layer set; '
                                          r'allowed: a list of layer indices, or "first_stage"'):
        schedule(fixed_layers="half")
    with pytest.raises(ConfigError, match=r"^raptr.fixed_layers\[1\]: "):
        schedule(fixed_layers=[0, "1"])
