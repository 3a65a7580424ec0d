"""The ZeRO-1/2 step does no work for frozen layers: counted, not inferred.

tests/workers/frozen_work_worker.py counts, per step and parameter group, what DeepSpeed's
step and reduction epilogue do for a group (gradient partition built, gradient flattened,
torch optimizer step, all-gather, weights re-pointed). Under ``"skipped_layers": "freeze"``
with megaraptr's step, the groups of the step's skipped layers appear in none of them, and
every other group in each; with DeepSpeed's own step (the patch forced to its fallback) the
frozen groups are built, flattened, all-gathered and re-pointed like the others (only the torch
optimizer leaves them out), with the very same losses. So a bit-identical trajectory alone could
not tell the two apart; these counts can. Where megaraptr's gradient reduction is installed
(fp32, bf16), it builds the partitions (``LayerReduce._group``) and flattens the gradients of
the active groups only; with its source "changed" DeepSpeed's own reduction runs under
megaraptr's step (``-dsreduce``), and the losses are again the same, bit for bit.
"""
from __future__ import annotations

import json
import os
import sys

import pytest
from support import ROOT, WORKERS, cpu_env, free_port, run

WORK = ("get_flat_partition", "_get_preflattened_grad_partition", "optimizer", "all_gather",
        "_update_model_bit16_weights")


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    out = tmp_path_factory.mktemp("frozen") / "calls.json"
    env = cpu_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()),
                  PYTHONPATH=os.pathsep.join([str(ROOT), str(WORKERS)]))
    run([sys.executable, WORKERS / "frozen_work_worker.py", out], timeout=300, env=env)
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["1-fp32", "2-fp32", "1-bf16", "2-bf16acc"])
def test_frozen_groups_get_no_flatten_optimizer_or_all_gather(counted, case):
    mine, theirs = counted[f"{case}-megaraptr"], counted[f"{case}-deepspeed"]
    assert mine["fast_step"] and not theirs["fast_step"]
    assert mine["patches"]["zero12_frozen_epilogue"] == "active"
    reduce = mine["patches"].get("zero12_layer_reduce")
    assert (reduce == "active") == (not case.endswith("acc"))  # fp32 accumulation: DeepSpeed's
    checked = 0
    for step, other in zip(mine["steps"], theirs["steps"]):
        frozen, everyone = set(step["frozen"]), set(range(mine["groups"]))
        for name in WORK:
            theirs_name = name
            if name == "get_flat_partition" and case.endswith("acc"):
                name = theirs_name = "_build_compact_grad_partition_buffer"  # fp32 accumulation
            elif name == "get_flat_partition" and reduce == "active":
                assert "get_flat_partition" not in step["calls"]
                name = "_group"  # megaraptr's reduction builds the partitions
            # megaraptr: each active group exactly once, no frozen group
            assert step["calls"].get(name, []) == sorted(everyone - frozen), (step, name)
            if name != "optimizer":  # DeepSpeed's own: every group, frozen ones included
                assert other["calls"].get(theirs_name, []) == sorted(everyone), (other, name)
        if reduce == "active":  # gradients flattened and reduced: active groups only
            assert set(step["calls"]["reduced"]) == everyone - frozen
        checked += len(frozen)
        assert step["loss"] == other["loss"]  # the same trajectory, bit for bit
    assert checked >= 8  # frozen groups occurred (RAPTR 2-3-4: 0-2 layers skipped per step)


@pytest.mark.parametrize("case", ["1-fp32", "2-fp32", "1-bf16", "2-bf16acc"])
def test_deepspeeds_own_reduction_after_a_changed_source_is_bit_identical(counted, case):
    mine, own = counted[f"{case}-megaraptr"], counted[f"{case}-dsreduce"]
    if case.endswith("acc"):  # not installed there: nothing to fall back from
        assert "zero12_layer_reduce" not in own["patches"]
    else:
        assert own["patches"]["zero12_layer_reduce"].startswith(
            "fallback: DeepSpeedZeroOptimizer.average_tensor differs from DeepSpeed 0.19.8's")
        assert own["patches"]["zero12_frozen_step"] == "active"
    for step, other in zip(mine["steps"], own["steps"]):
        assert "reduced" not in other["calls"] and "_group" not in other["calls"]
        if not case.endswith("acc"):  # DeepSpeed's epilogue builds the active groups' partitions
            assert other["calls"]["get_flat_partition"] == sorted(
                set(range(own["groups"])) - set(step["frozen"]))
        assert step["loss"] == other["loss"]
