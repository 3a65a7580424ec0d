"""Gradual stacking (method "stacking"): the schedule of depths, the growth plan, the model
that exists (training and evaluation), copies into DeepSpeed's fp32 master weights under ZeRO
0-3, and a tiny run that resumes exactly (mid-stage and at a growth step), reporting FLOPs."""
from __future__ import annotations

import json

import pytest
from conftest import ROOT, cpu_env, torchrun
from method_runs import STEPS, assert_exact_resume, train_and_resume

from megaraptr.core.sampler import SubnetworkSampler
from megaraptr.errors import ConfigError
from megaraptr.methods import build_schedule, parse_raptr_block
from megaraptr.methods.stacking import growth_plan


def build(block=None, layers=12, steps=900):
    config = parse_raptr_block(dict({"enabled": True, "method": "stacking",
                                     "schedule": "6-9-12"}, **(block or {})))
    return build_schedule(config, num_layers=layers, total_steps=steps)


def test_growth_copies_the_top_layers():
    assert growth_plan(6, 9) == [(6, 3), (7, 4), (8, 5)]
    assert growth_plan(9, 12) == [(9, 6), (10, 7), (11, 8)]
    assert growth_plan(2, 6) == [(2, 0), (3, 1), (4, 0), (5, 1)]  # by more than the depth
    assert growth_plan(4, 4) == []
    with pytest.raises(ValueError):
        growth_plan(5, 3)


def test_stages_train_the_first_k_layers_and_only_they_exist():
    schedule = build()
    assert [(s.first_step, s.last_step, s.exact_layers) for s in schedule.stages] == \
        [(1, 300, 6), (301, 600, 9), (601, 900, 12)]
    assert schedule.expected_flops_fraction() == pytest.approx((6 + 9 + 12) / 36)
    sampler = SubnetworkSampler(schedule, seed=1)
    for step, depth in ((1, 6), (300, 6), (301, 9), (900, 12)):
        mask = sampler.mask(step)
        assert mask.active == mask.present == tuple(i < depth for i in range(12))
        assert mask.scale == tuple(1.0 if i < depth else 0.0 for i in range(12))
    assert schedule.keep_prob_at(1) == 0.5


def test_evaluation_skips_layers_that_do_not_exist_yet():
    import torch

    from megaraptr.core.block import find_blocks, set_layer_mask
    from megaraptr.models import build_model

    model = build_model("gpt", "tiny", vocab_size=64, seq_len=8).eval()
    blocks = find_blocks(model)
    calls = []
    for block in blocks:
        block.attn.register_forward_hook(lambda m, i, o, b=block: calls.append(b.layer_id))
    schedule = build(layers=4, steps=30, block={"schedule": "2-3-4"})
    set_layer_mask(blocks, SubnetworkSampler(schedule, 0).mask(1))
    model(torch.zeros(1, 8, dtype=torch.long))
    assert calls == [0, 1]


@pytest.mark.parametrize("block, key", [
    ({"schedule": None}, "raptr.schedule"),
    ({"schedule": "6-9.5-12"}, "raptr.schedule[1]"),
    ({"schedule": "6-4-12"}, "raptr.schedule[1]"),
    ({"schedule": "6-9"}, "raptr.schedule[1]"),
    ({"schedule": "6-13"}, "raptr.schedule[1].layers"),
    ({"skipped_layers": "momentum"}, "raptr.skipped_layers"),
    ({"fixed_layers": [0]}, "raptr.fixed_layers"),
    ({"scaling": "none"}, "raptr.scaling"),
    ({"full_model_warmup_steps": 10}, "raptr.full_model_warmup_steps"),
    ({"stacking": {"optimizer_state": "copy"}}, "raptr.stacking.optimizer_state"),
])
def test_bad_blocks_name_the_key(block, key):
    block = {k: v for k, v in block.items() if v is not None} if block.get("schedule", 1) \
        else {"schedule": None}
    with pytest.raises(ConfigError) as err:
        if block.get("schedule", 1) is None:
            parse_raptr_block({"enabled": True, "method": "stacking"})
        else:
            build(block)
    assert str(err.value).startswith(key + ":"), err.value


@pytest.mark.parametrize("exit_at", [STEPS // 2, 5])
def test_stacking_trains_resumes_exactly_and_reports_flops(tmp_path, exit_at):
    # "2-3-4" over 16 steps: stages 1-5, 6-11, 12-16; step 6 grows the model after a resume
    runs = train_and_resume(tmp_path, {"enabled": True, "method": "stacking",
                                       "schedule": "2-3-4"}, exit_at=exit_at)
    assert_exact_resume(runs, exit_at)
    summary = runs["straight"]
    assert summary["method"] == "stacking"
    assert summary["layer_flops_fraction"] == pytest.approx((5 * 2 + 6 * 3 + 5 * 4) / 64)
    assert summary["final_eval_loss"] < summary["initial_eval_loss"] - 0.5


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stacking")
    torchrun(2, [ROOT / "tests" / "methods_worker.py", out], timeout=420, env=cpu_env())
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
