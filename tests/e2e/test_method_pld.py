"""Progressive Layer Dropping (method "pld"): theta(t), depth-scaled keep probabilities,
1/keep scaling, expected FLOPs, and a tiny run that resumes exactly and reports its FLOPs."""
from __future__ import annotations

import pytest
from support.method_runs import STEPS, assert_exact_resume, train_and_resume

from megaraptr.methods import build_schedule, parse_raptr_block


def build(block=None, layers=12, steps=1000):
    config = parse_raptr_block(dict({"enabled": True, "method": "pld"}, **(block or {})))
    return build_schedule(config, num_layers=layers, total_steps=steps)


def test_pld_trains_resumes_exactly_and_reports_flops(tmp_path):
    # gamma 0.1 so the 16-step run really drops layers
    runs = train_and_resume(tmp_path, {"enabled": True, "method": "pld",
                                       "pld": {"theta_bar": 0.5, "gamma": 0.1}})
    assert_exact_resume(runs)
    summary = runs["straight"]
    assert summary["method"] == "pld"
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.5
    expected = build({"pld": {"theta_bar": 0.5, "gamma": 0.1}}, layers=4, steps=STEPS)
    assert summary["expected_layer_flops_fraction"] == pytest.approx(
        expected.expected_flops_fraction())
    assert 0.55 < summary["layer_flops_fraction"] < 0.95
