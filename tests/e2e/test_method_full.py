"""Full-model training (method "full", or "enabled": false): the same engine and code path,
every layer every step; a tiny run that resumes exactly and reports FLOPs 1."""
from __future__ import annotations

import pytest
from support.method_runs import assert_exact_resume, train_and_resume

from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block


@pytest.mark.parametrize("block", [{"enabled": False}, {"enabled": True, "method": "full"}])
def test_full_schedule_trains_every_layer(block):
    config = parse_raptr_block(block)
    assert not config.trains_subnetworks
    schedule = build_schedule(config, num_layers=6, total_steps=50)
    assert schedule.expected_flops_fraction() == 1.0
    assert all(p == 1.0 for s in range(1, 51) for p in schedule.layer_probs(s))


def test_full_refuses_a_schedule():
    with pytest.raises(ConfigError) as err:
        parse_raptr_block({"enabled": True, "method": "full", "schedule": "2-4"})
    assert str(err.value).startswith("raptr.schedule:")


@pytest.mark.slow  # the same path as raptr's; tests/e2e/test_train.py trains "enabled": false
def test_full_trains_resumes_exactly_and_reports_flops(tmp_path):
    runs = train_and_resume(tmp_path, {"enabled": True, "method": "full"})
    assert_exact_resume(runs)
    summary = runs["straight"]
    assert summary["method"] == "full"
    assert summary["layer_flops_fraction"] == summary["expected_layer_flops_fraction"] == 1.0
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.5
