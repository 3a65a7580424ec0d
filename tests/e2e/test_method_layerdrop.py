"""LayerDrop (method "layerdrop"): constant drop probability, no scaling, every layer may
drop; a tiny run that resumes exactly and reports its FLOPs."""
from __future__ import annotations

import pytest
from support.method_runs import STEPS, assert_exact_resume, train_and_resume


@pytest.mark.slow  # PLD's run covers the drop path by default; unit tests cover its sampling
def test_layerdrop_trains_resumes_exactly_and_reports_flops(tmp_path):
    runs = train_and_resume(tmp_path, {"enabled": True, "method": "layerdrop",
                                       "layerdrop": {"drop_prob": 0.3}})
    assert_exact_resume(runs)
    summary = runs["straight"]
    assert summary["method"] == "layerdrop"
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.5
    assert summary["expected_layer_flops_fraction"] == pytest.approx(0.7)
    # 16 steps x 4 layers of Bernoulli(0.7) draws: the realised fraction is near 0.7
    assert 0.5 < summary["layer_flops_fraction"] < 0.9 and summary["layer_flops_fraction"] != 1
    assert STEPS == summary["steps"]
