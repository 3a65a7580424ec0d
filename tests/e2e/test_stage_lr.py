"""Per-stage LR handling ("stage_lr_rewarm_steps"): the re-warmup factor, and a run where it
changes the updates from the first step of the second stage on, and only from there."""
from __future__ import annotations

import pytest
from support.method_runs import train, write_config


@pytest.mark.parametrize("method", ["raptr", pytest.param("stacking", marks=pytest.mark.slow)])
def test_rewarm_changes_updates_from_the_second_stage_on(tmp_path, method):
    block = {"enabled": True, "method": method, "schedule": "2-4"}
    plain = train(tmp_path, write_config(tmp_path / "a.json", block), "plain",
                  "--eval-interval", "1")
    rewarm = train(tmp_path, write_config(tmp_path / "b.json", dict(block,
                                                                     stage_lr_rewarm_steps=4)),
                   "rewarm", "--eval-interval", "1")
    a, b = dict(plain["eval_history"]), dict(rewarm["eval_history"])
    assert [a[s] for s in range(9)] == [b[s] for s in range(9)]  # stage 1: steps 1-8
    assert a[9] != b[9] and a[16] != b[16]
