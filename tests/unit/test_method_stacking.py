"""Gradual stacking (method "stacking"): the schedule of depths, the growth plan, the model
that exists (training and evaluation), copies into DeepSpeed's fp32 master weights under ZeRO
0-3, and a tiny run that resumes exactly (mid-stage and at a growth step), reporting FLOPs."""
from __future__ import annotations

import pytest

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
    ({"stacking": {"optimizer_state": "average"}}, "raptr.stacking.optimizer_state"),
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


