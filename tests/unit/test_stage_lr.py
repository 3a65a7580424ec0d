"""Per-stage LR handling ("stage_lr_rewarm_steps"): the re-warmup factor, and a run where it
changes the updates from the first step of the second stage on, and only from there."""
from __future__ import annotations

from megaraptr.core.schedule import rewarm_multiplier


def test_factor_ramps_after_each_stage_transition():
    # stage 1 (index 0) starts the run: no re-warmup there
    assert [rewarm_multiplier(s, 1, 0, 3) for s in (1, 2, 3)] == [1.0, 1.0, 1.0]
    # stage 2 starts at step 11: 1/4, 2/4, 3/4, then the schedule's LR
    assert [rewarm_multiplier(s, 11, 1, 3) for s in (11, 12, 13, 14)] == [0.25, 0.5, 0.75, 1.0]
    assert rewarm_multiplier(11, 11, 1, 0) == 1.0
    # after a full-model warmup stage (index 0), the first RAPTR stage is not re-warmed
    assert rewarm_multiplier(11, 11, 1, 3, first_staged_index=1) == 1.0
    assert rewarm_multiplier(21, 21, 2, 3, first_staged_index=1) == 0.25
