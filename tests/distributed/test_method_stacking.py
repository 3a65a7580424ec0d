"""Gradual stacking (method "stacking"): the schedule of depths, the growth plan, the model
that exists (training and evaluation), copies into DeepSpeed's fp32 master weights under ZeRO
0-3, and a tiny run that resumes exactly (mid-stage and at a growth step), reporting FLOPs."""
from __future__ import annotations

import json

import pytest
from support import WORKERS, cpu_env, torchrun


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacking")
    torchrun(2, [WORKERS / "methods_worker.py", out], timeout=420, env=cpu_env())
    return [json.loads((out / f"stacking.rank{r}.json").read_text()) for r in (0, 1)]


@pytest.mark.distributed
def test_growth_writes_module_and_fp32_master_under_every_zero_stage(zero_runs):
    for rank in zero_runs:
        for case, result in rank.items():
            assert [(g["step"], g["target"], g["source"]) for g in result["growths"]] == \
                [(5, 2, 1), (9, 3, 2)], case
            assert all(g["module_equal"] for g in result["growths"]), case
            has_master = not case.startswith("0-")
            assert all(g["master_equal"] is (True if has_master else None)
                       for g in result["growths"]), case
            assert result["flops"] == pytest.approx((4 * 2 + 4 * 3 + 4 * 4) / 48)
            actives = [sum(s["active"]) for s in result["steps"]]
            assert actives == [2] * 4 + [3] * 4 + [4] * 4, case


@pytest.mark.distributed
def test_zero_stages_follow_one_fp32_trajectory_through_growth(zero_runs):
    rank0 = zero_runs[0]
    base = [s["loss"] for s in rank0["0-fp32"]["steps"]]
    for stage in (1, 2, 3):
        case = rank0[f"{stage}-fp32"]
        assert [s["loss"] for s in case["steps"]] == pytest.approx(base, rel=2e-5), stage
        assert case["final_eval"] == pytest.approx(rank0["0-fp32"]["final_eval"], rel=2e-5)
    # bf16 under ZeRO-2 (fp32 master) stays near the fp32 trajectory after both growths
    bf16 = [s["loss"] for s in rank0["2-bf16"]["steps"]]
    assert bf16 == pytest.approx(base, rel=2e-3)
    # before any training the 2-layer model is evaluated, the same on both ranks
    assert zero_runs[0]["0-fp32"]["initial_eval"] == zero_runs[1]["0-fp32"]["initial_eval"]


@pytest.mark.distributed
def test_copy_gives_new_layers_their_sources_state_under_zero_0_1_3(zero_runs):
    rank0 = zero_runs[0]
    fresh = [s["loss"] for s in rank0["0-fp32"]["steps"]]
    base = [s["loss"] for s in rank0["0-fp32-copy"]["steps"]]
    for rank in zero_runs:
        for stage in (0, 1, 3):
            growths = rank[f"{stage}-fp32-copy"]["growths"]
            assert growths and all(g["state_copied"] for g in growths), stage
    for stage in (1, 3):  # the same copy under every partitioning of the state
        losses = [s["loss"] for s in rank0[f"{stage}-fp32-copy"]["steps"]]
        assert losses == pytest.approx(base, rel=2e-5), stage
    assert base[:4] == fresh[:4] and base[4:] != pytest.approx(fresh[4:], rel=1e-6)
    assert not any(g["state_copied"] for g in rank0["0-fp32"]["growths"])  # fresh: no state


@pytest.mark.distributed
def test_reset_all_drops_every_layers_state_under_zero_0_2(zero_runs):
    rank0 = zero_runs[0]
    fresh = [s["loss"] for s in rank0["0-fp32"]["steps"]]
    base = [s["loss"] for s in rank0["0-fp32-reset_all"]["steps"]]
    for stage in (0, 2):
        case = rank0[f"{stage}-fp32-reset_all"]
        assert all(g["state_entries"] == 0 for g in case["growths"]), stage
        assert [s["loss"] for s in case["steps"]] == pytest.approx(base, rel=2e-5), stage
    assert base[:4] == fresh[:4] and base[4:] != pytest.approx(fresh[4:], rel=1e-6)
