"""Every method's expected layers, as the schedule reports them (``describe()``, the summary's
expected layer FLOPs), against what its sampler actually draws over 20,000 steps."""
from __future__ import annotations

import pytest

from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.methods import build_schedule, parse_raptr_block

STEPS, LAYERS = 20_000, 12
BLOCKS = {
    "raptr": {"method": "raptr", "schedule": "6-8-10-12"},
    "raptr-exact": {"method": "raptr", "schedule": "6-8-10-12", "sampling": "exact"},
    "raptr-warmup": {"method": "raptr", "schedule": "6-8-10-12", "full_model_warmup_steps": 2000},
    "pld": {"method": "pld"},
    "pld-slow-decay": {"method": "pld", "pld": {"gamma": 0.0003}, "full_model_warmup_steps": 1000},
    "pld-matched": {"method": "pld", "pld": {"match_flops": 0.75}},
    "layerdrop": {"method": "layerdrop"},
    "layerdrop-matched": {"method": "layerdrop", "layerdrop": {"match_flops": 0.75}},
    "stacking": {"method": "stacking", "schedule": "6-9-12"},
}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_described_layers_are_the_sampled_mean(name):
    config = parse_raptr_block(dict({"enabled": True}, **BLOCKS[name]))
    schedule = build_schedule(config, num_layers=LAYERS, total_steps=STEPS)
    sampler = SubnetworkSampler(schedule, seed=1234)
    counts = [sampler.mask(s).num_active for s in range(1, STEPS + 1)]
    for stage, row in zip(schedule.stages, schedule.describe()):
        ran = counts[stage.first_step - 1:stage.last_step]
        mean = sum(ran) / len(ran)
        # a stage of n steps: the sampled mean's sd is at most sqrt(L / 4 / n) layers
        tolerance = 4 * (LAYERS / 4 / len(ran)) ** 0.5 + 1e-3
        assert row["expected_layers"] == pytest.approx(mean, abs=tolerance), (name, row)
        assert row["layer_flops"] == pytest.approx(row["expected_layers"] / LAYERS, abs=1e-4)
    assert schedule.expected_flops_fraction() == pytest.approx(
        sum(counts) / (STEPS * LAYERS), abs=4 * (1 / 4 / STEPS / LAYERS) ** 0.5 + 1e-3)


def test_pld_rows_report_the_decayed_mean_not_theta_bar():
    config = parse_raptr_block({"enabled": True, "method": "pld"})
    (row,) = build_schedule(config, num_layers=LAYERS, total_steps=STEPS).describe()
    # long run 12 - 0.5 x 6.5 = 8.75, plus the decay: 0.5 x 6.5 x (1 / gamma) / N = 3.25 / 200
    assert row["expected_layers"] == pytest.approx(8.75 + 3.25 / 200, abs=2e-3)  # not 6.0
