"""Gradual stacking (method "stacking"): the schedule of depths, the growth plan, the model
that exists (training and evaluation), copies into DeepSpeed's fp32 master weights under ZeRO
0-3, and a tiny run that resumes exactly (mid-stage and at a growth step), reporting FLOPs."""
from __future__ import annotations

import pytest
from support.method_runs import STEPS, assert_exact_resume, train_and_resume


@pytest.mark.parametrize("exit_at", [pytest.param(STEPS // 2, marks=pytest.mark.slow), 5])  # the default run: one
def test_stacking_trains_resumes_exactly_and_reports_flops(tmp_path, exit_at):
    # "2-3-4" over 16 steps: stages 1-5, 6-11, 12-16; step 6 grows the model after a resume
    runs = train_and_resume(tmp_path, {"enabled": True, "method": "stacking",
                                       "schedule": "2-3-4"}, exit_at=exit_at)
    assert_exact_resume(runs, exit_at)
    summary = runs["straight"]
    assert summary["method"] == "stacking"
    assert summary["layer_flops_fraction"] == pytest.approx((5 * 2 + 6 * 3 + 5 * 4) / 64)
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.5


